"""Training augmentations, by name: vectorized over the batch, driven by an explicit generator (so a
baseline and a distilled student given the same seed see the same draws)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..registry import Registry

if TYPE_CHECKING:
    from .datasets import Dataset


def augment_batch(xb: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding ``pad``: a shift of up to ``pad`` pixels) and optional horizontal
    flip, vectorized over the batch."""
    b, _, h, w = xb.shape
    padded = torch.nn.functional.pad(xb, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None]  # b,h,1
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :]  # b,1,w
    out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # b,h,w,c
    out = out.permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out.contiguous()


Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None
AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")
AUGMENTATIONS.register("none")(None)
AUGMENTATIONS.register("crop-flip")(lambda xb, g: augment_batch(xb, g, pad=4, flip=True))
AUGMENTATIONS.register("shift2")(lambda xb, g: augment_batch(xb, g, pad=2, flip=False))


def resolve_augment(name: str, data: Dataset) -> str:
    """``auto`` -> the dataset's default (crop-flip for RGB photos, none otherwise)."""
    name = data.augment_default if name == "auto" else name
    AUGMENTATIONS.get(name)
    return name
