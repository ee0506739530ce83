"""The one interface every runtime implements, and what is written once against it.

A runtime (an item of :data:`kdexport.runtimes.RUNTIMES`) turns a model file into a :class:`ModelFile`:
its input spec (name, N x C x H x W with ``None`` for a dynamic size, a fixed batch if any), its class count
and metadata, and ``run(x)`` (one call on a float32 batch, the first output back). :meth:`ModelFile.logits`
(batching, a fixed batch fed what it takes), :func:`predictions`, :func:`accuracy` and
:func:`prediction_health` work for every runtime alike; the parity checks, ``bench``, ``predict`` and
``verify`` are built on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import ModelFileError
from . import RUNTIMES, SUFFIXES

if TYPE_CHECKING:
    import torch

    from ..data.datasets import Dataset


class NativeLog(list):
    """The lines a runtime's C++ code logged while :func:`native_quiet` held them."""

    def last(self) -> str | None:
        lines = [line.strip() for line in self if line.strip()]
        return re.sub(r"^\[[\w.]+:\d+\]\s*", "", lines[-1]) if lines else None


@contextlib.contextmanager
def native_quiet():
    """A runtime's or converter's C++ log lines (CPU probing, delegate banners, converter statistics) kept off the
    terminal, both where Python writes them and at the file-descriptor level where Python's redirects do not reach.
    Yields a :class:`NativeLog` holding them, filled on exit, so an error can quote the runtime's own reason."""
    import io
    import sys
    import tempfile

    log = NativeLog()
    sink = io.StringIO()
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    with tempfile.TemporaryFile(mode="w+b") as held:
        if saved is not None:
            os.dup2(held.fileno(), 2)
        old, sys.stderr = sys.stderr, sink
        try:
            yield log
        finally:
            sys.stderr = old
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            held.seek(0)
            log += held.read().decode(errors="replace").splitlines() + sink.getvalue().splitlines()


@contextlib.contextmanager
def quiet_torch_logs():
    """torch's own warnings while a runtime's packages import (deprecations they trigger, not the user's)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, fixed: int | None,
            batch_size: int = 256) -> np.ndarray:
    """``run`` over ``x`` in batches; a graph whose batch size is fixed (common for mobile models) gets batches of
    exactly that size, the last one padded by repeating its last input."""
    b = fixed or batch_size
    outs = []
    for i in range(0, len(x), b):
        chunk = np.ascontiguousarray(x[i:i + b], dtype=np.float32)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        outs.append(run(chunk)[:n])
    return np.concatenate(outs) if outs else np.empty((0,))


@dataclass
class ModelFile:
    """A model file loaded by its runtime: what it takes and how to run it."""

    path: Path
    runtime: str
    input_name: str
    input_shape: list[int | None]  # N, C, H, W as the file declares them (None: dynamic)
    num_classes: int | None
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)  # one call: float32 N x C x H x W -> first output
    metadata: dict = field(default_factory=dict)
    threads: int | None = None  # the threads it runs with when the runtime could not honour the request

    @property
    def fixed_batch(self) -> int | None:
        b = self.input_shape[0]
        return b if isinstance(b, int) and b > 0 else None

    def logits(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return batched(self.run, x, self.fixed_batch, batch_size)


class Runtime(Protocol):
    def load(self, path: str | os.PathLike, threads: int | None = None) -> ModelFile: ...

    def inspect(self, path: str | os.PathLike) -> dict:
        """Without running it: input_name, input_shape (C, H, W), batch (None: dynamic), num_classes, metadata,
        bytes (every file the model needs); ModelFileError, one line, when it is not an image classifier."""
        ...

    def version(self) -> str | None: ...


def read_model_bytes(path: str | os.PathLike, what: str, magic: bytes, at: int = 4) -> bytes:
    """A single-file model's bytes, checked to be one (``magic`` at offset ``at``, as its format writes it), so a
    wrong or truncated file is one line naming it before any runtime parses it."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a directory, not {what}")
    if not path.is_file():
        raise ModelFileError(f"{str(path)!r} does not exist")
    data = path.read_bytes()
    if data[at:at + len(magic)] != magic:
        raise ModelFileError(f"{str(path)!r} is not {what}: no {magic.decode()} identifier")
    return data


def runtime_for(path: str | os.PathLike) -> str:
    """The runtime that runs ``path``, by its suffix (a file being written, ``.NAME.onnx.partial``, by the suffix
    before that); one line naming the known suffixes otherwise."""
    p = Path(path)
    suffix = (p.with_suffix("") if p.suffix in (".partial", ".tmp") else p).suffix.lower()
    if suffix not in SUFFIXES:
        what = suffix or "a file without a suffix"
        raise ModelFileError(f"{str(path)!r}: kdexport runs {', '.join(sorted(SUFFIXES))} files, not {what}")
    return SUFFIXES[suffix]


def load(path: str | os.PathLike, threads: int | None = None) -> ModelFile:
    """``path`` loaded by the runtime its suffix names."""
    runtime: Runtime = RUNTIMES.get(runtime_for(path))
    return runtime.load(path, threads=threads)


def inspect(path: str | os.PathLike) -> dict:
    """``path`` inspected (not run) by the runtime its suffix names: :meth:`Runtime.inspect`."""
    runtime: Runtime = RUNTIMES.get(runtime_for(path))
    return runtime.inspect(path)


def runtime_version(path: str | os.PathLike) -> str | None:
    return RUNTIMES.get(runtime_for(path)).version()


def predictions(model: ModelFile, data: Dataset, batch_size: int = 256,
                normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Predicted class of ``model`` for every image of the dataset's test split."""
    from ..data.datasets import eval_batch

    normalize = normalize or data.normalize
    batch_size = eval_batch(data.x_test.shape, batch_size)
    preds = [model.logits(normalize(data.x_test[i:i + batch_size]).numpy(), batch_size).argmax(1)
             for i in range(0, data.x_test.shape[0], batch_size)]
    return np.concatenate(preds) if preds else np.empty(0, dtype=np.int64)


def accuracy(model: ModelFile, data: Dataset, batch_size: int = 256,
             normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy of ``model`` on the dataset's test split; ``normalize`` when the model expects another
    normalization than the dataset's."""
    pred = predictions(model, data, batch_size, normalize)
    return int((pred == data.y_test.numpy()).sum()) / max(data.x_test.shape[0], 1)


def file_accuracy(path: str | os.PathLike, data: Dataset, threads: int | None = None,
                  normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """:func:`accuracy` of the file at ``path``, in the runtime its suffix names."""
    return accuracy(load(path, threads), data, normalize=normalize)


COLLAPSE_SHARE = 0.9  # a model that gives one class to this share of the test images has collapsed


def prediction_health(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """How a model's test predictions spread over the classes, and a flag when they are degenerate: one
    class for at least 90% of the images (``collapsed``, unless the test set is that skewed) or an accuracy
    no better than always answering the most common class (``below majority-class rate``)."""
    n = max(len(labels), 1)
    counts = np.bincount(pred.astype(np.int64), minlength=num_classes)
    majority = float(np.bincount(labels.astype(np.int64), minlength=num_classes).max()) / n
    share = float(counts.max()) / n
    acc = float((pred == labels).sum()) / n
    flag = None
    if num_classes > 1 and share >= COLLAPSE_SHARE and share > majority + 0.05:
        flag = f"collapsed: predicts class {int(counts.argmax())} for {share:.0%} of the test images"
    elif num_classes > 1 and acc <= majority:
        flag = f"below the majority-class rate: {acc:.2%} <= {majority:.2%} (always answering the most common class)"
    return {"classes_predicted": int((counts > 0).sum()), "top_class_share": share, "majority_class_rate": majority,
            "flag": flag}
