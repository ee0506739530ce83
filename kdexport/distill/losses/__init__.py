"""Distillation losses: one registered function per method (one file each), tested by value.

Every method is a *soft term* ``S(student_logits, teacher_logits, targets, kd, epoch)``; the training
loss mixes it with the labels' cross-entropy by ``--soft-weight`` beta:

    loss = (1 - beta) * CE(student, y) + beta * S

- ``kd`` (Hinton et al. 2015, default): ``[T^2] * KL(softmax(t/T) || softmax(s/T))`` (``--soft-loss mse``:
  logit matching instead of KL); ``hinton.py``.
- ``dkd`` (Decoupled KD, Zhao et al. 2022): ``warm-up * T^2 * (alpha * TCKD + beta_dkd * NCKD)``; ``dkd.py``.
- ``dist`` (DIST, Huang et al. 2022): ``T^2 * (beta_dist * inter + gamma * intra)``, one minus Pearson
  correlations of the softened probabilities across classes and across the batch; ``dist.py``.
- ``--logit-standardization`` (Sun et al. 2024): both logit vectors are z-scored per sample before any of
  them; ``standardize.py``.

Scales differ between methods (DKD's NCKD weight of 8 makes its term several times KD's at the same T):
``soft_term_scale`` measures a method's gradient norm relative to cross-entropy at initialization, and
the sweep grids over ``--kd-loss`` so a recipe tunes beta per method instead of copying constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import KDConfig
from ..mixup import Mix
from . import dist, dkd, hinton  # noqa: F401 - each registers its method
from .registry import LOSSES, SOFT_LOSSES
from .standardize import standardize

__all__ = ["LOSSES", "SOFT_LOSSES", "kd_loss", "soft_term", "soft_term_scale", "standardize"]


def soft_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              kd: KDConfig, epoch: float = 1.0) -> torch.Tensor:
    """The method's soft term ``S`` (see module doc), after logit standardization when asked for."""
    if kd.logit_standardization:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    return LOSSES.get(kd.loss)(student_logits, teacher_logits, targets, kd, epoch)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, targets: torch.Tensor,
            kd: KDConfig | None = None, epoch: float = 1.0, label_smoothing: float = 0.0,
            mix: Mix | None = None) -> dict[str, torch.Tensor]:
    """``{"loss", "ce", "kd"}`` (the last two detached, for logging). Without a teacher (or with
    beta = 0) this is plain cross-entropy. ``label_smoothing`` (``--label-smoothing``) smooths the labels'
    term only, for baseline and student alike; the soft term is the teacher's.

    Images without a label (target -1, ``kdexport.data.labels.UNLABELED``) learn from the soft term alone: per
    image, a labeled one weighs ``(1 - beta) * CE + beta * S`` and an unlabeled one ``S``, so over a batch whose
    labeled share is ``f``: ``loss = (1 - beta) * f * CE_labeled + (beta * f + 1 - f) * S``, which is the formula
    above when every image is labeled. Methods whose soft term reads the label (DKD's target class) read the
    teacher's top-1 for an unlabeled image.

    ``mix`` (``--kd-mixup``, :mod:`kdexport.distill.mixup`): the images were mixed in pairs by ``mix``; the labels'
    term of an image is ``lam * CE(y) + (1 - lam) * CE(y[perm])`` when both are labeled, else the image counts as
    unlabeled; the soft term compares student and teacher on the mixed images themselves."""
    kd = kd or KDConfig()
    lam, partner = (mix.lam, targets[mix.perm]) if mix is not None else (1.0, targets)
    labeled = (targets >= 0) & (partner >= 0)
    if mix is None and bool(labeled.all()):
        ce = F.cross_entropy(student_logits, targets, label_smoothing=label_smoothing)
        if teacher_logits is None or kd.soft_weight == 0.0:
            return {"loss": ce, "ce": ce.detach(), "kd": ce.detach() * 0}
        s = soft_term(student_logits, teacher_logits, targets, kd, epoch)
        loss = (1.0 - kd.soft_weight) * ce + kd.soft_weight * s
        return {"loss": loss, "ce": ce.detach(), "kd": s.detach()}
    f = labeled.float().mean()
    if bool(labeled.any()):
        s_lab = student_logits[labeled]
        ce = F.cross_entropy(s_lab, targets[labeled], label_smoothing=label_smoothing)
        if lam < 1.0:  # a mixed pair: its labels mixed as its images were
            ce = lam * ce + (1.0 - lam) * F.cross_entropy(s_lab, partner[labeled], label_smoothing=label_smoothing)
    else:
        ce = student_logits.sum() * 0
    if teacher_logits is None or kd.soft_weight == 0.0:  # the labeled images' share of the batch's loss
        return {"loss": f * ce, "ce": ce.detach(), "kd": ce.detach() * 0}
    # the target class DKD reads: the label of the image's larger part, or the teacher's top-1 where it has none
    main = targets if lam >= 0.5 else partner
    s = soft_term(student_logits, teacher_logits, torch.where(main >= 0, main, teacher_logits.argmax(1)), kd, epoch)
    beta = kd.soft_weight
    loss = (1.0 - beta) * f * ce + (beta * f + 1.0 - f) * s
    return {"loss": loss, "ce": ce.detach(), "kd": s.detach()}


def soft_term_scale(kd: KDConfig, num_classes: int = 10, batch: int = 64, seed: int = 0) -> float:
    """The gradient norm of the soft term relative to cross-entropy's, w.r.t. the student's logits, at
    initialization (student logits ~ N(0, 0.1), a confident teacher ~ N(0, 3) with the label's logit +5):
    how much louder a method speaks than the labels at the same beta."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    t = 3 * torch.randn(batch, num_classes, generator=g)
    t[torch.arange(batch), y] += 5
    s = (0.1 * torch.randn(batch, num_classes, generator=g)).requires_grad_()
    (ce_grad,) = torch.autograd.grad(F.cross_entropy(s, y), s)
    (soft_grad,) = torch.autograd.grad(soft_term(s, t, y, kd, epoch=float("inf")), s)
    return float(soft_grad.norm() / ce_grad.norm())
