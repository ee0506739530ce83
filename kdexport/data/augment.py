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

from . import AUGMENTATIONS
from .images import random_resized_crop_flip

if TYPE_CHECKING:
    from .datasets import Dataset


@dataclass(frozen=True)
class Shifts:
    """A random crop of the image padded by ``pad`` pixels (a shift of up to ``pad`` pixels each way; zeros, or
    with ``reflect`` the image mirrored at its border, as airbench pads) and an optional mirror: finitely many
    views, ``count`` of them, numbered ``(dy * (2 * pad + 1) + dx) * (2 if flip else 1) + mirrored``, so a
    teacher's logits can be computed once per view (``--teacher-view-cache``) and looked up by (view, sample).

    With ``alternate`` (airbench's alternating flip) the mirror is not a fresh coin per draw: each image gets one
    coin for the run and is mirrored by it in odd epochs and against it in even ones, so every two consecutive
    epochs show each image both ways (the caller passes the coins, :meth:`alternating_mirror`)."""

    pad: int
    flip: bool
    reflect: bool = False
    alternate: bool = False

    @property
    def count(self) -> int:
        return (2 * self.pad + 1) ** 2 * (2 if self.flip else 1)

    def draw(self, b: int, generator: torch.Generator, mirror: torch.Tensor | None = None) -> torch.Tensor:
        """Random view numbers for ``b`` images (the draws: dy, dx, then the mirror coin unless ``mirror``, one
        bool per image, is given)."""
        side = 2 * self.pad + 1
        dy = torch.randint(0, side, (b,), generator=generator)
        dx = torch.randint(0, side, (b,), generator=generator)
        view = dy * side + dx
        if self.flip:
            if mirror is None:
                mirror = torch.rand(b, generator=generator) < 0.5
            view = view * 2 + mirror.long()
        return view

    @staticmethod
    def alternating_mirror(n: int, epoch: int, seed: int) -> torch.Tensor:
        """The alternating flip's mirror for each of ``n`` samples in ``epoch`` (1-based): a coin per sample drawn
        once from ``seed``, kept in odd epochs and turned in even ones."""
        coins = torch.rand(n, generator=torch.Generator().manual_seed(seed + 4_000_037)) < 0.5
        return coins ^ (epoch % 2 == 0)

    def render(self, xb: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Each image of ``xb`` seen as its view in ``views``, vectorized over the batch."""
        b, _, h, w = xb.shape
        side, pad = 2 * self.pad + 1, self.pad
        mirror = views % 2 == 1 if self.flip else torch.zeros(b, dtype=torch.bool)
        offset = views // 2 if self.flip else views
        dy, dx = offset // side, offset % side
        padded = torch.nn.functional.pad(xb, (pad, pad, pad, pad), mode="reflect" if self.reflect else "constant")
        rows = (torch.arange(h)[None, :] + dy[:, None])[:, :, None]  # b,h,1
        cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, :]  # b,1,w
        out = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # b,c,h,w
        out[mirror] = out[mirror].flip(-1)
        return out.contiguous()

    def mirrored(self, views: torch.Tensor) -> torch.Tensor:
        """The view that is each view's left-right mirror image (the mirror is applied after the crop, so it is
        the same crop with the mirror coin turned): the set of views is closed under mirroring."""
        if not self.flip:
            raise ValueError("views without the mirror are not closed under mirroring")
        return views ^ 1

    def batch(self, xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.alternate:  # a fresh coin per draw would silently turn the alternating flip into a random one
            raise ValueError("an alternating flip needs each image's coin: draw(b, generator, mirror) with "
                             "alternating_mirror's coins, then render (as data.loader.train_batches does)")
        return self.render(xb, self.draw(len(xb), generator))


def augment_batch(xb: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding ``pad``: a shift of up to ``pad`` pixels) and optional horizontal
    flip, vectorized over the batch."""
    return Shifts(pad, flip).batch(xb, generator)


def cutout(xb: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017, as airbench96 draws it): one ``size`` x ``size`` square per image set to 0
    (black in stored pixels), its top-left corner uniform over the positions that keep it inside the image."""
    b, _, h, w = xb.shape
    size = min(size, h, w)
    top = torch.randint(0, h - size + 1, (b,), generator=generator)
    left = torch.randint(0, w - size + 1, (b,), generator=generator)
    rows = torch.arange(h)[None, :] - top[:, None]
    cols = torch.arange(w)[None, :] - left[:, None]
    inside = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]  # b,h,w
    return xb.masked_fill(inside[:, None], 0)


def crop_flip_cutout_batch(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """airbench96's training augmentation: a shift of up to 4 pixels, a mirror, then a 12-pixel cutout."""
    return cutout(Shifts(4, True).batch(xb, generator), generator, 12)


def rrc_flip_batch(xb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) back to the batch's size + flip, image by image."""
    return torch.stack([random_resized_crop_flip(x, generator, xb.shape[-1]) for x in xb]) if len(xb) else xb


@dataclass(frozen=True)
class Augmentation:
    batch: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # on a batch of decoded (stored) images
    sample: Callable[[torch.Tensor, torch.Generator, int], torch.Tensor] | None = None  # one source image -> size
    views: Shifts | None = None  # finitely many views, numbered: ``batch`` is ``views.batch``


def shifts(pad: int, flip: bool, reflect: bool = False, alternate: bool = False) -> Augmentation:
    views = Shifts(pad, flip, reflect, alternate)
    return Augmentation(views.batch, views=views)


AUGMENTATIONS.register("none")(None)
AUGMENTATIONS.register("crop-flip")(shifts(4, flip=True))
AUGMENTATIONS.register("shift2")(shifts(2, flip=False))
AUGMENTATIONS.register("shift2-flip")(shifts(2, flip=True))
AUGMENTATIONS.register("shift2-altflip")(shifts(2, flip=True, alternate=True))
AUGMENTATIONS.register("reflect2-flip")(shifts(2, flip=True, reflect=True))
AUGMENTATIONS.register("reflect2-altflip")(shifts(2, flip=True, reflect=True, alternate=True))  # airbench94's
AUGMENTATIONS.register("crop-flip-cutout")(Augmentation(crop_flip_cutout_batch))  # no finite set of views
AUGMENTATIONS.register("rrc-flip")(Augmentation(rrc_flip_batch, random_resized_crop_flip))


def resolve_augment(name: str, data: Dataset) -> str:
    """``auto`` -> the dataset's default (rrc-flip for RGB photos of 64 px and more, crop-flip for smaller RGB
    images, none otherwise)."""
    name = data.augment_default if name == "auto" else name
    AUGMENTATIONS.get(name)
    return name
