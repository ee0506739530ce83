"""``distill-export --quantize qat`` end to end (issue 45): the INT8 student fine-tuned with the teacher, its
labels-only twin, the parity against the fake-quantized model and the INT8 report, through the CLI."""

import json

import pytest
from typer.testing import CliRunner

from kdexport.cli import app

from .conftest import FAST

pytestmark = pytest.mark.slow


def test_distill_export_quantize_qat_reports_the_teacher_s_share(tmp_path):
    pytest.importorskip("torchao")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--student", "mlp:32", "--quantize",
                                   "qat", "--qat-epochs", "1", "--max-accuracy-drop", "100", "--per-tensor"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    q = report["models"]["student_int8"]["quantization"]
    assert q["mode"] == "qat" and q["calibration"] == "median"
    qat = q["qat"]
    assert qat["epochs"] == 1 and qat["per_tensor"] and len(qat["history"]) == 1
    assert qat["lr"] == pytest.approx(report["config"]["train"]["lr"] * 0.05)
    assert qat["parity"]["top1_agreement"] >= 0.75 and "rule" in qat["parity"]
    twin = qat["labels_only"]
    assert qat["teacher_gain_points"] == pytest.approx((q["accuracy_int8"] - twin["accuracy_int8"]) * 100)
    assert q["accuracy_drop_points"] == pytest.approx((q["accuracy_fp32"] - q["accuracy_int8"]) * 100)
    assert q["accuracy_fp32"] == report["models"]["student"]["accuracy_onnx"]  # gated against the FP32 student
    assert q["diagnosis"]["per_class"] and "faster_than_fp32" in q
    from kdexport.runtimes.ort import read_metadata

    meta = read_metadata(out / "onnx" / "student.int8.onnx")["quantization"]  # the file itself says it was QAT
    assert meta["qat"]["epochs"] == 1 and meta["mode"] == "static" and "torchao" in meta["qat"]["tool"]
    md = (out / "report.md").read_text()
    assert "QAT: 1 epoch(s) of quantization-aware distillation" in md and "the teacher adds" in md
    assert "Why INT8 differs from FP32:" in md
    assert not [p for p in out.rglob("*") if p.name.startswith("tmp")]  # the fine-tunes' files are gone
    assert (out / "train-state").exists() is False or not any((out / "train-state").iterdir())
