"""``--targets`` (issue 44): the distilled student shipped for another runtime (OpenVINO here), each file proven
(parity, accuracy in its own runtime, INT8 gated), timed beside the others; ``bench`` and ``predict`` run any
runtime's file; a missing extra, an unknown target and a broken file are one line each."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import GateConfig, QuantConfig
from kdexport.export.targets import TargetFile, TargetJob, gate_int8, prove_fp32
from kdexport.report.check import check_reports
from kdexport.report.write import runtime_lines

from .conftest import FAST

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def targeted(tmp_path_factory):
    out = tmp_path_factory.mktemp("targets") / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--quantize", "dynamic",
                                   "--max-accuracy-drop", "100", "--targets", "onnx,openvino", "--threads", "2"])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "report.json").read_text()), res.output


def test_the_student_ships_for_openvino_proven_and_timed_beside_onnx(targeted):
    out, report, output = targeted
    rows = {(r["target"], r["precision"]): r for r in report["runtimes"]["rows"]}
    assert list(rows) == [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "int8")]
    fp32, onnx32 = rows["openvino", "fp32"], rows["onnx", "fp32"]
    assert fp32["path"] == "openvino/student.xml" and (out / "openvino" / "student.bin").is_file()
    assert fp32["error"] is None and fp32["parity"]["max_abs_diff"] <= fp32["parity"]["tolerance"]
    assert fp32["parity"]["top1_agreement"] >= 0.99 and fp32["runtime"] == "openvino" and fp32["runtime_version"]
    assert abs(fp32["accuracy"] - onnx32["accuracy"]) <= 1 / report["dataset"]["test_size"]  # its own runtime
    assert fp32["bytes"] == sum((out / "openvino" / f).stat().st_size for f in ("student.xml", "student.bin"))
    for row in rows.values():  # every kept file timed in the report's rounds, with its spread
        lat = row["latency_ms"]["batch_1"]
        assert lat["spread"][0] <= lat["p50"] <= lat["spread"][1] and lat["rounds"] == report["timing"]["rounds"]
    assert rows["openvino", "int8"]["extra"]["speedup_vs_onnx_fp32_batch_1"]["median"] > 0
    for row in rows.values():  # a second set of rounds on one thread, as a phone app may run
        one = row["extra"]["latency_ms_1_thread"]
        assert one["spread"][0] <= one["p50"] <= one["spread"][1] and one is not row["latency_ms"]["batch_1"]
    assert report["runtimes"]["fastest"] in {f"{t} {p}" for t, p in rows}
    md = (out / "report.md").read_text()
    assert "## The distilled student on each runtime" in md and "| openvino | fp32 | openvino/student.xml |" in md
    assert "openvino " + fp32["runtime_version"] in md
    assert "student: exporting for openvino" in output and "on 1 thread at batch 1" in output
    assert "| p50 ms @1, 1 thread |" in md


def test_the_ir_carries_the_onnx_files_metadata(targeted):
    from kdexport.runtimes.base import inspect

    out, _, _ = targeted
    ir, onnx_file = inspect(out / "openvino" / "student.xml"), inspect(out / "onnx" / "student.onnx")
    for key in ("class_names", "mean", "std", "input_shape", "preprocess", "arch"):
        assert ir["metadata"][key] == onnx_file["metadata"][key], key
    assert ir["input_shape"] == onnx_file["input_shape"] and ir["num_classes"] == onnx_file["num_classes"]
    assert inspect(out / "openvino" / "student.int8.xml")["metadata"]["quantization"]["tool"] == "nncf"


def test_bench_and_predict_run_the_ir_as_they_run_the_onnx_file(targeted, tmp_path):
    from PIL import Image

    out, report, _ = targeted
    res = CliRunner().invoke(app, ["bench", str(out / "onnx" / "student.onnx"), str(out / "openvino" / "student.xml"),
                                   "--iters", "10", "--batch-sizes", "1", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [(m["runtime"], n) for n, m in b["models"].items()] == [("onnxruntime", "student"),
                                                                  ("openvino", "student.xml")]
    assert b["models"]["student.xml"]["accuracy_onnx"] == pytest.approx(report["runtimes"]["rows"][2]["accuracy"])
    assert "[min, max]" in res.output  # printed as text, not eaten as markup
    img = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)).save(img)
    answers = [CliRunner().invoke(app, ["predict", str(out / f), str(img), "--json"])
               for f in ("onnx/student.onnx", "openvino/student.xml")]
    assert all(a.exit_code == 0 for a in answers), [a.output for a in answers]
    tops = [json.loads(a.output)[0]["top"] for a in answers]
    assert [t["index"] for t in tops[0]] == [t["index"] for t in tops[1]]
    assert [t["probability"] for t in tops[0]] == pytest.approx([t["probability"] for t in tops[1]], abs=1e-5)


def test_broken_irs_are_one_line_exit_2(targeted, tmp_path):
    out, _, _ = targeted
    garbage = tmp_path / "garbage.xml"
    garbage.write_text("hello")
    garbage.with_suffix(".bin").write_bytes(b"\0")
    lonely = tmp_path / "lonely.xml"
    shutil.copy(out / "openvino" / "student.xml", lonely)
    cut = tmp_path / "cut.xml"
    shutil.copy(out / "openvino" / "student.xml", cut)
    cut.with_suffix(".bin").write_bytes((out / "openvino" / "student.bin").read_bytes()[:100])
    for path, message in ((garbage, "is not a valid OpenVINO IR"), (lonely, "with NAME.bin beside it"),
                          (cut, "")):
        for cmd in (["bench", str(path), "--iters", "2", "--out", str(tmp_path / "b")],
                    ["predict", str(path), str(path)]):
            res = CliRunner().invoke(app, cmd)
            assert res.exit_code == 2, (cmd, res.output)
            assert message in res.output and "Traceback" not in res.output and len(res.output.splitlines()) == 1


def test_a_missing_runtime_is_one_line_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    res = CliRunner().invoke(app, ["distill-export", "--out", str(tmp_path / "r"), *FAST, "--targets", "openvino"])
    assert res.exit_code == 2 and "pip install 'kdexport[openvino]'" in res.output
    assert "epoch" not in res.output and not (tmp_path / "r").exists()
    res = CliRunner().invoke(app, ["distill-export", "--out", str(tmp_path / "r"), *FAST, "--targets", "tflite2"])
    assert res.exit_code == 2 and "unknown target 'tflite2'" in res.output.lower() and "openvino" in res.output


def _job(model, x, acc=0.9, drop=1.0) -> TargetJob:
    return TargetJob(model, None, None, "student", x, None, {}, acc, True, QuantConfig(max_accuracy_drop=drop),
                     1e-4, None, 1)


def test_a_file_off_by_more_than_the_tolerance_is_not_kept(targeted):
    out, _, _ = targeted
    from kdexport.models.checkpoint import load_model

    model = load_model(out / "checkpoints" / "student.pt")[0].eval()
    x = torch.randn(64, 1, 8, 8)
    parity, error = prove_fp32(_job(model, x), out / "openvino" / "student.xml")
    assert error is None and parity["max_abs_diff"] <= parity["tolerance"]

    class Shifted(torch.nn.Module):  # the same logits, one class pushed: the file no longer matches it
        def forward(self, inp):
            y = model(inp).clone()
            y[:, 0] += 5.0
            return y

    parity, error = prove_fp32(_job(Shifted(), x), out / "openvino" / "student.xml")
    assert parity["max_abs_diff"] == pytest.approx(5.0, abs=1e-3) and "parity failed" in error and "not kept" in error


def test_int8_is_gated_against_the_fp32_onnx_file_by_hand():
    job = _job(None, None, acc=0.90, drop=1.0)
    assert gate_int8(job, 0.895) == (pytest.approx(0.5), None)
    drop, error = gate_int8(job, 0.885)
    assert drop == pytest.approx(1.5) and "loses 1.50 points" in error and "90.00% -> 88.50%" in error


def test_a_row_not_kept_says_why_in_the_report():
    lat = {"batch_1": {"p50": 0.5, "spread": [0.4, 0.6]}}
    rows = [TargetFile("onnx", "fp32", "onnxruntime", "1.32.0", "onnx/s.onnx", 1000, None, 0.9, 0.0, latency_ms=lat),
            TargetFile("openvino", "int8", "openvino", "2026.4.1", None, accuracy=0.8, accuracy_drop_points=10.0,
                       error="INT8 loses 10.00 points; not kept")]
    md = "\n".join(runtime_lines({"runtimes": {"max_accuracy_drop": 1.0, "threads": 2, "fastest": "onnx fp32",
                                               "rows": [r.to_dict() for r in rows]}}))
    assert "| **onnxruntime** | fp32 |" in md and "NOT KEPT: INT8 loses 10.00 points; not kept" in md
    assert "Fastest within the allowed drop: **onnx fp32**" in md


def test_check_gates_a_runtime_row_like_a_model(targeted, tmp_path):
    out, report, _ = targeted
    row = next(r for r in report["runtimes"]["rows"] if (r["target"], r["precision"]) == ("openvino", "fp32"))
    worse = json.loads(json.dumps(report))
    bad = next(r for r in worse["runtimes"]["rows"] if (r["target"], r["precision"]) == ("openvino", "fp32"))
    bad["accuracy"] = row["accuracy"] - 0.02  # 2 points lost in OpenVINO only
    bad["bytes"] = row["bytes"] * 2
    (tmp_path / "worse.json").write_text(json.dumps(worse))
    base = str(out / "report.json")
    ok = CliRunner().invoke(app, ["check", base, "--baseline", base, "--models", "openvino:fp32", "--skip", "latency",
                                  "--skip", "int8-speed"])  # a tiny model's INT8 files may be slower than FP32
    assert ok.exit_code == 0, ok.output
    res = CliRunner().invoke(app, ["check", str(tmp_path / "worse.json"), "--baseline", base, "--models",
                                   "student,openvino:fp32", "--skip", "latency"])
    assert res.exit_code == 1 and "openvino:fp32 accuracy (-2.00 points" in res.output, res.output
    gates = {(g.model, g.metric): g for g in check_reports(worse, report, GateConfig(models=("student",
                                                                                            "openvino:fp32")))}
    assert gates["student", "accuracy"].passed and not gates["openvino:fp32", "accuracy"].passed
    assert not gates["openvino:fp32", "file bytes"].passed and gates["openvino:fp32", "file bytes"].current == \
        row["bytes"] * 2
    res = CliRunner().invoke(app, ["check", base, "--baseline", base, "--models", "litert:int8"])
    assert res.exit_code == 2 and "no runtime row 'litert:int8'" in res.output and "openvino:int8" in res.output


def test_the_ort_target_ships_the_mobile_format_proven(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--quantize", "static",
                                   "--max-accuracy-drop", "100", "--targets", "onnx,ort"])
    assert res.exit_code == 0, res.output
    rows = {(r["target"], r["precision"]): r for r in json.loads((out / "report.json").read_text())["runtimes"]["rows"]}
    fp32, int8 = rows["ort", "fp32"], rows["ort", "int8"]
    assert fp32["path"] == "ort/student.ort" and (out / "ort" / "student.required_operators.config").is_file()
    assert fp32["parity"]["max_abs_diff"] <= fp32["parity"]["tolerance"]
    assert fp32["accuracy"] == rows["onnx", "fp32"]["accuracy"]  # the same graph in the same runtime
    assert int8["path"] == "ort/student.int8.ort"
    assert int8["accuracy"] == pytest.approx(rows["onnx", "int8"]["accuracy"], abs=2 / 355)
    assert fp32["bytes"] == sum((out / "ort" / f).stat().st_size
                                for f in ("student.ort", "student.required_operators.config"))
    assert "ort_format_model" not in res.output  # the converter's log kept off the run's output


def _weight_scale_sizes(xml) -> list[int]:
    """The number of scales of every INT8 weight of an NNCF-quantized IR (int8 Constant -> Convert -> Multiply by
    its scales; 1: per-tensor)."""
    model = ov.Core().read_model(str(xml))
    sizes = []
    for op in model.get_ops():
        if op.get_type_name() == "Multiply":
            src = op.input_value(0).get_node()
            if src.get_type_name() == "Convert" and str(src.input_value(0).get_element_type()) == "<Type: 'int8_t'>":
                sizes.append(int(np.prod(op.input_value(1).get_shape())))
    return sizes


@pytest.mark.slow  # a whole run
def test_nncf_int8_weights_are_per_channel_unless_per_tensor(targeted, tmp_path):
    out, _, _ = targeted
    assert _weight_scale_sizes(out / "openvino" / "student.int8.xml") and \
        all(s > 1 for s in _weight_scale_sizes(out / "openvino" / "student.int8.xml"))
    run = tmp_path / "pt"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(run), *FAST, "--quantize", "static", "--per-tensor",
                                   "--max-accuracy-drop", "100", "--targets", "onnx,openvino"])
    assert res.exit_code == 0, res.output
    sizes = _weight_scale_sizes(run / "openvino" / "student.int8.xml")
    assert sizes and all(s == 1 for s in sizes)
    rows = {(r["target"], r["precision"]): r for r in json.loads((run / "report.json").read_text())["runtimes"]["rows"]}
    assert "per-tensor weights" in rows["openvino", "int8"]["note"]
