"""Every committed recipe is a valid config (a typo in a hyperparameter file fails here, not after an hour)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_recipe import load_recipe, recipe_config  # noqa: E402

from kdexport.sweep import Grid  # noqa: E402

RECIPES = sorted(p.stem for p in (ROOT / "benchmarks" / "recipes").glob("*.json"))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid(name):
    r = load_recipe(name)
    assert r["kind"] in ("distill", "sweep") and r["doc"]
    cfg = recipe_config(r, None, "/tmp/unused")
    if r["kind"] == "sweep":
        grid = Grid(**{k: tuple(v) for k, v in r["grid"].items()})
        assert grid.kd_configs() and r["workdir"].startswith("runs/")
    assert cfg.dataset in ("digits", "mnist", "cifar10")


def test_results_carry_stamps():
    for p in (ROOT / "benchmarks" / "results").glob("*.json"):
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
