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
from ..errors import CheckpointError, ConfigError, OutputError
from ..files import atomic_torch_save
from .builders import ModelSpec, build_model, split_arch
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


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """A kdexport checkpoint's contents, checked (``mmap``: its tensors mapped, not read)."""
    blob = safe_torch_load(path, "checkpoint", mmap=mmap)
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


def combine_checkpoints(paths: list[str | os.PathLike] | tuple[str | os.PathLike, ...], out: str | os.PathLike,
                        *, overwrite: bool = False) -> tuple[Path, ModelSpec]:
    """One ``ensemble:<N>x<arch>`` checkpoint from N checkpoints of one architecture (same classes, input size and
    stem), the members in the order given, their training histories kept (tagged by member). The result is a
    teacher for ``--teacher ensemble:<N>x<arch> --teacher-checkpoint out``."""
    from .ensemble import MAX_MEMBERS, Ensemble

    if not 2 <= len(paths) <= MAX_MEMBERS:
        raise ConfigError(f"an ensemble has 2 to {MAX_MEMBERS} members, got {len(paths)} checkpoint(s)")
    if Path(out).exists() and not overwrite:
        raise OutputError(f"{str(out)!r} exists; pass --overwrite to replace it")
    def kind(s: ModelSpec) -> tuple:
        return s.arch, s.num_classes, tuple(s.input_shape), s.cifar_stem

    members, history, base = [], [], None
    for k, path in enumerate(paths, 1):
        model, spec, blob = load_model(path)
        if split_arch(spec.arch)[0] == "ensemble":
            raise CheckpointError(f"checkpoint {str(path)!r} is already an ensemble ({spec.arch})")
        base = base or spec
        if kind(spec) != kind(base):
            raise CheckpointError(f"checkpoint {str(path)!r} holds a {spec.arch} for {spec.num_classes} classes and "
                                  f"inputs {list(spec.input_shape)}; the first holds a {base.arch} for "
                                  f"{base.num_classes} classes and inputs {list(base.input_shape)}: an ensemble's "
                                  "members share one architecture, class count and input size")
        members.append(model)
        history += [{**r, "member": k} for r in blob.get("history") or [] if isinstance(r, dict)]
    spec = ModelSpec(f"ensemble:{len(members)}x{base.arch}", base.num_classes, tuple(base.input_shape),
                     base.dropout, base.cifar_stem)
    path = save_checkpoint(out, Ensemble(members), spec, role="teacher",
                           config={"ensemble_of": [str(p) for p in paths]}, history=history)
    load_model(path, expect=spec)  # it rebuilds from its own spec
    return path, spec
