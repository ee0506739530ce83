"""Image files, decoded the one way every command shares.

- :func:`open_image`: a file -> an upright PIL image (EXIF orientation applied), bombs refused;
  :func:`to_mode` converts any mode (palette, alpha on white, CMYK, 16-bit by scaling) to L or RGB.
- :class:`Geometry`: the evaluation/export transform, torchvision's convention: resize the shorter
  side to ``resize`` (bilinear), then center-crop a ``size`` x ``size`` square. Training, the export
  metadata, ``kdexport predict`` and the README's app snippet all apply exactly this.
- :class:`ImageFiles`: a list of files decoded on demand at one geometry; it indexes like the
  N x C x S x S uint8 tensor the in-memory datasets hold, so evaluation, calibration and benchmarks
  take either. Training streams it through a DataLoader (:mod:`kdexport.data.loader`).
- :func:`rrc_params`: RandomResizedCrop's box (torchvision's algorithm) from an explicit generator.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError, first_line

SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
GRAY_MODES = {"1", "L", "LA", "I", "F", *SIXTEEN_BIT_MODES}


@dataclass(frozen=True)
class Geometry:
    """Resize the shorter side to ``resize``, then center-crop ``size`` x ``size`` (``resize == size``: no crop
    beyond squaring)."""

    size: int
    resize: int

    @classmethod
    def for_size(cls, size: int, crop_ratio: float = 1.0) -> Geometry:
        return cls(size, max(size, round(size / crop_ratio)))

    @property
    def crop_ratio(self) -> float:
        return self.size / self.resize

    def to_dict(self) -> dict:
        """The policy as ONNX metadata and reports record it (``preprocess``)."""
        return {"resize_shorter_side": self.resize, "center_crop": self.size, "interpolation": "bilinear"}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(int(d["center_crop"]), int(d["resize_shorter_side"]))

    def resized(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) after resizing the shorter side to ``resize`` (torchvision's rounding: the longer
        side is truncated)."""
        if w <= h:
            return self.resize, int(self.resize * h / w)
        return int(self.resize * w / h), self.resize

    def crop_box(self, w: int, h: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the centered square in a ``w`` x ``h`` image (torchvision's
        CenterCrop: offsets rounded half to even)."""
        left, top = int(round((w - self.size) / 2.0)), int(round((h - self.size) / 2.0))
        return left, top, left + self.size, top + self.size

    def apply(self, im):
        """A PIL image -> the ``size`` x ``size`` PIL image a model sees."""
        from PIL import Image

        w, h = self.resized(*im.size)
        if (w, h) != im.size:
            im = im.resize((w, h), Image.BILINEAR)
        box = self.crop_box(w, h)
        return im if box == (0, 0, w, h) else im.crop(box)


@contextlib.contextmanager
def _image(p: str | os.PathLike):
    """PIL's ``Image.open`` with a decompression-bomb warning raised as an error: a bomb is refused, not decoded."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(p) as im:
            yield im


def open_image(p: str | os.PathLike):
    """A fully loaded PIL image, upright (EXIF orientation applied); raises on any unreadable file (empty,
    not an image, truncated, or a decompression bomb: more than PIL's MAX_IMAGE_PIXELS)."""
    from PIL import ImageOps

    with _image(p) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def probe(p: str | os.PathLike) -> tuple[str, int, int] | str:
    """(mode, width, height) from the header alone, or why the file cannot be used."""
    from PIL import Image

    try:
        with _image(p) as im:
            w, h = im.size
            if w * h > (Image.MAX_IMAGE_PIXELS or float("inf")):
                return f"{w}x{h} pixels (a decompression bomb?)"
            return im.mode, w, h
    except Exception as e:
        return first_line(e, 80)


def pool_map(fn: Callable, items: Sequence) -> list:
    """``fn`` over ``items`` in a thread pool (PIL decodes outside the GIL), in order."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2))) as pool:
        return list(pool.map(fn, items, chunksize=max(1, min(256, len(items) // 16))))


def to_mode(im, channels: int):
    """Any PIL image as 8-bit L (channels 1) or RGB: palette, alpha, CMYK and 16-bit images are converted
    (16-bit by scaling, not clipping)."""
    import numpy as np
    from PIL import Image

    if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if im.mode in SIXTEEN_BIT_MODES or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(a * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(a * (255.0 if a.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))  # transparent pixels on white, not black
        im = Image.alpha_composite(bg, im)
    return im.convert("L" if channels == 1 else "RGB")


def pil_to_tensor(im) -> torch.Tensor:
    """An L or RGB PIL image -> a C x H x W uint8 tensor."""
    c = 1 if im.mode == "L" else 3
    w, h = im.size
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, c).permute(2, 0, 1).contiguous()


def load_image(p: str | os.PathLike, channels: int, geometry: Geometry | None = None) -> torch.Tensor:
    """A file -> C x H x W uint8, converted to ``channels`` and (with ``geometry``) resized and center-cropped."""
    im = to_mode(open_image(p), channels)
    return pil_to_tensor(geometry.apply(im) if geometry is not None else im)


def rrc_params(h: int, w: int, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering ``scale`` of the area at an aspect ratio in
    ``ratio`` (log-uniform): torchvision's RandomResizedCrop.get_params, drawn from ``g``."""
    area = h * w
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(lo, hi, generator=g)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    in_ratio = w / h  # fallback: the central crop at the nearest allowed ratio
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop_flip(img: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """RandomResizedCrop(size) + horizontal flip (p=0.5) of one C x H x W uint8 image, drawn from ``g``."""
    from torchvision.transforms.v2 import functional as F

    top, left, ch, cw = rrc_params(img.shape[-2], img.shape[-1], g)
    out = F.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
    if bool(torch.rand(1, generator=g) < 0.5):
        out = out.flip(-1)
    return out


class ImageFiles:
    """Image files decoded on demand at one geometry: ``files[idx]`` (a slice, a list or tensor of indices)
    is the N x C x S x S uint8 batch an in-memory dataset would return for the same indices.

    ``key`` identifies the listing (names, sizes, mtimes, labels, geometry) for caches keyed by data;
    ``workers`` is how many processes decode while training streams it."""

    dtype = torch.uint8

    def __init__(self, paths: Sequence[str | os.PathLike], channels: int, geometry: Geometry, key: str = "",
                 workers: int = 0):
        self.paths = [os.fspath(p) for p in paths]
        self.channels = channels
        self.geometry = geometry
        self.key = key
        self.workers = workers

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> torch.Size:
        s = self.geometry.size
        return torch.Size((len(self.paths), self.channels, s, s))

    def load(self, i: int) -> torch.Tensor:
        """Image ``i`` as the model sees it (resized, center-cropped); one line naming the file if it breaks."""
        try:
            return load_image(self.paths[i], self.channels, self.geometry)
        except Exception as e:
            raise DataError(f"{self.paths[i]}: unreadable while streaming ({first_line(e, 80)}); remove or fix "
                            "the file (--data-mode memory skips unreadable images when it decodes the set)") from None

    def load_source(self, i: int) -> torch.Tensor:
        """Image ``i`` at its own size (for augmentations that crop the original photo)."""
        try:
            return pil_to_tensor(to_mode(open_image(self.paths[i]), self.channels))
        except Exception as e:
            raise DataError(f"{self.paths[i]}: unreadable while streaming ({first_line(e, 80)}); remove or fix "
                            "the file") from None

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, int):
            return self.load(idx)
        ids = range(len(self.paths))[idx] if isinstance(idx, slice) else [int(i) for i in torch.as_tensor(idx).view(-1)]
        s = self.geometry.size
        out = torch.empty((len(ids), self.channels, s, s), dtype=torch.uint8)
        for j, t in enumerate(pool_map(self.load, list(ids))):
            out[j] = t
        return out


def decode_all(paths: Sequence[Path], channels: int, geometry: Geometry) -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode every file into one tensor; returns (images, indices of the decoded ones, one note per skipped file)."""
    def one(p: Path) -> torch.Tensor | str:
        try:
            return load_image(p, channels, geometry)
        except Exception as e:
            return f"{p}: {first_line(e, 80)}"

    s = geometry.size
    out = torch.empty((len(paths), channels, s, s), dtype=torch.uint8)
    ok, skipped = [], []
    for i, t in enumerate(pool_map(one, list(paths))):
        if isinstance(t, str):
            skipped.append(t)
        else:
            out[len(ok)] = t
            ok.append(i)
    return out[:len(ok)].clone() if len(ok) < len(paths) else out, ok, skipped
