"""Every committed recipe is a valid config (a typo in a hyperparameter file fails here, not after an hour)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_recipe import load_recipe, recipe_config  # noqa: E402

RECIPE_DIR = ROOT / "benchmarks" / "recipes"
RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid(name):
    r = load_recipe(name)
    assert r.kind in ("distill", "sweep", "teacher") and r.doc
    for seed in r.seeds if r.kind != "sweep" else (None,):
        cfg, grid = recipe_config(r, None, "/tmp/unused", seed=seed)
        if r.kind == "sweep":
            assert grid.kd_configs() and r.workdir.startswith("runs/")
        else:
            assert cfg.train.seed == seed
        if r.kind == "teacher":  # trained here, written to its workdir
            assert r.workdir.startswith("runs/") and not (cfg.teacher_checkpoint or cfg.teacher_weights)
        assert cfg.dataset in ("digits", "mnist", "cifar10")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_a_config_file_the_cli_reads(name):
    """``kdexport distill-export --config RECIPE`` (``sweep`` for a sweep) takes every recipe as it is."""
    from typer.testing import CliRunner

    from kdexport.cli import app

    command = "sweep" if load_recipe(name).kind == "sweep" else "distill-export"
    res = CliRunner().invoke(app, [command, "--config", str(RECIPE_DIR / f"{name}.json"), "--print-config"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["dataset"] in ("digits", "mnist", "cifar10")


def test_per_seed_runs_keep_the_names_they_were_published_under():
    from run_recipe import resolve_name

    r = load_recipe("cifar10-fast-teacher-mid-muon")
    assert r.seeds == (0, 1, 2, 3, 4)
    assert [r.result_name(s) for s in (0, 3)] == ["cifar10-fast-teacher-mid-muon", "cifar10-fast-teacher-mid-muon-s3"]
    assert r.workdir_for(3) == "runs/recipes/cifar10-fast-teacher-mid-muon-s3"
    assert resolve_name("cifar10-fast-teacher-mid-muon-s3") == ("cifar10-fast-teacher-mid-muon", 3)
    assert resolve_name("digits-default") == ("digits-default", None)
    for seed in r.seeds:  # every committed per-seed result still names a command that reruns it
        assert (ROOT / "benchmarks" / "results" / f"{r.result_name(seed)}.json").exists()


def test_results_carry_stamps():
    for p in (ROOT / "benchmarks" / "results").rglob("*.json"):  # gpu/ too
        r = json.loads(p.read_text())
        env = r["environment"]
        assert env["cpu"] and env["torch"] and r["created"], p.name


def test_result_stamp_records_the_full_command(monkeypatch):
    from kdexport.envinfo import result_stamp

    monkeypatch.setattr(sys, "argv", ["bench_x.py", "--train-images", "20000", "--out", "a b"])
    r = result_stamp("benchmarks/bench_x.py", 2)
    assert r["command"] == "python benchmarks/bench_x.py --train-images 20000 --out 'a b'"  # quoted: rerunnable
    assert r["environment"]["threads"] == 2 and r["created"]


def test_cpu_flags_name_the_features_that_decide_int8_and_bf16_speed(tmp_path):
    from kdexport.envinfo import cpu_flags

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some Xeon\n"
                    "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n")
    assert cpu_flags(str(info)) == ["amx_bf16", "amx_int8", "avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"]
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2\n")
    assert cpu_flags(str(info)) == []
    assert cpu_flags(str(tmp_path / "missing")) == []


def test_teacher_recipe_trains_saves_and_resumes(tmp_path, monkeypatch):
    """kind "teacher": the teacher alone, saved where --teacher-checkpoint can reuse it, its accuracy under every
    --teacher-tta mode (the plain one equal to the saved model's own evaluation), and an interrupted run continued
    from its per-epoch state to the same weights."""
    import torch
    from run_recipe import teacher_markdown

    from kdexport.config import RunConfig, TrainConfig
    from kdexport.distill import TTAS
    from kdexport.distill import train as train_mod
    from kdexport.errors import ConfigError
    from kdexport.models.checkpoint import load_model
    from kdexport.pipeline import teacher_only

    cfg = RunConfig(teacher="mlp:64", teacher_epochs=3, train=TrainConfig(epochs=1, eval_every=2))
    r = teacher_only(cfg, tmp_path / "a" / "teacher.pt")
    model, spec, blob = load_model(r["teacher"]["checkpoint"])
    assert spec.arch == "mlp:64" and len(blob["history"]) == 3 and not (tmp_path / "a" / "teacher.state.pt").exists()
    assert [row["tta"] for row in r["teacher"]["tta"]] == TTAS.names(sort=False)
    assert r["teacher"]["tta"][0]["accuracy"] == pytest.approx(blob["history"][-1]["test_accuracy"], abs=1e-6)
    md = teacher_markdown(r)  # --eval-every 2: epoch 1 has no test accuracy
    assert "| none |" in md and "(plain model): 2: " in md and ", 3: " in md

    real_epoch, calls = train_mod.train_epoch, []

    def dies_in_epoch_3(loop, state, epoch):
        calls.append(epoch)
        if epoch == 3 and len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(loop, state, epoch)

    monkeypatch.setattr(train_mod, "train_epoch", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        teacher_only(cfg, tmp_path / "b" / "teacher.pt")
    assert (tmp_path / "b" / "teacher.state.pt").exists()
    teacher_only(cfg, tmp_path / "b" / "teacher.pt", resume=True)
    assert calls == [1, 2, 3, 3]
    resumed, _, _ = load_model(tmp_path / "b" / "teacher.pt")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed.parameters()))
    with pytest.raises(ConfigError, match="trains its teacher"):
        teacher_only(RunConfig(teacher="mlp:64", teacher_checkpoint=r["teacher"]["checkpoint"]), tmp_path / "c.pt")


def test_teacher_target_stats_by_hand():
    """benchmarks/teacher_targets.py: uniform logits are maximally soft; a margin of 8 at T=4 leaves the true
    class e^2 / (e^2 + 9) of the mass; accuracy counts argmax hits."""
    import math

    import torch
    from teacher_targets import target_stats

    s = target_stats(torch.zeros(3, 10), torch.tensor([0, 1, 2]))
    assert s["entropy_t4"] == pytest.approx(1.0) and s["p_true_t4"] == pytest.approx(0.1)
    logits = torch.zeros(2, 10)
    logits[0, 3] = logits[1, 5] = 8.0
    s = target_stats(logits, torch.tensor([3, 4]))
    p = math.exp(2) / (math.exp(2) + 9)
    assert s["accuracy"] == 0.5
    assert s["p_true_t4"] == pytest.approx((p + 1 / (math.exp(2) + 9)) / 2, rel=1e-5)
    assert s["p_true_t1"] == pytest.approx((math.exp(8) / (math.exp(8) + 9) + 1 / (math.exp(8) + 9)) / 2, rel=1e-5)
