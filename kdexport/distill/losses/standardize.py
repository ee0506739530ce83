"""Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024).

Each logit vector is z-scored (its own mean and standard deviation, per sample) before the temperature,
so the student matches the teacher's *relations* between classes, not its logit scale: the loss does not
change when either vector is shifted or multiplied by a positive number.
"""

from __future__ import annotations

import torch

EPS = 1e-7


def standardize(logits: torch.Tensor) -> torch.Tensor:
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + EPS)
