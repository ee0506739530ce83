"""DIST: "Knowledge Distillation from A Stronger Teacher" (Huang et al., NeurIPS 2022).

On the softened probabilities ``y = softmax(z / T)``, the student matches the teacher's *relations*
rather than its values: inter-class (each sample's distribution over classes) and intra-class (each
class's scores across the batch), both as one minus the Pearson correlation:
``T^2 * (beta * (1 - mean_i rho(ys_i, yt_i)) + gamma * (1 - mean_c rho(ys_:c, yt_:c)))``.
Published defaults: beta 1, gamma 1 (the official code's), T 4 on CIFAR-100. Zero when the student's
probabilities are a positive affine function of the teacher's, row by row and column by column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import KDConfig
from .registry import LOSSES

EPS = 1e-8


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of two [N, C] tensors."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def inter_intra(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    ys = F.softmax(student_logits / temperature, dim=1)
    yt = F.softmax(teacher_logits / temperature, dim=1)
    return 1 - pearson(ys, yt).mean(), 1 - pearson(ys.t(), yt.t()).mean()


@LOSSES.register("dist")
def dist(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, cfg: KDConfig,
         epoch: float) -> torch.Tensor:
    inter, intra = inter_intra(student_logits, teacher_logits, cfg.temperature)
    return cfg.temperature ** 2 * (cfg.dist_beta * inter + cfg.dist_gamma * intra)
