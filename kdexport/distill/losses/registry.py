"""The registries the loss methods add themselves to (their names are declared in ``kdexport.distill``),
and the signatures of their items."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...config import KDConfig
from .. import LOSSES, SOFT_LOSSES

__all__ = ["LOSSES", "SOFT_LOSSES", "Loss", "SoftLoss"]

# A method's soft term (LOSSES): (student logits, teacher logits, targets, KDConfig, epoch) -> scalar
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, KDConfig, float], torch.Tensor]

# Hinton KD's comparison of softened logits (SOFT_LOSSES): (student, teacher, T) -> scalar
SoftLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
