"""``--kd-mixup`` (function matching, Beyer et al. 2022): the draw, the loss of a mixed batch by hand, the teacher
seeing exactly the student's mixed images, resume, the view cache's key and the bad inputs."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import KDConfig, TrainConfig
from kdexport.data.labels import UNLABELED, keep_labels
from kdexport.distill.losses import kd_loss, soft_term
from kdexport.distill.mixup import Mix, draw, mix_images

from .conftest import FAST


def test_the_draw_depends_on_seed_rank_epoch_and_step_only():
    a, b = draw(1.0, 8, 0, 0, 1, 3), draw(1.0, 8, 0, 0, 1, 3)
    assert a.lam == b.lam and torch.equal(a.perm, b.perm) and 0 < a.lam < 1
    assert sorted(a.perm.tolist()) == list(range(8))
    others = [draw(1.0, 8, *k) for k in ((1, 0, 1, 3), (0, 1, 1, 3), (0, 0, 2, 3), (0, 0, 1, 4))]
    assert all(o.lam != a.lam for o in others)
    raw = torch.arange(2 * 3, dtype=torch.uint8).view(2, 3)
    m = mix_images(raw, Mix(0.25, torch.tensor([1, 0])))
    assert torch.allclose(m, torch.tensor([[2.25, 3.25, 4.25], [0.75, 1.75, 2.75]]))


def test_a_mixed_batch_mixes_the_labels_term_of_labeled_pairs_only():
    torch.manual_seed(0)
    s, t = torch.randn(4, 10), 3 * torch.randn(4, 10)
    y = torch.tensor([3, UNLABELED, 7, 5])
    mix = Mix(0.3, torch.tensor([2, 0, 3, 1]))  # pairs: 0-2 labeled, 1-0 no, 2-3 labeled, 3-1 no
    kd = KDConfig(temperature=4.0, soft_weight=0.6)
    out = kd_loss(s, t, y, kd, mix=mix)
    lab = torch.tensor([0, 2])
    ce = 0.3 * F.cross_entropy(s[lab], y[lab]) + 0.7 * F.cross_entropy(s[lab], torch.tensor([7, 5]))
    soft = soft_term(s, t, torch.tensor([7, 3, 5, t[3].argmax()]), kd)  # lam < 0.5: the partner's label leads
    f = 0.5
    assert out["loss"].item() == pytest.approx(((1 - 0.6) * f * ce + (0.6 * f + 1 - f) * soft).item(), rel=1e-6)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    every = torch.tensor([3, 1, 7, 5])
    ident = kd_loss(s, t, every, kd, mix=Mix(1.0, torch.arange(4)))  # lam 1, no shuffle: the plain loss
    assert ident["loss"].item() == pytest.approx(kd_loss(s, t, every, kd)["loss"].item(), rel=1e-6)
    none = kd_loss(s, t, torch.full((4,), UNLABELED), kd, mix=mix)
    assert none["loss"].item() == pytest.approx(soft_term(s, t, t.argmax(1), kd).item(), rel=1e-6)


class _Spy:
    """A live teacher that records what it was shown."""

    def __init__(self, teacher):
        self.teacher, self.seen = teacher, []

    def __call__(self, idx, raw, views=None):
        self.seen.append((idx.clone(), raw.clone()))
        return self.teacher.logits(raw)


def test_the_teacher_sees_the_students_mixed_images_and_a_resumed_run_mixes_the_same(digits, tmp_path,
                                                                                      dies_in_epoch):
    from kdexport.distill.teacher import Distillation, LiveLogits, TorchTeacher
    from kdexport.distill.train import fit
    from kdexport.models.builders import ModelSpec, build_model

    data = keep_labels(digits, 0.5)
    torch.manual_seed(1)
    teacher = TorchTeacher.for_data(build_model(ModelSpec("mlp:32", 10, (1, 8, 8))).eval(), data)
    cfg = TrainConfig(epochs=2, batch_size=256, seed=0)
    kd = KDConfig(mixup=1.0)

    def student():
        torch.manual_seed(0)
        return build_model(ModelSpec("mlp:14", 10, (1, 8, 8)))

    spy = _Spy(teacher)

    class Recording(LiveLogits):  # a live teacher (the only kind mixup accepts) that records its batches
        def __call__(self, idx, raw, views=None):
            return spy(idx, raw, views)

    full = student()
    fit(full, data, cfg, distill=Distillation(Recording(teacher), kd))
    idx, raw = spy.seen[0]
    m = draw(1.0, len(idx), 0, 0, 1, 1)
    expect = m.lam * data.x_train[idx].float() + (1 - m.lam) * data.x_train[idx][m.perm].float()
    assert torch.allclose(raw, expect)  # the teacher saw the mixed batch the student trained on
    dies_in_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        fit(student(), data, cfg, distill=Distillation(LiveLogits(teacher), kd), state_path=tmp_path / "s.pt")
    dies_in_epoch(None)
    again = student()
    fit(again, data, cfg, distill=Distillation(LiveLogits(teacher), kd), state_path=tmp_path / "s.pt", resume=True)
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), again.parameters()))


def test_a_table_of_logits_cannot_serve_mixed_images(digits):
    from kdexport.distill.teacher import CachedLogits, Distillation, TorchTeacher
    from kdexport.errors import ConfigError
    from kdexport.models.builders import ModelSpec, build_model

    teacher = TorchTeacher.for_data(build_model(ModelSpec("mlp:8", 10, (1, 8, 8))).eval(), digits)
    d = Distillation(CachedLogits(teacher, digits), KDConfig(mixup=1.0))
    with pytest.raises(ConfigError, match="live"):
        d.loss(torch.zeros(2, 10), torch.arange(2), digits.x_train[:2], torch.tensor([0, 1]),
               mix=draw(1.0, 2, 0, 0, 1, 1))


def test_the_teacher_logit_caches_are_keyed_by_pixels_not_labels(digits):
    from kdexport.data.augment import AUGMENTATIONS
    from kdexport.distill.teacher import TorchTeacher, view_cache_key
    from kdexport.models.builders import ModelSpec, build_model

    teacher = TorchTeacher.for_data(build_model(ModelSpec("mlp:8", 10, (1, 8, 8))).eval(), digits)
    views = AUGMENTATIONS.get("shift2").views
    fewer = keep_labels(digits, 0.1, seed=3)
    assert fewer.fingerprint() != digits.fingerprint()  # what a baseline's cache depends on
    assert view_cache_key(teacher, fewer, views) == view_cache_key(teacher, digits, views)
    other = dataclasses.replace(digits, x_train=digits.x_train.flip(-1))
    assert view_cache_key(teacher, other, views) != view_cache_key(teacher, digits, views)


def test_kd_mixup_runs_from_the_cli_with_few_labels(tmp_path):
    import json

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, "--labels-fraction", "0.3",
                                   "--kd-mixup", "1.0"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["kd"]["mixup"] == 1.0 and {"baseline", "pseudo_label", "student"} <= set(report["models"])


@pytest.mark.parametrize("args,message", [
    (["--kd-mixup", "-1"], "--kd-mixup must be a number >= 0"),
    (["--kd-mixup", "1", "--soft-weight", "0"], "with --soft-weight 0 there is none"),
    (["--kd-mixup", "1", "--augment", "shift2", "--teacher-view-cache"], "drop --teacher-view-cache"),
])
def test_bad_kd_mixup_options_are_one_line(tmp_path, args, message):
    res = CliRunner().invoke(app, ["distill-export", "--out", str(tmp_path / "r"), *FAST, *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
