"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": ``[T^2] * KL(softmax(t/T) ||
softmax(s/T))``. The T^2 factor keeps the soft term's gradient scale independent of T; it is on by default
and can be switched off (``--no-scale-t2``; the seed report's MNIST figures look unscaled).
``--soft-loss mse`` matches logits instead (Ba & Caruana 2014)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import KDConfig
from .registry import LOSSES, SOFT_LOSSES


@SOFT_LOSSES.register("kl")
def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1),
                    reduction="batchmean", log_target=True)


@SOFT_LOSSES.register("mse")
def soft_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logit matching (Ba & Caruana 2014): mean squared error of the logits divided by T."""
    return F.mse_loss(student_logits / temperature, teacher_logits / temperature)


@LOSSES.register("kd")
def kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, cfg: KDConfig,
       epoch: float) -> torch.Tensor:
    term = SOFT_LOSSES.get(cfg.soft_loss)(student_logits, teacher_logits, cfg.temperature)
    return term * cfg.temperature ** 2 if cfg.scale_t2 else term
