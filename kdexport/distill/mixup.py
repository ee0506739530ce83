"""``--kd-mixup``: function matching (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
consistent"). Each batch is mixed with a shuffled copy of itself, ``x' = lam * x + (1 - lam) * x[perm]`` with one
``lam ~ Beta(a, a)`` per batch, and the student matches the teacher on the mixed images, which the teacher sees
too (live). The soft term needs no label, so every image teaches; a labeled image whose partner is labeled also
keeps the labels' term, mixed the same way (``lam * CE(y) + (1 - lam) * CE(y[perm])``), and any other pair
teaches through the soft term alone (:func:`kdexport.distill.losses.kd_loss`).

The draw depends only on (seed, rank, epoch, step), so a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Mix:
    """One batch's mixing: ``x' = lam * x + (1 - lam) * x[perm]``."""

    lam: float
    perm: torch.Tensor  # [batch] long, on the batch's device


def draw(alpha: float, batch: int, seed: int, rank: int, epoch: int, step: int,
         device: torch.device | str = "cpu") -> Mix:
    """The mixing of one batch: ``lam ~ Beta(alpha, alpha)`` and a permutation, both from (seed, rank, epoch,
    step) alone."""
    rng = np.random.default_rng([seed, rank, epoch, step, 0x6D6978])
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(batch)).to(device)
    return Mix(lam, perm)


def mix_images(raw: torch.Tensor, mix: Mix) -> torch.Tensor:
    """The mixed batch, in float (raw pixels may be integers)."""
    raw = raw.float()
    return mix.lam * raw + (1.0 - mix.lam) * raw[mix.perm]
