"""Finitely many views (Shifts) and the teacher's logits cached per view (--teacher-view-cache)."""

import pytest
import torch

from kdexport.config import KDConfig, RunConfig, TrainConfig
from kdexport.data.augment import AUGMENTATIONS, Shifts, augment_batch
from kdexport.data.loader import epoch_plan, train_batches
from kdexport.distill.teacher import (
    CachedLogits,
    Distillation,
    FlipTTA,
    LiveLogits,
    TorchTeacher,
    ViewCachedLogits,
    teacher_logits,
    view_cache_key,
)
from kdexport.distill.train import fit
from kdexport.errors import ConfigError
from kdexport.models.builders import ModelSpec, build_model


def test_views_are_numbered_and_rendered_as_written():
    assert [Shifts(p, f).count for p, f in ((1, True), (2, False), (2, True), (4, True))] == [18, 25, 50, 162]
    img = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9
    s = Shifts(1, flip=True)
    # view (dy=0, dx=0, plain) = 0: the image moved one pixel down and right, zeros coming in
    assert s.render(img, torch.tensor([0]))[0, 0].tolist() == [[0, 0, 0], [0, 1, 2], [0, 4, 5]]
    # view (dy=2, dx=1, mirrored) = (2 * 3 + 1) * 2 + 1 = 15: moved one pixel up, then mirrored
    assert s.render(img, torch.tensor([15]))[0, 0].tolist() == [[6, 5, 4], [9, 8, 7], [0, 0, 0]]
    # without the mirror, view = dy * 3 + dx: 5 is (dy=1, dx=2), moved one pixel left
    assert Shifts(1, flip=False).render(img, torch.tensor([5]))[0, 0].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]


def test_every_view_is_distinct_and_its_mirror_is_a_view():
    s = Shifts(2, flip=True)
    img = torch.randint(1, 255, (1, 3, 8, 8), dtype=torch.uint8).expand(s.count, -1, -1, -1)
    every = torch.arange(s.count)
    seen = s.render(img, every)
    assert len({tuple(v.flatten().tolist()) for v in seen}) == s.count
    assert torch.equal(s.render(img, s.mirrored(every)), seen.flip(-1))
    with pytest.raises(ValueError):
        Shifts(2, flip=False).mirrored(every)


def test_draws_are_those_of_the_published_crop_flip():
    """Refactoring into draw + render must not change a seeded run: the draws are dy, dx, then the mirror coin."""
    x = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    for pad, flip in ((4, True), (2, False), (2, True)):
        g = torch.Generator().manual_seed(7)
        dy, dx = torch.randint(0, 2 * pad + 1, (40,), generator=g), torch.randint(0, 2 * pad + 1, (40,), generator=g)
        mirror = torch.rand(40, generator=g) < 0.5 if flip else torch.zeros(40, dtype=torch.bool)
        padded = torch.nn.functional.pad(x, (pad,) * 4)
        want = torch.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(40)])
        want[mirror] = want[mirror].flip(-1)
        assert torch.equal(augment_batch(x, torch.Generator().manual_seed(7), pad, flip), want)


def _teacher(digits, seed=5):
    torch.manual_seed(seed)
    return TorchTeacher.for_data(build_model(ModelSpec("mlp:64", 10, (1, 8, 8))), digits)


@pytest.mark.parametrize("tta", [False, True])
def test_the_table_holds_the_live_teachers_logits_of_each_batch(digits, tta):
    t = FlipTTA(_teacher(digits)) if tta else _teacher(digits)
    cached = ViewCachedLogits(t, digits, "shift2-flip")
    assert cached.table.shape == (50, len(digits.y_train), 10)
    plan = epoch_plan(len(digits.y_train), 128, torch.Generator().manual_seed(0))
    for idx, raw, views in train_batches(digits, "shift2-flip", plan, torch.Generator().manual_seed(1)):
        torch.testing.assert_close(cached(idx, raw, views), t.logits(raw), rtol=1e-5, atol=1e-5)


def test_a_flip_tta_table_costs_one_pass_per_view(digits):
    calls = []
    t = _teacher(digits)
    plain = t.logits
    t.logits = lambda raw: calls.append(len(raw)) or plain(raw)
    ViewCachedLogits(FlipTTA(t), digits, "shift2-flip")
    assert sum(calls) == 50 * len(digits.y_train)


def test_view_cached_and_live_teacher_train_the_same_student(digits):
    t = _teacher(digits)
    cfg = TrainConfig(epochs=2, seed=3, augment="shift2-flip")
    states = []
    for source in (LiveLogits(t), ViewCachedLogits(t, digits, "shift2-flip")):
        torch.manual_seed(0)
        m = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
        fit(m, digits, cfg, distill=Distillation(source, KDConfig()))
        states.append(m.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=1e-4, atol=1e-5)


def test_the_table_is_kept_on_disk_and_keyed_by_views(digits, tmp_path):
    calls = []
    t = _teacher(digits)
    plain = t.logits
    t.logits = lambda raw: calls.append(1) or plain(raw)
    first = ViewCachedLogits(t, digits, "shift2-flip", cache_dir=tmp_path)
    n = len(calls)
    again = ViewCachedLogits(t, digits, "shift2-flip", cache_dir=tmp_path)
    assert len(calls) == n and torch.equal(first.table, again.table)  # read back, not recomputed
    assert view_cache_key(t, digits, AUGMENTATIONS.get("shift2").views) != view_cache_key(
        t, digits, AUGMENTATIONS.get("shift2-flip").views)
    assert ViewCachedLogits(t, digits, "shift2", cache_dir=tmp_path).table.shape[0] == 25
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_which_source_and_clear_refusals(digits):
    t = _teacher(digits)
    assert isinstance(teacher_logits(t, digits, augment="shift2-flip", view_cache=True), ViewCachedLogits)
    assert isinstance(teacher_logits(t, digits, augment="none", view_cache=True), CachedLogits)
    assert isinstance(teacher_logits(t, digits, augment="shift2-flip"), LiveLogits)
    assert isinstance(teacher_logits(t, digits, augment="shift2-flip", view_cache=True, live=True), LiveLogits)
    with pytest.raises(ConfigError, match="finitely many views"):
        teacher_logits(t, digits, augment="rrc-flip", view_cache=True)
    cached = ViewCachedLogits(t, digits, "shift2")
    with pytest.raises(ConfigError, match="no view numbers"):
        cached(torch.arange(4), digits.x_train[:4], None)
    with pytest.raises(ConfigError, match="drop --teacher-view-cache"):
        RunConfig(teacher_view_cache=True, kd=KDConfig(hint="teacher.net.1:student.net.1"))


def test_a_run_or_sweep_may_switch_between_live_and_view_cached_logits():
    """The same logits either way, so --resume and a sweep's rerun accept the switch."""
    from kdexport.runs import resume_options

    for sweep in (False, True):
        assert resume_options(RunConfig(teacher_view_cache=True), sweep=sweep) == resume_options(RunConfig(),
                                                                                                 sweep=sweep)


def test_reflect_padding_renders_the_mirrored_border(digits):
    img = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 1, 3, 3)  # 1 2 3 / 4 5 6 / 7 8 9
    s = Shifts(1, flip=True, reflect=True)
    # reflected by one pixel the padded image's rows are 5 4 5 6 5 / 2 1 2 3 2 / 5 4 5 6 5 / 8 7 8 9 8 / 5 4 5 6 5
    assert s.render(img, torch.tensor([0]))[0, 0].tolist() == [[5, 4, 5], [2, 1, 2], [5, 4, 5]]
    assert s.render(img, torch.tensor([15]))[0, 0].tolist() == [[6, 5, 4], [9, 8, 7], [6, 5, 4]]
    assert s.render(img, torch.tensor([8]))[0, 0].tolist() == img[0, 0].tolist()  # (1, 1): the image itself
    zeros, reflect = AUGMENTATIONS.get("shift2-flip").views, AUGMENTATIONS.get("reflect2-altflip").views
    assert (reflect.pad, reflect.flip, reflect.reflect, reflect.alternate) == (2, True, True, True)
    t = _teacher(digits)
    assert view_cache_key(t, digits, zeros) != view_cache_key(t, digits, reflect)  # other pixels
    # the alternating flip draws from the same views, so it shares the zero-padded table
    assert view_cache_key(t, digits, zeros) == view_cache_key(t, digits, AUGMENTATIONS.get("shift2-altflip").views)


def test_alternating_flip_shows_each_image_both_ways_every_two_epochs():
    odd, even, odd_again = (Shifts.alternating_mirror(1000, e, seed=0) for e in (1, 2, 3))
    assert torch.equal(odd, ~even) and torch.equal(odd, odd_again)
    assert 400 < int(odd.sum()) < 600  # a fair coin per image
    assert not torch.equal(odd, Shifts.alternating_mirror(1000, 1, seed=1))  # seeds draw their own coins


def test_train_batches_follow_the_alternating_mirror(digits):
    n = digits.x_train.shape[0]
    plan = epoch_plan(n, 256, torch.Generator().manual_seed(0))
    for epoch in (1, 2):
        want = Shifts.alternating_mirror(n, epoch, seed=5)
        for idx, raw, views in train_batches(digits, "shift2-altflip", plan, torch.Generator().manual_seed(1),
                                             epoch=epoch, seed=5):
            assert torch.equal(views % 2 == 1, want[idx])
            assert torch.equal(raw, AUGMENTATIONS.get("shift2-altflip").views.render(digits.x_train[idx], views))
