"""Checkpoints: ``{format, model spec, state_dict, config, metrics, history, environment}``.

Saved atomically; loaded with ``weights_only=True`` so a file that needs arbitrary pickle code is
refused. The architecture comes from the file's contents, never from its name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..envinfo import environment, now_iso
from ..errors import CheckpointError, ConfigError
from ..files import atomic_torch_save
from .builders import ModelSpec, build_model
from .weights import load_state_dict_checked, safe_torch_load

FORMAT = "kdexport-checkpoint/1"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, spec: ModelSpec, *, role: str,
                    config: dict[str, Any], metrics: dict[str, Any] | None = None,
                    history: list[dict] | None = None) -> Path:
    blob = {
        "format": FORMAT,
        "role": role,
        "model": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config,
        "metrics": metrics or {},
        "history": history or [],
        "environment": environment(),
        "created": now_iso(),
    }
    return atomic_torch_save(blob, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    blob = safe_torch_load(path, "checkpoint")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "model" not in blob:
        raise CheckpointError(f"{str(path)!r} is not a kdexport checkpoint (for a plain weights file, name the "
                              "architecture and pass it with --teacher-weights)")
    if not isinstance(blob.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r} has no state_dict")
    try:
        ModelSpec.from_dict(blob["model"])
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: {e}") from None
    return blob


def load_model(path: str | os.PathLike, expect: ModelSpec | None = None) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild the model stored in ``path``. With ``expect``, refuse another arch or class count."""
    blob = read_checkpoint(path)
    spec = ModelSpec.from_dict(blob["model"])
    if expect is not None:
        if spec.arch != expect.arch:
            raise CheckpointError(f"checkpoint {str(path)!r} holds a {spec.arch}, not a {expect.arch}")
        if spec.num_classes != expect.num_classes:
            raise CheckpointError(f"checkpoint {str(path)!r} has {spec.num_classes} classes; "
                                  f"the dataset has {expect.num_classes}")
        if tuple(spec.input_shape) != tuple(expect.input_shape):
            raise CheckpointError(f"checkpoint {str(path)!r} takes inputs {list(spec.input_shape)}; "
                                  f"the dataset gives {list(expect.input_shape)}")
        if spec.cifar_stem != expect.cifar_stem:
            raise CheckpointError(f"checkpoint {str(path)!r} was built with cifar_stem={spec.cifar_stem}")
    model = build_model(spec)
    load_state_dict_checked(model, blob["state_dict"], f"checkpoint {str(path)!r}", spec.arch)
    return model.eval(), spec, blob
