"""Dataset registry.

A :class:`Dataset` keeps raw pixels (uint8, or the source's own range) and knows how to map a
batch to the normalized float input the models and the exported ONNX files take:
``((x / scale) - mean) / std``, with ``mean``/``std`` given in the [0, 1] pixel range. Its splits
are tensors held in memory, or, for ImageFolder data too large for the memory budget
(``--data-mode``), :class:`~kdexport.data.images.ImageFiles` that decode on demand and index the same
way; training streams those through a DataLoader (:mod:`kdexport.data.loader`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..allocator import settle as settle_malloc
from ..config import DATA_MODES, parse_memory_budget
from ..envinfo import check_fits_memory
from ..errors import ConfigError, DataError, first_line
from ..files import cache_root, trusted_cache_entry, write_cache_entry
from . import DATASETS
from .images import GRAY_MODES, Geometry, ImageFiles, decode_all, pool_map, probe

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
    x_train: torch.Tensor | ImageFiles  # N x C x H x W, raw values in [0, scale] (or files decoded on demand)
    y_train: torch.Tensor  # N, int64
    x_test: torch.Tensor | ImageFiles
    y_test: torch.Tensor
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 255.0
    source: str = ""
    augment_default: str = "none"
    geometry: Geometry | None = None  # how a photo becomes the input (default: the data's own square size)
    mode_note: str = ""  # why memory or stream was chosen (imagefolder)
    _normalize: Normalization = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._normalize = Normalization(self.scale, self.mean, self.std)
        if self.geometry is None:
            self.geometry = Geometry(self.input_shape[-1], self.input_shape[-1])

    @property
    def streamed(self) -> bool:
        """True when the training images are decoded from files on demand (``--data-mode stream``)."""
        return isinstance(self.x_train, ImageFiles)

    @property
    def mode(self) -> str:
        return "stream" if self.streamed else "memory"

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

    def fingerprint(self, labels: bool = True) -> str:
        """sha256 of the training pixels, labels and the input transform (memoized); ``labels=False`` leaves the
        labels out (what a teacher's logits depend on: seeds and ``--labels-fraction`` share one teacher table)."""
        memo = "_fingerprint" if labels else "_pixels_fingerprint"
        fp = self.__dict__.get(memo)
        if fp is None:
            h = hashlib.sha256()
            h.update(repr((self.name, self.scale, self.mean, self.std, tuple(self.x_train.shape),
                           str(self.x_train.dtype))).encode())
            if self.streamed:  # the files' listing (names, sizes, mtimes, labels, geometry) stands for the pixels
                h.update(f"files:{self.x_train.key}".encode())
            else:
                h.update(self.x_train.contiguous().numpy().tobytes())
            if labels:
                h.update(self.y_train.contiguous().numpy().tobytes())
            fp = self.__dict__[memo] = h.hexdigest()
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
            "preprocess": self.geometry.to_dict(),
            "data_mode": self.mode,
            "source": self.source,
        }


def real_images(data: Dataset, batch: int) -> torch.Tensor:
    """``batch`` raw test images (repeated when the test set is smaller): what latency is measured on."""
    x = data.x_test[:batch]
    if x.shape[0] < batch:  # tiny test sets: repeat real images
        x = x.repeat((batch + x.shape[0] - 1) // x.shape[0], 1, 1, 1)[:batch]
    return x


def real_inputs(data: Dataset, batch: int) -> torch.Tensor:
    """``batch`` normalized test images (repeated when the test set is smaller)."""
    return data.normalize(real_images(data, batch)).contiguous()


EVAL_VALUES = 2**23  # an inference batch holds at most this many input values (32 MB as float32)


def eval_batch(shape: tuple[int, ...] | torch.Size, batch_size: int = 512) -> int:
    """``batch_size`` for inference over images of ``shape`` (N x C x H x W), capped so that large photos do not
    run 512 at a time (at 224 px that alone held 2 GB of activations): 55 images at 3 x 224 x 224; images
    of up to 16,384 values (CIFAR, MNIST) keep the full batch."""
    per = 1
    for d in tuple(shape)[1:]:
        per *= int(d)
    return max(1, min(batch_size, EVAL_VALUES // max(per, 1)))


Loader = Callable[..., Dataset]  # what DATASETS (declared in kdexport.data) holds


def default_data_dir() -> Path:
    env = os.environ.get("KDEXPORT_DATA_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdexport" / "data"


@dataclass(frozen=True)
class LoadOptions:
    """How ImageFolder files become tensors (the other datasets have one fixed form)."""

    image_size: int | None = None  # the square input side (default: the median shorter side, at most 224)
    crop_ratio: float | None = None  # center-crop this share of the resized shorter side (default: by data)
    mode: str = "auto"  # memory, stream, or auto (memory when the decoded set fits memory_budget)
    memory_budget: int | None = None  # bytes; None: half the available memory
    workers: int | None = None  # stream mode: decoding processes (default: usable cores)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 image_size: int | None = None, crop_ratio: float | None = None, data_mode: str = "auto",
                 memory_budget: int | None = None, workers: int | None = None) -> Dataset:
    """Load a registered dataset (into memory, or as files streamed on demand). Raises DataError with one
    clear line."""
    loader = DATASETS.get(name)
    if data_mode not in DATA_MODES:
        raise ConfigError(f"data mode must be one of {', '.join(DATA_MODES)}, got {data_mode!r}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataError(f"data dir {str(data_dir)!r} does not exist or is not a folder")
    opts = LoadOptions(image_size, crop_ratio, data_mode, memory_budget, workers)
    data = loader(Path(data_dir) if data_dir is not None else None, download=download, opts=opts)
    if data_mode == "stream" and not data.streamed:
        raise ConfigError(f"--data-mode stream applies to image files (imagefolder, or cifar10 as an ImageFolder "
                          f"copy); {name} from {data.source or 'its source'} is one array, held in memory")
    settle_malloc(data.streamed)  # kept memory for data in memory, once the CLI asked (kdexport/allocator.py)
    return data


STATS_SAMPLE = 50_000  # mean/std over at most this many training images (a seeded sample beyond it)


def _stats(x: torch.Tensor | ImageFiles, scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units over the training images (a seeded sample of STATS_SAMPLE when
    there are more, in memory and stream mode alike), computed in chunks to bound memory."""
    c = x.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    ss = torch.zeros(c, dtype=torch.float64)
    n = 0
    idx = (torch.arange(x.shape[0]) if x.shape[0] <= STATS_SAMPLE
           else torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].sort().values)
    step = max(1, 2**22 // max(1, x.shape[1] * x.shape[2] * x.shape[3]))  # ~32 MB of float64 per chunk
    for i in range(0, len(idx), step):
        chunk = x[idx[i:i + step]].to(torch.float64) / scale
        s += chunk.sum(dim=(0, 2, 3))
        ss += (chunk ** 2).sum(dim=(0, 2, 3))
        n += chunk.numel() // c
    mean = s / n
    std = (ss / n - mean ** 2).clamp_min(1e-12).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


@DATASETS.register("digits")
def _digits(data_dir: Path | None, *, download: bool, opts: LoadOptions) -> Dataset:
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
def _mnist(data_dir: Path | None, *, download: bool, opts: LoadOptions) -> Dataset:
    tr, te = _torchvision("MNIST", data_dir, download)
    return Dataset("mnist", tr.data.unsqueeze(1).contiguous(), tr.targets.long(),
                   te.data.unsqueeze(1).contiguous(), te.targets.long(),
                   [str(i) for i in range(10)], (0.1307,), (0.3081,),
                   source=f"torchvision MNIST at {tr.root}")


@DATASETS.register("cifar10")
def _cifar10(data_dir: Path | None, *, download: bool, opts: LoadOptions) -> Dataset:
    """CIFAR-10: torchvision's binary release, or an ImageFolder copy (train/ + test/)."""
    root = data_dir or default_data_dir()
    for cand in (root, root / "cifar10-jpeg"):
        if (cand / "train").is_dir() and _find_split(cand, ("test", "val")) is not None:
            ds = _imagefolder(cand, download=download, opts=opts)
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


MAX_DEFAULT_SIZE = 224  # the default --image-size: the median shorter side of the photos, at most this
PHOTO_MIN_SIZE = 64  # RGB sets at least this large are photos: crop ratio 0.875 and rrc-flip by default
PHOTO_CROP_RATIO = 0.875  # torchvision's convention: resize the shorter side to 256, center-crop 224
IMAGEFOLDER_CACHE_FORMAT = 3
MEMORY_BUDGET_FRACTION = 0.5  # --data-mode auto: decoded data up to this share of available memory stays in RAM


def _check_every_class_trains(classes: list[str], items: list[tuple[Path, int]], split: Path, what: str,
                              bad: list[str] = ()) -> None:
    """Every class folder must give the training split at least one image: an output unit the student never sees
    an example of is no class at all. One line naming the empty folders."""
    seen = {label for _, label in items}
    empty = [c for i, c in enumerate(classes) if i not in seen]
    if empty:
        more = f" (and {len(empty) - 5} more)" if len(empty) > 5 else ""
        raise DataError(f"class folder(s) {', '.join(repr(c) for c in empty[:5])}{more} of {str(split)!r} have no "
                        f"{what}{'; e.g. ' + bad[0] if bad else ''}: add images, or remove the folder (from "
                        "test/ too)")


def _scan(items: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int]], list[tuple[str, int, int]], list[str]]:
    probes = pool_map(probe, [p for p, _ in items])
    good = [(it, pr) for it, pr in zip(items, probes) if not isinstance(pr, str)]
    bad = [f"{it[0]}: {pr}" for it, pr in zip(items, probes) if isinstance(pr, str)]
    return [g[0] for g in good], [g[1] for g in good], bad


def memory_budget(text: str | None) -> int | None:
    """``--memory-budget`` (e.g. 4GB, 512MB, 0 for none) in bytes; None -> half the available memory."""
    if text is None:
        from ..envinfo import available_memory

        avail = available_memory()
        return int(avail * MEMORY_BUDGET_FRACTION) if avail is not None else None
    return parse_memory_budget(text)


@DATASETS.register("imagefolder")
def _imagefolder(data_dir: Path | None, *, download: bool, opts: LoadOptions) -> Dataset:
    """The user's images: DATA_DIR/train/<class>/* and DATA_DIR/test/<class>/* (or val/). A train/ without class
    folders holds unlabeled images (any layout below it): the classes are the test split's folders, and a teacher
    teaches the student every training image.

    The set decides its format, never the file that sorts first: RGB unless every image is grayscale, and
    (without ``--image-size``) the median shorter side of the training images, at most 224. Each image is
    resized on its shorter side and center-cropped (:class:`Geometry`); RGB photos of 64 px and more keep
    the central 87.5% (torchvision's 256 -> 224), smaller images are kept whole. Files that cannot be read
    (empty, not an image, truncated, decompression bombs) are skipped with a warning. The decoded set is held
    in memory when it fits the memory budget (``opts.mode``), else decoded batch by batch from the files."""
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
    unlabeled = not classes  # train/ without class folders: every training image is unlabeled (the teacher labels)
    if unlabeled:
        from .labels import UNLABELED, list_images

        train_items = [(p, UNLABELED) for p in list_images(train_dir)]
        if not train_items:
            raise DataError(f"{str(train_dir)!r} holds no class folders and no images")
        if len(test_classes) < 2:
            raise DataError(f"{str(train_dir)!r} has no class folders, so the classes come from {test_dir.name}/, "
                            f"which needs at least two class folders with images")
        classes = test_classes
    elif not train_items or len(classes) < 2:
        raise DataError(f"{str(train_dir)!r} needs at least two class folders with images")
    if test_classes != classes:
        raise DataError(f"class folders differ between {train_dir.name}/ and {test_dir.name}/")
    if not unlabeled:
        _check_every_class_trains(classes, train_items, train_dir, "training images")
    # The listing (names, labels, sizes, mtimes) keys the caches: decoded tensors, and the stream mode's stats.
    h = hashlib.sha256(f"{IMAGEFOLDER_CACHE_FORMAT}|{data_dir.resolve()}|{opts.image_size}|{opts.crop_ratio}".encode())
    for p, c in train_items + test_items:
        st = p.stat()
        h.update(f"{p.name}|{c}|{st.st_size}|{st.st_mtime_ns}".encode())
    key = h.hexdigest()[:24]
    cache = cache_root() / "imagefolder" / f"{key}.pt"
    budget = opts.memory_budget if opts.memory_budget is not None else memory_budget(None)
    blob = None
    if (opts.mode != "stream" and cache.is_file() and (opts.mode == "memory" or budget is None
                                                       or cache.stat().st_size <= budget)
            and trusted_cache_entry(cache, "decoded-image cache") is not None):
        try:
            blob = torch.load(cache, weights_only=True)
            _ = (blob["size"], blob["channels"], blob["resize"])  # a cache of another format is rebuilt
        except Exception:
            blob = None
    gib = lambda b: f"{b / 2**30:,.2f} GiB"  # noqa: E731
    if blob is not None:
        within = f" <= budget {gib(budget)}" if opts.mode == "auto" and budget is not None else ""
        note = (f"memory ({'auto: ' if opts.mode == 'auto' else '--data-mode; '}decoded set "
                f"{gib(cache.stat().st_size)}{within}, from the cache)")
        geometry = Geometry(int(blob["size"]), int(blob["resize"]))
        channels, skipped = int(blob["channels"]), list(blob.get("skipped", []))
        median = blob.get("median_side")
        x_train, y_train, x_test, y_test = blob["x_train"], blob["y_train"], blob["x_test"], blob["y_test"]
    else:
        train_items, train_probe, bad = _scan(train_items)
        test_items, test_probe, bad_test = _scan(test_items)
        if not unlabeled:
            _check_every_class_trains(classes, train_items, train_dir, "readable training images", bad)
        if (len({c for _, c in train_items}) < 2 and not unlabeled) or not train_items or not test_items:
            raise DataError(f"{str(data_dir)!r}: too few readable images ({len(train_items)} train, "
                            f"{len(test_items)} test){'; e.g. ' + bad[0] if bad else ''}")
        channels = 1 if all(m in GRAY_MODES for m, _, _ in train_probe + test_probe) else 3
        median = int(statistics.median(min(w, h) for _, w, h in train_probe))
        size = opts.image_size or min(MAX_DEFAULT_SIZE, median)
        size = max(size, 8)
        ratio = opts.crop_ratio or (PHOTO_CROP_RATIO if channels == 3 and size >= PHOTO_MIN_SIZE else 1.0)
        geometry = Geometry.for_size(size, ratio)
        n = len(train_items) + len(test_items)
        nbytes = n * channels * size * size
        stream = opts.mode == "stream" or (opts.mode == "auto" and budget is not None and nbytes > budget)
        if opts.mode != "auto":
            note = f"{opts.mode} (--data-mode; decoded set {gib(nbytes)})"
        else:
            note = (f"{'stream' if stream else 'memory'} (auto: decoded set {gib(nbytes)} "
                    f"{'>' if stream else '<='} budget {gib(budget) if budget is not None else 'unknown'})")
        if stream:
            from ..envinfo import usable_cores

            workers = usable_cores() if opts.workers is None else opts.workers
            x_train = ImageFiles([p for p, _ in train_items], channels, geometry, f"{key}:train", workers)
            x_test = ImageFiles([p for p, _ in test_items], channels, geometry, f"{key}:test", workers)
            y_train = torch.tensor([c for _, c in train_items])
            y_test = torch.tensor([c for _, c in test_items])
            skipped = bad + bad_test
        else:
            check_fits_memory(nbytes, f"decoding {n:,} images at {size}x{size}",
                              "pass --data-mode stream, or a smaller --image-size")
            x_train, ok_train, skip_train = decode_all([p for p, _ in train_items], channels, geometry)
            x_test, ok_test, skip_test = decode_all([p for p, _ in test_items], channels, geometry)
            y_train = torch.tensor([train_items[i][1] for i in ok_train])
            y_test = torch.tensor([test_items[i][1] for i in ok_test])
            skipped = bad + bad_test + skip_train + skip_test
            blob = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
                    "size": size, "resize": geometry.resize, "channels": channels, "skipped": skipped,
                    "median_side": median}
            write_cache_entry(cache, lambda tmp: torch.save(blob, tmp), "decoded-image cache")  # a failure costs time
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable image(s) skipped, e.g. {skipped[0]}", RuntimeWarning, stacklevel=2)
    mean, std = _cached_stats(x_train, cache.with_suffix(".stats.json")) if isinstance(x_train, ImageFiles) \
        else _stats(x_train, 255.0)
    size = geometry.size
    crop = "" if geometry.resize == size else f", shorter side {geometry.resize} then center crop"
    return Dataset("imagefolder", x_train, y_train.long(), x_test, y_test.long(), classes, mean, std,
                   source=f"ImageFolder at {data_dir} ({'RGB' if channels == 3 else 'grayscale'}, {size}x{size}{crop}"
                          f"{'' if opts.image_size else _default_size_note(size, median)})",
                   augment_default=("rrc-flip" if channels == 3 and size >= PHOTO_MIN_SIZE
                                    else "crop-flip" if channels == 3 else "none"),
                   geometry=geometry, mode_note=note)


def _default_size_note(size: int, median: int | None) -> str:
    """Why the input is ``size`` px when --image-size was not given: the median shorter side, or the cap below it."""
    if median is not None and median > size:
        return f", the {MAX_DEFAULT_SIZE} px cap (the median shorter side is {median}; --image-size to change it)"
    return ", the median shorter side (--image-size to change it)"


def _cached_stats(x: ImageFiles, path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Stream mode: mean/std cost a decoding pass, so they are kept beside the decoded-image cache (used again only
    when their digest holds and they are one finite mean and a positive std per channel)."""
    import json
    import math

    if trusted_cache_entry(path, "image statistics cache") is not None:
        try:
            d = json.loads(path.read_text())
            mean, std = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
            if len(mean) == len(std) == x.shape[1] and all(math.isfinite(v) for v in mean + std) and min(std) > 0:
                return mean, std
        except Exception:
            pass
    mean, std = _stats(x, 255.0)
    write_cache_entry(path, lambda tmp: Path(tmp).write_text(json.dumps({"mean": mean, "std": std})),
                      "image statistics cache")
    return mean, std
