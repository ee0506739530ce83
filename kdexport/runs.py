"""Run folders: where a run writes, how it becomes visible, and how it is resumed.

- A ``distill-export`` run works in a hidden staging folder beside ``--out`` (``.NAME.partial``) and
  is renamed into place only when everything succeeded (:func:`open_run_dir`, :func:`commit_run_dir`;
  the folder mechanics are :mod:`kdexport.outputs`').
- A sweep folder is written unit by unit, so it is its own staging area (:func:`open_sweep_dir`).
- Both record the options that decide what they train (:func:`resume_options`) and refuse to
  continue with others, naming them (``config_diff``, the one comparison of configs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from .config import RunConfig, config_diff
from .errors import ConfigError, OutputError
from .files import atomic_write_json, read_json
from .outputs import (
    claim,
    clear_hidden,
    commit_out_dir,
    default_out_dir,
    lock_output,
    make_dir,
    old_dir,
    prepare_out_dir,
    staging_dir,
    unclaim,
)

RUN_CONFIG = "run-config.json"  # a finished run's (or sweep's) options: a valid --config file that reruns it
RESUME_OPTIONS = "resume-options.json"  # in an unfinished run's staging folder: what --resume must match
SELECTION = "selection.json"  # --student auto: the interrupted run's choice, reused on --resume
SWEEP_CONFIG = "sweep-config.json"
# Options that do not change what is trained: they may differ between an interrupted run and its resume.
RESUME_IGNORES = ("out", "overwrite", "resume", "teacher_cache", "bench_iters", "bench_warmup", "bench_batch",
                  "bench_rounds", "bench_max_seconds", "threads", "parity_atol", "parity_rtol", "quantize", "quant",
                  "force", "package", "targets",
                  "data_mode", "memory_budget", "workers",  # memory and stream mode give the same batches
                  "teacher_view_cache",  # the live teacher's logits, looked up
                  "baseline_cache")  # a cached baseline was trained under the same key


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


def open_run_dir(cfg: RunConfig) -> tuple[Path, Path]:
    """``prepare_out_dir`` for ``cfg`` plus its recorded options; on ``--resume``, a run whose
    options changed is refused, naming them."""
    final, staging = prepare_out_dir(cfg.out, cfg.overwrite, cfg.resume)
    want = resume_options(cfg)
    path = staging / RESUME_OPTIONS
    if cfg.resume and path.exists():
        diff = _recorded_diff(path, want, "rerun without --resume to start afresh")
        if diff:
            raise OutputError(f"cannot resume: options differ from the interrupted run: {', '.join(diff)}")
    atomic_write_json(path, want)
    return final, staging


# Where a run writes, not what it computes: left out of run-config.json, so `--config run-config.json` reruns the
# run's options into a new folder.
PLACE_OPTIONS = ("out", "overwrite", "resume")


def write_run_config(folder: Path, cfg: RunConfig, grid: Any = None) -> Path:
    """``folder/run-config.json``: the run's options as a config file (``--config``) holds them; a sweep's with its
    grid, and without the single values the grid replaces."""
    from .config import SWEEP_REPLACES, to_file_dict

    if grid is None:
        d = to_file_dict(cfg)
    else:
        d = {**to_file_dict(cfg, SWEEP_REPLACES), **to_file_dict(grid)}
    return atomic_write_json(folder / RUN_CONFIG, {k: v for k, v in d.items() if k not in PLACE_OPTIONS})


def commit_run_dir(staging: Path, final: Path) -> None:
    """Drop the resume bookkeeping and move the finished run into place."""
    shutil.rmtree(staging / "train-state", ignore_errors=True)
    (staging / RESUME_OPTIONS).unlink(missing_ok=True)
    (staging / SELECTION).unlink(missing_ok=True)  # the report holds it
    commit_out_dir(staging, final)


SETUP_LOCK = ".setup.lock"  # in a sweep folder: held while a process checks and records the sweep's options


def open_sweep_dir(cfg: RunConfig, grid: Any = None, shard: tuple[int, int] | None = None,
                   log=None) -> tuple[Path, Path]:
    """A sweep folder, new or (same options) continued, locked; another sweep's folder is refused. Returns
    (work, final): they differ with ``--overwrite`` of an existing folder, where the new sweep is built in a
    staging folder and replaces the old one only when it finishes (:func:`commit_out_dir`).

    ``shard`` (K, N): this process is one of N sharing the folder: it holds the folder's lock shared with the
    others, and the options and the grid recorded by the first are checked under a short lock of the folder's
    own (``.setup.lock``), so shards started at once cannot record different ones."""
    final = Path(cfg.out) if cfg.out else default_out_dir("sweep")
    if shard is not None and not cfg.out:
        raise ConfigError("--shard needs --out: every shard writes into the same folder")
    if shard is not None and cfg.overwrite:
        raise ConfigError("--overwrite cannot be combined with --shard: one shard would delete the others' work; "
                          "remove the folder first (or use another --out), then start every shard")
    if final.exists() and not final.is_dir():
        raise OutputError(f"output path {str(final)!r} exists and is not a folder")
    lock_output(final, shared=shard is not None)
    out = final
    if final.exists() and cfg.overwrite:
        out = staging_dir(final)
        clear_hidden(out, final, "an earlier sweep's unfinished replacement")
        clear_hidden(old_dir(final), final, "the old sweep's place while it is replaced")
    make_dir(out, final, exist_ok=True)
    fd = claim(out / SETUP_LOCK, wait=True)
    try:
        state = out / SWEEP_CONFIG
        want = resume_options(cfg, sweep=True)
        who = "another shard of this sweep" if shard is not None else "a sweep"
        if state.exists():
            diff = _recorded_diff(state, want, "pass --overwrite to start the sweep afresh")
            if diff:
                raise OutputError(f"{str(out)!r} holds {who} with other options ({', '.join(diff)}); "
                                  "use another --out" + ("" if shard is not None else " or --overwrite"))
            if shard is not None and grid is not None:
                _check_grid(out, grid)
            if log:
                log(f"resuming the sweep in {out}" if shard is None else
                    f"shard {shard[0]}/{shard[1]}: joining the sweep in {out}")
        elif any(p.name != SETUP_LOCK for p in out.iterdir()):
            raise OutputError(f"{str(out)!r} exists and is not a kdexport sweep; "
                              + ("use another --out" if shard is not None else "pass --overwrite to replace it"))
        make_dir(out / "cells", out, exist_ok=True)
        atomic_write_json(state, want)
        if grid is not None and (shard is None or not (out / RUN_CONFIG).exists()):
            write_run_config(out, cfg, grid)  # what --merge and the other shards read
    finally:
        unclaim(fd)
    return out, final


def _check_grid(out: Path, grid: Any) -> None:
    """A shard's grid must be the one recorded for the sweep: the grid decides which units there are."""
    from .config import to_file_dict

    path = out / RUN_CONFIG
    if not path.exists():
        return
    recorded = read_json(path, "the sweep's recorded options", "pass the same grid to every shard")
    mine = json.loads(json.dumps(to_file_dict(grid)))
    diff = [f"{k} (recorded {recorded.get(k)}, here {v})" for k, v in mine.items() if recorded.get(k) != v]
    if diff:
        raise OutputError(f"{str(out)!r} holds a sweep with another grid than this shard's: {', '.join(diff)}; "
                          "start every shard with the same grid")


def read_sweep_options(folder: Path) -> tuple[RunConfig, Any]:
    """The options and grid a sweep folder records (``run-config.json``): what ``kdexport sweep --merge`` merges
    with. OutputError (one line) when ``folder`` is not a sweep."""
    from .config import SWEEP_REPLACES, Grid, RunConfig, file_values, from_flat

    if not folder.is_dir() or not (folder / SWEEP_CONFIG).is_file() or not (folder / RUN_CONFIG).is_file():
        raise OutputError(f"{str(folder)!r} is not a kdexport sweep (no {SWEEP_CONFIG} and {RUN_CONFIG}); "
                          "--merge takes the --out of a sweep")
    classes = ((RunConfig, SWEEP_REPLACES), (Grid, ()))
    values = file_values(str(folder / RUN_CONFIG), classes, command="sweep")
    cfg, grid = (from_flat(c, values, ex) for c, ex in classes)
    cfg = dataclasses.replace(cfg, out=str(folder), train=dataclasses.replace(cfg.train, seed=grid.seeds[0]))
    return cfg, grid
