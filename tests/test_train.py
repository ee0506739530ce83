import numpy as np
import torch

from kdexport.config import KDConfig, TrainConfig
from kdexport.distill.teacher import CachedLogits, Distillation, LiveLogits, TorchTeacher, teacher_logits
from kdexport.distill.train import evaluate, fit
from kdexport.models.builders import ModelSpec, build_model

SPEC = ModelSpec("mlp:32", 10, (1, 8, 8))


def _train(digits, seed=0, **kw):
    torch.manual_seed(seed)
    m = build_model(SPEC)
    h = fit(m, digits, TrainConfig(epochs=3, seed=seed), **kw)
    return m, h


def test_fit_learns_and_records_history(digits):
    m, h = _train(digits)
    assert len(h) == 3 and h[-1]["test_accuracy"] > 0.8
    assert {"train_loss", "train_ce", "train_kd", "test_accuracy", "lr", "seconds"} <= set(h[0])
    assert evaluate(m, digits)["accuracy"] == h[-1]["test_accuracy"]


def test_same_seed_same_result_different_seed_differs(digits):
    a, _ = _train(digits, 0)
    b, _ = _train(digits, 0)
    c, _ = _train(digits, 1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_kd_with_beta_zero_equals_baseline(digits):
    """The baseline and distilled student share everything but the loss."""
    torch.manual_seed(5)
    teacher = build_model(ModelSpec("mlp:64", 10, (1, 8, 8)))
    base, _ = _train(digits)
    live = teacher_logits(TorchTeacher.for_data(teacher, digits), digits, augment="none")
    assert isinstance(live, CachedLogits)  # fixed inputs: the teacher runs once over the training set
    kd0, _ = _train(digits, distill=Distillation(live, KDConfig(soft_weight=0.0)))
    kd5, h = _train(digits, distill=Distillation(live, KDConfig(soft_weight=0.5)))
    assert all(torch.equal(p, q) for p, q in zip(base.parameters(), kd0.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(base.parameters(), kd5.parameters()))
    assert h[0]["train_kd"] > 0
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_cached_and_live_teacher_give_the_same_student(digits):
    torch.manual_seed(5)
    teacher = build_model(ModelSpec("mlp:64", 10, (1, 8, 8), dropout=0.5))
    fit(teacher, digits, TrainConfig(epochs=1))
    t = TorchTeacher.for_data(teacher, digits)
    assert isinstance(teacher_logits(t, digits, augment="crop-flip"), LiveLogits)
    a, _ = _train(digits, distill=Distillation(LiveLogits(t), KDConfig()))
    b, _ = _train(digits, distill=Distillation(CachedLogits(t, digits), KDConfig()))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_nan_loss_stops_with_clear_error(digits):
    import pytest

    from kdexport.errors import TrainingError

    torch.manual_seed(0)
    m = build_model(SPEC)
    with torch.no_grad():
        m.net[1].weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss became nan"):
        fit(m, digits, TrainConfig(epochs=1))


def test_teacher_cache_hit_and_invalidation(digits, tmp_path, monkeypatch):
    import dataclasses

    import kdexport.distill.teacher as tt
    from kdexport.data.datasets import Dataset
    from kdexport.distill.teacher import cached_teacher_logits, teacher_cache_key

    torch.manual_seed(1)
    module = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    calls = []
    real = tt.logits_over
    monkeypatch.setattr(tt, "logits_over", lambda *a, **k: calls.append(1) or real(*a, **k))

    def teacher_for(data):  # a fresh wrapper: the fingerprint is hashed once per teacher
        return TorchTeacher.for_data(module, data)

    teacher = teacher_for(digits)
    first = cached_teacher_logits(teacher, digits, tmp_path)
    again = cached_teacher_logits(teacher, digits, tmp_path)
    assert len(calls) == 1 and torch.equal(first, again)  # second call read the disk cache
    first = first.clone()  # the test rewrites the file in place below (kdexport itself only ever renames)
    key = teacher_cache_key(teacher, digits)
    # weights change -> new key
    with torch.no_grad():
        module.net[1].bias[0] += 1e-3
    assert teacher_cache_key(teacher_for(digits), digits) != key
    with torch.no_grad():
        module.net[1].bias[0] -= 1e-3
    assert teacher_cache_key(teacher_for(digits), digits) == key

    def variant(**kw):
        return Dataset(**{f.name: getattr(digits, f.name) for f in dataclasses.fields(Dataset) if f.init} | kw)

    # dataset content and transform (normalization) changes -> new key
    x2 = digits.x_train.clone()
    x2[0, 0, 0, 0] += 1
    assert teacher_cache_key(teacher, variant(x_train=x2)) != key
    assert teacher_cache_key(teacher, variant(mean=(0.5,))) != key
    assert teacher_cache_key(teacher, variant(scale=255.0)) != key
    # the entry is a memory-mapped float32 array; a stale one (wrong shape) or an unreadable one is never used
    path = tmp_path / f"{key}.npy"
    assert isinstance(np.load(path, mmap_mode="r"), np.memmap)
    np.save(path, np.zeros((3, 10), np.float32))
    assert torch.equal(cached_teacher_logits(teacher, digits, tmp_path), first)
    path.write_bytes(b"garbage")
    assert torch.equal(cached_teacher_logits(teacher, digits, tmp_path), first)
    assert len(calls) == 3


def test_weights_hash_covers_batchnorm_models():
    from kdexport.distill.teacher import weights_hash
    from kdexport.models.builders import ModelSpec, build_model

    torch.manual_seed(0)
    m = build_model(ModelSpec("resnet18", 10, (3, 32, 32), cifar_stem=True))  # has 0-dim BN counters
    h = weights_hash(m)
    assert h == weights_hash(m)
    with torch.no_grad():
        m.fc.bias[0] += 1.0
    assert weights_hash(m) != h
