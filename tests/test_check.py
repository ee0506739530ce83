import copy
import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import GateConfig
from kdexport.errors import ConfigError
from kdexport.runtimes.base import file_accuracy
from kdexport.runtimes.ort import read_metadata

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "digits"
runner = CliRunner()


@pytest.fixture()
def base():
    return json.loads((SHIPPED / "report.json").read_text())


def _write(tmp_path, name, report):
    p = tmp_path / name
    p.write_text(json.dumps(report))
    return str(p)


def _check(tmp_path, current, baseline, *args):
    return runner.invoke(app, ["check", _write(tmp_path, "cur.json", current), "--baseline",
                               _write(tmp_path, "base.json", baseline), *args])


def test_identical_report_passes(tmp_path, base):
    res = _check(tmp_path, base, base, "--models", "student,baseline,teacher")
    assert res.exit_code == 0, res.output
    assert "PASS: 9 gate(s)" in res.output


def test_accuracy_drop_past_limit_fails_naming_model_and_metric(tmp_path, base):
    cur = copy.deepcopy(base)
    cur["models"]["student"]["accuracy_onnx"] -= 0.006  # 0.6 points > 0.5
    res = _check(tmp_path, cur, base, "--skip", "latency", "--junit", str(tmp_path / "j.xml"),
                 "--markdown", str(tmp_path / "c.md"))
    assert res.exit_code == 1
    assert "FAIL: student accuracy (-0.60 points" in res.output
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failing = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name")) for c in failing] == [("kdexport.check.student", "accuracy")]
    assert "FAIL" in (tmp_path / "c.md").read_text()
    cur["models"]["student"]["accuracy_onnx"] = base["models"]["student"]["accuracy_onnx"] - 0.004
    assert _check(tmp_path, cur, base, "--skip", "latency").exit_code == 0


def test_min_accuracy_and_larger_file_fail(tmp_path, base):
    assert _check(tmp_path, base, base, "--min-accuracy", "0.99").exit_code == 1
    cur = copy.deepcopy(base)
    cur["models"]["student"]["onnx_bytes"] = int(base["models"]["student"]["onnx_bytes"] * 1.1)
    res = _check(tmp_path, cur, base, "--skip", "latency")
    assert res.exit_code == 1 and "student ONNX bytes" in res.output


def test_slower_model_fails_latency_gate_unless_skipped(tmp_path, base):
    cur = copy.deepcopy(base)
    cur["models"]["student"]["latency_ms"]["batch_1"]["p50"] *= 1.5
    assert _check(tmp_path, cur, base).exit_code == 1
    assert _check(tmp_path, cur, base, "--skip", "latency").exit_code == 0


def test_unusable_input_exits_2(tmp_path, base):
    other = copy.deepcopy(base)
    other["dataset"]["name"] = "mnist"
    res = _check(tmp_path, other, base)
    assert res.exit_code == 2 and "different datasets" in res.output
    other = copy.deepcopy(base)
    other["models"]["student"]["arch"] = "mlp:32"
    res = _check(tmp_path, other, base)
    assert res.exit_code == 2 and "mlp:32 in the current report but a mlp:14" in res.output
    other = copy.deepcopy(base)
    del other["models"]["student"]["onnx_bytes"]
    res = _check(tmp_path, other, base)
    assert res.exit_code == 2 and "current report has no key models.student.onnx_bytes" in " ".join(res.output.split())
    res = runner.invoke(app, ["check", str(tmp_path / "missing.json"), "--baseline", _write(tmp_path, "b.json", base)])
    assert res.exit_code == 2 and "does not exist" in res.output
    choose = "choose one of: accuracy, int8-speed, latency, size"
    with pytest.raises(ConfigError, match=f"unknown metric to skip 'speed'; {choose}"):
        GateConfig(skip=("speed",))
    res = _check(tmp_path, base, base, "--skip", "speed")
    assert res.exit_code == 2 and f"unknown metric to skip 'speed'; {choose}" in res.output


def test_shipped_onnx_reproduces_stored_accuracy_exactly(base, digits):
    for role in ("student", "baseline"):
        m = base["models"][role]
        onnx = SHIPPED / m["onnx_path"]
        assert onnx.stat().st_size == m["onnx_bytes"]
        assert file_accuracy(onnx, digits) == m["accuracy_onnx"]
    meta = read_metadata(SHIPPED / "onnx" / "student.onnx")
    assert meta["class_names"] == [str(i) for i in range(10)] and meta["distillation"]["temperature"] == 4.0
