"""Every distillation loss by value on tiny logits, and the invariants each method's paper states."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdexport.config import KDConfig
from kdexport.distill.losses import LOSSES, kd_loss, soft_term, soft_term_scale, standardize
from kdexport.distill.losses.dist import inter_intra, pearson
from kdexport.distill.losses.dkd import tckd_nckd
from kdexport.distill.losses.hinton import soft_kl
from kdexport.errors import ConfigError, UnknownNameError


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_kd_hand_computed_value():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    T, beta = 2.0, 0.25
    pt = _softmax([0.0, 0.5])
    ps = _softmax([0.5, 0.0])
    kl = _kl(pt, ps)
    ce = -math.log(math.exp(1) / (math.exp(1) + 1))
    out = kd_loss(s, t, y, KDConfig(temperature=T, soft_weight=beta, scale_t2=True))
    assert out["kd"].item() == pytest.approx(kl * T * T, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx((1 - beta) * ce + beta * kl * T * T, rel=1e-5)


def test_kd_term_zero_when_logits_match():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    out = kd_loss(logits, logits.clone(), y, KDConfig(temperature=5.0, soft_weight=0.7))
    assert out["kd"].abs().item() < 1e-6
    assert out["loss"].item() == pytest.approx(0.3 * F.cross_entropy(logits, y).item(), rel=1e-5)


def test_t2_scaling_multiplies_soft_term_by_t_squared():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    for T in (1.0, 3.0, 10.0):
        on = kd_loss(s, t, y, KDConfig(temperature=T, soft_weight=1.0, scale_t2=True))
        off = kd_loss(s, t, y, KDConfig(temperature=T, soft_weight=1.0, scale_t2=False))
        assert on["loss"].item() == pytest.approx(off["loss"].item() * T * T, rel=1e-5)
        assert off["loss"].item() == pytest.approx(soft_kl(s, t, T).item(), rel=1e-6)


def test_beta_zero_is_plain_ce_and_no_teacher_is_plain_ce():
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = F.cross_entropy(s, y).item()
    for loss in LOSSES.names():
        assert kd_loss(s, t, y, KDConfig(soft_weight=0.0, loss=loss))["loss"].item() == pytest.approx(ce)
        assert kd_loss(s, None, y, KDConfig(soft_weight=0.9, loss=loss))["loss"].item() == pytest.approx(ce)


def test_kd_gradient_pulls_student_towards_teacher():
    s = torch.zeros(1, 3, requires_grad=True)
    t = torch.tensor([[3.0, 0.0, 0.0]])
    kd_loss(s, t, torch.tensor([1]), KDConfig(temperature=2.0, soft_weight=1.0))["loss"].backward()
    assert s.grad[0, 0] < 0  # descending increases the teacher's favourite class


def test_mse_soft_loss_and_unknown_names():
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.randint(0, 4, (3,))
    out = kd_loss(s, t, y, KDConfig(temperature=2.0, soft_weight=1.0, scale_t2=False, soft_loss="mse"))
    assert out["loss"].item() == pytest.approx(F.mse_loss(s / 2, t / 2).item(), rel=1e-6)
    with pytest.raises(UnknownNameError, match="kl, mse"):
        KDConfig(soft_loss="nope")
    with pytest.raises(UnknownNameError, match="unknown distillation loss 'crd'; choose one of: dist, dkd, kd"):
        KDConfig(loss="crd")
    with pytest.raises(ConfigError, match="dkd beta must be a number >= 0"):
        KDConfig(dkd_beta=-1.0)


# -- DKD -------------------------------------------------------------------------------------------

def test_dkd_hand_computed_value():
    """Three classes, target 0, T = 1: TCKD on (p0, 1 - p0), NCKD on classes 1 and 2 renormalized."""
    s, t, y = torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[2.0, 1.0, -1.0]]), torch.tensor([0])
    ps, pt = _softmax([1.0, 0.0, 0.5]), _softmax([2.0, 1.0, -1.0])
    tckd = _kl([pt[0], 1 - pt[0]], [ps[0], 1 - ps[0]])
    nckd = _kl(_softmax([1.0, -1.0]), _softmax([0.0, 0.5]))
    cfg = KDConfig(loss="dkd", temperature=1.0, dkd_alpha=1.0, dkd_beta=8.0, dkd_warmup=0)
    assert soft_term(s, t, y, cfg).item() == pytest.approx(tckd + 8.0 * nckd, rel=1e-5)
    half = KDConfig(loss="dkd", temperature=1.0, dkd_warmup=4)
    assert soft_term(s, t, y, half, epoch=2.0).item() == pytest.approx(0.5 * (tckd + 8.0 * nckd), rel=1e-5)


def test_dkd_decomposes_kd_exactly():
    """The paper's identity, per sample: KD = TCKD + (1 - p_t) * NCKD."""
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 7), 3 * torch.randn(16, 7), torch.randint(0, 7, (16,))
    for T in (1.0, 4.0):
        tckd, nckd, p_target = tckd_nckd(s, t, y, T)
        per_sample_kd = torch.stack([soft_kl(s[i:i + 1], t[i:i + 1], T) for i in range(16)])
        torch.testing.assert_close(tckd + (1 - p_target) * nckd, per_sample_kd, rtol=1e-4, atol=1e-6)


def test_dkd_zero_when_student_equals_teacher():
    z, y = torch.randn(5, 6), torch.randint(0, 6, (5,))
    assert abs(soft_term(z, z.clone(), y, KDConfig(loss="dkd", dkd_warmup=0)).item()) < 1e-5


# -- DIST ------------------------------------------------------------------------------------------

def test_dist_hand_computed_value():
    s, t = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    ys = torch.softmax(s, 1)
    yt = torch.softmax(t, 1)

    def rho(a, b):
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    inter = 1 - (rho(ys[0], yt[0]) + rho(ys[1], yt[1])) / 2
    intra = 1 - (rho(ys[:, 0], yt[:, 0]) + rho(ys[:, 1], yt[:, 1])) / 2
    got_inter, got_intra = inter_intra(s, t, 1.0)
    assert got_inter.item() == pytest.approx(inter, abs=1e-6) and got_intra.item() == pytest.approx(intra, abs=1e-6)
    cfg = KDConfig(loss="dist", temperature=1.0, dist_beta=2.0, dist_gamma=0.5)
    assert soft_term(s, t, torch.tensor([1, 0]), cfg).item() == pytest.approx(2 * inter + 0.5 * intra, abs=1e-6)


def test_dist_zero_when_probabilities_are_perfectly_correlated():
    torch.manual_seed(1)
    t, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    shifted = t + torch.randn(8, 1)  # a per-sample shift leaves the probabilities unchanged
    assert abs(soft_term(shifted, t, y, KDConfig(loss="dist")).item()) < 1e-4  # T^2 = 16 times float noise
    assert pearson(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 6.0]])).item() == pytest.approx(1.0)


# -- logit standardization ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["kd", "dkd", "dist"])
def test_standardized_losses_ignore_shift_and_positive_scale(loss):
    torch.manual_seed(2)
    s, t, y = torch.randn(6, 5), torch.randn(6, 5), torch.randint(0, 5, (6,))
    cfg = KDConfig(loss=loss, logit_standardization=True, dkd_warmup=0)
    base = soft_term(s, t, y, cfg).item()
    assert soft_term(3.0 * s + 7.0, t, y, cfg).item() == pytest.approx(base, rel=1e-4)
    assert soft_term(s, 0.2 * t - 4.0, y, cfg).item() == pytest.approx(base, rel=1e-4)
    assert soft_term(3.0 * s, t, y, KDConfig(loss=loss, dkd_warmup=0)).item() != pytest.approx(
        soft_term(s, t, y, KDConfig(loss=loss, dkd_warmup=0)).item(), rel=1e-3)  # without it, scale matters


def test_standardize_is_a_per_sample_z_score():
    z = torch.tensor([[1.0, 2.0, 3.0]])
    torch.testing.assert_close(standardize(z), torch.tensor([[-1.0, 0.0, 1.0]]), rtol=1e-5, atol=1e-5)


def test_soft_term_scales_are_measured_and_ordered():
    """How loud each method is against CE at initialization (documented in README): DKD's NCKD weight of
    8 makes it several times KD's; DIST's correlations are steep around near-uniform predictions."""
    kd, dkd, dist = (soft_term_scale(KDConfig(loss=m)) for m in ("kd", "dkd", "dist"))
    assert 0.5 < kd < 3 and dkd > 4 * kd and dist > dkd


# -- FitNets hint ------------------------------------------------------------------------------------

def test_hint_connector_trains_with_the_student_and_never_reaches_the_onnx_file(tmp_path, digits):
    import onnx

    from kdexport.config import RunConfig, TrainConfig
    from kdexport.pipeline import distill_export

    common = dict(train=TrainConfig(epochs=2), teacher="mlp:64", student="mlp:32", bench_iters=3, bench_batch=4)
    plain = distill_export(RunConfig(out=str(tmp_path / "plain"), **common))
    hinted = distill_export(RunConfig(out=str(tmp_path / "hint"), kd=KDConfig(hint="teacher.net.1:student.net.1",
                                                                              hint_weight=2.0), **common))
    assert hinted["config"]["kd"]["hint"] == "teacher.net.1:student.net.1"
    assert hinted["models"]["student"]["history"][0]["train_kd"] > plain["models"]["student"]["history"][0][
        "train_kd"]  # the hint term is in the loss
    assert hinted["models"]["student"]["accuracy_onnx"] != plain["models"]["student"]["accuracy_onnx"]
    # the exported student is exactly the architecture: same nodes, same parameter count, parity held
    g_plain = onnx.load(str(tmp_path / "plain" / "onnx" / "student.onnx")).graph
    g_hint = onnx.load(str(tmp_path / "hint" / "onnx" / "student.onnx")).graph
    assert [n.op_type for n in g_hint.node] == [n.op_type for n in g_plain.node]
    assert hinted["models"]["student"]["params"] == plain["models"]["student"]["params"]
    assert hinted["models"]["student"]["parity"]["top1_agreement"] == 1.0


def test_hint_connector_shapes_and_clear_errors():
    from kdexport.distill.hint import Connector, Hint, parse_hint

    assert parse_hint("teacher.layer3:student.features.4") == ("layer3", "features.4")
    with pytest.raises(ConfigError, match="teacher.LAYER:student.LAYER"):
        KDConfig(hint="layer3:layer2")
    c = Connector(torch.Size([2, 8, 16, 16]), torch.Size([2, 32, 8, 8]))
    assert c(torch.randn(2, 8, 16, 16)).shape == (2, 32, 8, 8)
    t = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    s = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.ReLU(), torch.nn.Linear(4, 10))
    with pytest.raises(ConfigError, match="the student has no module 'nope'"):
        Hint("teacher.1:student.nope", t, s, (1, 8, 8), 1.0)
    h = Hint("teacher.1:student.1", t, s, (1, 8, 8), 1.0)
    x = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        t(x)
    s(x)
    h.term().backward()  # the teacher's inference-mode feature is a constant target
    assert h.connector.proj.weight.grad is not None and s[1].weight.grad is not None
    h.close()
    s(x)
    assert h._s.value is None  # hooks removed


def test_hint_needs_a_pytorch_teacher():
    from kdexport.config import RunConfig

    with pytest.raises(ConfigError, match="--hint needs a PyTorch teacher"):
        RunConfig(teacher="their_model.onnx", kd=KDConfig(hint="teacher.layer1:student.layer1"))


def test_hint_on_an_ensemble_student_is_refused():
    """An ensemble's members train in turn and the hint's hooks close after the first: refused, not half-applied."""
    from kdexport.config import RunConfig

    hint = KDConfig(hint="teacher.net.1:student.members.0.net.1")
    with pytest.raises(ConfigError, match="--hint on an ensemble student"):
        RunConfig(student="ensemble:2xmlp:16", kd=hint)
    RunConfig(student="ensemble:2xmlp:16")  # without a hint it trains
    RunConfig(teacher="ensemble:2xmlp:64", kd=KDConfig(hint="teacher.members.0.net.1:student.net.1"))


def test_label_smoothing_smooths_only_the_labels_term():
    import math

    import torch

    from kdexport.config import KDConfig, TrainConfig
    from kdexport.distill.losses import kd_loss
    from kdexport.errors import ConfigError

    s = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([0])
    p0, p1 = math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)
    # eps = 0.1 over K = 2 classes: targets (0.95, 0.05)
    out = kd_loss(s, None, y, label_smoothing=0.1)
    assert float(out["loss"]) == pytest.approx(-(0.95 * math.log(p0) + 0.05 * math.log(p1)), rel=1e-6)
    t = torch.tensor([[0.0, 1.0]])
    kd = KDConfig(temperature=1.0, soft_weight=0.5, scale_t2=False)
    plain, smoothed = kd_loss(s, t, y, kd), kd_loss(s, t, y, kd, label_smoothing=0.1)
    assert float(smoothed["kd"]) == pytest.approx(float(plain["kd"]))  # the teacher's term is untouched
    assert float(smoothed["loss"] - plain["loss"]) == pytest.approx(0.5 * float(smoothed["ce"] - plain["ce"]))
    with pytest.raises(ConfigError, match="label smoothing"):
        TrainConfig(label_smoothing=1.0)
