"""The students' steps: train the baseline (labels only) or a distilled student on the identical schedule,
keep a baseline in the cache for reuse, and the record of a trained student (a sweep unit's, a cached
baseline's)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from pathlib import Path

import torch

from ..config import KDConfig
from ..data.datasets import Dataset
from ..data.labels import labeled_view
from ..envinfo import code_fingerprint, cpu_name
from ..errors import StateError
from ..files import cache_root, drop_cache_entry, hash_file, read_json, trusted_cache_entry, write_cache_entry
from ..models.builders import build_model
from ..models.checkpoint import save_checkpoint
from ..models.weights import load_weights
from .context import Context
from .teacher import Distillation
from .train import Reporter, fit


def train_student(ctx: Context, *, seed: int, distill: Distillation | None, label: str,
                  reporter: Reporter | None, state_path: Path | None = None,
                  resume: bool | None = None, data: Dataset | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Baseline (``distill=None``) or distilled student. Same seed -> same init, data order, schedule. A student
    without a teacher trains on the labeled images only (repeated to the same epoch size: the same steps);
    ``data`` replaces the run's (the pseudo-label baseline's labels)."""
    torch.manual_seed(seed)
    model = build_model(ctx.student_spec, pretrained=ctx.cfg.student_pretrained)
    if ctx.cfg.student_weights:  # baseline and distilled student start from the same weights
        load_weights(model, ctx.cfg.student_weights, ctx.student_spec.arch, "student weights")
    if distill is not None and distill.kd.hint:  # hooks and a connector on this student (removed after fit)
        distill = Distillation.for_student(distill.logits, distill.kd, model, ctx.data.input_shape, ctx.device)
    data = data if data is not None else ctx.data if distill is not None else labeled_view(ctx.data)
    history = fit(model, data, ctx.train_config("student", seed), distill=distill, label=label,
                  reporter=reporter, state_path=state_path, resume=ctx.cfg.resume if resume is None else resume,
                  data_init=not ctx.cfg.student_weights)
    return model.eval(), history


def baseline_key(ctx: Context, seed: int) -> str:
    """Everything a baseline student's training depends on, hashed (``--baseline-cache``): the student and how it
    starts, the training pixels and labels, the training options with this seed, kdexport's code, torch, the CPU
    and the threads (one process: the cache is off under torchrun). Not the teacher: a baseline never sees it."""
    cfg = ctx.cfg
    parts = {"format": 2, "student": ctx.student_spec.to_dict(), "pretrained": cfg.student_pretrained,
             "weights": hash_file(cfg.student_weights).hexdigest() if cfg.student_weights else None,
             "data": ctx.data.fingerprint(), "train": dataclasses.asdict(ctx.train_config("student", seed)),
             "code": code_fingerprint(), "torch": str(torch.__version__), "cpu": cpu_name(), "threads": ctx.threads}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def unit_record(name: str, seed: int, kd: KDConfig | None, accuracy: float, train_seconds: float,
                history: list[dict]) -> dict:
    """A trained student's result record: a sweep unit's file, a cached baseline's ``record.json``."""
    return {"name": name, "seed": seed, "kd": dataclasses.asdict(kd) if kd else None, "accuracy": accuracy,
            "train_seconds": train_seconds, "history": history}


def read_unit(path: Path, what: str = "sweep result") -> dict:
    """A trained student's result record (a sweep unit's, a cached baseline's), checked: a corrupt one is one
    line saying how to retrain it."""
    remedy = "delete it to retrain this unit"
    rec = read_json(path, what, remedy)
    acc, secs = rec.get("accuracy"), rec.get("train_seconds")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (acc, secs)) \
            or not 0 <= acc <= 1:
        raise StateError(f"{what} {str(path)!r} has no valid accuracy/train_seconds; {remedy}")
    return rec


def baseline_cache_dir(ctx: Context, seed: int) -> Path | None:
    """Where ``--baseline-cache`` keeps this baseline student (``model.pt``, ``record.json``); None when the option
    is off or under torchrun (every rank must train it or none, and ranks need not share a cache)."""
    from ..distributed import world

    if not ctx.cfg.baseline_cache or world()[1] > 1:
        return None
    return cache_root() / "baselines" / baseline_key(ctx, seed)


BASELINE_CACHE = "baseline cache"


def cached_baseline(cached: Path | None) -> dict | None:
    """The cached baseline's record, with ``reused`` naming where it came from; None when there is none, or when its
    checkpoint or record no longer match the digests written with them (then it is removed with a warning and the
    baseline is trained again)."""
    if cached is None or not (cached / "record.json").exists():
        return None
    if (trusted_cache_entry(cached / "model.pt", BASELINE_CACHE) is None
            or trusted_cache_entry(cached / "record.json", BASELINE_CACHE) is None):
        drop_cache_entry(cached / "record.json")
        return None
    try:
        return {**read_unit(cached / "record.json", "cached baseline"), "reused": str(cached)}
    except StateError as e:
        warnings.warn(f"{e}; training the baseline again", RuntimeWarning, stacklevel=2)
        drop_cache_entry(cached / "record.json")
        return None


def keep_baseline(cached: Path, ctx: Context, model: torch.nn.Module, rec: dict) -> bool:
    """Put a freshly trained baseline into the cache, each file with its digest: the checkpoint first, so a record
    implies its weights. A write that cannot happen is a warning (the run goes on, the baseline is not kept)."""
    def checkpoint(tmp: str) -> None:
        save_checkpoint(tmp, model, ctx.student_spec, role="baseline", config=ctx.cfg.to_dict(),
                        metrics={"accuracy": rec["accuracy"]}, history=rec["history"])

    return (write_cache_entry(cached / "model.pt", checkpoint, BASELINE_CACHE)
            and write_cache_entry(cached / "record.json", lambda tmp: Path(tmp).write_text(json.dumps(rec, indent=2)),
                                  BASELINE_CACHE))
