"""Teachers, and the one object that turns training into distillation.

A :class:`Teacher` is "raw batch in, logits out", plus its class count, input shape and a
fingerprint for the cache: whether it is a PyTorch module (:class:`TorchTeacher`) or, later, an
onnxruntime session is the teacher's business, not the training loop's. The raw batch is the
dataset's stored pixels (after augmentation), on the training device; a teacher applies its own
normalization.

:func:`teacher_logits` picks how the loop gets the teacher's logits for a batch: without
augmentation the inputs never change, so the logits of the whole training set are computed once,
kept on disk keyed by (teacher fingerprint, data, transform), and indexed by sample
(:class:`CachedLogits`); with augmentation the teacher runs live on exactly the view the student
sees (:class:`LiveLogits`), or, for an augmentation with finitely many views and
``--teacher-view-cache``, its logits on every view of every image are computed once and looked up
(:class:`ViewCachedLogits`). :class:`Distillation` pairs that with the loss (``KDConfig``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..config import KDConfig
from ..data.augment import AUGMENTATIONS, Shifts
from ..data.datasets import Dataset, Normalization, eval_batch
from ..errors import ConfigError, DataError, ModelError
from ..files import drop_cache_entry, hash_file, reserve, trusted_cache_entry, write_cache_entry
from ..runtimes.ort import inspect_classifier, onnx_files, ort_logits, ort_session
from . import TTAS
from .hint import Hint
from .losses import kd_loss
from .mixup import Mix
from .precision import autocast, resolve_precision

CACHE_FORMAT = "kdexport-teacher-logits/3"  # 3: keyed by pixels, not labels


class Teacher(Protocol):
    num_classes: int
    input_shape: tuple[int, int, int]

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """Float logits [N, classes] for a raw batch (stored pixels, on the training device)."""

    def fingerprint(self) -> str:
        """A digest that changes whenever the teacher's outputs may change (its weights)."""


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
        t = v.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors (BatchNorm counters) cannot view as bytes
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TorchTeacher:
    """A PyTorch module as a frozen teacher: eval mode, no gradients, inference mode."""

    def __init__(self, module: nn.Module, normalize: Callable[[torch.Tensor], torch.Tensor],
                 num_classes: int, input_shape: tuple[int, int, int], device: torch.device | str = "cpu",
                 precision: str = "fp32", normalization: str = ""):
        self.module = module.to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.normalize, self.num_classes, self.input_shape = normalize, num_classes, tuple(input_shape)
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.normalization = normalization  # what ``normalize`` does, for the fingerprint
        self._fingerprint: str | None = None

    @classmethod
    def for_data(cls, module: nn.Module, data: Dataset, device: torch.device | str = "cpu",
                 precision: str = "fp32") -> TorchTeacher:
        """The teacher fed ``data``'s pixels normalized with ``data``'s statistics (a trained teacher's own, where
        ``data`` carries them: ``kdexport.distill.sources.teacher_data``)."""
        return cls(module, data.normalize, data.num_classes, data.input_shape, device, precision,
                   repr((data.scale, tuple(data.mean), tuple(data.std))))

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        x = self.normalize(raw.to(self.device))
        if x.dim() == 4:  # oneDNN's convolutions are ~2.5x faster on channels-last inputs (2 cores, bf16)
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.precision, self.device):
            return self.module(x).float()

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # frozen weights: hash once; bf16 logits and another normalization: others
            h = weights_hash(self.module) + (f"|norm={self.normalization}" if self.normalization else "")
            self._fingerprint = h if self.precision == "fp32" else f"{h}|{self.precision}"
        return self._fingerprint


class OnnxTeacher:
    """A trained classifier in an ONNX file, run by onnxruntime as a black box.

    Its input size and class count come from the graph (dynamic sizes from its ``input_shape``
    metadata) and must match the data's; its normalization from its ``mean``/``std`` metadata when
    present, else from ``mean``/``std`` given here (``--teacher-mean/--teacher-std``), else the
    dataset's. A graph whose batch size is fixed is run one image at a time."""

    def __init__(self, path: str | os.PathLike, data: Dataset, *, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, threads: int | None = None):
        self.path = Path(path)
        info = inspect_classifier(self.path)
        meta = info["metadata"]
        chw = [d if d is not None else want for d, want in zip(info["input_shape"], data.input_shape)]
        name = self.path.name
        if tuple(chw) != tuple(data.input_shape):
            raise DataError(f"teacher {name} takes inputs {chw}; the dataset gives {list(data.input_shape)} "
                            "(for imagefolder data pass --image-size to match)")
        self.session = ort_session(self.path, threads=threads)
        self.input_name = info["input_name"]
        self.fixed_batch = info["batch"]
        self.num_classes = info["num_classes"] or ort_logits(self.session,
                                                             torch.zeros(1, *data.input_shape).numpy()).shape[1]
        if self.num_classes != data.num_classes:
            raise DataError(f"teacher {name} has {self.num_classes} classes; the dataset has {data.num_classes}")
        names = meta.get("class_names")
        if isinstance(names, list) and [str(n) for n in names] != list(data.class_names):
            raise DataError(f"teacher {name} names its classes {names[:4]}...; the dataset's are "
                            f"{data.class_names[:4]}... (same classes, same order needed)")
        self.input_shape = tuple(chw)
        c = data.input_shape[0]
        mean = tuple(meta["mean"]) if mean is None and "mean" in meta else mean or data.mean
        std = tuple(meta["std"]) if std is None and "std" in meta else std or data.std
        for what, v in (("mean", mean), ("std", std)):
            if len(v) != c:
                raise DataError(f"teacher {name}: {what} has {len(v)} values for {c} input channels")
        self.mean, self.std, self.scale = tuple(map(float, mean)), tuple(map(float, std)), data.scale
        self._normalize = Normalization(self.scale, self.mean, self.std)
        self._fingerprint: str | None = None

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw pixels -> the float input this teacher was trained on (on the CPU)."""
        return self._normalize(raw.detach().cpu())

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(ort_logits(self.session, self.normalize(raw).numpy())).float().to(raw.device)

    def fingerprint(self) -> str:
        if self._fingerprint is None:  # the file's bytes and the normalization applied before it
            h = hashlib.sha256()
            for file in onnx_files(self.path):  # the graph and its external weights
                hash_file(file, h)
            h.update(repr((self.mean, self.std, self.scale)).encode())
            self._fingerprint = f"onnx:{h.hexdigest()}"
        return self._fingerprint


class FlipTTA:
    """A teacher whose logits are the mean of the image's and its left-right mirror's (test-time augmentation)."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.num_classes, self.input_shape = teacher.num_classes, teacher.input_shape
        self.module = getattr(teacher, "module", None)  # a hint reads the PyTorch teacher's layers

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.teacher.logits(raw) + self.teacher.logits(raw.flip(-1)))

    def fingerprint(self) -> str:
        return f"{self.teacher.fingerprint()}|tta=flip"


def shifted(raw: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The image moved by (dy, dx) pixels (|d| <= 1) with reflected borders: out[y, x] = raw[y - dy, x - dx]."""
    h, w = raw.shape[-2:]
    padded = nn.functional.pad(raw.float(), (1, 1, 1, 1), mode="reflect").to(raw.dtype)
    return padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


class FlipShiftTTA(FlipTTA):
    """airbench's mirror + translate: 0.5 * flip-TTA(image) + 0.25 * flip-TTA(image moved one pixel down-right)
    + 0.25 * flip-TTA(image moved one pixel up-left), borders reflected (six forward passes)."""

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        if raw.dim() != 4:
            raise ConfigError("--teacher-tta flip-shift needs image inputs [N, C, H, W]")
        return (0.5 * super().logits(raw) + 0.25 * super().logits(shifted(raw, 1, 1))
                + 0.25 * super().logits(shifted(raw, -1, -1)))

    def fingerprint(self) -> str:
        return f"{self.teacher.fingerprint()}|tta=flip-shift"


# teacher -> teacher with test-time augmentation, by --teacher-tta (names declared in kdexport.distill)
TTAS.register("none")(lambda t: t)
TTAS.register("flip")(FlipTTA)
TTAS.register("flip-shift")(FlipShiftTTA)


def teacher_accuracy(teacher: Teacher, data: Dataset) -> float:
    """Top-1 accuracy of a teacher on the test split (through the same interface the loop uses). A teacher
    whose logits are NaN or infinite is refused here, before a student learns from it."""
    logits = logits_over(teacher, data.x_test)
    bad = int((~torch.isfinite(logits)).any(1).sum())
    if bad:
        raise ModelError(f"the teacher's logits are NaN or infinite on {bad} of {len(logits)} test images: its "
                         "weights (or ONNX file) are broken, or it diverged while training; fix the teacher")
    pred = logits.argmax(1)
    return int((pred == data.y_test).sum()) / max(len(data.y_test), 1)


def with_tta(teacher: Teacher, mode: str) -> Teacher:
    """``teacher`` under ``--teacher-tta mode``."""
    return TTAS.get(mode)(teacher)


def tta_accuracies(base: Teacher, data: Dataset, modes: tuple[str, ...] | None = None) -> list[dict]:
    """``base``'s test accuracy under each ``--teacher-tta`` mode in ``modes``, with the seconds each pass over the
    test split took."""
    rows = []
    for mode in modes or TTAS.names(sort=False):
        t0 = time.perf_counter()
        rows.append({"tta": mode, "accuracy": teacher_accuracy(with_tta(base, mode), data),
                     "seconds": time.perf_counter() - t0})
    return rows


def logits_over(teacher: Teacher, x, batch_size: int = 512, out: np.ndarray | None = None) -> torch.Tensor:
    """The teacher's logits over every sample of ``x`` (raw pixels, a tensor or image files), on the CPU;
    with ``out`` (an N x classes float32 array, e.g. a memory map), written into it batch by batch."""
    batch_size = eval_batch(x.shape, batch_size)
    if out is not None:
        for i in range(0, x.shape[0], batch_size):
            out[i:i + batch_size] = teacher.logits(x[i:i + batch_size]).float().cpu().numpy()
        return torch.from_numpy(out)
    chunks = [teacher.logits(x[i:i + batch_size]).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(chunks) if chunks else torch.empty(0, teacher.num_classes)


def teacher_cache_key(teacher: Teacher, data: Dataset) -> str:
    """Teacher x dataset (pixels and normalization, not labels) x transform (no augmentation)."""
    return hashlib.sha256(f"{CACHE_FORMAT}|{teacher.fingerprint()}|{data.fingerprint(labels=False)}|augment=none"
                          .encode()).hexdigest()[:32]


def _disk_table(what: str, key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], None],
                cache_dir: str | os.PathLike | None) -> torch.Tensor:
    """A float32 table that ``fill`` writes. With ``cache_dir``: a memory-mapped ``KEY.npy``, written once
    and read back lazily (so it scales with the data set). An entry is used only when its bytes match the
    digest written with it, its shape is this table's and every value is finite; any other entry is
    recomputed and replaced, with a warning. A write that cannot happen (full disk, file-size limit,
    permissions) is a warning too: its space is reserved before the map is filled, so a full disk is an
    error to go on from, not a SIGBUS."""

    def in_memory() -> torch.Tensor:
        out = np.empty(shape, dtype=np.float32)
        fill(out)
        return torch.from_numpy(checked(out))

    def checked(table: np.ndarray) -> np.ndarray:
        bad = int((~np.isfinite(table)).any(axis=-1).sum())
        if bad:
            raise ModelError(f"the teacher's logits are NaN or infinite on {bad:,} training images: its weights (or "
                             "ONNX file) are broken, or it diverged while training; fix the teacher")
        return table

    if cache_dir is None:
        return in_memory()
    path = Path(cache_dir) / f"{key}.npy"
    if trusted_cache_entry(path, what) is not None:
        try:
            table = np.load(path, mmap_mode="c")  # copy-on-write: a writable view, pages read on demand
            ok = table.shape == shape and table.dtype == np.float32 and bool(np.isfinite(table).all())
        except Exception:
            ok = False
        if ok:
            return torch.from_numpy(table)
        warnings.warn(f"{what} entry {str(path)!r} is not used: its shape, type or values are not this teacher's "
                      "logits; recomputing it", RuntimeWarning, stacklevel=2)
        drop_cache_entry(path)

    def write(tmp: str) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        reserve(tmp, out.offset)  # a full disk fails here, as an OSError, not as a SIGBUS while filling the map
        fill(out)
        checked(out)
        out.flush()
        del out

    if write_cache_entry(path, write, what):
        try:
            return torch.from_numpy(np.load(path, mmap_mode="c"))
        except OSError:  # another process (a torchrun rank) found it before its digest and dropped it: recompute
            pass
    return in_memory()


def cached_teacher_logits(teacher: Teacher, data: Dataset, cache_dir: str | os.PathLike | None) -> torch.Tensor:
    """Teacher logits over the training set (float32, N x classes, indexed by sample); kept in ``cache_dir``
    when given (see :func:`_disk_table`)."""
    return _disk_table("teacher-logit cache", teacher_cache_key(teacher, data),
                       (len(data.y_train), data.num_classes),
                       lambda out: logits_over(teacher, data.x_train, out=out), cache_dir)


def view_logits_over(teacher: Teacher, x, views: Shifts, out: np.ndarray, batch_size: int = 512,
                     progress: Callable[[int, int], None] | None = None) -> None:
    """``out[v, i]`` = the teacher's logits on view ``v`` of image ``i`` of ``x`` (raw pixels, a tensor or image
    files), for every view of ``views``: each batch is read once and seen in every view. A flip-TTA'd teacher
    costs one pass per view, not two: a view's mirror image is another view (``views.mirrored``), so its
    TTA logits are the mean of two rows of the plain teacher's table. ``progress(done, total)`` per batch."""
    batch_size = eval_batch(x.shape, batch_size)
    base, pair = (teacher.teacher, True) if type(teacher) is FlipTTA and views.flip else (teacher, False)
    every = torch.arange(views.count)
    mirror = views.mirrored(every).numpy() if pair else None
    total = -(-x.shape[0] // batch_size)
    for step, i in enumerate(range(0, x.shape[0], batch_size), 1):
        raw = x[i:i + batch_size]
        chunk = np.stack([base.logits(views.render(raw, torch.full((len(raw),), v))).float().cpu().numpy()
                          for v in range(views.count)])
        out[:, i:i + batch_size] = 0.5 * (chunk + chunk[mirror]) if pair else chunk
        if progress is not None:
            progress(step, total)


def view_cache_key(teacher: Teacher, data: Dataset, views: Shifts) -> str:
    """Teacher x dataset (pixels and normalization, not labels) x the views (their padding and mirror)."""
    padding = ",reflect" if views.reflect else ""  # (zero padding: the key tables made before reflect had)
    return hashlib.sha256(f"{CACHE_FORMAT}|{teacher.fingerprint()}|{data.fingerprint(labels=False)}|views={views.pad},"
                          f"{views.flip}{padding}".encode()).hexdigest()[:32]


class LiveLogits:
    """The teacher run on every batch, on exactly the (augmented) view the student sees."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher

    def __call__(self, idx: torch.Tensor, raw: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        return self.teacher.logits(raw)


class CachedLogits:
    """The teacher's logits over the whole (un-augmented) training set, computed once and indexed by sample."""

    def __init__(self, teacher: Teacher, data: Dataset, device: torch.device | str = "cpu",
                 cache_dir: str | os.PathLike | None = None):
        self.teacher = teacher
        self.device = device
        self.table = cached_teacher_logits(teacher, data, cache_dir)  # on the CPU (memory-mapped from the cache)

    def __call__(self, idx: torch.Tensor, raw: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[idx.cpu()].to(self.device)


class ViewCachedLogits:
    """The teacher's logits on every view of every training image, for an augmentation with finitely many
    views (shift2-flip: 50): computed once (one teacher pass over the training set per view, kept on disk
    like :class:`CachedLogits`' table), then looked up by (view, sample) on each batch. The same logits a
    live teacher gives on that batch, for the price of a lookup: it pays once the students' epochs together
    outnumber the views (seeds, sweep cells and reruns share the table)."""

    def __init__(self, teacher: Teacher, data: Dataset, augment: str, device: torch.device | str = "cpu",
                 cache_dir: str | os.PathLike | None = None, progress: Callable[[int, int], None] | None = None):
        self.teacher, self.device, self.views = teacher, device, finite_views(augment)
        shape = (self.views.count, len(data.y_train), data.num_classes)
        self.table = _disk_table("teacher view cache", view_cache_key(teacher, data, self.views), shape,
                                 lambda out: view_logits_over(teacher, data.x_train, self.views, out,
                                                              progress=progress), cache_dir)

    def __call__(self, idx: torch.Tensor, raw: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        if views is None:
            raise ConfigError("the teacher's logits are cached per view, but this batch has no view numbers")
        return self.table[views.cpu(), idx.cpu()].to(self.device)


def view_augmentations() -> list[str]:
    """The augmentations whose views can be cached."""
    return [n for n in AUGMENTATIONS.names() if (a := AUGMENTATIONS.get(n)) is not None and a.views is not None]


def finite_views(augment: str) -> Shifts:
    """The views of the students' augmentation (resolved) that ``--teacher-view-cache`` tabulates; a clear
    error when it has no finite set of them."""
    aug = AUGMENTATIONS.get(augment)
    if aug is None or aug.views is None:
        raise ConfigError(f"--teacher-view-cache needs an augmentation with finitely many views "
                          f"({', '.join(view_augmentations())}), not --augment {augment}")
    return aug.views


TeacherLogits = LiveLogits | CachedLogits | ViewCachedLogits


def teacher_logits(teacher: Teacher, data: Dataset, *, augment: str, device: torch.device | str = "cpu",
                   cache_dir: str | os.PathLike | None = None, live: bool = False, view_cache: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> TeacherLogits:
    """Cached when the student's training inputs never change (``augment == "none"``); cached per view with
    ``view_cache`` (an augmentation with finitely many views); else live. ``live`` forces it (a hint loss needs
    the teacher's features on every batch)."""
    if live:
        return LiveLogits(teacher)
    if augment == "none":
        return CachedLogits(teacher, data, device, cache_dir)
    if view_cache:
        return ViewCachedLogits(teacher, data, augment, device, cache_dir, progress)
    return LiveLogits(teacher)


@dataclass
class Distillation:
    """Everything that makes :func:`kdexport.distill.train.fit` distil: the teacher's logits for a
    batch and the loss that compares the student's with them."""

    logits: TeacherLogits
    kd: KDConfig
    hint: Hint | None = None  # a FitNets hint on one student layer (kdexport.distill.hint)

    @classmethod
    def for_student(cls, logits: TeacherLogits, kd: KDConfig, student: nn.Module,
                    input_shape: tuple[int, ...], device: torch.device | str = "cpu") -> Distillation:
        """The distillation of one student; with ``kd.hint``, its hooks and connector (a live PyTorch teacher)."""
        hint = None
        if kd.hint:
            teacher = getattr(logits.teacher, "module", None)
            if not isinstance(logits, LiveLogits) or teacher is None:
                raise ConfigError("--hint needs a PyTorch teacher run live on every batch")
            hint = Hint(kd.hint, teacher, student, input_shape, kd.hint_weight, device)
        return cls(logits, kd, hint)

    def loss(self, student_logits: torch.Tensor, idx: torch.Tensor, raw: torch.Tensor,
             targets: torch.Tensor, epoch: float = 1.0, label_smoothing: float = 0.0,
             views: torch.Tensor | None = None, mix: Mix | None = None) -> dict[str, torch.Tensor]:
        """The batch's loss; ``raw`` is what the student saw (with ``mix``, the mixed images: the teacher is live)."""
        if mix is not None and not isinstance(self.logits, LiveLogits):
            raise ConfigError("--kd-mixup needs the teacher run live on the mixed images, not a table of its logits")
        out = kd_loss(student_logits, self.logits(idx, raw, views), targets, self.kd, epoch, label_smoothing, mix)
        if self.hint is not None:
            h = self.hint.term()
            out = {"loss": out["loss"] + h, "ce": out["ce"], "kd": out["kd"] + h.detach()}
        return out

    def parameters(self) -> list[nn.Parameter]:
        """Trained with the student: the hint's connector."""
        return list(self.hint.connector.parameters()) if self.hint is not None else []

    def state_dict(self) -> dict:
        return self.hint.connector.state_dict() if self.hint is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.hint is not None:
            self.hint.connector.load_state_dict(state)

    def close(self) -> None:
        if self.hint is not None:
            self.hint.close()

    def settings(self) -> dict:
        """What a resumed run must match (the loss's settings)."""
        return dataclasses.asdict(self.kd)
