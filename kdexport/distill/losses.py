"""Losses. Pure functions of logits, tested by value.

The distillation loss (Hinton et al. 2015):
    (1 - beta) * CE(student, y) + beta * [T^2] * KL(softmax(t / T) || softmax(s / T))
The T^2 factor keeps the soft term's gradient scale independent of T; it is on by default and
can be switched off (the seed report's MNIST figures look unscaled).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import KDConfig
from ..registry import Registry

SoftLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
SOFT_LOSSES: Registry[SoftLoss] = Registry("soft loss")


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


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            temperature: float = KDConfig.temperature, soft_weight: float = KDConfig.soft_weight,
            scale_t2: bool = KDConfig.scale_t2, soft_loss: str = KDConfig.soft_loss) -> dict[str, torch.Tensor]:
    """Return ``{"loss", "ce", "kd"}``. With ``teacher_logits=None`` this is plain cross-entropy."""
    ce = F.cross_entropy(student_logits, targets)
    if teacher_logits is None or soft_weight == 0.0:
        zero = ce.detach() * 0
        return {"loss": ce, "ce": ce.detach(), "kd": zero}
    kd = SOFT_LOSSES.get(soft_loss)(student_logits, teacher_logits, temperature)
    if scale_t2:
        kd = kd * (temperature ** 2)
    loss = (1.0 - soft_weight) * ce + soft_weight * kd
    return {"loss": loss, "ce": ce.detach(), "kd": kd.detach()}
