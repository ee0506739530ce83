"""Distilling on unlabeled images (issue 46): the labels split, the loss of a batch with images nobody labeled
(by hand), the labeled-only view the baseline trains on, ``--unlabeled-dir``, resume, the three students of a run
and the bad inputs."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import KDConfig, TrainConfig
from kdexport.data.labels import UNLABELED, add_unlabeled, keep_labels, label_counts, labeled_view
from kdexport.distill.losses import kd_loss, soft_term
from kdexport.errors import DataError

from .conftest import FAST


def test_keep_labels_is_stratified_seeded_and_keeps_the_rest_unlabeled(digits):
    kept = keep_labels(digits, 0.1, seed=0)
    y, y0 = kept.y_train, digits.y_train
    for c in range(10):  # round(0.1 * n_c) labels kept in every class, the others -1
        n_c = int((y0 == c).sum())
        assert int((y == c).sum()) == round(0.1 * n_c)
    assert bool(((y == y0) | (y == UNLABELED)).all())  # a kept label is the true one
    assert torch.equal(keep_labels(digits, 0.1, seed=0).y_train, y)
    assert not torch.equal(keep_labels(digits, 0.1, seed=1).y_train, y)
    assert label_counts(keep_labels(digits, 0.0)) == {"labeled": 0, "unlabeled": 1442, "train_images": 1442}
    assert keep_labels(digits, 1.0) is digits
    with pytest.raises(DataError, match="keeps no labeled image of class"):
        keep_labels(digits, 0.001)


def test_a_batch_with_unlabeled_images_learns_them_through_the_soft_term_only():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), 3 * torch.randn(4, 10)
    y = torch.tensor([3, UNLABELED, 7, UNLABELED])
    kd = KDConfig(temperature=4.0, soft_weight=0.6)
    out = kd_loss(s, t, y, kd)
    # per image: labeled (1 - beta) CE + beta S, unlabeled S; the soft term is a batch mean (KL per image)
    ce = F.cross_entropy(s[[0, 2]], y[[0, 2]])
    soft = soft_term(s, t, y.clamp(min=0), kd)
    f = 0.5
    assert out["loss"].item() == pytest.approx(((1 - 0.6) * f * ce + (0.6 * f + 1 - f) * soft).item(), rel=1e-6)
    assert out["ce"].item() == pytest.approx(ce.item())
    none = kd_loss(s, t, torch.full((4,), UNLABELED), kd)  # no label in the batch: the soft term alone, finite
    assert none["loss"].item() == pytest.approx(soft.item(), rel=1e-6) and torch.isfinite(none["ce"])
    every = kd_loss(s, t, torch.tensor([3, 1, 7, 0]), kd)  # all labeled: the usual formula, unchanged
    assert every["loss"].item() == pytest.approx(
        (0.4 * F.cross_entropy(s, torch.tensor([3, 1, 7, 0])) + 0.6 * soft_term(s, t, torch.tensor([3, 1, 7, 0]),
                                                                                 kd)).item(), rel=1e-6)
    base = kd_loss(s, None, y)  # no teacher: the labeled images' share of the batch
    assert base["loss"].item() == pytest.approx(0.5 * ce.item(), rel=1e-6)
    g = kd_loss(s.clone().requires_grad_(), t, y, KDConfig(loss="dkd", soft_weight=0.5))["loss"]
    assert torch.isfinite(g)  # DKD reads a target class: the teacher's top-1 stands in for a missing label


def test_the_labeled_view_repeats_the_labeled_images_to_the_same_steps(digits):
    kept = keep_labels(digits, 0.1)
    view = labeled_view(kept)
    idx = (kept.y_train != UNLABELED).nonzero().view(-1)
    assert len(view.y_train) == len(kept.y_train) and bool((view.y_train != UNLABELED).all())
    assert torch.equal(view.y_train[:len(idx)], kept.y_train[idx])
    assert torch.equal(view.x_train[:len(idx)], kept.x_train[idx])
    assert labeled_view(digits) is digits
    with pytest.raises(DataError, match="no training image has a label"):
        labeled_view(keep_labels(digits, 0.0))


def _folder(tmp_path, n=6, bad=1):
    from PIL import Image

    d = tmp_path / "unlabeled" / "cam1" / "day2"  # any layout, searched recursively
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    for i in range(bad):
        (d / f"broken{i}.jpg").write_bytes(b"not an image")
    (d / "notes.txt").write_text("ignored")
    return tmp_path / "unlabeled"


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_an_unlabeled_folder_is_appended_as_unlabeled_images(tmp_path, mode):
    from kdexport.data.datasets import load_dataset

    data = load_dataset("imagefolder", _cifar_like(tmp_path), data_mode=mode, workers=0)
    with pytest.warns(RuntimeWarning, match="1 unreadable image"):
        more = add_unlabeled(data, _folder(tmp_path))
    assert len(more.y_train) == len(data.y_train) + 6 and bool((more.y_train[-6:] == UNLABELED).all())
    assert more.x_train.shape == (len(data.y_train) + 6, *data.x_train.shape[1:])
    assert torch.equal(more.x_train[:len(data.y_train)], data.x_train[:len(data.y_train)])
    assert more.x_train[-6:].shape == (6, 3, 32, 32)  # decoded at the training images' geometry (16 px -> 32)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        add_unlabeled(data, empty)
    with pytest.raises(DataError, match="does not exist"):
        add_unlabeled(data, tmp_path / "nowhere")


def _cifar_like(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("cat", "dog"):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path / "data"


def test_fit_with_unlabeled_images_resumes_bit_for_bit(digits, tmp_path, dies_in_epoch):
    from kdexport.distill.teacher import CachedLogits, Distillation, TorchTeacher
    from kdexport.distill.train import fit
    from kdexport.models.builders import ModelSpec, build_model

    data = keep_labels(digits, 0.2)
    torch.manual_seed(1)
    teacher = build_model(ModelSpec("mlp:64", 10, (1, 8, 8)))
    fit(teacher, labeled_view(data), TrainConfig(epochs=2, batch_size=64, seed=0))
    logits = CachedLogits(TorchTeacher.for_data(teacher.eval(), data), data)
    cfg = TrainConfig(epochs=3, batch_size=128, seed=0)

    def student():
        torch.manual_seed(0)
        return build_model(ModelSpec("mlp:14", 10, (1, 8, 8)))

    full = student()
    h = fit(full, data, cfg, distill=Distillation(logits, KDConfig()))
    assert 0 < h[-1]["train_accuracy"] <= 1  # over the labeled images only
    dies_in_epoch(3)
    with pytest.raises(KeyboardInterrupt):
        fit(student(), data, cfg, distill=Distillation(logits, KDConfig()), state_path=tmp_path / "s.pt")
    dies_in_epoch(None)
    again = student()
    fit(again, data, cfg, distill=Distillation(logits, KDConfig()), state_path=tmp_path / "s.pt", resume=True)
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), again.parameters()))


def test_a_run_with_few_labels_reports_three_students_side_by_side(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--labels-fraction", "0.2"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    lab = report["labels"]
    assert lab["labeled"] + lab["unlabeled"] == lab["train_images"] == report["dataset"]["train_size"]
    assert lab["labeled"] == sum(round(0.2 * n) for n in np.bincount(_digits_labels()))
    assert set(lab["agreement_with_teacher_on_unlabeled"]) == {"baseline", "pseudo_label", "student"}
    assert all(0 <= v <= 1 for v in lab["agreement_with_teacher_on_unlabeled"].values())
    assert {"baseline", "pseudo_label", "student"} <= set(report["models"])
    for role in ("baseline", "pseudo_label", "student"):  # one schedule, one step count
        assert report["models"][role]["epochs"] == report["models"]["student"]["epochs"]
    md = (out / "report.md").read_text()
    assert "| pseudo-label (teacher top-1) |" in md and "agrees with the teacher on the unlabeled images" in md
    assert "labels: " in res.output and "unlabeled training images" in res.output


def _digits_labels():
    from kdexport.data.datasets import load_dataset

    return load_dataset("digits").y_train.numpy()


@pytest.mark.parametrize("args,message", [
    (["--labels-fraction", "1.5"], "--labels-fraction must be in [0, 1]"),
    (["--labels-fraction", "0.001"], "keeps no labeled image of class"),
    (["--labels-fraction", "0"], "the teacher cannot be trained here"),
    (["--labels-fraction", "0.5", "--soft-weight", "0"], "--soft-weight 0 would leave them unused"),
    (["--labels-fraction", "0.5", "--select-fraction", "0.5"], "--select-fraction picks hard examples"),
    (["--unlabeled-dir", "/nonexistent/photos"], "does not exist"),
])
def test_bad_label_options_are_one_line_before_training(tmp_path, args, message):
    res = CliRunner().invoke(app, ["distill-export", "--out", str(tmp_path / "r"), *FAST, *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "epoch" not in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_no_labels_at_all_distils_from_a_trained_teacher_without_a_baseline(tmp_path):
    first = tmp_path / "with-labels"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(first), *FAST])
    assert res.exit_code == 0, res.output
    out = tmp_path / "no-labels"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--labels-fraction", "0",
                                   "--teacher-checkpoint", str(first / "checkpoints" / "teacher.pt")])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["labels"]["labeled"] == 0 and "baseline" not in report["models"]
    assert {"pseudo_label", "student"} <= set(report["models"]) and report["kd_gain_points"] is None
    assert report["models"]["student"]["accuracy_onnx"] > 0.5  # learnt from the teacher alone (chance: 0.1)
    assert "no labels: no baseline" in res.output
    assert "No KD gain to report" in (out / "report.md").read_text()
    black_box = tmp_path / "onnx-teacher"  # the same teacher as its ONNX file (a vendor's model): the same run
    res = CliRunner().invoke(app, ["distill-export", "--out", str(black_box), *FAST, "--labels-fraction", "0",
                                   "--teacher", str(first / "onnx" / "teacher.onnx")])
    assert res.exit_code == 0, res.output
    onnx_report = json.loads((black_box / "report.json").read_text())
    assert onnx_report["labels"]["labeled"] == 0 and onnx_report["models"]["student"]["accuracy_onnx"] > 0.5
    assert (onnx_report["models"]["teacher"]["accuracy_onnx"] == report["models"]["teacher"]["accuracy_onnx"])


def test_a_train_folder_without_class_folders_is_all_unlabeled(tmp_path):
    """train/ holding images directly (no class folders): every training image is unlabeled, the classes are the test
    split's, and a run distils from a trained teacher with no baseline; a labeled teacher run on the same classes
    gives it the teacher."""
    import shutil

    from kdexport.data.datasets import load_dataset

    labeled = _cifar_like(tmp_path)
    flat = tmp_path / "flat"
    shutil.copytree(labeled / "test", flat / "test")
    (flat / "train").mkdir()
    for i, p in enumerate(sorted((labeled / "train").rglob("*.png"))):
        shutil.copy(p, flat / "train" / f"{i}.png")
    data = load_dataset("imagefolder", flat)
    assert data.class_names == ["cat", "dog"] and len(data.y_train) == 8 and bool((data.y_train == UNLABELED).all())
    assert len(data.y_test) == 4 and set(data.y_test.tolist()) == {0, 1}
    first = tmp_path / "teacher-run"
    args = [*FAST, "--dataset", "imagefolder", "--student", "mlp:8", "--teacher", "mlp:16", "--force"]  # noise images
    res = CliRunner().invoke(app, ["distill-export", "--out", str(first), "--data-dir", str(labeled), *args])
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), "--data-dir", str(flat), *args,
                                   "--teacher-checkpoint", str(first / "checkpoints" / "teacher.pt")])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["labels"]["labeled"] == 0 and report["labels"]["unlabeled"] == 8
    assert "baseline" not in report["models"] and report["kd_gain_points"] is None
    empty = tmp_path / "empty"
    shutil.copytree(labeled / "test", empty / "test")
    (empty / "train").mkdir()
    with pytest.raises(DataError, match="holds no class folders and no images"):
        load_dataset("imagefolder", empty)
    # trained here, a teacher has nothing to learn from: one line
    res = CliRunner().invoke(app, ["distill-export", "--out", str(tmp_path / "x"), "--data-dir", str(flat), *args])
    assert res.exit_code == 2 and "no training image has a label" in " ".join(res.output.split())
