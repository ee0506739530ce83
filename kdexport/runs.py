"""Run folders: where a run writes, how it becomes visible, and how it is resumed.

- A ``distill-export`` run works in a hidden staging folder beside ``--out`` (``.NAME.partial``) and
  is renamed into place only when everything succeeded (:func:`open_run_dir`, :func:`commit_run_dir`).
- A sweep folder is written unit by unit, so it is its own staging area (:func:`open_sweep_dir`).
- Both record the options that decide what they train (:func:`resume_options`) and refuse to
  continue with others, naming them (:func:`config_diff`, the one comparison of configs, also used by
  the training loop's per-epoch state).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import OutputError
from .files import atomic_write_json

RUN_CONFIG = "run-config.json"
SELECTION = "selection.json"  # --student auto: the interrupted run's choice, reused on --resume
SWEEP_CONFIG = "sweep-config.json"
# Options that do not change what is trained: they may differ between an interrupted run and its resume.
RESUME_IGNORES = ("out", "overwrite", "resume", "teacher_cache", "bench_iters", "bench_warmup", "bench_batch",
                  "bench_max_seconds", "threads", "parity_atol", "quantize", "quant", "force", "package")


def default_out_dir(prefix: str = "distill") -> Path:
    return Path("runs") / datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S")


def staging_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two (nested) config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def resume_options(cfg: RunConfig, *, sweep: bool = False) -> dict[str, Any]:
    """The options that decide what a run trains. A sweep's grid (T, beta, T^2 scaling, seeds) is
    recorded per cell, so a sweep keeps only the soft loss of ``kd`` and no seed."""
    d = json.loads(json.dumps({k: v for k, v in cfg.to_dict().items() if k not in RESUME_IGNORES}))  # as recorded
    if sweep:
        d["kd"] = {k: v for k, v in d["kd"].items() if k not in ("temperature", "soft_weight", "scale_t2", "loss")}
        d["train"].pop("seed", None)
    return d


def _recorded_diff(path: Path, want: dict) -> list[str]:
    return config_diff(json.loads(path.read_text()), want)


def _mkdir(path: Path, final: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as e:
        raise OutputError(f"cannot write output folder {str(final)!r}: {e.strerror or e}") from None


def prepare_out_dir(out: str | os.PathLike | None, overwrite: bool, resume: bool = False) -> tuple[Path, Path]:
    """Check the output folder can be created; return (final, staging) paths.

    Work happens in the staging folder; with ``resume`` an interrupted run's staging folder is reused."""
    final = Path(out) if out else default_out_dir()
    if final.exists() and not final.is_dir():
        raise OutputError(f"output path {str(final)!r} exists and is not a folder")
    if final.exists() and not overwrite:
        raise OutputError(f"output folder {str(final)!r} exists; pass --overwrite to replace it")
    staging = staging_dir(final)
    if resume and not staging.is_dir():
        raise OutputError(f"nothing to resume: no interrupted run at {str(staging)!r}")
    _mkdir(final.parent, final, exist_ok=True)
    if staging.exists() and not resume:
        shutil.rmtree(staging, ignore_errors=True)
    _mkdir(staging, final, exist_ok=resume)
    return final, staging


def open_run_dir(cfg: RunConfig) -> tuple[Path, Path]:
    """``prepare_out_dir`` for ``cfg`` plus its recorded options; on ``--resume``, a run whose
    options changed is refused, naming them."""
    final, staging = prepare_out_dir(cfg.out, cfg.overwrite, cfg.resume)
    want = resume_options(cfg)
    path = staging / RUN_CONFIG
    if cfg.resume and path.exists():
        diff = _recorded_diff(path, want)
        if diff:
            raise OutputError(f"cannot resume: options differ from the interrupted run: {', '.join(diff)}")
    atomic_write_json(path, want)
    return final, staging


def commit_out_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder into place (replacing an older ``final``)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def commit_run_dir(staging: Path, final: Path) -> None:
    """Drop the resume bookkeeping and move the finished run into place."""
    shutil.rmtree(staging / "train-state", ignore_errors=True)
    (staging / RUN_CONFIG).unlink(missing_ok=True)
    (staging / SELECTION).unlink(missing_ok=True)  # the report holds it
    commit_out_dir(staging, final)


def open_sweep_dir(cfg: RunConfig, log=None) -> Path:
    """A sweep folder, new or (same options) continued; another sweep's folder is refused."""
    out = Path(cfg.out) if cfg.out else default_out_dir("sweep")
    state = out / SWEEP_CONFIG
    want = resume_options(cfg, sweep=True)
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out)
    if out.exists():
        if not state.exists():
            raise OutputError(f"{str(out)!r} exists and is not a kdexport sweep; pass --overwrite to replace it")
        diff = _recorded_diff(state, want)
        if diff:
            raise OutputError(f"{str(out)!r} holds a sweep with other options ({', '.join(diff)}); "
                              "use another --out or --overwrite")
        if log:
            log(f"resuming the sweep in {out}")
    _mkdir(out / "cells", out, exist_ok=True)
    atomic_write_json(state, want)
    return out
