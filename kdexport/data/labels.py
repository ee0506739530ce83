"""Labels kept, labels withheld, and images nobody labeled (issue 46).

A training image without a label has the label :data:`UNLABELED` (-1) in ``y_train``. Such an image trains a
distilled student through the soft term only (the teacher's outputs are its supervision,
:func:`kdexport.distill.losses.kd_loss`); students without a teacher train on :func:`labeled_view`, the labeled
images repeated to the same epoch size, so every student of a run takes the same number of steps.

- :func:`keep_labels`: ``--labels-fraction F`` keeps the labels of F of each class's training images (seeded,
  stratified) and withholds the rest, so the benefit of unlabeled images can be measured on any labeled set.
- :func:`add_unlabeled`: ``--unlabeled-dir DIR`` appends every image below DIR (any layout, searched recursively,
  decoded like the ImageFolder's images; unreadable files skipped with a warning; streamed when the training set
  is streamed).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import torch

from ..errors import DataError
from .datasets import IMAGE_EXTENSIONS, Dataset
from .images import ImageFiles, decode_all

UNLABELED = -1


def labeled_mask(y: torch.Tensor) -> torch.Tensor:
    return y != UNLABELED


def label_counts(data: Dataset) -> dict:
    """How many training images carry a label, and how many do not."""
    labeled = int(labeled_mask(data.y_train).sum())
    return {"labeled": labeled, "unlabeled": len(data.y_train) - labeled, "train_images": len(data.y_train)}


def has_unlabeled(data: Dataset) -> bool:
    return bool((~labeled_mask(data.y_train)).any())


def keep_labels(data: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """``data`` with the labels of ``fraction`` of each class's training images kept (``round(fraction * n_c)``,
    chosen with ``seed``) and the others set to :data:`UNLABELED`. A fraction that keeps no image of some class
    (other than 0, which keeps none at all) is one line."""
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"--labels-fraction must be in [0, 1], got {fraction:g}")
    if fraction == 1.0:
        return data
    y = data.y_train.clone()
    g = torch.Generator().manual_seed(seed)
    for c in range(data.num_classes):
        idx = (data.y_train == c).nonzero().view(-1)
        keep = round(fraction * len(idx))
        if fraction > 0 and keep == 0:
            raise DataError(f"--labels-fraction {fraction:g} keeps no labeled image of class {data.class_names[c]!r} "
                            f"({len(idx)} images): raise it to at least {1 / max(len(idx), 1):.4g}")
        drop = idx[torch.randperm(len(idx), generator=g)[keep:]]
        y[drop] = UNLABELED
    return dataclasses.replace(data, y_train=y)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file below ``folder`` (any layout), in a stable order."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--unlabeled-dir {str(folder)!r} does not exist or is not a folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def add_unlabeled(data: Dataset, folder: str | os.PathLike) -> Dataset:
    """``data`` with every image below ``folder`` appended to its training split as :data:`UNLABELED`, decoded at
    the training images' geometry (streamed when they are). No readable image is one line."""
    paths = list_images(folder)
    if not paths:
        raise DataError(f"--unlabeled-dir {str(folder)!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    channels, geometry = data.input_shape[0], data.geometry
    if data.streamed:  # probed now (header and size), decoded batch by batch while training
        from .datasets import _scan

        items, _, skipped = _scan([(p, UNLABELED) for p in paths])
        good = [os.fspath(p) for p, _ in items]
        x = ImageFiles(list(data.x_train.paths) + good, channels, geometry,
                       f"{data.x_train.key}+unlabeled:{Path(folder).resolve()}:{len(good)}", data.x_train.workers)
    else:
        images, ok, skipped = decode_all(paths, channels, geometry)
        good = ok
        x = torch.cat([data.x_train, images.to(data.x_train.dtype)])
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable image(s) in --unlabeled-dir skipped, e.g. {skipped[0]}",
                      RuntimeWarning, stacklevel=2)
    if not good:
        raise DataError(f"--unlabeled-dir {str(folder)!r}: none of its {len(paths)} image files could be read")
    n = len(good)
    y = torch.cat([data.y_train, torch.full((n,), UNLABELED, dtype=data.y_train.dtype)])
    return dataclasses.replace(data, x_train=x, y_train=y)


def labeled_view(data: Dataset) -> Dataset:
    """The labeled training images only, repeated (in order, then a seeded cut) to the training split's size, so a
    student trained on them takes as many steps per epoch as one trained on every image. ``data`` itself when
    every image is labeled; one line when none is."""
    mask = labeled_mask(data.y_train)
    if bool(mask.all()):
        return data
    idx = mask.nonzero().view(-1)
    if len(idx) == 0:
        raise DataError("no training image has a label: a model without a teacher has nothing to learn from "
                        "(--labels-fraction > 0, or labeled images beside --unlabeled-dir)")
    n = len(data.y_train)
    reps = idx.repeat((n + len(idx) - 1) // len(idx))[:n]
    return dataclasses.replace(data, x_train=data.x_train[reps] if not data.streamed else
                               ImageFiles([data.x_train.paths[i] for i in reps.tolist()], data.x_train.channels,
                                          data.x_train.geometry, f"{data.x_train.key}:labeled:{len(idx)}",
                                          data.x_train.workers),
                               y_train=data.y_train[reps])
