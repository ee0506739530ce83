"""Bring your own teacher: an ONNX file, an architecture plus a weights file, any torchvision/timm name;
students from weights files. Every bad file gives one line and exit 2."""

import dataclasses
import json
import pickle

import pytest
import torch
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import RunConfig, TrainConfig
from kdexport.distill.teacher import OnnxTeacher, TorchTeacher
from kdexport.distill.train import evaluate
from kdexport.errors import CheckpointError, DataError
from kdexport.export.onnx import save_self_contained
from kdexport.models.builders import ModelSpec, build_model
from kdexport.models.weights import load_weights, read_state_dict
from kdexport.pipeline import distill_export
from kdexport.runtimes.ort import onnx_files

from .conftest import FAST

runner = CliRunner()

DIGITS = (1, 8, 8)


def plain_onnx_export(model: torch.nn.Module, path, shape=DIGITS, batch=None) -> None:
    """What a user's own script does: torch.onnx.export, no kdexport metadata."""
    dyn = None if batch else ({0: torch.export.Dim("batch", min=1, max=4096)},)
    torch.onnx.export(model.eval(), (torch.zeros(batch or 2, *shape),), str(path), input_names=["x"],
                      output_names=["y"], dynamo=True, dynamic_shapes=dyn)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A digits teacher trained with plain PyTorch, saved as a state_dict and exported to ONNX."""
    from kdexport.distill.train import fit

    d = tmp_path_factory.mktemp("byo")
    torch.manual_seed(0)
    teacher = build_model(ModelSpec("mlp:64", 10, DIGITS))
    fit(teacher, digits, TrainConfig(epochs=6))
    torch.save(teacher.state_dict(), d / "teacher.pth")
    plain_onnx_export(teacher, d / "teacher.onnx")
    return d, teacher


def _run(tmp_path, name, train: TrainConfig | None = None, **kw) -> dict:
    cfg = RunConfig(train=train or TrainConfig(epochs=3), bench_iters=3, bench_batch=4, out=str(tmp_path / name),
                    **kw)
    return distill_export(cfg)


@pytest.mark.parametrize("augment", ["none", "shift2"])  # cached teacher logits, and the teacher run live
def test_onnx_teacher_distils_like_the_torch_teacher_it_came_from(trained, tmp_path, augment):
    d, teacher = trained
    via_torch = _run(tmp_path, "t", teacher="mlp:64", teacher_weights=str(d / "teacher.pth"), augment=augment,
                     teacher_dropout=0.0)  # the architecture it was trained as
    via_onnx = _run(tmp_path, "o", teacher=str(d / "teacher.onnx"), augment=augment)
    t, o = via_torch["models"], via_onnx["models"]
    assert o["teacher"]["arch"] == "onnx:teacher.onnx" and o["teacher"]["accuracy_torch"] is None
    assert o["teacher"]["accuracy_onnx"] == pytest.approx(t["teacher"]["accuracy_onnx"], abs=1e-9)
    copied = tmp_path / "o" / "onnx" / "teacher.onnx"  # one self-contained file, its external weights inlined
    assert onnx_files(d / "teacher.onnx") == [d / "teacher.onnx", d / "teacher.onnx.data"]
    assert onnx_files(copied) == [copied] and copied.stat().st_size == o["teacher"]["onnx_bytes"]
    assert o["teacher"]["params"] == sum(p.numel() for p in teacher.parameters())
    # same seed, same student init and batches; the teacher's logits differ by float noise only
    for role in ("baseline", "student"):
        assert abs(o[role]["accuracy_onnx"] - t[role]["accuracy_onnx"]) <= 1 / 359, role
    assert o["baseline"]["accuracy_onnx"] == t["baseline"]["accuracy_onnx"]  # no teacher involved
    assert via_onnx["config"]["teacher"].endswith("teacher.onnx")


def test_onnx_teacher_logits_match_torch_and_are_cached_by_file(trained, digits, tmp_path):
    d, teacher = trained
    onnx_t = OnnxTeacher(d / "teacher.onnx", digits)
    torch_t = TorchTeacher.for_data(teacher, digits)
    x = digits.x_train[:50]
    torch.testing.assert_close(onnx_t.logits(x), torch_t.logits(x), rtol=1e-4, atol=1e-4)
    assert onnx_t.fingerprint() == OnnxTeacher(d / "teacher.onnx", digits).fingerprint()
    other = OnnxTeacher(d / "teacher.onnx", digits, mean=(0.3,), std=(0.2,))  # another transform, another key
    assert other.fingerprint() != onnx_t.fingerprint()
    raw = digits.x_train[:2]
    torch.testing.assert_close(other.normalize(raw), (raw.float() / 16.0 - 0.3) / 0.2)


def test_onnx_teacher_with_a_fixed_batch_runs_image_by_image(trained, digits, tmp_path):
    _, teacher = trained
    plain_onnx_export(teacher, tmp_path / "b1.onnx", batch=1)
    t = OnnxTeacher(tmp_path / "b1.onnx", digits)
    assert t.fixed_batch == 1
    torch.testing.assert_close(t.logits(digits.x_test[:5]), TorchTeacher.for_data(teacher, digits).logits(
        digits.x_test[:5]), rtol=1e-4, atol=1e-4)


def test_onnx_teacher_normalization_comes_from_its_metadata(trained, digits, tmp_path):
    from kdexport.export.onnx import set_metadata

    d, _ = trained
    path = tmp_path / "meta.onnx"
    save_self_contained(d / "teacher.onnx", path)
    set_metadata(path, {"mean": [0.25], "std": [0.5], "class_names": digits.class_names})
    t = OnnxTeacher(path, digits)
    assert (t.mean, t.std) == ((0.25,), (0.5,))
    set_metadata(path, {"class_names": list("abcdefghij")})
    with pytest.raises(DataError, match="same classes, same order"):
        OnnxTeacher(path, digits)


# -- weight files -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    import torchvision
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save(sd, d / "plain.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, d / "ddp.pth")
    torch.save({"epoch": 90, "optimizer": {"lr": 0.1}, "state_dict": sd}, d / "nested.pth")
    torch.save({"model": {k: v for k, v in sd.items()}, "ema": None}, d / "model.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "w.safetensors"))
    torch.save(torchvision.models.resnet18(num_classes=5).state_dict(), d / "five.pth")
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), d / "r34.pth")
    return d, sd


@pytest.mark.parametrize("name", ["plain.pth", "ddp.pth", "nested.pth", "model.pth", "w.safetensors"])
def test_torchvision_state_dicts_load_in_every_common_wrapping(resnet_files, name):
    d, sd = resnet_files
    m = load_weights(build_model(ModelSpec("resnet18", 10, (3, 32, 32))), d / name, "resnet18")
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())


def test_weights_that_do_not_fit_name_what_differs(resnet_files):
    d, _ = resnet_files
    with pytest.raises(CheckpointError, match=r"2 of another shape \(first: fc.weight is \[5, 512\] in the file, "
                                              r"\[10, 512\] in resnet18\)"):
        load_weights(build_model(ModelSpec("resnet18", 10, (3, 32, 32))), d / "five.pth", "resnet18")
    with pytest.raises(CheckpointError, match=r"does not fit resnet18: \d+ unexpected \(first: layer1.2"):
        load_weights(build_model(ModelSpec("resnet18", 10, (3, 32, 32))), d / "r34.pth", "resnet18")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _bad(tmp_path, *args) -> str:
    out = tmp_path / "out"
    res = runner.invoke(app, ["distill-export", "--out", str(out), *FAST, *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert len([line for line in res.output.splitlines() if line.startswith("error:")]) == 1, res.output
    assert not out.exists()
    return " ".join(res.output.split())


def test_bad_teacher_files_give_one_line_and_exit_2(tmp_path):
    torch.manual_seed(0)
    torch.save(build_model(ModelSpec("mlp:32", 5, DIGITS)).state_dict(), tmp_path / "five.pth")
    torch.save(build_model(ModelSpec("mlp:64", 10, DIGITS)).state_dict(), tmp_path / "mlp64.pth")
    torch.save({"state_dict": Evil()}, tmp_path / "evil.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    plain_onnx_export(build_model(ModelSpec("mlp:32", 5, DIGITS)), tmp_path / "five.onnx")
    plain_onnx_export(build_model(ModelSpec("mlp:32", 10, (1, 16, 16))), tmp_path / "big.onnx", shape=(1, 16, 16))
    assert "does not fit mlp:32: 2 of another shape (first: net.3.weight is [5, 32]" in _bad(
        tmp_path, "--teacher", "mlp:32", "--teacher-dropout", "0", "--teacher-weights", str(tmp_path / "five.pth"))
    assert "does not fit mlp:32" in _bad(tmp_path, "--teacher", "mlp:32", "--teacher-weights",
                                         str(tmp_path / "mlp64.pth"))
    assert "safely (weights_only=True)" in _bad(tmp_path, "--teacher", "mlp:32", "--teacher-weights",
                                                str(tmp_path / "evil.pth"))
    assert "as safetensors" in _bad(tmp_path, "--teacher", "mlp:32", "--teacher-weights",
                                    str(tmp_path / "junk.safetensors"))
    assert "teacher five.onnx has 5 classes; the dataset has 10" in _bad(tmp_path, "--teacher",
                                                                         str(tmp_path / "five.onnx"))
    assert "teacher big.onnx takes inputs [1, 16, 16]; the dataset gives [1, 8, 8]" in _bad(
        tmp_path, "--teacher", str(tmp_path / "big.onnx"))
    assert "does not exist" in _bad(tmp_path, "--teacher", str(tmp_path / "missing.onnx"))
    assert "is a directory" in _bad(tmp_path, "--teacher", "mlp:32", "--teacher-weights", str(tmp_path))
    assert "choose one teacher source" in _bad(tmp_path, "--teacher", str(tmp_path / "five.onnx"),
                                               "--teacher-weights", str(tmp_path / "five.pth"))
    assert "applies to a trained teacher only" in _bad(tmp_path, "--teacher-mean", "0.5")


def test_a_teacher_no_better_than_chance_stops_the_run_unless_forced(tmp_path):
    m = build_model(ModelSpec("mlp:8", 10, DIGITS))
    with torch.no_grad():  # always predicts class 3
        for p in m.parameters():
            p.zero_()
        m.net[-1].bias[3] = 1.0
    plain_onnx_export(m, tmp_path / "const.onnx")
    msg = _bad(tmp_path, "--teacher", str(tmp_path / "const.onnx"))
    assert "no better than chance on this data" in msg and "--force" in msg and "--teacher-mean" in msg
    res = runner.invoke(app, ["distill-export", "--out", str(tmp_path / "forced"), *FAST, "--teacher",
                              str(tmp_path / "const.onnx"), "--force"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "forced" / "report.json").read_text())
    assert report["models"]["teacher"]["accuracy_onnx"] < 0.15


def test_student_weights_start_baseline_and_student_alike(tmp_path, digits):
    from kdexport.distill.train import evaluate

    torch.manual_seed(3)
    start = build_model(ModelSpec("mlp:14", 10, DIGITS))
    from kdexport.distill.train import fit

    fit(start, digits, TrainConfig(epochs=4))
    torch.save({"model": start.state_dict()}, tmp_path / "s.pth")
    want = evaluate(start, digits)["accuracy"]
    # a learning rate too small to move the weights: both students stay where they started
    r = _run(tmp_path, "sw", student_weights=str(tmp_path / "s.pth"), teacher="mlp:32",
             train=TrainConfig(epochs=1, lr=1e-12), force=True)  # the teacher learns nothing either
    for role in ("baseline", "student"):
        assert r["models"][role]["accuracy_torch"] == pytest.approx(want, abs=1e-9), role


def test_read_state_dict_refuses_a_file_without_tensors(tmp_path):
    (tmp_path / "p.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path / "p.pt")
    torch.save({"epoch": 3, "note": "x"}, tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match="holds no state_dict of tensors"):
        read_state_dict(tmp_path / "n.pt")


def test_a_sweep_reports_an_onnx_teacher_alone_beside_its_tta(trained, tmp_path):
    """The exported teacher's row is the network alone; the flip-TTA'd accuracy the students saw sits beside it."""
    from kdexport.sweep import Grid, run_sweep

    d, _ = trained
    plain = _run(tmp_path, "p", teacher=str(d / "teacher.onnx"))["models"]["teacher"]["accuracy_onnx"]
    r = run_sweep(RunConfig(train=TrainConfig(epochs=1), teacher=str(d / "teacher.onnx"), teacher_tta="flip",
                            bench_iters=3, bench_batch=4, out=str(tmp_path / "s")), Grid((4.0,), (0.5,), seeds=(0,)))
    assert r["teacher"]["accuracy"] != plain  # a mirrored digit is another input: the two accuracies differ
    best = json.loads((tmp_path / "s" / "best" / "report.json").read_text())
    assert best["models"]["teacher"]["accuracy_onnx"] == pytest.approx(plain, abs=1e-9)
    assert best["teacher_tta"] == {"mode": "flip", "accuracy": r["teacher"]["accuracy"]}


def test_a_weights_file_teacher_takes_its_own_normalization(tmp_path, digits):
    """A teacher trained with other statistics than the dataset's: given them (--teacher-mean/--teacher-std), its
    accuracy is what it was trained to; without them it is fed wrongly normalized inputs and scores less. The
    cached logits are keyed by the normalization, and the exported teacher states the one it takes."""
    from kdexport.data.datasets import Normalization
    from kdexport.distill.train import fit as train

    mean, std = (0.9,), (0.1,)  # far from the dataset's (digits: about 0.30 / 0.38)
    shifted = dataclasses.replace(digits, mean=mean, std=std)
    torch.manual_seed(0)
    t = build_model(ModelSpec("mlp:64", 10, DIGITS, dropout=0.5))  # the teacher's default dropout, as distill-export
    train(t, shifted, TrainConfig(epochs=6))
    torch.save(t.state_dict(), tmp_path / "t.pth")
    common = ["distill-export", "--teacher", "mlp:64", "--teacher-weights", str(tmp_path / "t.pth"), *FAST[2:]]
    own = runner.invoke(app, [*common, "--out", str(tmp_path / "own"), "--teacher-mean", "0.9", "--teacher-std",
                              "0.1"])
    assert own.exit_code == 0, own.output
    r = json.loads((tmp_path / "own" / "report.json").read_text())
    want = evaluate(t, shifted)["accuracy"]
    assert r["models"]["teacher"]["accuracy_onnx"] == pytest.approx(want, abs=1 / 355)
    from kdexport.runtimes.ort import read_metadata

    assert read_metadata(tmp_path / "own" / "onnx" / "teacher.onnx")["mean"] == [0.9]
    assert Normalization(16.0, mean, std)(digits.x_test[:1]).shape == (1, 1, 8, 8)
    theirs = runner.invoke(app, [*common, "--out", str(tmp_path / "d"), "--force"])
    assert theirs.exit_code == 0, theirs.output
    r2 = json.loads((tmp_path / "d" / "report.json").read_text())
    assert r2["models"]["teacher"]["accuracy_onnx"] < r["models"]["teacher"]["accuracy_onnx"]


@pytest.mark.parametrize("trained_with", [False, True])
def test_a_checkpoint_teacher_keeps_its_own_stem_whatever_cifar_stem_says(tmp_path, trained_with):
    """--cifar-stem shapes the models built here: a teacher checkpoint trained with the other stem still loads
    (it was refused before: a fastcifar teacher could not teach a mobilenet_v3_small with the CIFAR stem)."""
    from kdexport.distill.sources import teacher_stem
    from kdexport.models.checkpoint import load_model, save_checkpoint

    spec = ModelSpec("mobilenet_v3_small", 10, (3, 32, 32), cifar_stem=trained_with)
    path = tmp_path / "t.pt"
    save_checkpoint(path, build_model(spec), spec, role="teacher", config={})
    cfg = RunConfig(dataset="cifar10", teacher="mobilenet_v3_small", teacher_checkpoint=str(path),
                    student="mobilenet_v3_small", cifar_stem=not trained_with)
    assert teacher_stem(cfg) is trained_with
    load_model(path, expect=dataclasses.replace(spec, cifar_stem=teacher_stem(cfg)))
    no_checkpoint = dataclasses.replace(cfg, teacher_checkpoint=None)
    assert teacher_stem(no_checkpoint) is (not trained_with)
