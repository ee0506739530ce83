"""General training options for strong recipes: the weight average (--ema), the normalization-bias learning
rate (--bias-lr-scale), airbench's schedule (--scheduler triangle) and lookahead (--lookahead), and the teacher's flip
test-time augmentation (--teacher-tta)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdexport.config import RunConfig, TrainConfig
from kdexport.distill.teacher import FlipShiftTTA, FlipTTA, TorchTeacher, shifted
from kdexport.distill.train import Lookahead, WeightAverage, _optimizer, evaluate, fit, norm_biases, triangle
from kdexport.errors import ConfigError
from kdexport.models.builders import ModelSpec, build_model


def test_weight_average_by_hand():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = WeightAverage(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m)  # t=1: decay min(0.9, 2/11) = 0.1818...
    d1 = 2 / 11
    assert ema.shadow["weight"].item() == pytest.approx(d1 * 1 + (1 - d1) * 3, rel=1e-6)
    with torch.no_grad():
        m.weight.fill_(5.0)
    ema.update(m)  # t=2: min(0.9, 3/12) = 0.25
    want = 0.25 * (d1 * 1 + (1 - d1) * 3) + 0.75 * 5
    assert ema.shadow["weight"].item() == pytest.approx(want, rel=1e-6)
    with ema.applied(m):
        assert m.weight.item() == pytest.approx(want, rel=1e-6)
    assert m.weight.item() == 5.0  # restored


def test_weight_average_decay_reaches_its_cap():
    m = nn.Linear(1, 1, bias=False)
    ema = WeightAverage(m, decay=0.5)
    for _ in range(30):
        ema.update(m)
    with torch.no_grad():
        m.weight.add_(1.0)
    before = ema.shadow["weight"].clone()
    ema.update(m)
    assert torch.allclose(ema.shadow["weight"], 0.5 * before + 0.5 * m.weight)


def test_fit_with_ema_evaluates_and_returns_the_average(digits):
    def run(ema):
        torch.manual_seed(0)
        m = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
        return m, fit(m, digits, TrainConfig(epochs=2, seed=0, ema=ema))

    m, h = run(0.9)
    assert evaluate(m, digits)["accuracy"] == h[-1]["test_accuracy"]  # the shipped model is the evaluated one
    plain, _ = run(0.0)
    assert not all(torch.equal(p, q) for p, q in zip(m.parameters(), plain.parameters()))


def test_ema_resumes_bit_for_bit(digits, tmp_path):
    cfg = TrainConfig(epochs=2, seed=0, ema=0.95)
    torch.manual_seed(0)
    full = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    fit(full, digits, cfg)
    torch.manual_seed(0)
    part = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    state = tmp_path / "s.pt"
    fit(part, digits, TrainConfig(epochs=2, seed=0, ema=0.95), state_path=state)
    torch.manual_seed(0)
    again = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    blob = torch.load(state, weights_only=True)
    assert blob["ema"]["updates"] > 0
    fit(again, digits, cfg, state_path=state, resume=True)  # nothing left to train: restores the average
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), again.parameters()))


def test_bias_lr_scale_scales_exactly_the_norm_biases():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    m(torch.zeros(2, 3, 6, 6))
    cfg = TrainConfig(optimizer="sgd", momentum=0.0, lr=0.1, weight_decay=0.01, bias_lr_scale=64.0)
    opt = _optimizer(m, cfg)
    assert [p is m[1].bias for p in norm_biases(m)] == [True]
    assert len(opt.param_groups) == 2
    g = opt.param_groups[1]
    assert g["params"][0] is m[1].bias
    assert g["lr"] == pytest.approx(6.4) and g["weight_decay"] == pytest.approx(0.01 / 64)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    m(torch.randn(2, 3, 6, 6)).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    opt.step()
    for n, p in m.named_parameters():
        lr = 6.4 if n == "1.bias" else 0.1
        wd = 0.01 / 64 if n == "1.bias" else 0.01
        want = before[n] - lr * (grads[n] + wd * before[n])  # the same decay per step: lr * wd = 0.001
        assert torch.allclose(p, want, atol=1e-6), n
    assert len(_optimizer(m, TrainConfig(optimizer="sgd")).param_groups) == 1


def test_onecycle_with_bias_groups_peaks_each_at_its_own_lr(digits):
    from kdexport.distill.train import _scheduler

    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))
    cfg = TrainConfig(optimizer="sgd", lr=0.2, scheduler="onecycle", bias_lr_scale=10.0)
    opt = _optimizer(m, cfg)
    sched = _scheduler(opt, cfg, 100)
    peaks = [0.0, 0.0]
    for _ in range(100):
        opt.step()
        sched.step()
        peaks = [max(p, g["lr"]) for p, g in zip(peaks, opt.param_groups)]
    assert peaks[0] == pytest.approx(0.2, rel=0.02) and peaks[1] == pytest.approx(2.0, rel=0.02)


def test_flip_tta_teacher_averages_the_mirror(digits):
    torch.manual_seed(0)
    module = build_model(ModelSpec("mlp:16", 10, (1, 8, 8))).eval()
    t = TorchTeacher.for_data(module, digits)
    tta = FlipTTA(t)
    raw = digits.x_test[:5]
    want = 0.5 * (t.logits(raw) + t.logits(raw.flip(-1)))
    assert torch.allclose(tta.logits(raw), want)
    assert not torch.allclose(tta.logits(raw), t.logits(raw))
    mirrored = torch.cat([raw, raw.flip(-1)])
    out = tta.logits(mirrored)
    assert torch.allclose(out[:5], out[5:], atol=1e-6)  # invariant to the mirror
    assert tta.fingerprint() != t.fingerprint()  # a different cache entry


def test_shifted_moves_pixels_and_reflects_borders():
    raw = torch.arange(9, dtype=torch.uint8).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    down_right = shifted(raw, 1, 1)
    assert down_right.dtype == torch.uint8
    assert down_right[0, 0].tolist() == [[4, 3, 4], [1, 0, 1], [4, 3, 4]]  # reflected row/column -1 is 1
    assert shifted(raw, -1, -1)[0, 0].tolist() == [[4, 5, 4], [7, 8, 7], [4, 5, 4]]
    assert torch.equal(shifted(raw, 0, 0), raw)


def test_flip_shift_tta_is_airbench_weighting():
    class Probe:  # logits = the image's pixels, so every view is visible in the output
        num_classes, input_shape = 9, (1, 3, 3)

        def logits(self, raw):
            return raw.float().reshape(len(raw), -1)

        def fingerprint(self):
            return "probe"

    raw = torch.randint(0, 256, (2, 1, 3, 3), dtype=torch.uint8)
    p = Probe()

    def flip(x):
        return 0.5 * (p.logits(x) + p.logits(x.flip(-1)))

    want = 0.5 * flip(raw) + 0.25 * flip(shifted(raw, 1, 1)) + 0.25 * flip(shifted(raw, -1, -1))
    tta = FlipShiftTTA(p)
    assert torch.allclose(tta.logits(raw), want)
    assert tta.fingerprint() == "probe|tta=flip-shift" != FlipTTA(p).fingerprint()


def test_teacher_tta_in_the_report(tmp_path):
    from kdexport.pipeline import distill_export

    r = distill_export(RunConfig(out=str(tmp_path / "r"), teacher_tta="flip", teacher="mlp:64",
                                 train=TrainConfig(epochs=1), bench_iters=2, bench_warmup=0))
    assert r["teacher_tta"]["mode"] == "flip" and 0 < r["teacher_tta"]["accuracy"] <= 1
    assert r["config"]["teacher_tta"] == "flip"
    md = (tmp_path / "r" / "report.md").read_text()  # the report says which teacher the students learned from
    assert f"with `--teacher-tta flip`: {r['teacher_tta']['accuracy'] * 100:.2f}%" in md


@pytest.mark.parametrize("kw,msg", [({"ema": 1.0}, "ema decay"), ({"ema": -0.1}, "ema decay"),
                                    ({"bias_lr_scale": 0.0}, "bias lr scale"), ({"eval_every": 0}, "eval every"),
                                    ({"clip_grad_norm": -1.0}, "clip grad norm")])
def test_bad_training_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw)
    with pytest.raises(ConfigError, match="teacher tta"):
        RunConfig(teacher_tta="five-crop")


def test_precision_auto_is_bf16_on_cuda_only():
    from kdexport.distill.precision import autocast, resolve_precision

    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cuda") == "fp32"
    lin = nn.Linear(4, 2)
    with autocast("bf16", "cpu"):
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16
    with autocast("auto", "cpu"):
        assert lin(torch.ones(1, 4)).dtype == torch.float32


def test_fit_in_bf16_runs_the_forward_in_bf16_and_evaluates_in_fp32(digits):
    seen = []

    def run(precision):
        torch.manual_seed(0)
        m = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
        hook = m.register_forward_hook(lambda mod, i, o: seen.append((mod.training, o.dtype)))
        h = fit(m, digits, TrainConfig(epochs=1, seed=0, precision=precision))
        hook.remove()
        return m, h

    m16, h16 = run("bf16")
    assert {d for training, d in seen if training} == {torch.bfloat16}
    assert {d for training, d in seen if not training} == {torch.float32}  # evaluation is fp32
    assert evaluate(m16, digits)["accuracy"] == h16[-1]["test_accuracy"]
    seen.clear()
    m32, _ = run("fp32")
    assert {d for _, d in seen} == {torch.float32}
    assert not all(torch.equal(p, q) for p, q in zip(m16.parameters(), m32.parameters()))


def test_bf16_teacher_is_close_to_fp32_and_keyed_apart(digits):
    torch.manual_seed(0)
    m = build_model(ModelSpec("fastcifar:0.25", 10, (3, 32, 32)))
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)

    def norm(raw):
        return raw.float() / 255 - 0.5

    t32 = TorchTeacher(m, norm, 10, (3, 32, 32))
    t16 = TorchTeacher(m, norm, 10, (3, 32, 32), precision="bf16")
    a, b = t32.logits(x), t16.logits(x)
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.05 * float(a.abs().max()) + 1e-3)
    assert t16.fingerprint() == f"{t32.fingerprint()}|bf16"  # the logit cache keeps them apart


def test_eval_every_skips_evaluations_but_not_the_last_and_changes_no_weight(digits, tmp_path):
    """--eval-every 2 on 5 epochs: test metrics after epochs 2, 4 and 5 only; training is untouched (same
    weights, same training records), the evaluated epochs match the every-epoch run's, and the report's
    curves and the progress lines take the gaps."""
    from kdexport.cli import LineReporter
    from kdexport.report.write import plot_curves

    spec = ModelSpec("mlp:32", 10, (1, 8, 8))
    runs = {}
    for every in (1, 2):
        torch.manual_seed(0)
        m = build_model(spec)
        lines: list[str] = []
        h = fit(m, digits, TrainConfig(epochs=5, eval_every=every), reporter=LineReporter(lines.append))
        runs[every] = (m, h, lines)
    (m1, h1, _), (m2, h2, lines) = runs[1], runs[2]
    assert [("test_accuracy" in r) for r in h2] == [False, True, False, True, True]
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    for a, b in zip(h1, h2):
        assert a["train_loss"] == b["train_loss"] and a["train_accuracy"] == b["train_accuracy"]
        if "test_accuracy" in b:
            assert (a["test_accuracy"], a["test_loss"]) == (b["test_accuracy"], b["test_loss"])
    assert "test acc" not in lines[0] and "test acc" in lines[1] and len(lines) == 5
    plot_curves({"models": {"student": {"arch": "mlp:32", "history": h2}}}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_clip_grad_norm_step_by_hand(digits):
    """One full-batch plain-SGD step with --clip-grad-norm c moves the weights by -lr * g * c / ||g|| (the global
    norm over every parameter), and a bound above ||g|| changes nothing; the epoch's record has the norm before
    clipping and how many steps were clipped."""
    spec = ModelSpec("mlp:16", 10, (1, 8, 8))
    n = digits.x_train.shape[0]
    torch.manual_seed(0)
    m0 = build_model(spec)
    params0 = [p.detach().clone() for p in m0.parameters()]
    loss = nn.functional.cross_entropy(m0(digits.normalize(digits.x_train)), digits.y_train)
    grads = torch.autograd.grad(loss, list(m0.parameters()))
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
    lr = 0.5
    for clip, scale in ((norm / 10, 0.1), (norm * 10, 1.0)):
        torch.manual_seed(0)
        m = build_model(spec)
        (rec,) = fit(m, digits, TrainConfig(epochs=1, batch_size=n, optimizer="sgd", momentum=0.0, lr=lr,
                                            scheduler="none", clip_grad_norm=clip))
        assert rec["grad_norm_max"] == pytest.approx(norm, rel=1e-4) and rec["clipped_steps"] == (scale < 1)
        for p, p0, g in zip(m.parameters(), params0, grads):
            assert torch.allclose(p, p0 - lr * scale * g, atol=1e-6, rtol=1e-4)


def test_clip_grad_norm_stops_on_a_nonfinite_gradient(digits):
    """sqrt at 0 has an infinite slope: the loss is finite, the gradient is not. Clipping cannot bound it; the run
    stops with one line naming the gradient (not the NaN loss it causes a few steps later)."""
    from kdexport.errors import TrainingError

    class Kinked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            self.p = nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return self.fc(x.flatten(1)) + self.p.abs().sqrt()

    with pytest.raises(TrainingError, match="gradient norm became (nan|inf) at epoch 1"):
        fit(Kinked(), digits, TrainConfig(epochs=1, clip_grad_norm=1.0))


def test_triangle_schedule_by_hand():
    # 100 steps: 0.2 at step 0, the peak at int(0.23 * 100) = 23, 0.07 at the last step
    assert [triangle(s, 100) for s in (0, 23, 100)] == pytest.approx([0.2, 1.0, 0.07])
    assert triangle(10, 100) == pytest.approx(0.2 + 0.8 * 10 / 23)
    assert triangle(50, 100) == pytest.approx(1 - 0.93 * 27 / 77)
    assert triangle(0, 3) == pytest.approx(1.0)  # too few steps for a warmup: starts at the peak


def test_triangle_drives_the_optimizer_and_keeps_the_momentum(digits):
    m = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    cfg = TrainConfig(epochs=2, batch_size=512, optimizer="sgd", lr=0.4, momentum=0.85, scheduler="triangle")
    h = fit(m, digits, cfg)
    total = 2 * -(-digits.x_train.shape[0] // 512)
    assert h[0]["lr"] == pytest.approx(0.4 * 0.2)  # each epoch records the lr it started with
    assert h[1]["lr"] == pytest.approx(0.4 * triangle(total // 2, total))


def test_lookahead_by_hand():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    la = Lookahead(m, total_steps=10)
    for t in range(1, 5):  # steps 1-4: no synchronization, the model keeps its own weights
        with torch.no_grad():
            m.weight.fill_(float(t + 1))
        la.update(m)
        assert m.weight.item() == t + 1
    with torch.no_grad():
        m.weight.fill_(6.0)
    la.update(m)  # step 5: d = 0.95^5 * (5/10)^3; average = d * 1 + (1 - d) * 6, copied into the model
    d5 = 0.95 ** 5 * 0.5 ** 3
    assert m.weight.item() == pytest.approx(d5 * 1 + (1 - d5) * 6, rel=1e-6)
    avg5 = m.weight.item()
    with torch.no_grad():
        m.weight.fill_(10.0)
    for _ in range(4):
        la.update(m)  # steps 6-9
    assert m.weight.item() == 10.0
    la.update(m)  # step 10 = total: d = 0.95^5, and the model ends as the average
    d10 = 0.95 ** 5
    assert m.weight.item() == pytest.approx(d10 * avg5 + (1 - d10) * 10, rel=1e-6)


def test_lookahead_averages_batchnorm_statistics_and_not_counters():
    m = nn.BatchNorm1d(2)
    la = Lookahead(m, total_steps=5)
    with torch.no_grad():
        m.running_mean.fill_(4.0)
    m.num_batches_tracked += 7
    for _ in range(5):
        la.update(m)
    d = 0.95 ** 5
    assert m.running_mean.tolist() == pytest.approx([(1 - d) * 4.0] * 2)
    assert int(m.num_batches_tracked) == 7


def test_lookahead_resumes_bit_for_bit(digits, tmp_path, dies_in_epoch):
    cfg = TrainConfig(epochs=3, batch_size=256, optimizer="sgd", lr=0.2, momentum=0.85, scheduler="triangle",
                      lookahead=True, seed=0)
    torch.manual_seed(0)
    full = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    fit(full, digits, cfg)
    dies_in_epoch(3)
    torch.manual_seed(0)
    part = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    with pytest.raises(KeyboardInterrupt):
        fit(part, digits, cfg, state_path=tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["lookahead"]["updates"] > 0
    dies_in_epoch(None)
    torch.manual_seed(0)
    again = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    fit(again, digits, cfg, state_path=tmp_path / "s.pt", resume=True)
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), again.parameters()))
    torch.manual_seed(0)
    plain = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    fit(plain, digits, TrainConfig(**{**cfg.__dict__, "lookahead": False}))
    assert not all(torch.equal(p, q) for p, q in zip(full.parameters(), plain.parameters()))


def test_lookahead_and_ema_are_refused_together():
    with pytest.raises(ConfigError, match="choose one"):
        TrainConfig(lookahead=True, ema=0.9)
    with pytest.raises(ConfigError, match="unknown scheduler"):
        TrainConfig(scheduler="triangular")
