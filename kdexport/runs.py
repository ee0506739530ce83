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
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import OutputError
from .files import atomic_write_json, read_json

RUN_CONFIG = "run-config.json"
SELECTION = "selection.json"  # --student auto: the interrupted run's choice, reused on --resume
SWEEP_CONFIG = "sweep-config.json"
# Options that do not change what is trained: they may differ between an interrupted run and its resume.
RESUME_IGNORES = ("out", "overwrite", "resume", "teacher_cache", "bench_iters", "bench_warmup", "bench_batch",
                  "bench_max_seconds", "threads", "parity_atol", "parity_rtol", "quantize", "quant", "force", "package",
                  "data_mode", "memory_budget", "workers",  # memory and stream mode give the same batches
                  "teacher_view_cache",  # the live teacher's logits, looked up
                  "baseline_cache")  # a cached baseline was trained under the same key


_HELD: dict[str, int] = {}  # lock file -> its open descriptor, for the locks this process holds


def lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def lock_output(final: Path) -> None:
    """An exclusive lock on an output folder (``.NAME.lock`` beside it, holding the owner's PID), held until
    :func:`release_output` or the process ends. A folder another process holds is refused in one line
    naming it: two runs never write (or delete) the same output. Re-entrant within a process."""
    if sys.platform == "win32":  # no flock; the staging-folder checks still apply
        return
    import fcntl

    lock = lock_path(final)
    key = str(lock.absolute())
    if key in _HELD:
        return
    _mkdir(final.parent, final, exist_ok=True)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputError(f"cannot lock output folder {str(final)!r}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise OutputError(f"output folder {str(final)!r} is in use by another kdexport process (pid {owner}); "
                              "wait for it to finish or choose another --out") from None
        try:  # the holder before us may have removed the file between our open and flock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd


def release_output(final: Path) -> None:
    """Drop this process's lock on ``final`` (and its lock file)."""
    lock = lock_path(final)
    fd = _HELD.pop(str(lock.absolute()), None)
    if fd is not None:
        lock.unlink(missing_ok=True)
        os.close(fd)


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


def _recorded_diff(path: Path, want: dict, remedy: str) -> list[str]:
    return config_diff(read_json(path, "recorded options", remedy), want)


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
    lock_output(final)  # before touching the staging folder: it may be another live run's
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
        diff = _recorded_diff(path, want, "rerun without --resume to start afresh")
        if diff:
            raise OutputError(f"cannot resume: options differ from the interrupted run: {', '.join(diff)}")
    atomic_write_json(path, want)
    return final, staging


def commit_out_dir(staging: Path, final: Path) -> None:
    """Move a finished staging folder into place and release the output's lock. An older ``final`` is
    renamed aside first and deleted only once the new one is in place (put back if that fails)."""
    old = final.parent / f".{final.name}.old"
    try:
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        try:
            os.replace(staging, final)
        except OSError:
            if old.exists() and not final.exists():
                os.replace(old, final)
            raise
    except OSError as e:
        raise OutputError(f"cannot move the finished output into {str(final)!r}: {e.strerror or e}") from None
    shutil.rmtree(old, ignore_errors=True)
    release_output(final)


def commit_run_dir(staging: Path, final: Path) -> None:
    """Drop the resume bookkeeping and move the finished run into place."""
    shutil.rmtree(staging / "train-state", ignore_errors=True)
    (staging / RUN_CONFIG).unlink(missing_ok=True)
    (staging / SELECTION).unlink(missing_ok=True)  # the report holds it
    commit_out_dir(staging, final)


def open_sweep_dir(cfg: RunConfig, log=None) -> tuple[Path, Path]:
    """A sweep folder, new or (same options) continued, locked; another sweep's folder is refused. Returns
    (work, final): they differ with ``--overwrite`` of an existing folder, where the new sweep is built in a
    staging folder and replaces the old one only when it finishes (:func:`commit_out_dir`)."""
    final = Path(cfg.out) if cfg.out else default_out_dir("sweep")
    if final.exists() and not final.is_dir():
        raise OutputError(f"output path {str(final)!r} exists and is not a folder")
    lock_output(final)
    out = final
    if final.exists() and cfg.overwrite:
        out = staging_dir(final)
        shutil.rmtree(out, ignore_errors=True)
    state = out / SWEEP_CONFIG
    want = resume_options(cfg, sweep=True)
    if out.exists():
        if not state.exists():
            raise OutputError(f"{str(out)!r} exists and is not a kdexport sweep; pass --overwrite to replace it")
        diff = _recorded_diff(state, want, "pass --overwrite to start the sweep afresh")
        if diff:
            raise OutputError(f"{str(out)!r} holds a sweep with other options ({', '.join(diff)}); "
                              "use another --out or --overwrite")
        if log:
            log(f"resuming the sweep in {out}")
    _mkdir(out / "cells", out, exist_ok=True)
    atomic_write_json(state, want)
    return out, final
