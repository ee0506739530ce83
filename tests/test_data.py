import pytest
import torch
from PIL import Image

from kdexport.data.augment import augment_batch
from kdexport.data.datasets import load_dataset
from kdexport.errors import DataError, UnknownNameError


def test_digits_is_real_offline_and_fixed(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.x_train.shape[0] + digits.x_test.shape[0] == 1797
    assert set(digits.y_test.tolist()) == set(range(10))
    x = digits.normalize(digits.x_train)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 0.02
    before = digits.x_train.clone()
    digits.normalize(digits.x_train[:10])
    assert torch.equal(before, digits.x_train)  # never normalizes in place
    assert torch.equal(load_dataset("digits").y_test, digits.y_test)


def test_unknown_dataset_lists_choices():
    with pytest.raises(UnknownNameError, match="cifar10, digits, imagefolder, mnist"):
        load_dataset("svhn")


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")


def test_mnist_absent_offline_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="MNIST not found"):
        load_dataset("mnist", tmp_path, download=False)


def _make_folder(root, classes=("cat", "dog"), n=3, size=12):
    for split in ("train", "test"):
        for ci, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (size, size), (ci * 200, i * 40, 10)).save(d / f"{i}.png")


def test_imagefolder_loads_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(tmp_path / "cache" / "kdexport"))
    _make_folder(tmp_path / "data")
    ds = load_dataset("imagefolder", tmp_path / "data")
    assert ds.class_names == ["cat", "dog"] and ds.input_shape == (3, 12, 12)
    assert ds.x_train.dtype == torch.uint8 and ds.x_train.shape[0] == 6
    assert ds.x_train[ds.y_train == 1, 0].float().mean() == 200
    assert list((tmp_path / "cache" / "kdexport" / "imagefolder").glob("*.pt"))
    again = load_dataset("imagefolder", tmp_path / "data", image_size=8)
    assert again.input_shape == (3, 8, 8)


def test_imagefolder_needs_splits(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="train/ and test/"):
        load_dataset("imagefolder", tmp_path)


def test_augment_batch_is_seeded_and_keeps_shape():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    same = augment_batch(x, torch.Generator().manual_seed(1), pad=0)
    assert all(torch.equal(s, o) or torch.equal(s, o.flip(-1)) for s, o in zip(same, x))
    shifted = augment_batch(x, torch.Generator().manual_seed(2), pad=2, flip=False)
    # a shift never flips: each output row is a (shifted) slice of the same input row order
    assert not torch.equal(shifted, x) and shifted.shape == x.shape


def test_cutout_zeroes_one_square_inside_each_image():
    from kdexport.data.augment import AUGMENTATIONS, cutout

    x = torch.ones(64, 3, 16, 16)
    out = cutout(x, torch.Generator().manual_seed(0), 5)
    zero = out == 0
    assert torch.equal(zero.all(1), zero.any(1))  # every channel of a pixel together
    for m in zero[:, 0]:
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        assert m.sum() == 25 and len(rows) == len(cols) == 5  # one whole 5x5 square, never clipped
        assert rows[-1] - rows[0] == 4 and cols[-1] - cols[0] == 4
    corners = {(int(m.any(1).nonzero()[0]), int(m.any(0).nonzero()[0])) for m in zero[:, 0]}
    assert len(corners) > 20 and max(c for pair in corners for c in pair) <= 11  # spread out, inside
    assert torch.equal(out, cutout(x, torch.Generator().manual_seed(0), 5))  # seeded
    aug = AUGMENTATIONS.get("crop-flip-cutout")
    y = aug.batch(torch.rand(8, 3, 32, 32) + 0.1, torch.Generator().manual_seed(1))
    assert y.shape == (8, 3, 32, 32) and aug.views is None
    assert all((img == 0).all(0).sum() >= 144 for img in y)  # a 12x12 hole (more where the shift padded zeros)


def test_an_alternating_flip_cannot_be_drawn_without_its_coins():
    from kdexport.data.augment import AUGMENTATIONS

    aug = AUGMENTATIONS.get("reflect2-altflip")
    with pytest.raises(ValueError, match="alternating flip needs each image's coin"):
        aug.batch(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
    assert AUGMENTATIONS.get("reflect2-flip").batch(torch.rand(4, 3, 32, 32),
                                                    torch.Generator().manual_seed(0)).shape == (4, 3, 32, 32)


def test_auto_augmentation_by_data(digits):
    from kdexport.data.augment import resolve_augment

    assert resolve_augment("auto", digits) == "none"
    with pytest.raises(UnknownNameError, match="crop-flip, crop-flip-cutout, none, reflect2-altflip, "
                                                 "reflect2-flip, rrc-flip, shift2, shift2-altflip, shift2-flip"):
        resolve_augment("mixup", digits)
