"""kdexport package / verify: contents, checksums, the .ort file's parity, the model card, and every way
verify must fail."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import TrainConfig
from kdexport.models.builders import ModelSpec, build_model
from kdexport.report.package import verify

runner = CliRunner()
FILES = {"README.md", "SHA256SUMS", "labels.txt", "model.onnx", "model.int8.onnx", "model.ort",
         "model.required_operators.config", "preprocess.json", "test_data_set_0/input_0.pb",
         "test_data_set_0/output_0.pb", "test_data_set_0/output_0.int8.pb"}


@pytest.fixture
def run(finished_run):
    """The shared finished run: FAST with a dynamic INT8 student and --package (conftest.py)."""
    return finished_run.out, finished_run.report


def _files(pkg):
    return {str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file()}


def test_distill_export_package_has_every_file_and_verifies(run):
    out, report = run
    pkg = out / "package"
    assert _files(pkg) == FILES
    assert verify(pkg) == []
    labels = (pkg / "labels.txt").read_text().splitlines()
    assert labels == report["dataset"]["class_names"]
    pre = json.loads((pkg / "preprocess.json").read_text())
    assert pre["size"] == [8, 8] and pre["mean"] == report["dataset"]["mean"] and pre["scale"] == 1 / 255
    sums = dict(reversed(line.split("  ")) for line in (pkg / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == FILES - {"SHA256SUMS"}


def test_model_card_front_matter_parses_and_states_the_measured_accuracy(run):
    out, report = run
    text = (out / "package" / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["library_name"] == "onnx" and "knowledge-distillation" in front["tags"]
    (metric,) = front["model-index"][0]["results"][0]["metrics"]
    assert metric["type"] == "accuracy"
    assert metric["value"] == pytest.approx(report["models"]["student"]["accuracy_onnx"], abs=1e-6)
    for section in ("## Intended use", "## Preprocessing", "## Teacher and distillation",
                    "## Accuracy, size and latency", "## Limitations"):
        assert section in text
    assert report["environment"]["cpu"] in text


def test_ort_file_and_metadata(run):
    from kdexport.report.package import _read_tensor
    from kdexport.runtimes.ort import ort_session, read_metadata

    pkg = run[0] / "package"
    x = _read_tensor(pkg / "test_data_set_0" / "input_0.pb")
    want = _read_tensor(pkg / "test_data_set_0" / "output_0.pb")
    sess = ort_session(pkg / "model.ort")
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, rtol=1e-4, atol=1e-5)
    meta = read_metadata(pkg / "model.onnx")
    assert meta["Image.BitmapPixelFormat"] == "Gray8" and meta["class_names"] == [str(i) for i in range(10)]
    import onnx

    assert onnx.load(str(pkg / "model.onnx")).graph.input[0].type.denotation == "IMAGE"


def _copy(run, tmp_path):
    pkg = tmp_path / "p"
    shutil.copytree(run[0] / "package", pkg)
    return pkg


def test_verify_fails_on_a_flipped_byte_a_missing_file_and_a_wrong_output(run, tmp_path):
    from kdexport.report.package import _write_tensor, write_sums

    pkg = _copy(run, tmp_path)
    data = bytearray((pkg / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / "model.onnx").write_bytes(bytes(data))
    assert "model.onnx: checksum differs from SHA256SUMS" in verify(pkg)

    pkg = _copy(run, tmp_path / "b")
    (pkg / "labels.txt").unlink()
    assert verify(pkg) == ["labels.txt: missing"]

    pkg = _copy(run, tmp_path / "c")
    from kdexport.report.package import _read_tensor

    y = _read_tensor(pkg / "test_data_set_0" / "output_0.pb")
    _write_tensor(pkg / "test_data_set_0" / "output_0.pb", y + 1.0, "logits")
    write_sums(pkg)  # consistent checksums: only the outputs are wrong
    failures = verify(pkg)
    assert [f.split(":")[0] for f in failures] == ["model.onnx", "model.ort"]
    assert "max abs difference 1" in failures[0]
    res = runner.invoke(app, ["verify", str(pkg)])
    assert res.exit_code == 1 and "FAIL model.onnx" in res.output
    assert runner.invoke(app, ["verify", str(run[0] / "package")]).exit_code == 0
    assert runner.invoke(app, ["verify", str(tmp_path / "nope")]).exit_code == 2


def test_a_third_party_onnx_classifier_packages_with_a_dataset(tmp_path, digits):
    from kdexport.distill.train import fit

    torch.manual_seed(0)
    m = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    fit(m, digits, TrainConfig(epochs=3))
    torch.onnx.export(m.eval(), (torch.zeros(2, 1, 8, 8),), str(tmp_path / "third.onnx"), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("b", min=1, max=1024)},))  # no metadata, external data
    res = runner.invoke(app, ["package", str(tmp_path / "third.onnx"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "no kdexport metadata; pass" in res.output and "--dataset" in res.output
    res = runner.invoke(app, ["package", str(tmp_path / "third.onnx"), "--out", str(tmp_path / "p"),
                              "--dataset", "digits"])
    assert res.exit_code == 0, res.output
    assert verify(tmp_path / "p") == []
    assert "model.int8.onnx" not in _files(tmp_path / "p")
    front = yaml.safe_load((tmp_path / "p" / "README.md").read_text().split("---")[1])
    acc = front["model-index"][0]["results"][0]["metrics"][0]["value"]
    from kdexport.distill.train import evaluate

    assert acc == pytest.approx(evaluate(m, digits)["accuracy"], abs=1e-6)
    res = runner.invoke(app, ["package", str(tmp_path / "third.onnx"), "--out", str(tmp_path / "p"),
                              "--dataset", "digits"])
    assert res.exit_code == 2 and "exists; pass --overwrite" in res.output
