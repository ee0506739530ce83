"""kdexport package / verify: contents, checksums, the .ort file's parity, the model card, and every way
verify must fail."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import TrainConfig
from kdexport.models.builders import ModelSpec, build_model
from kdexport.report.package import verify, write_sums

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
    from kdexport.report.package import _write_tensor

    pkg = _copy(run, tmp_path)
    data = bytearray((pkg / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / "model.onnx").write_bytes(bytes(data))
    assert "model.onnx: checksum differs from SHA256SUMS" in verify(pkg)

    pkg = _copy(run, tmp_path / "b")
    (pkg / "labels.txt").unlink()
    assert verify(pkg) == ["labels.txt: missing (or not a plain file in the package)"]

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


# -- verify is a security gate: a package can name nothing outside itself, and nothing in it makes verify crash ---
def _outside_secret(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("a host file the package must not reach\n")
    return secret


def _sums_with(pkg, *lines: str) -> None:
    (pkg / "SHA256SUMS").write_text((pkg / "SHA256SUMS").read_text() + "".join(f"{ln}\n" for ln in lines))


def test_names_that_leave_the_package_are_refused_and_never_read(run, tmp_path, monkeypatch):
    import kdexport.report.package as pk

    secret = _outside_secret(tmp_path)
    pkg = _copy(run, tmp_path / "p")
    digest = pk.sha256(secret)
    _sums_with(pkg, f"{digest}  ../secret.txt", f"{digest}  {secret}", f"{digest} *test_data_set_0/../../secret.txt",
               f"{digest}  ./labels.txt")
    hashed = []
    real = pk.sha256
    monkeypatch.setattr(pk, "sha256", lambda path: hashed.append(Path(path).resolve()) or real(path))
    failures = verify(pkg)
    assert secret.resolve() not in hashed  # the host file was never opened
    assert "SHA256SUMS line 11: '../secret.txt' is a path with an empty, '.' or '..' part" in failures[0]
    assert f"SHA256SUMS line 12: '{secret}' is an absolute path" in failures[1]
    assert "'test_data_set_0/../../secret.txt' is a path with" in failures[2]
    assert "'./labels.txt' is a path with" in failures[3]
    assert len(failures) == 4
    res = runner.invoke(app, ["verify", str(pkg)])
    assert res.exit_code == 1 and res.output.count("FAIL ") == 4 and "Traceback" not in res.output


def test_a_symlinked_file_or_folder_fails_even_with_the_right_checksum(run, tmp_path):
    secret = _outside_secret(tmp_path)
    pkg = _copy(run, tmp_path / "p")
    (pkg / "labels.txt").unlink()
    (pkg / "labels.txt").symlink_to(secret)  # SHA256SUMS rewritten: the link's target hashes "right"
    write_sums(pkg)
    assert verify(pkg) == ["labels.txt: a symbolic link; a package holds plain files only",
                           "labels.txt: required, not listed in SHA256SUMS"]
    pkg = _copy(run, tmp_path / "q")
    outside = tmp_path / "outside_tests"
    shutil.move(pkg / "test_data_set_0", outside)
    (pkg / "test_data_set_0").symlink_to(outside, target_is_directory=True)
    failures = verify(pkg)
    assert failures[0] == "test_data_set_0: a symbolic link; a package holds plain files only"
    assert "test_data_set_0/input_0.pb: missing (or not a plain file in the package)" in failures
    assert failures[-1].startswith("test_data_set_0: no readable input_0.pb and output_0.pb")


@pytest.mark.parametrize("damage,want", [
    (lambda p: (p / "SHA256SUMS").write_bytes(b"\xff\xfe garbage \x00"), "SHA256SUMS: not UTF-8 text"),
    (lambda p: _sums_with(p, "not a checksum line"), "SHA256SUMS line 11: not 'SHA256  NAME'"),
    (lambda p: _sums_with(p, "0" * 64 + "  labels.txt"), "SHA256SUMS line 11: 'labels.txt' is listed twice"),
    (lambda p: (p / "SHA256SUMS").unlink(), "SHA256SUMS: missing (or not a plain file)"),
    (lambda p: (p / "test_data_set_0" / "input_0.pb").write_bytes(b"\x08\x01garbage" * 10),
     "test_data_set_0/input_0.pb: not an ONNX tensor"),
    (lambda p: (p / "extra.bin").write_bytes(b"x"), "extra.bin: not listed in SHA256SUMS"),
    (lambda p: (p / "model.onnx").write_bytes(b"not onnx"), "model.onnx: onnxruntime cannot run it"),
])
def test_garbage_in_a_package_is_a_fail_line_never_an_internal_error(run, tmp_path, damage, want):
    pkg = _copy(run, tmp_path / "p")
    damage(pkg)
    res = runner.invoke(app, ["verify", str(pkg)])
    assert res.exit_code == 1 and "Traceback" not in res.output and "internal error" not in res.output, res.output
    assert any(f.startswith(want) for f in verify(pkg)), verify(pkg)


def test_every_file_a_package_needs_must_be_listed(run, tmp_path):
    pkg = _copy(run, tmp_path / "p")
    lines = [ln for ln in (pkg / "SHA256SUMS").read_text().splitlines() if not ln.endswith("  preprocess.json")]
    (pkg / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert verify(pkg) == ["preprocess.json: not listed in SHA256SUMS", "preprocess.json: required, not listed in "
                                                                         "SHA256SUMS"]


def test_package_refuses_what_predict_refuses(run, tmp_path, digits):
    """One check for a model's metadata: a file whose std is 0 (or whose labels do not fit its outputs) is refused
    by predict and by package alike, in one line, and no package is written."""
    import onnx
    from PIL import Image

    src = run[0] / "onnx" / "student.onnx"
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == "std":
            p.value = "[0.0]"
    bad = tmp_path / "std0.onnx"
    onnx.save(m, str(bad))
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "x.png")
    for args in (["predict", str(bad), str(tmp_path / "x.png")], ["package", str(bad), "--out", str(tmp_path / "p")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "metadata std must be > 0" in res.output, res.output
        assert res.output.count("error:") == 1
    assert not (tmp_path / "p").exists()
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    res = runner.invoke(app, ["package", str(src), "--out", str(tmp_path / "p"), "--labels", str(labels)])
    assert res.exit_code == 2 and "10 outputs but 2 class names" in res.output and not (tmp_path / "p").exists()


# -- models from elsewhere: fed right by predict, described right by package ------------------------------------------
def _foreign(tmp_path, head: torch.nn.Module | None = None, name: str = "foreign.onnx", shape=(1, 8, 8)):
    """A classifier exported by a plain script: no kdexport metadata, its own head."""
    from kdexport.distill.train import fit

    torch.manual_seed(0)
    m = build_model(ModelSpec("mlp:32", 10, shape))
    if shape == (1, 8, 8):
        from kdexport.data.datasets import load_dataset

        fit(m, load_dataset("digits"), TrainConfig(epochs=3))
    net = torch.nn.Sequential(m, head) if head is not None else m
    torch.onnx.export(net.eval(), (torch.zeros(2, *shape),), str(tmp_path / name), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("b", min=1, max=1024)},))
    return tmp_path / name


def test_predict_feeds_a_model_without_metadata_from_options_or_a_package(tmp_path, digits):
    from PIL import Image

    from kdexport.export.predict import predict

    model = _foreign(tmp_path)
    img = (digits.x_test[0, 0].numpy() * 255 / 16).round().astype(np.uint8)
    Image.fromarray(img, "L").save(tmp_path / "d.png")
    res = runner.invoke(app, ["predict", str(model), str(tmp_path / "d.png")])
    assert res.exit_code == 2 and "has no class_names, mean, std in its metadata: pass --labels FILE, --mean, --std" \
        in " ".join(res.output.split())
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    opts = {"labels": str(labels), "mean": digits.mean, "std": digits.std}
    top = predict(model, [tmp_path / "d.png"], 3, opts)[0]["top"]
    assert top[0]["label"] == f"digit {int(digits.y_test[0])}"  # the first test image, read right
    assert runner.invoke(app, ["package", str(model), "--out", str(tmp_path / "p"), "--dataset", "digits",
                               "--labels", str(labels)]).exit_code == 0
    via_package = predict(model, [tmp_path / "d.png"], 3, {"preprocess": str(tmp_path / "p" / "preprocess.json")})
    assert via_package[0]["top"] == top
    assert predict(tmp_path / "p" / "model.onnx", [tmp_path / "d.png"], 3)[0]["top"] == top  # its metadata now


def test_a_model_whose_output_is_probabilities_is_documented_so(tmp_path):
    model = _foreign(tmp_path, torch.nn.Softmax(dim=1))
    res = runner.invoke(app, ["package", str(model), "--out", str(tmp_path / "p"), "--dataset", "digits"])
    assert res.exit_code == 0, res.output
    pre = json.loads((tmp_path / "p" / "preprocess.json").read_text())
    assert pre["output"]["kind"] == "probabilities" and pre["output"]["apply_softmax"] is False
    card = (tmp_path / "p" / "README.md").read_text()
    assert "holds probabilities already" in card and "do not apply softmax" in card and "apply softmax for" not in card
    assert verify(tmp_path / "p") == []
    logits = _foreign(tmp_path, name="logits.onnx")
    res = runner.invoke(app, ["package", str(logits), "--out", str(tmp_path / "q"), "--dataset", "digits"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "q" / "preprocess.json").read_text())["output"]["kind"] == "logits"


def test_package_records_the_crop_a_foreign_model_was_measured_with(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "photos" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(
                    tmp_path / "photos" / split / c / f"{i}.png")
    model = _foreign(tmp_path, shape=(3, 32, 32))
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(10)))
    args = ["package", str(model), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "photos"), "--labels",
            str(labels), "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert res.exit_code == 0, res.output
    whole = json.loads((tmp_path / "whole" / "preprocess.json").read_text())
    assert (whole["resize_shorter_side"], whole["center_crop"]) == (32, 32)  # no crop stated: the whole image
    res = runner.invoke(app, [*args, "--crop-ratio", "0.875", "--out", str(tmp_path / "crop")])
    assert res.exit_code == 0, res.output
    crop = json.loads((tmp_path / "crop" / "preprocess.json").read_text())
    assert (crop["resize_shorter_side"], crop["center_crop"]) == (37, 32)  # round(32 / 0.875)
    assert "center-crop 32x32" in (tmp_path / "crop" / "README.md").read_text()
    from kdexport.runtimes.ort import read_metadata

    assert read_metadata(tmp_path / "crop" / "model.onnx")["preprocess"]["resize_shorter_side"] == 37


def test_a_model_that_answers_one_class_is_headlined_unfit(tmp_path):
    class One(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 10) + torch.arange(10.0) * (x.mean() * 0 + 1)  # always class 9

    torch.onnx.export(One().eval(), (torch.zeros(2, 1, 8, 8),), str(tmp_path / "one.onnx"), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("b", min=1, max=1024)},))
    res = runner.invoke(app, ["package", str(tmp_path / "one.onnx"), "--out", str(tmp_path / "p"), "--dataset",
                              "digits"])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "p" / "README.md").read_text()
    head = card.split("---", 2)[2].strip().splitlines()
    assert head[2].startswith("> **Not fit to ship:** on the test split this model is collapsed: predicts class 9")
