"""A run's context: its options, its data, the validated model specs, threads and device. Built once by
``kdexport.pipeline.prepare`` and passed to every step (teacher, students, export, benchmark)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import RunConfig, TrainConfig
from ..data.augment import resolve_augment
from ..data.datasets import Dataset
from ..models.builders import ModelSpec

Log = Callable[[str], None]


def quiet(msg: str) -> None:
    """The default log of library steps: prints nothing."""


@dataclass
class Context:
    """Loaded data and validated model specs of one run."""

    cfg: RunConfig
    data: Dataset
    teacher_spec: ModelSpec | None  # None for an ONNX teacher
    student_spec: ModelSpec
    threads: int
    device: torch.device
    selection: dict | None = None  # --student auto: every candidate measured, and the choice

    def train_config(self, role: str, seed: int | None = None) -> TrainConfig:
        """The training options of ``role`` (teacher, or a student) with its augmentation resolved for this data,
        the device, and ``seed`` when given."""
        cfg = self.cfg
        base = cfg.teacher_train() if role == "teacher" else cfg.train
        aug = cfg.teacher_augment if role == "teacher" and cfg.teacher_augment else cfg.augment
        return dataclasses.replace(base, augment=resolve_augment(aug, self.data), device=str(self.device),
                                   seed=base.seed if seed is None else seed)
