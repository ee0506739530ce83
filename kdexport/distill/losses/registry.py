"""The registries the loss methods add themselves to."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...config import KDConfig
from ...registry import Registry

# A method's soft term: (student logits, teacher logits, targets, KDConfig, epoch) -> scalar
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, KDConfig, float], torch.Tensor]
LOSSES: Registry[Loss] = Registry("distillation loss")

# Hinton KD's comparison of softened logits: (student, teacher, T) -> scalar
SoftLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
SOFT_LOSSES: Registry[SoftLoss] = Registry("soft loss")
