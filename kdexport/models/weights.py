"""Weight files, loaded safely, in one place: kdexport checkpoints, teachers and students from
``--teacher-weights`` / ``--student-weights``, and ``kdexport bench --checkpoint`` all read through here.

- ``.safetensors``: read with safetensors (never executes code).
- anything else: ``torch.load(..., weights_only=True)`` (a pickle that needs arbitrary code is refused).
- a ``state_dict`` may be nested under ``"state_dict"``, ``"model"``, ``"ema"`` (or ``"model_ema"``,
  ``"module"``), and its keys may carry DDP's ``module.`` or ``torch.compile``'s ``_orig_mod.`` prefix:
  both are unwrapped.
- a state dict that does not fit the model names the first missing key, the first unexpected key and
  the first shape that differs, in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, first_line

NESTED_KEYS = ("state_dict", "model", "ema", "model_ema", "module")
PREFIXES = ("module.", "_orig_mod.")


def _check_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise CheckpointError(f"{what} {str(path)!r} is a directory, not a file")
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")


def safe_torch_load(path: str | os.PathLike, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU; one clear line when it cannot be read safely.
    ``mmap``: the tensors are mapped, not read (for a look at what the file holds besides them)."""
    path = Path(path)
    _check_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"cannot load {what} {str(path)!r} safely (weights_only=True): "
                              f"{first_line(e, 160)}") from None


def _is_state_dict(d: Any) -> bool:
    return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in d.items())


def read_state_dict(path: str | os.PathLike, what: str = "weights file") -> dict[str, torch.Tensor]:
    """The tensors of a weights file (torch or safetensors), unwrapped and with prefixes stripped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        _check_file(path, what)
        try:
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        except Exception as e:
            raise CheckpointError(f"cannot read {what} {str(path)!r} as safetensors: {first_line(e, 160)}") from None
    else:
        sd = safe_torch_load(path, what)
    for _ in range(3):  # {"model": {"state_dict": {...}}} and the like
        if _is_state_dict(sd):
            break
        inner = next((sd[k] for k in NESTED_KEYS if isinstance(sd, dict) and isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not _is_state_dict(sd):
        keys = ", ".join(list(sd)[:5]) if isinstance(sd, dict) else type(sd).__name__
        raise CheckpointError(f"{what} {str(path)!r} holds no state_dict of tensors (top-level: {keys})")
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_checked(model: nn.Module, sd: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load ``sd`` into ``model`` strictly; on mismatch one line naming what differs."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in want.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        if shapes:
            k, got, need = shapes[0]
            parts.append(f"{len(shapes)} of another shape (first: {k} is {list(got)} in the file, "
                         f"{list(need)} in {arch})")
        raise CheckpointError(f"{source} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(sd)


def load_weights(model: nn.Module, path: str | os.PathLike, arch: str, what: str = "weights file") -> nn.Module:
    """Read ``path`` (see module doc) and load it into ``model`` strictly."""
    load_state_dict_checked(model, read_state_dict(path, what), f"{what} {str(path)!r}", arch)
    return model
