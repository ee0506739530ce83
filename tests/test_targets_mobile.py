"""``--targets litert,executorch,coreml`` (issue 44): the distilled student as a .tflite (litert-torch, run by
LiteRT's interpreter), a .pte (ExecuTorch, XNNPACK) and a Core ML package (checked, not run, off macOS), FP32 and
INT8, each proven like the ONNX file; ``bench`` and ``predict`` run the files; broken files are one line.

Slow: it needs the heavy extras (``kdexport[runtimes]``), which ``.ci/run`` installs."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from kdexport.cli import app

from .conftest import FAST

pytestmark = pytest.mark.slow
pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")
pytest.importorskip("executorch")
pytest.importorskip("coremltools")

RUNNABLE = {"litert": "student.tflite", "executorch": "student.pte"}


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    out = tmp_path_factory.mktemp("mobile") / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--quantize", "static",
                                   "--max-accuracy-drop", "100", "--targets", "litert,executorch,coreml"])
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "report.json").read_text()), res.output


def test_every_mobile_runtime_gets_a_proven_file_fp32_and_int8(mobile):
    out, report, output = mobile
    rows = {(r["target"], r["precision"]): r for r in report["runtimes"]["rows"]}
    assert list(rows) == [("onnx", "fp32"), ("onnx", "int8"), ("litert", "fp32"), ("litert", "int8"),
                          ("executorch", "fp32"), ("executorch", "int8"), ("coreml", "fp32"), ("coreml", "int8")]
    onnx32 = rows["onnx", "fp32"]
    one_image = 1 / report["dataset"]["test_size"]
    for target, name in RUNNABLE.items():
        fp32, int8 = rows[target, "fp32"], rows[target, "int8"]
        assert fp32["error"] is None and fp32["path"] == f"{target}/{name}", fp32
        assert fp32["parity"]["max_abs_diff"] <= fp32["parity"]["tolerance"] and fp32["parity"]["top1_agreement"] >= .99
        assert abs(fp32["accuracy"] - onnx32["accuracy"]) <= one_image  # measured in its own runtime
        assert fp32["bytes"] == (out / fp32["path"]).stat().st_size and fp32["runtime_version"]
        assert int8["error"] is None and int8["path"].endswith(".int8" + name[len("student"):])
        assert int8["accuracy_drop_points"] == pytest.approx((onnx32["accuracy"] - int8["accuracy"]) * 100)
        for row in (fp32, int8):  # timed in the report's rounds
            assert row["latency_ms"]["batch_1"]["p50"] > 0 and row["extra"]["speedup_vs_onnx_fp32_batch_1"]
    core = rows["coreml", "fp32"]
    assert core["path"] == "coreml/student.mlpackage" and (out / core["path"] / "Manifest.json").is_file()
    assert core["latency_ms"] is None and core["accuracy"] is None and not core["runs_here"]  # not run: said so
    assert core["extra"]["checked"]["class_labels"] == report["dataset"]["num_classes"]
    assert core["extra"]["baked_preprocessing_max_abs_diff"] < 1e-5
    assert rows["coreml", "int8"]["path"] is None and "not made" in rows["coreml", "int8"]["note"]
    md = (out / "report.md").read_text()
    assert "this file's outputs were NOT run here" in md and "| litert | int8 | litert/student.int8.tflite |" in md
    assert "exporting for executorch" in output and "XNNPACK delegate" not in output  # native banners kept off


def test_each_file_carries_the_onnx_files_metadata(mobile):
    from kdexport.runtimes.base import inspect

    out, _, _ = mobile
    ref = inspect(out / "onnx" / "student.onnx")
    for path in ("litert/student.tflite", "litert/student.int8.tflite", "executorch/student.pte",
                 "executorch/student.int8.pte", "coreml/student.mlpackage"):
        info = inspect(out / path)
        for key in ("class_names", "mean", "std", "input_shape", "arch"):
            assert info["metadata"][key] == ref["metadata"][key], (path, key)
        assert info["input_shape"] == ref["input_shape"] and info["num_classes"] == ref["num_classes"], path
    assert inspect(out / "litert/student.tflite")["batch"] == 1
    assert inspect(out / "litert/student.tflite")["metadata"]["layout"] == "NCHW"
    pte = inspect(out / "executorch/student.pte")
    assert pte["batch"] is None and pte["max_batch"] == 64


def test_files_give_the_onnx_files_answers_through_bench_and_predict(mobile, tmp_path):
    from PIL import Image

    from kdexport.runtimes.base import load

    out, report, _ = mobile
    x = np.random.default_rng(0).standard_normal((100, 1, 8, 8)).astype(np.float32)  # 100 > the .pte's bound 64
    want = load(out / "onnx" / "student.onnx").logits(x)
    for path in RUNNABLE.items():
        got = load(out / "/".join(path)).logits(x)
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4, path
    res = CliRunner().invoke(app, ["bench", str(out / "litert/student.tflite"), str(out / "executorch/student.pte"),
                                   "--iters", "5", "--batch-sizes", "1,4", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    b = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [m["runtime"] for m in b["models"].values()] == ["litert", "executorch"]
    img = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (8, 8), dtype=np.uint8)).save(img)
    tops = []
    for f in ("onnx/student.onnx", "litert/student.tflite", "executorch/student.pte"):
        a = CliRunner().invoke(app, ["predict", str(out / f), str(img), "--json"])
        assert a.exit_code == 0, a.output
        tops.append([t["index"] for t in json.loads(a.output)[0]["top"]])
    assert tops[0] == tops[1] == tops[2]
    res = CliRunner().invoke(app, ["predict", str(out / "coreml/student.mlpackage"), str(img)])
    assert res.exit_code == 2 and "predicts only on macOS" in res.output and len(res.output.splitlines()) == 1


def test_broken_mobile_files_are_one_line_exit_2(mobile, tmp_path):
    out, _, _ = mobile
    cut_tflite = tmp_path / "cut.tflite"
    cut_tflite.write_bytes((out / "litert/student.tflite").read_bytes()[:200])
    cut_pte = tmp_path / "cut.pte"
    cut_pte.write_bytes((out / "executorch/student.pte").read_bytes()[:200])
    garbage = tmp_path / "garbage.tflite"
    garbage.write_text("hello, not a flatbuffer")
    not_pte = tmp_path / "onnx.pte"
    shutil.copy(out / "onnx/student.onnx", not_pte)
    empty_pkg = tmp_path / "empty.mlpackage"
    empty_pkg.mkdir()
    for path, message in ((cut_tflite, "LiteRT"), (garbage, "no TFL3 identifier"), (cut_pte, "ExecuTorch"),
                          (not_pte, "no ET identifier"), (empty_pkg, "not a Core ML package")):
        for cmd in (["bench", str(path), "--iters", "2", "--out", str(tmp_path / "b")],
                    ["predict", str(path), str(path)]):
            res = CliRunner().invoke(app, cmd)
            assert res.exit_code == 2, (cmd, res.output)
            assert message in res.output and "Traceback" not in res.output and len(res.output.splitlines()) == 1, \
                (cmd, res.output)


def test_a_core_ml_package_with_other_labels_fails_its_check(mobile):
    from kdexport.errors import ModelFileError
    from kdexport.runtimes.base import inspect
    from kdexport.runtimes.coreml import check_package

    out, _, _ = mobile
    pkg = out / "coreml/student.mlpackage"
    meta = inspect(out / "onnx" / "student.onnx")["metadata"]
    checked = check_package(pkg, meta)
    assert checked["preprocessing"]["scale"] == pytest.approx([1 / 255])
    with pytest.raises(ModelFileError, match="class labels"):
        check_package(pkg, {**meta, "class_names": list(reversed(meta["class_names"]))})
    with pytest.raises(ModelFileError, match="expected 9x8"):
        check_package(pkg, {**meta, "input_shape": [1, 8, 9]})


def test_litert_metadata_and_quantized_io_round_trip_by_hand(mobile):
    from kdexport.runtimes.litert import _metadata_from, quantizer, with_metadata

    out, _, _ = mobile
    buf = (out / "litert/student.tflite").read_bytes()
    again = with_metadata(buf, {"a": [1, 2]})  # replaces kdexport's entry, keeps one
    assert _metadata_from(again) == {"a": [1, 2]}
    q, dq = quantizer({"dtype": np.int8, "quantization": (0.5, 3)})
    assert q(np.array([0.0, 1.0, -1.26, 1000.0])).tolist() == [3, 5, 0, 127]  # round(x / 0.5) + 3, clipped
    assert dq(np.array([3, 5, -128], dtype=np.int8)).tolist() == [0.0, 1.0, -65.5]


def test_the_package_holds_every_runtimes_file_and_verify_runs_each(mobile, tmp_path):
    from kdexport.report.package import verify, write_sums

    out, report, _ = mobile
    pkg = tmp_path / "pkg"
    res = CliRunner().invoke(app, ["package", str(out), "--out", str(pkg)])
    assert res.exit_code == 0, res.output
    for name in ("litert/model.tflite", "litert/model.int8.tflite", "executorch/model.pte",
                 "executorch/model.int8.pte", "coreml/model.mlpackage/Manifest.json",
                 "test_data_set_0/output_0.litert.int8.pb", "test_data_set_0/output_0.executorch.int8.pb"):
        assert (pkg / name).is_file(), name
    card = (pkg / "README.md").read_text()
    assert "| litert/model.tflite | litert |" in card and "not run: Core ML predicts only on macOS" in card
    assert verify(pkg) == []
    res = CliRunner().invoke(app, ["verify", str(pkg)])
    assert res.exit_code == 0 and "OK" in res.output
    # a wrong file under the right name, its checksum list rewritten to match: only running it catches it
    shutil.copyfile(pkg / "litert/model.int8.tflite", pkg / "litert/model.tflite")
    labels = (pkg / "labels.txt").read_text().splitlines()
    (pkg / "labels.txt").write_text("\n".join(reversed(labels)) + "\n")
    write_sums(pkg)
    failures = verify(pkg)
    assert any(f.startswith("litert/model.tflite: max abs difference") for f in failures), failures
    assert any(f.startswith("coreml/model.mlpackage: cannot be checked") and "class labels" in f
               for f in failures), failures
    # only some runtimes' files, on request; a runtime the run did not make is one line
    res = CliRunner().invoke(app, ["package", str(out), "--out", str(tmp_path / "p2"), "--targets", "executorch"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p2/executorch/model.pte").is_file() and not (tmp_path / "p2/litert").exists()
    res = CliRunner().invoke(app, ["package", str(out), "--out", str(tmp_path / "p3"), "--targets", "openvino"])
    assert res.exit_code == 2 and "--targets onnx,openvino" in res.output and not (tmp_path / "p3").exists()


def test_executorch_keeps_the_pool_its_first_program_got(mobile):
    from kdexport.runtimes.base import load
    from kdexport.runtimes.executorch import set_threads

    out, _, _ = mobile
    a, b = load(out / "executorch/student.pte", threads=1), load(out / "executorch/student.pte", threads=3)
    assert a.threads == b.threads == set_threads(5)  # never resized once a program is loaded (it would abort)
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    assert np.array_equal(a.run(x), b.run(x))


def test_a_converter_that_refuses_the_model_is_one_warning_and_the_others_ship(tmp_path, monkeypatch):
    import litert_torch

    def refuse(*args, **kwargs):
        raise NotImplementedError("aten::frobnicate has no lowering")

    monkeypatch.setattr(litert_torch, "convert", refuse)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--targets", "litert,executorch"])
    assert res.exit_code == 0, res.output
    rows = {(r["target"], r["precision"]): r for r in json.loads((out / "report.json").read_text())["runtimes"]["rows"]}
    lite = rows["litert", "fp32"]
    assert lite["path"] is None and "litert: the converter refused the model" in lite["error"]
    assert "aten::frobnicate" in lite["error"] and "another target" in lite["error"]
    assert rows["executorch", "fp32"]["path"] == "executorch/student.pte"
    assert "warning: student litert fp32: litert: the converter refused" in res.output
