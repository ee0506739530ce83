"""Distilling on unlabeled images (issue 46): the run's labels split (``--labels-fraction``, ``--unlabeled-dir``),
the pseudo-label baseline (the teacher's top-1 as hard labels on the unlabeled images) and what a report says about
them (counts, and how often student and teacher agree on the unlabeled images, which needs no labels).

The three students a run with unlabeled images trains on one schedule and step count: the baseline on the labeled
images only (repeated to the epoch's size), the pseudo-label student on every image (labels where there are,
the teacher's top-1 elsewhere) and the distilled student on every image (:func:`kdexport.distill.losses.kd_loss`).
"""

from __future__ import annotations

import dataclasses

import torch

from ..config import RunConfig
from ..data.datasets import Dataset
from ..data.labels import UNLABELED, add_unlabeled, keep_labels, label_counts, labeled_mask
from ..errors import DataError
from .context import Context, Log
from .sources import TeacherModel, as_teacher, teacher_is_trained
from .teacher import logits_over


def apply_labels(cfg: RunConfig, data: Dataset, log: Log) -> Dataset:
    """The run's training split with ``--labels-fraction`` and ``--unlabeled-dir`` applied (``data`` itself when
    neither is given); checked before any training: a teacher trained here needs labels."""
    if cfg.labels_fraction >= 1.0 and not cfg.unlabeled_dir:
        return data
    data = keep_labels(data, cfg.labels_fraction, cfg.train.seed)
    if cfg.unlabeled_dir:
        data = add_unlabeled(data, cfg.unlabeled_dir)
    counts = label_counts(data)
    if counts["labeled"] == 0 and not teacher_is_trained(cfg):
        raise DataError("no training image has a label, so the teacher cannot be trained here: bring a trained one "
                        "(an ONNX file, --teacher-checkpoint or --teacher-weights), or keep some labels")
    log(f"labels: {counts['labeled']:,} labeled and {counts['unlabeled']:,} unlabeled training images (the "
        "unlabeled ones teach through the teacher's outputs only)")
    return data


def teacher_top1(ctx: Context, teacher: TeacherModel) -> torch.Tensor:
    """The teacher's top-1 class (with ``--teacher-tta``) for every unlabeled training image, in their order."""
    idx = (~labeled_mask(ctx.data.y_train)).nonzero().view(-1)
    if len(idx) == 0:
        return torch.empty(0, dtype=torch.long)
    return logits_over(as_teacher(ctx, teacher), _Subset(ctx.data.x_train, idx)).argmax(1)


def pseudo_labeled(ctx: Context, top1: torch.Tensor) -> Dataset:
    """The run's data with the teacher's top-1 as the label of every unlabeled image (the pseudo-label baseline)."""
    y = ctx.data.y_train.clone()
    y[~labeled_mask(y)] = top1.to(y.dtype)
    return dataclasses.replace(ctx.data, y_train=y)


def student_agreement(ctx: Context, model: torch.nn.Module, top1: torch.Tensor, batch_size: int = 512) -> float:
    """The share of unlabeled training images on which ``model``'s top-1 is the teacher's (no labels needed)."""
    idx = (~labeled_mask(ctx.data.y_train)).nonzero().view(-1)
    model = model.eval().to(ctx.device)
    agree = 0
    with torch.no_grad():
        for i in range(0, len(idx), batch_size):
            xb = ctx.data.normalize(ctx.data.x_train[idx[i:i + batch_size]]).to(ctx.device)
            agree += int((model(xb).argmax(1).cpu() == top1[i:i + batch_size]).sum())
    return agree / max(len(idx), 1)


def labels_section(ctx: Context, top1: torch.Tensor, students: dict[str, torch.nn.Module]) -> dict:
    """report.json's ``labels``: counts, the options, and each student's agreement with the teacher on the
    unlabeled images."""
    cfg = ctx.cfg
    return {**label_counts(ctx.data), "labels_fraction": cfg.labels_fraction, "unlabeled_dir": cfg.unlabeled_dir,
            "unlabeled_marker": UNLABELED,
            "teacher_top1_classes": int(torch.unique(top1).numel()) if len(top1) else 0,
            "agreement_with_teacher_on_unlabeled": {role: student_agreement(ctx, m, top1)
                                                    for role, m in students.items()}}


class _Subset:
    """Some training images, indexed like the full set (tensor or streamed files): what ``logits_over`` reads."""

    def __init__(self, x, idx: torch.Tensor):
        self.x, self.idx = x, idx
        self.shape = torch.Size((len(idx), *x.shape[1:]))

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, item):
        return self.x[self.idx[item]]
