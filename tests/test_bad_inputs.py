"""Inputs kdexport did not write, and writes something else interferes with: one row per class of fault.

Every row asserts the exit code, that the error is one line without a traceback, and that no partial
file is left behind (see the hardening issue: two runs on one --out, full disks, corrupt states and
metadata, sizes from outside, fixed-shape graphs, check's exit codes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import RunConfig, TrainConfig
from kdexport.errors import OutputError
from kdexport.outputs import commit_out_dir, lock_output, release_output, staging_dir
from kdexport.runs import resume_options

from .conftest import FAST

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def _one_line_error(code: int, out: str, want_code: int, msg: str) -> None:
    assert code == want_code, out
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert msg in " ".join(out.split()), out


def _no_partials(folder: Path) -> None:
    """No half-written file anywhere (a kept staging folder, for --resume, is not one)."""
    left = [p for p in folder.rglob("*") if p.is_file() and (p.name.endswith((".tmp", ".partial")))]
    assert not left, left


@pytest.fixture
def run(finished_run) -> Path:
    return finished_run.out


# -- check: unusable reports are exit 2, never a pass or a regression --------------------------------------
def _report_with(run: Path, tmp: Path, edit) -> Path:
    r = json.loads((run / "report.json").read_text())
    edit(r["models"]["student"])
    p = tmp / "bad.json"
    p.write_text(json.dumps(r))  # json writes NaN as NaN, as a careless tool would
    return p


@pytest.mark.parametrize("edit,msg", [
    (lambda m: m.update(accuracy_onnx="0.9"), "is not a number"),
    (lambda m: m.update(accuracy_onnx=float("nan")), "not a finite number"),
    (lambda m: m.update(accuracy_onnx=1.5), "outside [0, 1]"),
    (lambda m: m.update(accuracy_onnx=None), "has no key models.student.accuracy_onnx"),
    (lambda m: m.update(accuracy_onnx=True), "is not a number"),
    (lambda m: m.update(latency_ms="fast"), "latency_ms is not an object"),
    (lambda m: m["latency_ms"]["batch_1"].update(p50=-1.0), "outside"),
    (lambda m: m.update(onnx_bytes="big"), "is not a number"),
])
def test_check_unusable_report_is_exit_2(run, tmp_path, edit, msg):
    bad = _report_with(run, tmp_path, edit)
    _one_line_error(*_cli("check", bad, "--baseline", run / "report.json"), 2, msg)
    _one_line_error(*_cli("check", run / "report.json", "--baseline", bad), 2, msg)


def test_check_skipping_every_gate_is_an_error(run):
    _one_line_error(*_cli("check", run / "report.json", "--baseline", run / "report.json", "--skip", "accuracy",
                          "--skip", "latency", "--skip", "size"), 2, "every gate is skipped")


def test_check_unwritable_junit_is_one_line(run, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(*_cli("check", run / "report.json", "--baseline", run / "report.json",
                          "--junit", blocker / "sub" / "j.xml"), 2, "cannot write")


def test_check_passes_and_regresses_with_the_right_codes(run, tmp_path):
    # the digits MLP's dynamic INT8 is slower than FP32 (the int8-speed gate's own test is in test_int8.py)
    code, out = _cli("check", run / "report.json", "--baseline", run / "report.json", "--skip", "latency",
                     "--skip", "int8-speed")
    assert code == 0, out
    worse = _report_with(run, tmp_path, lambda m: m.update(accuracy_onnx=m["accuracy_onnx"] * 0.5))
    code, out = _cli("check", worse, "--baseline", run / "report.json", "--skip", "latency")
    assert code == 1 and "FAIL" in out


# -- predict: metadata from outside the tool ------------------------------------------------------------------
def _with_metadata(src: Path, dest: Path, **changes) -> Path:
    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props}
    for k, v in changes.items():
        if v is None:
            props.pop(k, None)
        else:
            props[k] = v if isinstance(v, str) else json.dumps(v)
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(dest))
    return dest


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8), "L").save(p)
    return p


@pytest.mark.parametrize("changes,msg", [
    (dict(class_names="zero,one,two"), "class_names must be a JSON list of strings"),
    (dict(class_names=[str(i) for i in range(9)]), "lists 9 class names but the model has 10 outputs"),
    (dict(class_names=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), "class_names must be a JSON list of strings"),
    (dict(std=[0.0]), "std must be > 0"),
    (dict(mean=[0.1, 0.2]), "mean must be a list of 1 numbers"),
    (dict(mean="abc"), "mean must be a list of 1 numbers"),
    (dict(input_shape=[1, 8]), "input_shape must be [C, H, W]"),
    (dict(input_shape=[1, 100000, 100000]), "is not an image input"),
    (dict(input_shape=[1, 16, 16]), "disagrees with the graph's input"),
    (dict(std=None), "has no std in its metadata"),
])
def test_predict_bad_metadata_is_one_line(run, tmp_path, image, changes, msg):
    bad = _with_metadata(run / "onnx" / "student.onnx", tmp_path / "m.onnx", **changes)
    _one_line_error(*_cli("predict", bad, image), 2, msg)


def _fix_batch(src: Path, dest: Path, batch: int) -> Path:
    m = onnx.load(str(src))
    for vi in [*m.graph.input, *m.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(m, str(dest))
    return dest


def test_fixed_batch_graph_works_in_predict_and_bench(run, tmp_path, image):
    fixed = _fix_batch(run / "onnx" / "student.onnx", tmp_path / "fixed.onnx", 1)
    code, out = _cli("predict", fixed, image, image, image, "--json")
    assert code == 0, out
    assert len(json.loads(out[out.index("["):])) == 3
    code, out = _cli("bench", fixed, "--batch-sizes", "1,4", "--iters", "3", "--warmup", "1", "--out", tmp_path / "b")
    assert code == 0, out
    assert "fixed at 1" in " ".join(out.split())
    r = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert r["models"]["fixed"]["fixed_batch"] == 1 and "batch_4" in r["models"]["fixed"]["runs"][0]["latency_ms"]


def test_probabilities_are_not_softmaxed_twice():
    from kdexport.export.predict import probabilities

    probs = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    out, applied = probabilities(probs)
    assert not applied and np.allclose(out, probs)
    logits = np.array([[2.0, 1.0, 0.0]])
    out, applied = probabilities(logits)
    e = np.exp([2.0, 1.0, 0.0])
    assert applied and np.allclose(out, e / e.sum())


# -- sizes from outside are bounded before anything is allocated -------------------------------------------
def _huge_input_model(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 100000, 100000])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])
    g = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["p"]),
                           helper.make_node("Flatten", ["p"], ["logits"])], "huge", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_huge_declared_input_is_refused_before_allocating(tmp_path):
    model = _huge_input_model(tmp_path / "huge.onnx")
    _one_line_error(*_cli("bench", model, "--out", tmp_path / "b"), 2, "more than the")


@pytest.mark.parametrize("args,msg", [
    (["--student", "mlp:100000000"], "more than the"),
    (["--teacher", "mlp:100000000"], "more than the"),
    (["--image-size", "64"], "--image-size applies to imagefolder data only"),
    (["--seed", "-1"], "seed must be in"),
    (["--seed", str(2**40)], "seed must be in"),
    (["--lookahead", "--ema", "0.9"], "--lookahead and --ema both average the weights: choose one"),
    (["--scheduler", "triangular"], "unknown scheduler 'triangular'; choose one of:"),
    (["--muon-lr", "0"], "muon lr must be > 0"),
    (["--optimizer", "muon"], "MLP has none: use sgd or adam"),  # before a partial state is written
    (["--optimizer", "muon", "--student", "resnet8"], "MLP has none"),  # the teacher to be trained is checked too
    (["--augment", "reflect4-altflip"], "reflect2-altflip"),
    (["--select-fraction", "0"], "select fraction must be in (0, 1]"),
    (["--select-fraction", "0.5", "--select-proxy", "tinynet"], "tinynet"),
    # the proxy is built for the data and checked against the optimizer before anything is written
    (["--select-fraction", "0.5", "--select-proxy", "mlp:16", "--optimizer", "muon", "--teacher", "resnet8",
      "--student", "resnet8"], "--select-proxy mlp:16: --optimizer muon orthogonalizes"),
])
def test_sizes_and_ranges_from_options(tmp_path, args, msg):
    out = tmp_path / "out"
    _one_line_error(*_cli("distill-export", "--out", out, *FAST, *args), 2, msg)
    assert not out.exists()
    _no_partials(tmp_path)


def test_image_size_beyond_the_limit_is_refused(tmp_path):
    _one_line_error(*_cli("distill-export", "--dataset", "imagefolder", "--data-dir", tmp_path, "--image-size",
                          "100000", "--out", tmp_path / "o"), 2, "image size must be in [8, 8192]")


# -- checkpoints and resume states kdexport did not write (or that were damaged) -------------------------
def test_directory_as_model_file(tmp_path, image):
    (tmp_path / "d.onnx").mkdir()
    _one_line_error(*_cli("predict", tmp_path / "d.onnx", image), 2, "is a directory, not an ONNX file")
    _one_line_error(*_cli("bench", tmp_path / "d.onnx", "--out", tmp_path / "b"), 2, "is a directory")


def test_nan_teacher_is_blamed_before_training(digits):
    from kdexport.distill.teacher import TorchTeacher, teacher_accuracy
    from kdexport.errors import ModelError
    from kdexport.models.builders import ModelSpec, build_model

    m = build_model(ModelSpec("mlp:8", 10, digits.input_shape)).eval()
    with torch.no_grad():
        m.net[-1].bias[3] = float("nan")
    with pytest.raises(ModelError, match="teacher's logits are NaN or infinite on 355 of 355"):
        teacher_accuracy(TorchTeacher.for_data(m, digits, torch.device("cpu")), digits)


def test_directory_as_checkpoint(tmp_path):
    _one_line_error(*_cli("distill-export", "--out", tmp_path / "o", *FAST, "--teacher-checkpoint", tmp_path),
                    2, "is a directory")


@pytest.mark.parametrize("field,value,msg", [
    ("num_classes", "ten", "num_classes must be an integer"),
    ("input_shape", [1, 8], "input_shape must be [C, H, W]"),
    ("arch", 5, "arch must be a name"),
    ("arch", "mlp:100000000", "more than the"),
])
def test_checkpoint_with_bad_fields(run, tmp_path, field, value, msg):
    blob = torch.load(run / "checkpoints" / "teacher.pt", weights_only=True)
    blob["model"][field] = value
    bad = tmp_path / "t.pt"
    torch.save(blob, bad)
    if field != "arch" or value != "mlp:100000000":
        _one_line_error(*_cli("distill-export", "--out", tmp_path / "o", *FAST, "--teacher-checkpoint", bad), 2, msg)
    _one_line_error(*_cli("bench", run / "onnx" / "student.onnx", "--checkpoint", bad, "--iters", "2",
                          "--out", tmp_path / "b"), 2, msg)


def _staging_for(out: Path) -> Path:
    cfg = RunConfig(dataset="digits", teacher="mlp:32", student="mlp:8", train=TrainConfig(epochs=1),
                    bench_iters=3, bench_batch=4, out=str(out))
    staging = staging_dir(out)
    (staging / "train-state").mkdir(parents=True)
    (staging / "run-config.json").write_text(json.dumps(resume_options(cfg)))
    return staging


def test_corrupt_training_state_says_how_to_start_afresh(tmp_path):
    out = tmp_path / "o"
    staging = _staging_for(out)
    (staging / "train-state" / "teacher.pt").write_bytes(b"not a torch file")
    _one_line_error(*_cli("distill-export", "--out", out, *FAST, "--resume"), 2, "train this model afresh")
    (staging / "train-state" / "teacher.pt").unlink()  # the advice works: the run goes on from there
    code, text = _cli("distill-export", "--out", out, *FAST, "--resume")
    assert code == 0, text


def test_corrupt_recorded_options(tmp_path):
    out = tmp_path / "o"
    staging = _staging_for(out)
    (staging / "resume-options.json").write_text("{not json")
    _one_line_error(*_cli("distill-export", "--out", out, *FAST, "--resume"), 2, "rerun without --resume")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sw") / "sweep"
    code, text = _cli("sweep", "--out", out, *FAST, "--temperature", "4", "--soft-weight", "0.5", "--seeds", "0",
                      "--scale-t2", "on")
    assert code == 0, text
    return out


@pytest.mark.parametrize("damage,msg", [
    (lambda out: (out / "cells" / "baseline-s0.json").write_text("{"), "delete it to retrain this unit"),
    (lambda out: (out / "cells" / "baseline-s0.json").write_text('{"accuracy": "high"}'), "no valid accuracy"),
    (lambda out: (out / "sweep-config.json").write_text("[]"), "pass --overwrite to start the sweep afresh"),
])
def test_corrupt_sweep_files(sweep, tmp_path, damage, msg):
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    damage(out)
    _one_line_error(*_cli("sweep", "--out", out, *FAST, "--temperature", "4", "--soft-weight", "0.5",
                          "--seeds", "0", "--scale-t2", "on"), 2, msg)


# -- two runs, one output ---------------------------------------------------------------------------------
def test_second_run_on_a_locked_output_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; from kdexport.outputs import lock_output; "
        "lock_output(pathlib.Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)"), str(out)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        staging = staging_dir(out)
        staging.mkdir()
        (staging / "marker").write_text("the other run's live state")
        _one_line_error(*_cli("distill-export", "--out", out, *FAST), 2, f"in use by another kdexport process "
                                                                          f"(pid {holder.pid})")
        assert (staging / "marker").exists()  # the other run's staging folder was not touched
        _one_line_error(*_cli("sweep", "--out", out, *FAST, "--seeds", "0"), 2, "in use by another")
    finally:
        holder.kill()
        holder.wait()
    code, text = _cli("distill-export", "--out", out, *FAST)  # the lock died with its process
    assert code == 0, text
    assert not (tmp_path / ".o.lock").exists()


def test_lock_is_reentrant_and_released(tmp_path):
    out = tmp_path / "o"
    lock_output(out)
    lock_output(out)
    release_output(out)
    assert not (tmp_path / ".o.lock").exists()


def test_overwrite_keeps_the_old_output_until_the_new_one_is_in_place(tmp_path):
    final, staging = tmp_path / "o", tmp_path / ".o.partial"
    final.mkdir()
    (final / "report.json").write_text("old")
    with pytest.raises(OutputError):
        commit_out_dir(staging, final)  # the new output is missing: the old one stays
    assert (final / "report.json").read_text() == "old"
    staging.mkdir()
    (staging / "report.json").write_text("new")
    commit_out_dir(staging, final)
    assert (final / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


# -- full disk and write errors -------------------------------------------------------------------------------
def test_file_size_limit_is_one_line_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "o"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
            "from kdexport.cli import main; sys.argv = ['kdexport', *sys.argv[1:]]; main()")
    env = {**os.environ, "KDEXPORT_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-c", code, "distill-export", "--out", str(out), *FAST,
                        "--teacher", "mlp:1200,1200"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "cannot write" in p.stderr, p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.startswith("error:")]) == 1, p.stderr
    assert not out.exists() and not list(staging_dir(out).rglob("*.tmp"))
    _no_partials(tmp_path)


def test_optional_cache_that_cannot_be_written_warns_and_goes_on(digits, tmp_path):
    from kdexport.distill.teacher import TorchTeacher, cached_teacher_logits
    from kdexport.models.builders import ModelSpec, build_model

    blocker = tmp_path / "file"
    blocker.write_text("x")
    teacher = TorchTeacher.for_data(build_model(ModelSpec("mlp:8", 10, digits.input_shape)).eval(), digits,
                                    torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="teacher-logit cache not saved"):
        logits = cached_teacher_logits(teacher, digits, blocker / "cache")
    assert logits.shape == (len(digits.y_train), 10)


# -- image files kdexport did not write ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def odd_photos(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (48, 40), (200, 30 * i, 10) if c == "a" else (10, 30 * i, 200)).save(
                    root / split / c / f"p{i}.jpg")
    a = root / "train" / "a"
    (a / "0_empty.jpg").write_bytes(b"")  # sorts first
    (a / "0_text.png").write_text("not an image")
    Image.new("L", (40, 40), 128).save(a / "00_gray.png")  # a grayscale image sorting first
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(a / "rgba.png")  # fully transparent: white, not black
    Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(a / "deep.png")  # 16-bit white
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(a / "cmyk.jpg")
    Image.new("P", (40, 40), 3).save(a / "palette.png")
    # EXIF orientation 6 (rotate 90 degrees clockwise to display): a 48x24 image, left half white
    im = Image.new("L", (48, 24), 0)
    im.paste(255, (0, 0, 24, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.convert("RGB").save(a / "rotated.jpg", exif=exif.tobytes())
    return root


def test_odd_images_load_and_the_set_decides_its_format(odd_photos, monkeypatch, tmp_path):
    from kdexport.data.datasets import load_dataset
    from kdexport.data.images import Geometry, decode_all

    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="2 unreadable image"):
        d = load_dataset("imagefolder", odd_photos, download=False)
    assert d.input_shape == (3, 40, 40)  # RGB despite a grayscale first file; median shorter side, not 768
    assert len(d.y_train) == 6 + 6 and len(d.y_test) == 6  # six odd-format images load, two files are skipped
    assert "40x40, the median shorter side" in d.source
    a = odd_photos / "train" / "a"
    x, ok, skipped = decode_all([a / "deep.png", a / "rgba.png", a / "rotated.jpg", a / "0_empty.jpg"], 3,
                                Geometry(40, 40))
    assert ok == [0, 1, 2] and len(skipped) == 1
    assert int(x[0].min()) == 255  # 16-bit white is white, not clipped from 65535
    assert int(x[1].min()) == 255  # transparent on white
    top, bottom = x[2][:, :20].float().mean(), x[2][:, 20:].float().mean()
    assert top > 200 and bottom < 50  # upright (white half on top), resized to 40x80, center 40x40


def test_decompression_bomb_is_skipped(odd_photos, monkeypatch, tmp_path):
    from PIL import Image

    from kdexport.data.images import probe

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert "decompression bom" in probe(odd_photos / "train" / "a" / "p0.jpg")


# -- silent wrong results: a collapsed model is flagged ------------------------------------------------------
def test_prediction_health_flags_collapse_and_below_majority():
    from kdexport.runtimes.base import prediction_health

    labels = np.array([0] * 5 + [1] * 3 + [2] * 2)  # majority class rate 50%
    h = prediction_health(np.full(10, 2), labels, 3)  # one class for everything
    assert h["classes_predicted"] == 1 and h["top_class_share"] == 1.0 and h["majority_class_rate"] == 0.5
    assert h["flag"].startswith("collapsed: predicts class 2 for 100%")
    h = prediction_health(np.array([1, 1, 1, 0, 2, 2, 0, 0, 0, 0]), labels, 3)  # 1/10 right < 50%
    assert h["flag"].startswith("below the majority-class rate: 10.00% <= 50.00%")
    assert prediction_health(labels.copy(), labels, 3)["flag"] is None
    skewed = np.array([0] * 95 + [1] * 5)  # a test set that skewed: all-0 is "below majority", not "collapsed"
    assert prediction_health(np.zeros(100), skewed, 2)["flag"].startswith("below the majority-class rate")


def test_report_flags_a_collapsed_student(run, tmp_path):
    from kdexport.report.write import to_markdown

    r = json.loads((run / "report.json").read_text())
    assert r["models"]["student"]["predictions"]["classes_predicted"] >= 1  # recorded for every exported model
    r["models"]["student"]["predictions"]["flag"] = "collapsed: predicts class 3 for 100% of the test images"
    r["models"]["baseline"]["predictions"]["flag"] = "below the majority-class rate: 9.00% <= 10.00%"
    md = to_markdown(r)
    headline = md.splitlines()[4]  # title, blank, "Created ...", blank, then this
    assert headline == ("> **Not fit to ship: the distilled student is collapsed: predicts class 3 for 100% of the "
                        "test images.**")  # the report's first words after its title, before any KD gain
    assert "**Warning: baseline below the majority-class rate" in md  # not shipped: a warning below the table
    assert md.index("Not fit to ship") < md.index("KD gain")


# -- messages say what happened ------------------------------------------------------------------------------------
def test_a_run_stopped_by_a_check_does_not_say_interrupted(tmp_path):
    code, text = _cli("distill-export", "--out", tmp_path / "o", *FAST, "--epochs", "1", "--lr", "1e-12",
                      "--teacher-epochs", "1")
    assert code == 2 and "no better than chance" in text, text
    assert "run interrupted" not in text and "run stopped; its partial state is kept" in text


def test_overwrite_names_the_hidden_folder_in_its_way_before_the_run_starts(tmp_path, monkeypatch):
    import shutil

    import kdexport.outputs as outputs

    out = tmp_path / "o"
    out.mkdir()
    (tmp_path / ".o.old").mkdir()  # left by an earlier --overwrite cut off at its end
    real = shutil.rmtree

    def stuck(path, *a, **k):
        if str(path).endswith(".o.old"):
            raise PermissionError(13, "Permission denied")
        return real(path, *a, **k)

    monkeypatch.setattr(outputs.shutil, "rmtree", stuck)
    code, text = _cli("distill-export", "--out", out, *FAST, "--overwrite")
    _one_line_error(code, text, 2, f"the hidden folder '{tmp_path / '.o.old'}' (the old output's place while it is "
                                   "replaced) is in the way and cannot be removed (Permission denied)")
    assert "teacher epoch" not in text  # said before any training, not after


def test_an_int8_gain_reads_as_a_gain():
    from kdexport.report.write import drop_text

    assert drop_text(0.28) == "drop 0.28 points" and drop_text(-0.28) == "gain 0.28 points"


def test_the_image_size_line_says_when_224_is_the_cap(tmp_path):
    from PIL import Image

    from kdexport.data.datasets import load_dataset

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 255, (240, 260, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / c / f"{i}.png")
    d = load_dataset("imagefolder", tmp_path, download=False)
    assert d.input_shape == (3, 224, 224)
    assert "the 224 px cap (the median shorter side is 240; --image-size to change it)" in d.source
    assert "the median shorter side is 240" in load_dataset("imagefolder", tmp_path, download=False).source  # cached


@pytest.mark.parametrize("layout,msg", [
    ({"train/a": 3, "train/b": 3, "train/c": 0, "test/a": 1, "test/b": 1, "test/c": 1},
     "class folder(s) 'c' of '{root}/train' have no training images"),
    ({"train/a": 3, "train/b": 3, "test/a": 1, "test/b": 1, "test/c": 2, "train/c": 0},
     "class folder(s) 'c' of '{root}/train' have no training images"),
])
def test_a_class_without_training_images_is_refused_naming_it(tmp_path, layout, msg):
    from PIL import Image

    root = tmp_path / "photos"
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / folder / f"{i}.png")
    _one_line_error(*_cli("distill-export", "--dataset", "imagefolder", "--data-dir", root, *FAST,
                          "--out", tmp_path / "o"), 2, msg.format(root=root))
    assert not (tmp_path / "o").exists()


def test_a_class_whose_training_images_are_all_unreadable_is_refused(tmp_path):
    from PIL import Image

    from kdexport.data.datasets import load_dataset
    from kdexport.errors import DataError

    for folder, n in {"train/a": 3, "train/b": 2, "test/a": 1, "test/b": 1}.items():
        (tmp_path / folder).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / folder / f"{i}.png")
    for f in (tmp_path / "train" / "b").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(DataError, match="class folder.s. 'b' .* have no readable training images; e.g. "):
        load_dataset("imagefolder", tmp_path, download=False)


def test_bench_finds_the_dataset_in_the_models_metadata(run, tmp_path):
    from kdexport.bench.command import bench_models
    from kdexport.config import BenchOptions

    student = run / "onnx" / "student.onnx"
    r = bench_models(BenchOptions(models=(str(student),), iters=2, warmup=0, batch_sizes=(1,)))
    assert r["dataset"]["name"] == "digits"  # no --dataset: the metadata's, as quantize finds it
    report = json.loads((run / "report.json").read_text())
    assert r["models"]["student"]["accuracy_onnx"] == report["models"]["student"]["accuracy_onnx"]
    elsewhere = _with_metadata(student, tmp_path / "m.onnx", dataset="mnist")
    with pytest.warns(RuntimeWarning, match="accuracy not measured: m.onnx names dataset 'mnist', which cannot be"):
        r = bench_models(BenchOptions(models=(str(elsewhere),), iters=2, warmup=0, batch_sizes=(1,),
                                      data_dir=str(tmp_path)))
    assert r["dataset"] is None and "accuracy_onnx" not in r["models"]["m"]
