import dataclasses
import json
import math

import pytest
import torch

from kdexport.config import KDConfig, RunConfig, TrainConfig, parse_floats, parse_switches
from kdexport.errors import ConfigError, OutputError
from kdexport.sweep import Grid, cell_key, mean_std, run_sweep

GRID = Grid(temperatures=(2.0, 4.0), soft_weights=(0.5,), seeds=(0, 1), scale_t2=(True, False))


def _cfg(out, **kw):
    return RunConfig(train=TrainConfig(epochs=2), teacher="mlp:64", student="mlp:14", bench_iters=3,
                     bench_batch=4, out=str(out), **kw)


def test_mean_std_arithmetic():
    m, s = mean_std([0.9, 0.8, 0.7])
    assert m == pytest.approx(0.8) and s == pytest.approx(0.1)
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([0.9, 0.8])[1] == pytest.approx(math.sqrt(0.005))


def test_grid_validation_and_parsing():
    assert [cell_key(k) for k in GRID.kd_configs()] == ["T2-b0.5-t2", "T4-b0.5-t2", "T2-b0.5-raw", "T4-b0.5-raw"]
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        Grid((0.0,), (0.5,))
    with pytest.raises(ConfigError, match="duplicates"):
        Grid((2.0, 2.0), (0.5,))
    with pytest.raises(ConfigError, match="comma-separated numbers"):
        parse_floats("3,x", "--temperature")
    assert parse_switches("on,off", "--scale-t2") == (True, False)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "s"
    return out, run_sweep(_cfg(out), GRID)


def test_sweep_bookkeeping_and_outputs(swept):
    out, r = swept
    assert set(r["cells"]) == {"T2-b0.5-t2", "T4-b0.5-t2", "T2-b0.5-raw", "T4-b0.5-raw"}
    for key, c in r["cells"].items():
        assert len(c["accuracies"]) == 2
        assert c["mean"] == pytest.approx(sum(c["accuracies"]) / 2)
        for s in (0, 1):
            rec = json.loads((out / "cells" / f"{key}-s{s}.json").read_text())
            assert rec["accuracy"] in c["accuracies"] and rec["seed"] == s
    assert len(list((out / "cells").glob("baseline-s*.json"))) == 2
    assert r["best"]["cell"] == max(r["cells"], key=lambda k: r["cells"][k]["mean"])
    best = json.loads((out / "best" / "report.json").read_text())
    assert best["config"]["kd"] == r["cells"][r["best"]["cell"]]["kd"]
    assert best["models"]["student"]["parity"]["top1_agreement"] == 1.0
    # the best cell's report carries the training seconds the sweep measured, not zeros
    cell = lambda name: json.loads((out / "cells" / f"{name}-s0.json").read_text())  # noqa: E731
    assert best["models"]["baseline"]["train_seconds"] == cell("baseline")["train_seconds"] > 0
    assert best["models"]["student"]["train_seconds"] == cell(r["best"]["cell"])["train_seconds"] > 0
    assert best["models"]["teacher"]["train_seconds"] == pytest.approx(
        sum(h["seconds"] for h in r["teacher"]["history"]))
    rows = [ln for ln in (out / "best" / "report.md").read_text().splitlines() if ln.startswith("| baseline | ")]
    assert rows and rows[0].endswith(f"| {cell('baseline')['train_seconds']:.1f} |")  # the parity table's train s
    md = (out / "sweep.md").read_text()
    assert "| beta = 0.5 |" in md and "T = 4" in md and "unscaled" in md
    assert "2 seeds (0, 1)" in md and md.count(" ± ") == 1 + 2 + 4  # legend, baseline, best cell, 4 cells
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    # every unit's per-epoch history is in sweep.json (the cells' own files hold the same)
    assert set(r["histories"]) == {f"{k}-s{s}" for k in ("baseline", *r["cells"]) for s in (0, 1)}
    assert r["histories"]["baseline-s1"] == json.loads((out / "cells" / "baseline-s1.json").read_text())["history"]
    assert "Gradient norm" not in md  # no --clip-grad-norm: no norms recorded, no table


def test_rerun_skips_finished_cells(swept, monkeypatch):
    out, first = swept
    (out / "cells" / "T4-b0.5-raw-s1.json").unlink()  # as if interrupted before this cell
    stamp = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    teacher_stamp = (out / "teacher.pt").stat().st_mtime_ns
    import kdexport.sweep as sw

    trained = []
    real = sw.train_student
    monkeypatch.setattr(sw, "train_student", lambda *a, **k: trained.append(k["label"]) or real(*a, **k))
    again = run_sweep(_cfg(out), GRID)
    assert trained == ["T4-b0.5-raw s1"]
    assert (out / "teacher.pt").stat().st_mtime_ns == teacher_stamp
    assert all((out / "cells" / n).stat().st_mtime_ns == t for n, t in stamp.items())
    assert again["cells"] == first["cells"]  # deterministic: the retrained cell matches


def test_resume_with_other_options_is_refused(swept):
    out, _ = swept
    with pytest.raises(OutputError, match="train.epochs"):
        run_sweep(RunConfig(train=TrainConfig(epochs=3), teacher="mlp:64", student="mlp:14", out=str(out)), GRID)


def test_sweep_cli(tmp_path):
    from typer.testing import CliRunner

    from kdexport.cli import app

    res = CliRunner().invoke(app, ["sweep", "-T", "3", "--soft-weight", "0.5", "--seeds", "0", "--epochs", "1",
                                   "--teacher", "mlp:32", "--bench-iters", "2", "--out", str(tmp_path / "s"),
                                   "--quantize", "qat", "--qat-epochs", "1", "--max-accuracy-drop", "100"])
    assert res.exit_code == 0, res.output
    assert "best cell T3-b0.5-t2" in " ".join(res.output.split())
    import json

    best = json.loads((tmp_path / "s" / "best" / "report.json").read_text())  # best/ ships as distill-export does
    q = best["models"]["student_int8"]["quantization"]
    assert q["mode"] == "qat" and q["qat"]["labels_only"] and q["accuracy_fp32"] == \
        best["models"]["student"]["accuracy_onnx"]
    res = CliRunner().invoke(app, ["sweep", "-T", "0,2", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "temperature must be > 0" in res.output


def test_kdconfig_roundtrip_keys():
    assert set(KDConfig().__dict__) == {"temperature", "soft_weight", "scale_t2", "soft_loss", "loss",
                                        "logit_standardization", "dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta",
                                        "dist_gamma", "mixup", "hint", "hint_weight"}
    kd = KDConfig(loss="dkd", dkd_beta=2.0, logit_standardization=True)
    assert KDConfig(**dataclasses.asdict(kd)) == kd


class _StopAt:
    """A reporter that interrupts training of ``label`` when epoch ``epoch`` ends (before its state is saved)."""

    def __init__(self, label: str, epoch: int):
        self.stop, self.at, self.label = label, epoch, ""

    def start(self, label, total_steps):
        self.label = label

    def step_n(self, n, metrics):
        pass

    def epoch(self, record):
        if self.label == self.stop and record["epoch"] == self.at:
            raise KeyboardInterrupt

    def finish(self):
        pass


def test_interrupted_teacher_and_unit_continue_from_their_last_epoch(swept, tmp_path):
    _, first = swept
    out = tmp_path / "s"  # the baselines are trained (and interrupted), not taken from the cache the fixture filled
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_cfg(out, baseline_cache=False), GRID, reporter=_StopAt("teacher", 2))
    saved = json.dumps(torch.load(out / "teacher.state.pt", weights_only=True)["history"])
    assert json.loads(saved)[0]["epoch"] == 1 and not (out / "teacher.pt").exists()
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_cfg(out, baseline_cache=False), GRID, reporter=_StopAt("baseline s1", 2))
    teacher_hist = torch.load(out / "teacher.pt", weights_only=True)["history"]
    assert json.dumps(teacher_hist[:1]) == saved  # epoch 1 came from the saved state, not retrained
    assert (out / "cells" / "baseline-s1.state.pt").exists() and not (out / "teacher.state.pt").exists()
    again = run_sweep(_cfg(out, baseline_cache=False), GRID)
    assert again["teacher"]["accuracy"] == first["teacher"]["accuracy"]
    assert again["cells"] == first["cells"] and again["baseline"] == first["baseline"]
    assert not list(out.rglob("*.state.pt"))


def test_a_sweep_with_teacher_tta_says_so(tmp_path, swept):
    r = run_sweep(_cfg(tmp_path / "s", teacher_tta="flip"), Grid((4.0,), (0.5,), seeds=(0,)))
    assert r["teacher"]["tta"] == "flip" and swept[1]["teacher"]["tta"] == "none"
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert f"Teacher (mlp:64): {r['teacher']['accuracy'] * 100:.2f}% with `--teacher-tta flip`" in md
    assert "--teacher-tta" not in (swept[0] / "sweep.md").read_text()
    best = json.loads((tmp_path / "s" / "best" / "report.json").read_text())  # the exported teacher is the plain net
    assert best["teacher_tta"] == {"mode": "flip", "accuracy": r["teacher"]["accuracy"]}
    assert "with `--teacher-tta flip`" in (tmp_path / "s" / "best" / "report.md").read_text()


def test_sweep_grids_over_the_loss(tmp_path):
    grid = Grid(temperatures=(4.0,), soft_weights=(0.5,), seeds=(0,), scale_t2=(True, False),
                losses=("kd", "dkd", "dist"))
    keys = [cell_key(k) for k in grid.kd_configs(KDConfig(dkd_warmup=0))]
    assert keys == ["T4-b0.5-t2", "T4-b0.5-raw", "T4-b0.5-t2-dkd", "T4-b0.5-t2-dist"]
    assert all(k.dkd_warmup == 0 for k in grid.kd_configs(KDConfig(dkd_warmup=0)))  # the run's other KD options
    r = run_sweep(_cfg(tmp_path / "s", kd=KDConfig(dkd_warmup=0)), dataclasses.replace(grid, scale_t2=(True,)))
    assert set(r["cells"]) == {"T4-b0.5-t2", "T4-b0.5-t2-dkd", "T4-b0.5-t2-dist"}
    assert r["cells"]["T4-b0.5-t2-dkd"]["kd"]["loss"] == "dkd"
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "### Soft loss dkd" in md and "### Soft loss dist" in md and "### Soft loss kd, x T^2" in md
    assert "one seed (0)" in md and "±" not in md  # one run per cell: no spread to show
    from kdexport.errors import OutputError as OE

    with pytest.raises(OE, match="kd.dkd_warmup"):  # another DKD setting is another sweep
        run_sweep(_cfg(tmp_path / "s", kd=KDConfig(dkd_warmup=5)), grid)


def test_ensemble_teacher_interrupted_in_its_second_member_continues_there(tmp_path):
    grid = Grid(temperatures=(4.0,), soft_weights=(0.5,), seeds=(0,), scale_t2=(True,))
    out, ref = tmp_path / "s", tmp_path / "ref"
    cfg = dataclasses.replace(_cfg(out), teacher="ensemble:2xmlp:64")
    first = run_sweep(dataclasses.replace(cfg, out=str(ref)), grid)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, grid, reporter=_StopAt("teacher 2/2", 2))
    assert (out / "teacher.state-member1.pt").exists() and (out / "teacher.state-member2.pt").exists()
    again = run_sweep(cfg, grid)
    assert [(h["member"], h["epoch"]) for h in again["teacher"]["history"]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert again["teacher"]["accuracy"] == first["teacher"]["accuracy"]  # bit for bit on the CPU
    assert again["cells"] == first["cells"]
    assert not list(out.rglob("*.state*.pt"))  # the members' states went with the finished teacher


def test_clipped_sweep_tabulates_each_units_gradient_norms(tmp_path, digits):
    """--clip-grad-norm far below any gradient: every step of every unit is clipped, and sweep.md says so per unit
    with the norms before clipping."""
    steps = math.ceil(digits.x_train.shape[0] / 64) * 2  # batch 64, 2 epochs
    grid = Grid(temperatures=(4.0,), soft_weights=(0.5,), seeds=(0,))
    cfg = _cfg(tmp_path / "s")
    r = run_sweep(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, clip_grad_norm=1e-4)), grid)
    md = (tmp_path / "s" / "sweep.md").read_text()
    assert "### Gradient norm before clipping (--clip-grad-norm 0.0001)" in md
    for unit in ("baseline-s0", "T4-b0.5-t2-s0"):
        hist = r["histories"][unit]
        assert sum(h["clipped_steps"] for h in hist) == steps and min(h["grad_norm_median"] for h in hist) > 1e-4
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| {unit} |"))
        assert row.endswith(f"| {steps} |")


@pytest.mark.slow  # four whole sweeps: an end-to-end run (CI's slow stage)
def test_baselines_are_reused_across_sweeps_and_only_with_the_same_key(tmp_path, monkeypatch):
    import kdexport.sweep as sw
    from kdexport.models.checkpoint import load_model

    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(tmp_path / "cache"))
    grid = Grid(temperatures=(4.0,), soft_weights=(0.5,), seeds=(0, 1))
    first = run_sweep(_cfg(tmp_path / "a"), grid)
    assert len(list((tmp_path / "cache" / "baselines").glob("*/record.json"))) == 2  # one per seed
    trained = []
    real = sw.train_student
    monkeypatch.setattr(sw, "train_student", lambda *a, **k: trained.append(k["label"]) or real(*a, **k))
    other_teacher = run_sweep(dataclasses.replace(_cfg(tmp_path / "b"), teacher="mlp:32"), grid)
    assert trained == ["T4-b0.5-t2 s0", "T4-b0.5-t2 s1"]  # the baselines came from the cache
    assert other_teacher["baseline"] == first["baseline"]
    rec = json.loads((tmp_path / "b" / "cells" / "baseline-s0.json").read_text())
    assert "baselines" in rec["reused"]
    a, _, _ = load_model(tmp_path / "a" / "cells" / "baseline-s0.pt")
    b, _, _ = load_model(tmp_path / "b" / "cells" / "baseline-s0.pt")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    trained.clear()  # another training option is another key: trained (and then cached too)
    run_sweep(dataclasses.replace(_cfg(tmp_path / "c"), train=TrainConfig(epochs=2, lr=1e-3)), grid)
    assert trained.count("baseline s0") == trained.count("baseline s1") == 1
    trained.clear()  # --no-baseline-cache: trained although the cache holds it
    run_sweep(dataclasses.replace(_cfg(tmp_path / "d", baseline_cache=False), teacher="mlp:32"), grid)
    assert "baseline s0" in trained and len(list((tmp_path / "cache" / "baselines").glob("*"))) == 4


def test_baseline_key_covers_what_training_depends_on(monkeypatch):
    import kdexport.distill.students as students
    from kdexport.distill.students import baseline_key
    from kdexport.pipeline import prepare

    cfg = _cfg("unused")
    ctx = prepare(cfg)
    key = baseline_key(ctx, 0)
    assert key == baseline_key(prepare(dataclasses.replace(cfg, teacher="mlp:32")), 0)  # not the teacher
    assert key != baseline_key(ctx, 1)
    assert key != baseline_key(prepare(dataclasses.replace(cfg, student="mlp:16")), 0)
    assert key != baseline_key(prepare(dataclasses.replace(cfg, augment="shift2")), 0)
    monkeypatch.setattr(students, "code_fingerprint", lambda: "other code")
    assert key != baseline_key(ctx, 0)


@pytest.mark.slow  # three runs and a sweep: an end-to-end run (CI's slow stage)
def test_distill_export_shares_the_baseline_cache_and_says_so(tmp_path, monkeypatch):
    import kdexport.pipeline as pipeline
    import kdexport.sweep as sw
    from kdexport.models.checkpoint import load_model

    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(tmp_path / "cache"))
    first = pipeline.distill_export(_cfg(tmp_path / "a"))
    assert "baseline_reused" not in first
    assert len(list((tmp_path / "cache" / "baselines").glob("*/record.json"))) == 1
    trained = []
    real = pipeline.train_student
    monkeypatch.setattr(pipeline, "train_student", lambda *a, **k: trained.append(k["label"]) or real(*a, **k))
    again = pipeline.distill_export(dataclasses.replace(_cfg(tmp_path / "b"), teacher="mlp:32"))
    assert trained == ["student"]  # another teacher, the same baseline: taken from the cache
    assert "baselines" in again["baseline_reused"]
    assert "reused from the baseline cache" in (tmp_path / "b" / "report.md").read_text()
    for key in ("accuracy_torch", "accuracy_onnx", "train_seconds", "history"):
        assert again["models"]["baseline"][key] == first["models"]["baseline"][key]
    a, _, _ = load_model(tmp_path / "a" / "checkpoints" / "baseline.pt")
    b, _, _ = load_model(tmp_path / "b" / "checkpoints" / "baseline.pt")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    swept = []  # a sweep with the same student, options and seed takes distill-export's baseline too
    monkeypatch.setattr(sw, "train_student", lambda *a, **k: swept.append(k["label"]) or real(*a, **k))
    r = run_sweep(_cfg(tmp_path / "s"), Grid(temperatures=(4.0,), soft_weights=(0.5,), seeds=(0,)))
    assert swept == ["T4-b0.5-t2 s0"] and r["baseline"]["mean"] == first["models"]["baseline"]["accuracy_torch"]
    trained.clear()  # --no-baseline-cache trains it
    off = pipeline.distill_export(dataclasses.replace(_cfg(tmp_path / "c", baseline_cache=False), teacher="mlp:32"))
    assert trained == ["baseline", "student"] and "baseline_reused" not in off


def test_a_unit_is_evaluated_on_the_training_device(tmp_path, monkeypatch):
    """fit leaves a model on its training device (CUDA on a GPU machine): the unit's evaluation must run there
    (the GPU run's first smoke test failed here: CPU inputs into a CUDA model); save_checkpoint moves to the CPU."""
    import types

    from kdexport import sweep

    seen = {}
    model = torch.nn.Linear(3, 2)
    monkeypatch.setattr(sweep, "train_student", lambda ctx, **kw: (model, [{"epoch": 1, "seconds": 0.5}]))
    monkeypatch.setattr(sweep, "evaluate", lambda m, data, split, **kw: seen.update(kw) or {"accuracy": 0.75})
    monkeypatch.setattr(sweep, "save_checkpoint", lambda path, m, *a, **kw: seen.update(saved=m))
    ctx = types.SimpleNamespace(device=torch.device("meta"), data=None, cfg=RunConfig(), student_spec=None)
    (tmp_path / "cells").mkdir()
    monkeypatch.setattr(sweep, "Distillation", lambda source, kd: None)
    rec = sweep._unit(tmp_path, ctx, sweep.Unit("T4-b0.9-t2", 0, KDConfig()), lambda: None, None, True)
    assert seen["device"] == torch.device("meta") and seen["saved"] is model and rec["accuracy"] == 0.75
