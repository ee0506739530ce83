"""The CLI end to end on the embedded default, and every bad input giving one clear line."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import QuantConfig, RunConfig, TrainConfig
from kdexport.models.builders import ModelSpec, build_model
from kdexport.models.checkpoint import save_checkpoint

from .conftest import FAST

runner = CliRunner()
REPORT_KEYS = {"kdexport_version", "created", "config", "environment", "dataset", "models", "kd_gain_points"}
MODEL_KEYS = {"arch", "params", "flops", "onnx_path", "onnx_bytes", "accuracy_torch", "accuracy_onnx",
              "parity", "latency_ms", "throughput_per_s"}


@pytest.fixture
def run(finished_run):
    return finished_run.out, finished_run


def test_end_to_end_report_contract(run):
    out, res = run
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert {"python", "torch", "torchvision", "onnx", "onnxruntime", "cpu", "threads"} <= set(report["environment"])
    assert {"name", "num_classes", "train_size", "test_size", "input_shape"} <= set(report["dataset"])
    assert set(report["models"]) == {"teacher", "baseline", "student", "student_int8"}
    for role in ("teacher", "baseline", "student"):
        m = report["models"][role]
        assert MODEL_KEYS <= set(m), role
        assert (out / m["onnx_path"]).stat().st_size == m["onnx_bytes"]
        assert 0 <= m["accuracy_onnx"] <= 1
        assert abs(m["accuracy_onnx"] - m["accuracy_torch"]) <= 0.001
        assert set(m["latency_ms"]) == {"batch_1", "batch_4"}
        assert {"p50", "p90", "p99"} <= set(m["latency_ms"]["batch_1"])
        assert m["parity"]["top1_agreement"] == 1.0
    st, base = report["models"]["student"], report["models"]["baseline"]
    assert st["accuracy_onnx"] > 0.5  # chance is 0.1
    assert report["kd_gain_points"] == pytest.approx((st["accuracy_onnx"] - base["accuracy_onnx"]) * 100)
    assert report["config"]["kd"]["temperature"] == 4.0 and report["config"]["train"]["epochs"] == 3
    assert "torch_eager" in st
    assert (out / "report.md").read_text().startswith("# kdexport report")
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.parent.iterdir() if "partial" in p.name]
    assert "KD gain" in res.output
    # the CLI's report records exactly the config the Python API builds from the same options
    want = json.loads(json.dumps(RunConfig(teacher="mlp:64", train=TrainConfig(epochs=3), bench_iters=3, bench_batch=4,
                                           quantize="dynamic", quant=QuantConfig(max_accuracy_drop=100), package=True,
                                           out=str(out)).to_dict()))  # as JSON: tuples are lists
    assert report["config"] == want
    # not a terminal (a log): one progress line per epoch, written as it ends
    assert "teacher epoch 1:" in res.output and "student epoch 3:" in res.output


def test_existing_out_is_refused_without_overwrite(run):
    out, _ = run
    before = (out / "report.json").read_text()
    res = runner.invoke(app, ["distill-export", "--out", str(out), *FAST])
    assert res.exit_code == 2 and "exists; pass --overwrite" in res.output
    assert (out / "report.json").read_text() == before


def _bad(tmp_path, *args):
    out = tmp_path / "out"
    res = runner.invoke(app, ["distill-export", "--out", str(out), *FAST, *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert not out.exists()  # no half-written artifact
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    return res.output


@pytest.mark.parametrize("args,msg", [
    (["--teacher", "resnet9000"], "unknown model 'resnet9000'; choose one of:"),
    (["--student", "mlp:x"], "bad mlp spec"),
    (["--dataset", "svhn"], "unknown dataset 'svhn'; choose one of: cifar10, digits"),
    (["-T", "0"], "temperature must be > 0"),
    (["--soft-weight", "1.5"], "soft weight (beta) must be in [0, 1]"),
    (["--optimizer", "lbfgs"], "unknown optimizer 'lbfgs'; choose one of: adam, muon, sgd"),
    (["--dataset", "mnist", "--data-dir", "/nonexistent/kd"], "does not exist"),
    (["--teacher-checkpoint", "/nonexistent/t.pt"], "does not exist"),
    (["--kd-loss", "crd"], "unknown distillation loss 'crd'"),
    (["--dkd-beta", "-1"], "dkd beta must be a number >= 0"),
    (["--hint", "layer1:layer2"], "--hint takes teacher.LAYER:student.LAYER"),
    (["--hint", "teacher.nope:student.net.1"], "the teacher has no module 'nope'"),
    (["--fallback", "sometimes"], "unknown fallback 'sometimes'; choose one of: auto, none"),
    (["--latency-budget", "2 parsecs"], "latency budget '2 parsecs'"),
    (["--size-budget", "big"], "size budget 'big'"),
    (["--budget-margin", "1.5"], "budget margin must be in [0, 1)"),
    (["--label-smoothing", "1"], "label smoothing must be in [0, 1)"),
    (["--label-smoothing", "nan"], "label smoothing must be in [0, 1)"),
    (["--parity-rtol", "0"], "relative parity tolerance must be > 0"),
    (["--parity-atol", "-1"], "parity tolerance must be > 0"),
    (["--teacher-std", "0.5"], "applies to a trained teacher only"),
    (["--student", "auto"], "--student auto needs --latency-budget"),
    (["--student-weights", "/nonexistent/s.pt"], "does not exist"),
    (["--data-mode", "disk"], "unknown data mode 'disk'; choose one of: auto, memory, stream"),
    (["--data-mode", "stream"], "--data-mode stream applies to image files"),
    (["--memory-budget", "lots"], "memory budget 'lots'"),
    (["--workers", "-1"], "workers must be in [0, 256]"),
    (["--crop-ratio", "0.875"], "--crop-ratio applies to image files"),
    (["--dataset", "imagefolder", "--crop-ratio", "2"], "crop ratio must be in [0.1, 1]"),
    (["--ema", "1"], "ema decay must be in [0, 1)"),
    (["--bias-lr-scale", "0"], "bias lr scale must be > 0"),
    (["--eval-every", "0"], "eval every must be >= 1 (epochs)"),
    (["--clip-grad-norm", "-1"], "clip grad norm must be >= 0 (0: off)"),
    (["--student", "ensemble:2xmlp:8", "--hint", "teacher.net.1:student.members.0.net.1"],
     "--hint on an ensemble student"),
    (["--teacher-tta", "five-crop"], "unknown teacher tta 'five-crop'; choose one of: flip, flip-shift, none"),
    (["--precision", "fp16"], "unknown precision 'fp16'; choose one of: auto, bf16, fp32"),
    (["--augment", "mixup"], "unknown augmentation 'mixup'"),
    (["--teacher-view-cache", "--augment", "rrc-flip"], "--teacher-view-cache needs an augmentation with finitely"),
    (["--teacher-view-cache", "--hint", "teacher.net.1:student.net.1"], "drop --teacher-view-cache"),
])
def test_bad_input_one_clear_line(tmp_path, args, msg):
    output = _bad(tmp_path, *args)
    assert msg in " ".join(output.split()), output


def test_teacher_checkpoint_for_another_arch_or_class_count(tmp_path):
    spec = ModelSpec("mlp:32", 5, (1, 8, 8))
    save_checkpoint(tmp_path / "t5.pt", build_model(spec), spec, role="teacher", config={})
    assert "holds a mlp:32, not a mlp:64" in _bad(tmp_path, "--teacher-checkpoint", str(tmp_path / "t5.pt"),
                                                  "--teacher", "mlp:64")
    assert "5 classes; the dataset has 10" in _bad(tmp_path, "--teacher-checkpoint", str(tmp_path / "t5.pt"),
                                                   "--teacher", "mlp:32")


def test_unwritable_out(tmp_path):
    (tmp_path / "file").write_text("x")
    res = runner.invoke(app, ["distill-export", "--out", str(tmp_path / "file" / "sub"), *FAST])
    assert res.exit_code == 2 and "cannot write output folder" in res.output


def test_teacher_checkpoint_is_reused(run, tmp_path):
    out, _ = run
    res = runner.invoke(app, ["distill-export", "--out", str(tmp_path / "r2"), *FAST,
                              "--teacher-checkpoint", str(out / "checkpoints" / "teacher.pt")])
    assert res.exit_code == 0, res.output
    r1 = json.loads((out / "report.json").read_text())
    r2 = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert r2["models"]["teacher"]["accuracy_onnx"] == r1["models"]["teacher"]["accuracy_onnx"]
    assert r2["models"]["student"]["accuracy_onnx"] == r1["models"]["student"]["accuracy_onnx"]
    assert r2["models"]["teacher"]["history"] == []


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "kdexport", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("kdexport ")


def test_checkpoints_load_weights_only(run):
    out, _ = run
    blob = torch.load(out / "checkpoints" / "student.pt", weights_only=True)
    assert blob["config"]["kd"]["soft_weight"] == 0.5 and blob["model"]["arch"] == "mlp:14"


def test_distill_export_with_another_loss_records_it(tmp_path):
    res = runner.invoke(app, ["distill-export", "--out", str(tmp_path / "dkd"), *FAST,
                              "--kd-loss", "dkd", "--logit-standardization", "--dkd-beta", "2", "--dkd-warmup", "1"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "dkd" / "report.json").read_text())
    kd = report["config"]["kd"]
    assert (kd["loss"], kd["logit_standardization"], kd["dkd_beta"], kd["dkd_warmup"]) == ("dkd", True, 2.0, 1.0)
    from kdexport.runtimes.ort import read_metadata

    meta = read_metadata(tmp_path / "dkd" / "onnx" / "student.onnx")
    assert meta["distillation"]["loss"] == "dkd" and meta["distillation"]["logit_standardization"] is True
    assert report["models"]["student"]["history"][0]["train_kd"] > 0
    assert runner.invoke(app, ["distill-export", "--kd-loss", "crd"]).exit_code == 2


@pytest.mark.parametrize("args,msg", [
    (["quantize", "m.onnx", "--out", "q.onnx", "--fallback", "sometimes"], "unknown fallback 'sometimes'"),
    (["package", "run", "--out", "pkg", "--samples", "0"], "samples must be >= 1"),
    (["select", "--latency-budget", "1ms", "--budget-margin", "2"], "budget margin must be in [0, 1)"),
    (["select", "--latency-budget", "1ms", "--batch", "0"], "budget threads and batch must be >= 1"),
    (["bench", "m.onnx", "--batch-sizes", "0"], "batch sizes must be >= 1"),
    (["predict", "m.onnx", "x.png", "--top-k", "0"], "top-k must be >= 1"),
    (["check", "r.json", "--baseline", "b.json", "--min-accuracy", "1.5"], "min accuracy must be a fraction"),
])
def test_bad_options_of_other_commands_one_line_exit_2(tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert msg in " ".join(res.output.split()), res.output
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cache_list_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(tmp_path))
    (tmp_path / "imagefolder").mkdir()
    (tmp_path / "imagefolder" / "a.pt").write_bytes(b"x" * 3 * 2**20)
    (tmp_path / "teacher-logits").mkdir()
    (tmp_path / "teacher-logits" / "b.pt").write_bytes(b"x" * 2**20)
    res = runner.invoke(app, ["cache", "list"])
    assert res.exit_code == 0 and str(tmp_path) in res.output
    assert "imagefolder 1 files 3.0 MB" in " ".join(res.output.split()), res.output
    res = runner.invoke(app, ["cache", "clear", "--part", "teacher-logits"])
    assert res.exit_code == 0 and "1.0 MB freed" in res.output
    assert not (tmp_path / "teacher-logits").exists() and (tmp_path / "imagefolder" / "a.pt").exists()
    res = runner.invoke(app, ["cache", "clear", "--part", "everything"])
    assert res.exit_code == 2 and "unknown part 'everything'; choose one of: all, baselines" in res.output
