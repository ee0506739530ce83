"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022; mdistiller's DKD).

KD's KL splits into a target-class term and a non-target-class term:

- TCKD: KL between the binary distributions (target, everything else) of teacher and student;
- NCKD: KL between their distributions over the non-target classes alone (target class masked out);

and ``KD = TCKD + (1 - p_t) * NCKD``, ``p_t`` the teacher's (softened) probability of the target class.
DKD weights them independently: ``min(epoch / warmup, 1) * T^2 * (alpha * TCKD + beta * NCKD)``.
Published CIFAR-100 defaults (mdistiller): alpha 1, beta 8, T 4, warm-up 20 epochs, CE weight 1, for
240-epoch schedules; the NCKD weight makes this term several times KD's (``soft_term_scale``), so tune
beta (``--soft-weight``) per recipe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import KDConfig
from .registry import LOSSES


def _binary(probs: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """[N, C] probabilities -> [N, 2]: (target class, all others)."""
    pt = (probs * target_mask).sum(dim=1, keepdim=True)
    return torch.cat([pt, 1 - pt], dim=1)


def tckd_nckd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample TCKD, NCKD (unscaled by T^2) and the teacher's softened target probability."""
    mask = F.one_hot(targets, student_logits.shape[1]).to(student_logits.dtype)
    ps = F.softmax(student_logits / temperature, dim=1)
    pt = F.softmax(teacher_logits / temperature, dim=1)
    bs, bt = _binary(ps, mask), _binary(pt, mask)
    tckd = (bt * (torch.log(bt.clamp_min(1e-12)) - torch.log(bs.clamp_min(1e-12)))).sum(dim=1)
    big = 1000.0 * mask  # masks the target class out of the non-target distributions
    log_qs = F.log_softmax(student_logits / temperature - big, dim=1)
    log_qt = F.log_softmax(teacher_logits / temperature - big, dim=1)
    nckd = (log_qt.exp() * (log_qt - log_qs) * (1 - mask)).sum(dim=1)
    return tckd, nckd, bt[:, 0]


@LOSSES.register("dkd")
def dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, cfg: KDConfig,
        epoch: float) -> torch.Tensor:
    tckd, nckd, _ = tckd_nckd(student_logits, teacher_logits, targets, cfg.temperature)
    warmup = min(epoch / cfg.dkd_warmup, 1.0) if cfg.dkd_warmup > 0 else 1.0
    return warmup * cfg.temperature ** 2 * (cfg.dkd_alpha * tckd.mean() + cfg.dkd_beta * nckd.mean())
