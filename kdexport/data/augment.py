"""Training augmentations, by name, driven by an explicit generator (so a baseline and a distilled student
given the same seed see the same draws).

Each has a ``batch`` form, applied to a batch of decoded images (vectorized where it can be); an
augmentation that needs the original photo (``rrc-flip``) also has a ``sample`` form, which stream mode
applies to each file as it is decoded, with a generator seeded per epoch and sample (so the draws do not
depend on the number of worker processes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..registry import Registry
from .images import random_resized_crop_flip

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


def rrc_flip_batch(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) back to the batch's size + flip, image by image."""
    return torch.stack([random_resized_crop_flip(x, generator, xb.shape[-1]) for x in xb]) if len(xb) else xb


@dataclass(frozen=True)
class Augmentation:
    batch: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # on a batch of decoded (stored) images
    sample: Callable[[torch.Tensor, torch.Generator, int], torch.Tensor] | None = None  # one source image -> size


AUGMENTATIONS: Registry[Augmentation | None] = Registry("augmentation")
AUGMENTATIONS.register("none")(None)
AUGMENTATIONS.register("crop-flip")(Augmentation(lambda xb, g: augment_batch(xb, g, pad=4, flip=True)))
AUGMENTATIONS.register("shift2")(Augmentation(lambda xb, g: augment_batch(xb, g, pad=2, flip=False)))
AUGMENTATIONS.register("shift2-flip")(Augmentation(lambda xb, g: augment_batch(xb, g, pad=2, flip=True)))
AUGMENTATIONS.register("rrc-flip")(Augmentation(rrc_flip_batch, random_resized_crop_flip))


def resolve_augment(name: str, data: Dataset) -> str:
    """``auto`` -> the dataset's default (rrc-flip for RGB photos of 64 px and more, crop-flip for smaller RGB
    images, none otherwise)."""
    name = data.augment_default if name == "auto" else name
    AUGMENTATIONS.get(name)
    return name
