"""Photos end to end: resize + center-crop geometry, memory vs stream mode, the shared sampler under torchrun,
RandomResizedCrop draws, the memory-mapped teacher cache, and the policy as predict reads it."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch

from kdexport.data.images import Geometry, ImageFiles, rrc_params
from kdexport.data.loader import epoch_plan, train_batches
from kdexport.errors import ConfigError, ModelFileError


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two classes of non-square RGB photos (landscape and portrait), train/ + val/."""
    from PIL import Image

    root = tmp_path_factory.mktemp("nonsquare")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4)):
        for ci, c in enumerate(("cat", "dog")):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                w, h = (90, 70) if i % 2 else (70, 96)
                a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                a[..., ci * 2] //= 3  # a colour cue per class
                Image.fromarray(a).save(root / split / c / f"{i}.jpg", quality=95)
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _load(photos, mode, **kw):
    from kdexport.data.datasets import load_dataset

    return load_dataset("imagefolder", photos, download=False, data_mode=mode, **kw)


# -- geometry, against hand-computed boxes and torchvision's own transforms ---------------------------------
def test_geometry_boxes_by_hand():
    g = Geometry.for_size(224, 0.875)
    assert (g.size, g.resize, g.crop_ratio) == (224, 256, 0.875)
    assert g.resized(640, 480) == (341, 256)  # 256 * 640 / 480 = 341.3, truncated
    assert g.crop_box(341, 256) == (58, 16, 282, 240)  # (341 - 224) / 2 = 58.5 rounds half to even
    assert g.resized(300, 500) == (256, 426)
    assert g.crop_box(256, 426) == (16, 101, 240, 325)
    assert Geometry(32, 32).resized(32, 32) == (32, 32) and Geometry(32, 32).crop_box(32, 32) == (0, 0, 32, 32)
    assert Geometry.from_dict(g.to_dict()) == g


@pytest.mark.parametrize("wh", [(640, 480), (300, 500), (257, 256)])
def test_geometry_matches_torchvision_resize_then_center_crop(wh):
    from PIL import Image
    from torchvision.transforms import v2

    im = Image.fromarray(np.random.default_rng(1).integers(0, 255, (wh[1], wh[0], 3), dtype=np.uint8))
    ours = np.asarray(Geometry.for_size(224, 0.875).apply(im))
    theirs = np.asarray(v2.Compose([v2.Resize(256), v2.CenterCrop(224)])(im))
    assert ours.shape == (224, 224, 3) and np.array_equal(ours, theirs)


def test_rrc_params_follow_torchvision_and_the_generator():
    for seed in range(20):
        top, left, h, w = rrc_params(100, 150, torch.Generator().manual_seed(seed))
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 150
        assert 0.08 * 15000 * 0.9 <= h * w <= 15000 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
        assert rrc_params(100, 150, torch.Generator().manual_seed(seed)) == (top, left, h, w)
    # nothing fits a 1 x 100 strip: torchvision's fallback, the central crop at the nearest allowed ratio
    assert rrc_params(1, 100, torch.Generator().manual_seed(0)) == (0, 49, 1, 1)


# -- memory vs stream ----------------------------------------------------------------------------------------
def test_photos_are_cropped_not_squashed(photos, cache):
    d = _load(photos, "memory", image_size=64)
    assert d.geometry == Geometry(64, 73)  # 64 / 0.875, RGB photos of 64 px and more
    assert d.augment_default == "rrc-flip"
    assert d.info()["preprocess"] == {"resize_shorter_side": 73, "center_crop": 64, "interpolation": "bilinear"}
    from PIL import Image

    first = sorted((photos / "val" / "cat").iterdir())[0]
    want = np.asarray(Geometry(64, 73).apply(Image.open(first).convert("RGB")))
    assert np.array_equal(d.x_test[0].permute(1, 2, 0).numpy(), want)
    whole = _load(photos, "memory", image_size=64, crop_ratio=1.0)
    assert whole.geometry == Geometry(64, 64)


def test_stream_and_memory_give_the_same_data_and_batches(photos, cache):
    mem = _load(photos, "memory", image_size=32)
    stream = _load(photos, "stream", image_size=32, workers=2)
    assert not mem.streamed and stream.streamed and stream.mode == "stream"
    assert isinstance(stream.x_train, ImageFiles) and stream.x_train.shape == mem.x_train.shape
    assert (stream.mean, stream.std) == (mem.mean, mem.std)
    assert torch.equal(stream.x_test[:], mem.x_test) and torch.equal(stream.y_train, mem.y_train)
    for augment in ("none", "crop-flip"):  # batch-level augmentation runs in the main process in both modes
        got = []
        for d in (mem, stream):
            plan = epoch_plan(len(d.y_train), 6, torch.Generator().manual_seed(3))
            got.append(list(train_batches(d, augment, plan, torch.Generator().manual_seed(4))))
        assert len(got[0]) == len(got[1]) == 4
        for (i0, x0, v0), (i1, x1, v1) in zip(*got):
            assert torch.equal(i0, i1) and torch.equal(x0, x1)
            assert (v0 is None) == (v1 is None) == (augment == "none") or torch.equal(v0, v1)


def test_stream_and_memory_train_the_same_student(photos, cache):
    from kdexport.config import TrainConfig
    from kdexport.distill.train import fit
    from kdexport.models.builders import ModelSpec, build_model

    states = []
    for mode in ("memory", "stream"):
        d = _load(photos, mode, image_size=16, workers=2)
        torch.manual_seed(0)
        model = build_model(ModelSpec("mlp:16", 2, d.input_shape))
        hist = fit(model, d, TrainConfig(epochs=2, batch_size=4, seed=1, augment="none"))
        assert "data_wait_seconds" in hist[-1]
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_per_sample_augmentation_does_not_depend_on_worker_count(photos, cache):
    out = []
    for workers in (0, 2):
        d = _load(photos, "stream", image_size=32, workers=workers)
        plan = epoch_plan(len(d.y_train), 8, torch.Generator().manual_seed(0))
        batches = list(train_batches(d, "rrc-flip", plan, torch.Generator().manual_seed(5)))
        assert batches[0][1].shape == (8, 3, 32, 32)
        out.append(torch.cat([x for _, x, _ in batches]))
    assert torch.equal(out[0], out[1])
    mem = _load(photos, "memory", image_size=32)  # memory mode crops the stored images, same generator -> same draws
    plan = epoch_plan(len(mem.y_train), 8, torch.Generator().manual_seed(0))
    a = torch.cat([x for _, x, _ in train_batches(mem, "rrc-flip", plan, torch.Generator().manual_seed(5))])
    b = torch.cat([x for _, x, _ in train_batches(mem, "rrc-flip", plan, torch.Generator().manual_seed(5))])
    assert torch.equal(a, b) and not torch.equal(a, mem.x_train[torch.cat(plan)])


def test_auto_mode_streams_over_the_budget_and_says_so(photos, cache):
    d = _load(photos, "auto", image_size=32, memory_budget=1000)
    assert d.streamed and d.mode_note.startswith("stream (auto: decoded set")
    d = _load(photos, "auto", image_size=32)
    assert not d.streamed and d.mode_note.startswith("memory (auto: decoded set") and "<= budget" in d.mode_note
    d = _load(photos, "auto", image_size=32)  # the decoded set from the cache says so, and why memory
    assert not d.streamed and "from the cache" in d.mode_note and "<= budget" in d.mode_note


def test_stream_mode_needs_image_files():
    from kdexport.data.datasets import load_dataset

    with pytest.raises(ConfigError, match="applies to image files"):
        load_dataset("digits", data_mode="stream")
    with pytest.raises(ConfigError, match="data mode"):
        load_dataset("digits", data_mode="disk")


@pytest.mark.parametrize("text,want", [("4GB", 4 * 2**30), ("512 MB", 512 * 2**20), ("0", 0), ("1.5kb", 1536)])
def test_memory_budget_parses(text, want):
    from kdexport.data.datasets import memory_budget

    assert memory_budget(text) == want
    with pytest.raises(ConfigError, match="memory budget"):
        memory_budget("lots")


# -- the shared sampler under torchrun -----------------------------------------------------------------------
@pytest.mark.parametrize("n,bs,world", [(103, 10, 3), (101, 10, 3), (64, 8, 2)])
def test_rank_slices_are_disjoint_and_cover_the_set(n, bs, world):
    plans = [epoch_plan(n, bs, torch.Generator().manual_seed(7), r, world) for r in range(world)]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7))
    assert len({len(p) for p in plans}) == 1  # every rank takes the same number of steps
    seen = torch.cat([torch.cat(p) for p in plans])
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    tail = n % bs
    covered = perm if not tail or tail >= world else perm[:-tail]  # a tail smaller than the world is skipped
    assert sorted(seen.tolist()) == sorted(covered.tolist())
    for step in range(len(plans[0])):  # each global batch is the permutation's next slice, split by rank
        assert torch.equal(torch.cat([p[step] for p in plans]), perm[step * bs:(step + 1) * bs])


# -- teacher logits over streamed data, memory-mapped ----------------------------------------------------------
def test_teacher_logit_cache_is_memory_mapped_and_equal_across_modes(photos, cache, tmp_path):
    from kdexport.distill.teacher import TorchTeacher, cached_teacher_logits
    from kdexport.models.builders import ModelSpec, build_model

    got = []
    for mode in ("memory", "stream"):
        d = _load(photos, mode, image_size=16)
        torch.manual_seed(0)
        t = TorchTeacher.for_data(build_model(ModelSpec("mlp:8", 2, d.input_shape)).eval(), d, torch.device("cpu"))
        got.append(cached_teacher_logits(t, d, tmp_path / "logits").clone())
    assert torch.equal(got[0], got[1])
    files = sorted((tmp_path / "logits").glob("*.npy"))
    assert len(files) == 2 and np.load(files[0], mmap_mode="r").shape == (20, 2)


# -- the policy travels with the model -------------------------------------------------------------------------
def test_predict_preprocesses_as_training_did(photos, cache):
    from kdexport.export.predict import preprocess

    d = _load(photos, "memory", image_size=64)
    meta = {"input_shape": list(d.input_shape), "mean": list(d.mean), "std": list(d.std),
            "preprocess": d.geometry.to_dict()}
    first = sorted((photos / "val" / "cat").iterdir())[0]
    want = d.normalize(d.x_test[:1])[0].numpy()
    assert np.allclose(preprocess(first, meta), want, atol=1e-6)
    squashed = preprocess(first, {k: v for k, v in meta.items() if k != "preprocess"})  # an older file
    assert not np.allclose(squashed, want, atol=1e-2)


@pytest.mark.parametrize("pre", [{"resize_shorter_side": 60, "center_crop": 64}, {"center_crop": 64},
                                 {"resize_shorter_side": 73, "center_crop": 32}, "256/224",
                                 {"resize_shorter_side": True, "center_crop": 64}])
def test_bad_preprocess_metadata_is_refused(pre):
    from kdexport.runtimes.metadata import check_metadata

    meta = {"class_names": ["a", "b"], "input_shape": [3, 64, 64], "mean": [0.5] * 3, "std": [0.2] * 3,
            "preprocess": pre}
    with pytest.raises(ModelFileError, match="preprocess"):
        check_metadata(meta, {"num_classes": 2, "input_shape": [3, 64, 64]}, "m.onnx")


def test_readme_snippet_crops_a_photo_as_predict_does(photos, cache, tmp_path):
    """The app snippet (docs/packages.md), run on a non-square photo, feeds the model what kdexport predict feeds it."""
    import kdexport.export.predict as kp
    from kdexport.export.onnx import export_onnx
    from kdexport.models.builders import ModelSpec, build_model

    d = _load(photos, "memory", image_size=64)
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp:8", 2, d.input_shape)).eval()
    meta = {"class_names": d.class_names, "input_shape": list(d.input_shape), "mean": list(d.mean),
            "std": list(d.std), "preprocess": d.geometry.to_dict()}
    onnx_path = tmp_path / "m.onnx"
    export_onnx(model, onnx_path, d.normalize(d.x_test[:4]), metadata=meta)
    readme = (Path(__file__).resolve().parents[1] / "docs" / "packages.md").read_text()
    snippet = next(b.split("\n", 1)[1] for b in readme.split("```")[1::2]
                   if b.startswith("python") and "InferenceSession" in b)
    photo = sorted((photos / "val" / "dog").iterdir())[1]  # 90 x 70, landscape
    ns: dict = {}
    exec(compile(snippet.replace('"student.onnx"', repr(str(onnx_path))).replace('"photo.jpg"', repr(str(photo)))
                 .replace("print(", "result = ("), "README snippet", "exec"), ns)
    assert np.allclose(ns["x"], kp.preprocess(photo, kp.load_classifier(onnx_path)[1]), atol=1e-6)
    assert [label for label, _ in ns["result"]][:2] == [t["label"] for t in kp.predict(onnx_path, [photo], 2)[0]["top"]]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_after_the_cli_asks_memory_mode_keeps_freed_memory_and_stream_mode_leaves_malloc_alone(photos, cache,
                                                                                                 monkeypatch):
    from kdexport import allocator

    calls = []
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator, "_state", "system")
    monkeypatch.setattr(allocator, "_preferred", True)  # as the CLI leaves it; the mallopt calls themselves stubbed
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda _: type("libc", (), {
        "mallopt": staticmethod(lambda *a: calls.append(a) or 1)}))
    _load(photos, "stream")
    assert allocator.state() == "kept for data in memory" and calls == []  # the policy; malloc untouched
    _load(photos, "memory")
    assert allocator.state() == "kept" and calls == [(-4, 0), (-1, 2**31 - 1)]


# -- stream mode tells the truth ------------------------------------------------------------------------------------
def test_a_whole_run_trains_the_same_models_in_memory_and_stream_mode(photos, cache, tmp_path):
    """--augment none, one seed: the teacher (with dropout), the baseline and the distilled student come out the
    same in both modes (a DataLoader used to draw its workers' seed from the global generator, shifting every
    dropout mask after it)."""
    import json

    from typer.testing import CliRunner

    from kdexport.cli import app

    runs = {}
    for mode in ("memory", "stream"):
        res = CliRunner().invoke(app, ["distill-export", "--dataset", "imagefolder", "--data-dir", str(photos),
                                       "--image-size", "16", "--data-mode", mode, "--workers", "2", "--augment",
                                       "none", "--teacher", "mlp:32", "--student", "mlp:8", "--epochs", "2",
                                       "--batch-size", "4", "--bench-iters", "2", "--bench-batch", "2",
                                       "--no-baseline-cache", "--no-teacher-cache", "--force",
                                       "--out", str(tmp_path / mode)])
        assert res.exit_code == 0, res.output
        runs[mode] = tmp_path / mode
    for role in ("teacher", "baseline", "student"):
        a, b = (torch.load(runs[m] / "checkpoints" / f"{role}.pt", weights_only=True)["state_dict"] for m in runs)
        assert all(torch.equal(a[k], b[k]) for k in a), role
    ra, rb = (json.loads((runs[m] / "report.json").read_text()) for m in runs)
    for role in ("teacher", "baseline", "student"):
        assert ra["models"][role]["history"][-1]["train_loss"] == rb["models"][role]["history"][-1]["train_loss"]


def test_a_file_removed_while_streaming_is_one_line_naming_it(photos, cache, tmp_path, monkeypatch):
    """Deleted between epochs, read by a decoding worker: the run stops with one line naming the file (not the
    worker's traceback) and keeps its staging folder for --resume."""
    import shutil

    from typer.testing import CliRunner

    import kdexport.distill.train as train_mod
    from kdexport.cli import app

    data = tmp_path / "photos"
    shutil.copytree(photos, data)
    victim = sorted((data / "train" / "cat").iterdir())[0]
    real = train_mod.train_epoch

    def deleting(loop, state, epoch):
        if epoch == 2 and victim.exists():
            victim.unlink()
        return real(loop, state, epoch)

    monkeypatch.setattr(train_mod, "train_epoch", deleting)
    res = CliRunner().invoke(app, ["distill-export", "--dataset", "imagefolder", "--data-dir", str(data),
                                   "--image-size", "16", "--data-mode", "stream", "--workers", "2",
                                   "--augment", "none", "--teacher", "mlp:32", "--epochs", "2", "--batch-size", "4",
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(victim) in errors[0] and "unreadable while streaming" in errors[0]
    assert "Traceback" not in res.output and "DataLoader worker" not in res.output
    assert "run stopped; its partial state is kept" in res.output and (tmp_path / ".o.partial").is_dir()
