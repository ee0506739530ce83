"""Dataset registry. Every dataset is held in memory as tensors (no per-step decoding).

A :class:`Dataset` keeps raw pixels (uint8, or the source's own range) and knows how to map a
batch to the normalized float input the models and the exported ONNX files take:
``((x / scale) - mean) / std``, with ``mean``/``std`` given in the [0, 1] pixel range.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..envinfo import check_fits_memory
from ..errors import DataError, first_line
from ..files import cache_root
from ..registry import Registry

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class Normalization:
    """Raw pixels -> model input: ``(x / scale - mean) / std`` per channel (``mean``/``std`` in [0, 1] units)."""

    def __init__(self, scale: float, mean: tuple[float, ...], std: tuple[float, ...]):
        c = len(mean)
        self.scale = scale
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(torch.float32) / self.scale  # never in place: xb may be a view of the data
        return (xb - self.mean.to(xb.device)) / self.std.to(xb.device)


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor  # N x C x H x W, raw values in [0, scale]
    y_train: torch.Tensor  # N, int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0
    source: str = ""
    augment_default: str = "none"
    _normalize: Normalization = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._normalize = Normalization(self.scale, self.mean, self.std)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        """Raw batch -> the float tensor a model (and its ONNX file) takes."""
        return self._normalize(xb)

    def test_sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """Indices of ``n`` test images drawn at random (fixed seed): folder-ordered test sets put
        one class first, so the first ``n`` images are not a fair sample."""
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(len(self.y_test), generator=g)[:n]

    def fingerprint(self) -> str:
        """sha256 of the training pixels, labels and the input transform (memoized)."""
        fp = self.__dict__.get("_fingerprint")
        if fp is None:
            h = hashlib.sha256()
            h.update(repr((self.name, self.scale, self.mean, self.std, tuple(self.x_train.shape),
                           str(self.x_train.dtype))).encode())
            h.update(self.x_train.contiguous().numpy().tobytes())
            h.update(self.y_train.contiguous().numpy().tobytes())
            fp = self.__dict__["_fingerprint"] = h.hexdigest()
        return fp

    def info(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "train_size": int(self.x_train.shape[0]),
            "test_size": int(self.x_test.shape[0]),
            "input_shape": list(self.input_shape),
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "source": self.source,
        }


Loader = Callable[..., Dataset]
DATASETS: Registry[Loader] = Registry("dataset")


def default_data_dir() -> Path:
    env = os.environ.get("KDEXPORT_DATA_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdexport" / "data"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 image_size: int | None = None) -> Dataset:
    """Load a registered dataset into memory. Raises DataError with one clear line."""
    loader = DATASETS.get(name)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data dir {str(data_dir)!r} does not exist or is not a folder")
    return loader(Path(data_dir) if data_dir is not None else None, download=download,
                  image_size=image_size)


def _stats(x: torch.Tensor, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, computed in chunks to bound memory."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    n = 0
    for i in range(0, x.shape[0], 4096):
        chunk = x[i:i + 4096].to(torch.float64) / scale
        s += chunk.sum(dim=(0, 2, 3))
        ss += (chunk ** 2).sum(dim=(0, 2, 3))
        n += chunk.numel() // c
    mean = s / n
    std = (ss / n - mean ** 2).clamp_min(1e-12).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


@DATASETS.register("digits")
def _digits(data_dir: Path | None, *, download: bool, image_size: int | None) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 real images); no network needed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)  # values 0..16
    y = torch.tensor(d.target, dtype=torch.int64)
    # A fixed, stratified 80/20 split, independent of the run's seed.
    g = torch.Generator().manual_seed(1234)
    test_idx = []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[: len(idx) // 5])
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    test_mask[torch.cat(test_idx)] = True
    mean, std = _stats(x[~test_mask], 16.0)
    return Dataset("digits", x[~test_mask], y[~test_mask], x[test_mask], y[test_mask],
                   [str(i) for i in range(10)], mean, std, scale=16.0,
                   source="sklearn.datasets.load_digits (UCI 8x8 digits, fixed 80/20 split)")


def _torchvision(cls_name: str, root: Path | None, download: bool):
    """Load train/test splits of a torchvision dataset, downloading only when allowed and needed."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root = root or default_data_dir()
    try:
        return cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except RuntimeError:
        pass
    if not download:
        raise DataError(f"{cls_name} not found under {str(root)!r} and downloading is off "
                        "(pass --data-dir pointing at a local copy)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(str(root), train=True, download=True), cls(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"{cls_name} not found under {str(root)!r} and the download failed "
                        f"({type(e).__name__}: {first_line(e, 120)}); "
                        "are you offline? pass --data-dir pointing at a local copy") from None


@DATASETS.register("mnist")
def _mnist(data_dir: Path | None, *, download: bool, image_size: int | None) -> Dataset:
    tr, te = _torchvision("MNIST", data_dir, download)
    return Dataset("mnist", tr.data.unsqueeze(1).contiguous(), tr.targets.long(),
                   te.data.unsqueeze(1).contiguous(), te.targets.long(),
                   [str(i) for i in range(10)], (0.1307,), (0.3081,),
                   source=f"torchvision MNIST at {tr.root}")


@DATASETS.register("cifar10")
def _cifar10(data_dir: Path | None, *, download: bool, image_size: int | None) -> Dataset:
    """CIFAR-10: torchvision's binary release, or an ImageFolder copy (train/ + test/)."""
    root = data_dir or default_data_dir()
    for cand in (root, root / "cifar10-jpeg"):
        if (cand / "train").is_dir() and _find_split(cand, ("test", "val")) is not None:
            ds = _imagefolder(cand, download=download, image_size=image_size)
            if ds.class_names != CIFAR10_CLASSES:
                raise DataError(f"{str(cand)!r} has classes {ds.class_names}, not CIFAR-10's")
            ds.name = "cifar10"
            return ds
    tr, te = _torchvision("CIFAR10", data_dir, download)
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return Dataset("cifar10", to_t(tr.data), torch.tensor(tr.targets), to_t(te.data),
                   torch.tensor(te.targets), list(tr.classes),
                   (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                   source=f"torchvision CIFAR10 at {tr.root}", augment_default="crop-flip")


def _find_split(root: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _list_images(split: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in split.iterdir() if p.is_dir())
    items = []
    for ci, c in enumerate(classes):
        for f in sorted((split / c).iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((f, ci))
    return classes, items


SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
GRAY_MODES = {"1", "L", "LA", "I", "F", *SIXTEEN_BIT_MODES}
MAX_DEFAULT_SIZE = 224  # the default --image-size: the median shorter side of the photos, at most this
IMAGEFOLDER_CACHE_FORMAT = 2


@contextlib.contextmanager
def _image(p: Path):
    """PIL's ``Image.open`` with a decompression-bomb warning raised as an error: a bomb is refused, not decoded."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(p) as im:
            yield im


def _open_image(p: Path):
    """A fully loaded PIL image, upright (EXIF orientation applied); raises on any unreadable file (empty,
    not an image, truncated, or a decompression bomb: more than PIL's MAX_IMAGE_PIXELS)."""
    from PIL import ImageOps

    with _image(p) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def _probe(p: Path) -> tuple[str, int, int] | str:
    """(mode, width, height) from the header alone, or why the file cannot be used."""
    from PIL import Image

    try:
        with _image(p) as im:
            w, h = im.size
            if w * h > (Image.MAX_IMAGE_PIXELS or float("inf")):
                return f"{w}x{h} pixels (a decompression bomb?)"
            return im.mode, w, h
    except Exception as e:
        return first_line(e, 80)


def _pool_map(fn: Callable, paths: list[Path]) -> list:
    """``fn`` over ``paths`` in a thread pool (PIL decodes outside the GIL), in order."""
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        return list(pool.map(fn, paths, chunksize=256))


def _to_mode(im, channels: int):
    """Any PIL image as 8-bit L (channels 1) or RGB: palette, alpha, CMYK and 16-bit images are converted
    (16-bit by scaling, not clipping)."""
    import numpy as np
    from PIL import Image

    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode in SIXTEEN_BIT_MODES or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a * (255.0 if a.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))  # transparent pixels on white, not black
        im = Image.alpha_composite(bg, im)
    return im.convert("L" if channels == 1 else "RGB")


def _decode(paths: list[Path], size: int, channels: int) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode and resize every image; returns (images, indices of the decoded ones, one note per skipped file)."""
    from PIL import Image

    def one(p: Path) -> torch.Tensor | str:
        try:
            im = _to_mode(_open_image(p), channels)
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except Exception as e:
            return f"{p}: {first_line(e, 80)}"
        return t.view(size, size, channels).permute(2, 0, 1)

    out = torch.empty((len(paths), channels, size, size), dtype=torch.uint8)
    ok, skipped = [], []
    for i, t in enumerate(_pool_map(one, paths)):
        if isinstance(t, str):
            skipped.append(t)
        else:
            out[len(ok)] = t
            ok.append(i)
    return out[:len(ok)].clone() if len(ok) < len(paths) else out, ok, skipped


def _scan(items: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int]], list[tuple[str, int, int]], list[str]]:
    probes = _pool_map(_probe, [p for p, _ in items])
    good = [(it, pr) for it, pr in zip(items, probes) if not isinstance(pr, str)]
    bad = [f"{it[0]}: {pr}" for it, pr in zip(items, probes) if isinstance(pr, str)]
    return [g[0] for g in good], [g[1] for g in good], bad


@DATASETS.register("imagefolder")
def _imagefolder(data_dir: Path | None, *, download: bool, image_size: int | None) -> Dataset:
    """The user's images: DATA_DIR/train/<class>/* and DATA_DIR/test/<class>/* (or val/).

    The set decides its format, never the file that sorts first: RGB unless every image is grayscale, and
    (without ``--image-size``) the median shorter side of the training images, at most 224. Files that
    cannot be read (empty, not an image, truncated, decompression bombs) are skipped with a warning."""
    import statistics
    import warnings

    if data_dir is None:
        raise DataError("the imagefolder dataset needs --data-dir holding train/ and test/ (or val/)")
    train_dir = data_dir / "train"
    test_dir = _find_split(data_dir, ("test", "val"))
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"{str(data_dir)!r} must hold train/ and test/ (or val/) class folders")
    classes, train_items = _list_images(train_dir)
    test_classes, test_items = _list_images(test_dir)
    if not train_items or len(classes) < 2:
        raise DataError(f"{str(train_dir)!r} needs at least two class folders with images")
    if test_classes != classes:
        raise DataError(f"class folders differ between {train_dir.name}/ and {test_dir.name}/")
    # Decoding is the slow part: cache the decoded tensors, keyed by the file list, sizes and mtimes.
    h = hashlib.sha256(f"{IMAGEFOLDER_CACHE_FORMAT}|{data_dir.resolve()}|{image_size}".encode())
    for p, c in train_items + test_items:
        st = p.stat()
        h.update(f"{p.name}|{c}|{st.st_size}|{st.st_mtime_ns}".encode())
    cache = cache_root() / "imagefolder" / f"{h.hexdigest()[:24]}.pt"
    blob = None
    if cache.exists():
        try:
            blob = torch.load(cache, weights_only=True)
            _ = (blob["size"], blob["channels"])  # a cache of another format is rebuilt
        except Exception:
            blob = None
    if blob is None:
        train_items, train_probe, bad = _scan(train_items)
        test_items, test_probe, bad_test = _scan(test_items)
        if len({c for _, c in train_items}) < 2 or not test_items:
            raise DataError(f"{str(data_dir)!r}: too few readable images ({len(train_items)} train, "
                            f"{len(test_items)} test){'; e.g. ' + bad[0] if bad else ''}")
        channels = 1 if all(m in GRAY_MODES for m, _, _ in train_probe + test_probe) else 3
        size = image_size or min(MAX_DEFAULT_SIZE, int(statistics.median(min(w, h) for _, w, h in train_probe)))
        size = max(size, 8)
        n = len(train_items) + len(test_items)
        check_fits_memory(n * channels * size * size, f"decoding {n:,} images at {size}x{size}",
                          "pass a smaller --image-size")
        x_train, ok_train, skip_train = _decode([p for p, _ in train_items], size, channels)
        x_test, ok_test, skip_test = _decode([p for p, _ in test_items], size, channels)
        skipped = bad + bad_test + skip_train + skip_test
        blob = {
            "x_train": x_train, "y_train": torch.tensor([train_items[i][1] for i in ok_train]),
            "x_test": x_test, "y_test": torch.tensor([test_items[i][1] for i in ok_test]),
            "size": size, "channels": channels, "skipped": skipped,
        }
        from ..files import atomic_torch_save, optional_write

        optional_write("decoded-image cache", lambda: atomic_torch_save(blob, cache))  # a failure costs time
    size, channels, skipped = int(blob["size"]), int(blob["channels"]), list(blob.get("skipped", []))
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable image(s) skipped, e.g. {skipped[0]}", RuntimeWarning, stacklevel=2)
    mean, std = _stats(blob["x_train"], 255.0)
    return Dataset("imagefolder", blob["x_train"], blob["y_train"].long(), blob["x_test"],
                   blob["y_test"].long(), classes, mean, std,
                   source=f"ImageFolder at {data_dir} ({'RGB' if channels == 3 else 'grayscale'}, {size}x{size}"
                          f"{'' if image_size else ', the median shorter side (--image-size to change it)'})",
                   augment_default="crop-flip" if channels == 3 else "none")
