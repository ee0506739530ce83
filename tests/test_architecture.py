"""One source of truth per concept: option defaults live in the config dataclasses (the CLI and the
Python API build identical configs), the per-model report entry is typed but its JSON is unchanged,
runs share one config diff, and library calls leave the caller's logging alone."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import (
    BenchOptions,
    CheckOptions,
    Grid,
    PredictOptions,
    QuantConfig,
    QuantizeOptions,
    RunConfig,
    cli_fields,
    config_diff,
    from_flat,
)
from kdexport.errors import KdexportError, UnknownNameError
from kdexport.report.entry import ModelEntry, model_entries

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


class _Captured(KdexportError):
    exit_code = 3


def _capture(monkeypatch, module: str, name: str):
    """Replace a library function a command calls; record its arguments and stop the command."""
    import importlib

    seen = []

    def fake(*args, **kwargs):
        seen.append(args[0] if len(args) == 1 and not kwargs else (args, kwargs))
        raise _Captured("captured")

    monkeypatch.setattr(importlib.import_module(module), name, fake)
    return seen


def test_no_flag_distill_export_builds_the_python_api_default(monkeypatch):
    seen = _capture(monkeypatch, "kdexport.pipeline", "distill_export")
    res = runner.invoke(app, ["distill-export"])
    assert res.exit_code == 3, res.output
    (cfg,), _ = seen[0]
    assert cfg == RunConfig() and cfg.to_dict() == RunConfig().to_dict()
    assert RunConfig().train.device == "auto"  # the API's default is the CLI's, GPU machines included


def test_no_flag_sweep_builds_the_default_grid(monkeypatch):
    seen = _capture(monkeypatch, "kdexport.sweep", "run_sweep")
    res = runner.invoke(app, ["sweep"])
    assert res.exit_code == 3, res.output
    (cfg, grid), _ = seen[0]
    assert grid == Grid() and cfg == RunConfig()  # seed = the grid's first seed, 0


def test_other_commands_build_their_dataclass_defaults(monkeypatch, tmp_path):
    import kdexport.bench.command  # noqa: F401 - imported before the patch below, which must not leak into them
    import kdexport.cli as cli
    import kdexport.export.predict  # noqa: F401

    monkeypatch.setattr("kdexport.runtimes.ort.inspect_classifier", lambda p: {})
    monkeypatch.setattr(cli, "_dataset_for", lambda *a, **k: None)
    seen = _capture(monkeypatch, "kdexport.export.quantize", "quantize_onnx")
    assert runner.invoke(app, ["quantize", "m.onnx", "--out", "q.onnx"]).exit_code == 3
    want = QuantizeOptions(model="m.onnx", out="q.onnx")
    (args, kwargs), = seen
    assert args == ("m.onnx", "q.onnx", None) and callable(kwargs.pop("latency"))  # --fallback auto times steps
    assert kwargs == {"mode": want.mode, "quant": want.quant}
    assert want.quant == QuantConfig() and want.mode == "static"

    seen = _capture(monkeypatch, "kdexport.bench.command", "bench_models")
    assert runner.invoke(app, ["bench", "a.onnx", "b.onnx"]).exit_code == 3
    assert seen == [BenchOptions(models=("a.onnx", "b.onnx"))]
    assert seen[0].batch_sizes == (1, 32) and seen[0].iters == RunConfig().bench_iters

    seen = _capture(monkeypatch, "kdexport.export.predict", "predict")
    assert runner.invoke(app, ["predict", "m.onnx", "x.png"]).exit_code == 3
    want = PredictOptions(model="m.onnx", images=("x.png",))
    assert seen == [(("m.onnx", ["x.png"], want.top_k, want.overrides()), {})]
    assert want.overrides() == dict.fromkeys(("preprocess", "labels", "mean", "std", "image_size", "crop_ratio"))

    monkeypatch.setattr("kdexport.report.check.load_report", lambda p: {"path": p})
    seen = _capture(monkeypatch, "kdexport.report.check", "check_reports")
    assert runner.invoke(app, ["check", "r.json", "--baseline", "b.json"]).exit_code == 3
    gates = CheckOptions(report="r.json", baseline="b.json").gates
    assert seen == [(({"path": "r.json"}, {"path": "b.json"}, gates), {})]


def test_list_options_parse_and_repeat():
    o = from_flat(CheckOptions, {"report": "r", "baseline": "b", "models": "student, baseline",
                                 "skip": ["latency", "size"]})
    assert o.gates.models == ("student", "baseline") and o.gates.skip == ("latency", "size")
    o = from_flat(CheckOptions, {"report": "r", "baseline": "b", "skip": ["latency,size"]})
    assert o.gates.skip == ("latency", "size")
    g = from_flat(Grid, {"temperatures": "1,2.5", "scale_t2": "on,off", "seeds": "3"})
    assert g == Grid(temperatures=(1.0, 2.5), seeds=(3,), scale_t2=(True, False))
    b = from_flat(BenchOptions, {"models": ["a"], "batch_sizes": "32,1,32"})
    assert b.batch_sizes == (1, 32)


def test_every_option_name_is_unique_per_command():
    for cls, extra in ((RunConfig, ()), (QuantizeOptions, ()), (BenchOptions, ()), (CheckOptions, ())):
        names = [f.name for f in cli_fields(cls)] + [f.name for f in extra]
        assert len(names) == len(set(names)), cls.__name__


def test_run_config_round_trips_through_json():
    cfg = RunConfig(quant=QuantConfig(calibration="minmax", equalize=True), bench_warmup=3)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_calibrations_are_one_registry():
    from kdexport.export.calibration import CALIBRATIONS

    assert CALIBRATIONS.names(sort=False)[0] == QuantConfig().calibration == "median"
    with pytest.raises(UnknownNameError, match="unknown calibration 'magic'; choose one of: entropy, median"):
        QuantConfig(calibration="magic")


def _reports_with_models() -> list[Path]:
    paths = [ROOT / "models" / "digits" / "report.json"]
    for p in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        if isinstance(json.loads(p.read_text()).get("models"), dict):
            paths.append(p)
    return paths


@pytest.mark.parametrize("path", _reports_with_models(), ids=lambda p: p.name)
def test_model_entries_of_reports_written_before_the_type_round_trip_exactly(path):
    report = json.loads(path.read_text())
    for role, d in report["models"].items():
        e = ModelEntry.from_dict(d)
        assert e.to_dict() == d and list(e.to_dict()) == list(d), role  # same keys, same order
        assert e.p50(1) == d["latency_ms"]["batch_1"]["p50"]


def test_a_report_written_before_the_change_passes_check_against_itself():
    shipped = str(ROOT / "models" / "digits" / "report.json")  # committed before the report entry was typed
    res = runner.invoke(app, ["check", shipped, "--baseline", shipped, "--models", "teacher,baseline,student"])
    assert res.exit_code == 0, res.output
    assert "PASS: 9 gate(s)" in res.output


def test_model_entries_skip_a_rejected_int8_and_refuse_a_non_report():
    report = json.loads((ROOT / "models" / "digits" / "report.json").read_text())
    report["models"]["student_int8_rejected"] = {"error": "loses 3 points"}
    assert set(model_entries(report)) == {"teacher", "baseline", "student"}
    from kdexport.errors import ReportError

    with pytest.raises(ReportError, match="has no key models"):
        model_entries({"dataset": {}}, "current")


def test_config_diff_names_nested_keys():
    a = {"teacher": "mlp:64", "kd": {"temperature": 4.0, "soft_weight": 0.5}, "train": {"lr": 1e-3}}
    b = {"teacher": "mlp:64", "kd": {"temperature": 2.0, "soft_weight": 0.5}, "train": {"lr": 1e-3}, "x": 1}
    assert config_diff(a, b) == ["kd.temperature", "x"]
    assert config_diff(a, a) == []


def test_quantize_restores_the_root_logger_level(tmp_path, digits):
    import torch

    from kdexport.export.onnx import export_onnx
    from kdexport.export.quantize import quantize_onnx

    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    export_onnx(m, tmp_path / "m.onnx", digits.normalize(digits.x_test[:8]))
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", digits, mode="dynamic",
                      quant=QuantConfig(max_accuracy_drop=100))
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


def test_help_written_to_a_pipe_keeps_whole_option_names():
    res = subprocess.run([sys.executable, "-m", "kdexport", "distill-export", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0
    for flag in ("--calibration-samples", "--bench-max-seconds", "--bench-warmup", "--teacher-checkpoint"):
        assert flag in res.stdout, flag
    assert max(len(line) for line in res.stdout.splitlines()) > 80


def test_python_api_snippets_run(tmp_path, monkeypatch):
    """The Python API examples in docs/python-api.md and the README run as printed."""
    page = (ROOT / "docs" / "python-api.md").read_text()
    snippets = [b.split("\n", 1)[1] for b in page.split("```")[1::2] if b.startswith("python")]
    assert len(snippets) == 3
    readme = [b.split("\n", 1)[1] for b in (ROOT / "README.md").read_text().split("```")[1::2]
              if b.startswith("python")]
    assert readme and all(code in snippets for code in readme)  # the README shows the docs' first example, as is
    monkeypatch.chdir(tmp_path)  # the first writes runs/api
    ns: dict = {}
    for code in snippets[:2]:  # each runs on its own
        ns = {}
        exec(compile(code, "docs/python-api.md", "exec"), ns)
    assert (tmp_path / "runs" / "api" / "report.json").exists()
    assert len(ns["history"]) == 10 and ns["history"][-1]["train_kd"] > 0
    exec(compile(snippets[2], "docs/python-api.md", "exec"), ns)  # continues the second
    assert ns["label_counts"](ns["few"])["labeled"] == 143 and len(ns["history"]) == 10
    assert set(ns["report"]["labels"]["agreement_with_teacher_on_unlabeled"]) == {"baseline", "pseudo_label",
                                                                                  "student"}
