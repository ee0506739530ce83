"""Where a run's teacher comes from, and every step a run takes with it: the one home of the teacher.

A teacher source (an item of :data:`TEACHER_SOURCES`) says when it applies (which options name it), what it
checks before any data is loaded, how it builds the teacher, and whether the teacher comes trained. The
sources, in the order they are tried:

- ``onnx``: a trained classifier in an ONNX file (``--teacher PATH.onnx``), run by onnxruntime as a black box;
- ``checkpoint``: a kdexport checkpoint (``--teacher-checkpoint``), an ensemble's too;
- ``weights``: ``--teacher ARCH`` with a weights file (``--teacher-weights``: a state_dict or .safetensors);
- ``ensemble``: ``--teacher ensemble:NxARCH``, N members trained here one after another, logits averaged;
- ``pretrained``: ``--teacher ARCH --pretrained``, trained here from torchvision's (or timm's) weights;
- ``train``: ``--teacher ARCH`` trained here from scratch.

The steps (:func:`build_teacher`, :func:`train_teacher`, :func:`check_teacher`, :func:`teacher_logits_for`,
...) are what ``distill-export`` and ``sweep`` call, in their order; they never look at which source it is
beyond what the source says.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import RunConfig
from ..data.datasets import Dataset
from ..errors import DataError, ModelError
from ..files import cache_root
from ..models.builders import ModelSpec, build_model, check_arch
from ..models.checkpoint import load_model, read_checkpoint
from ..models.weights import load_weights, read_state_dict
from ..registry import Registry
from .context import Context, Log, quiet
from .hint import Hint
from .teacher import OnnxTeacher, Teacher, TeacherLogits, TorchTeacher, finite_views, teacher_accuracy, teacher_logits
from .teacher import with_tta as _with_tta
from .train import Reporter, fit

TeacherModel = torch.nn.Module | OnnxTeacher


@dataclass(frozen=True)
class TeacherSource:
    help: str  # one line for the docs
    trained: bool  # the teacher comes trained (it is not trained here)
    applies: Callable[[RunConfig], bool]  # whether the run's options name this source
    check: Callable[[RunConfig], None]  # cheap checks before any data is loaded (files exist and parse)
    build: Callable[[Context], TeacherModel]  # the teacher, ready to train (or trained)
    origin: Callable[[RunConfig], str]  # what the log names as where the teacher came from


TEACHER_SOURCES: Registry[TeacherSource] = Registry("teacher source")


def _check_onnx(cfg: RunConfig) -> None:
    if not Path(cfg.teacher).is_file():
        raise ModelError(f"teacher {cfg.teacher!r} does not exist")


def _check_arch(cfg: RunConfig) -> None:
    check_arch(cfg.teacher)


def _check_checkpoint(cfg: RunConfig) -> None:
    check_arch(cfg.teacher)
    read_checkpoint(cfg.teacher_checkpoint)


def teacher_stem(cfg: RunConfig) -> bool:
    """The PyTorch teacher's stem: a checkpoint's is the one it was trained with (recorded in it); ``--cifar-stem``
    names the stem of the models built here (the student, a teacher trained here or given as a weights file)."""
    if cfg.teacher_checkpoint:
        return ModelSpec.from_dict(read_checkpoint(cfg.teacher_checkpoint, mmap=True)["model"]).cifar_stem
    return cfg.cifar_stem


def _check_weights(cfg: RunConfig) -> None:
    check_arch(cfg.teacher)
    read_state_dict(cfg.teacher_weights)


def _built(ctx: Context, pretrained: bool = False) -> torch.nn.Module:
    torch.manual_seed(ctx.cfg.train.seed)
    return build_model(ctx.teacher_spec, pretrained=pretrained)


def _with_weights(ctx: Context) -> torch.nn.Module:
    model = _built(ctx)
    load_weights(model, ctx.cfg.teacher_weights, ctx.teacher_spec.arch, "teacher weights")
    return model


TEACHER_SOURCES.add("onnx", TeacherSource(
    "a trained classifier in an ONNX file (--teacher PATH.onnx), run by onnxruntime", True,
    lambda cfg: cfg.teacher_is_onnx, _check_onnx,
    lambda ctx: OnnxTeacher(ctx.cfg.teacher, ctx.data, mean=ctx.cfg.teacher_mean, std=ctx.cfg.teacher_std,
                            threads=ctx.threads),
    lambda cfg: cfg.teacher))
TEACHER_SOURCES.add("checkpoint", TeacherSource(
    "a kdexport checkpoint (--teacher-checkpoint)", True,
    lambda cfg: bool(cfg.teacher_checkpoint),
    _check_checkpoint,
    lambda ctx: load_model(ctx.cfg.teacher_checkpoint, expect=ctx.teacher_spec)[0],
    lambda cfg: cfg.teacher_checkpoint))
TEACHER_SOURCES.add("weights", TeacherSource(
    "--teacher ARCH with a weights file (--teacher-weights: a state_dict or .safetensors)", True,
    lambda cfg: bool(cfg.teacher_weights),
    _check_weights,
    _with_weights, lambda cfg: cfg.teacher_weights))
TEACHER_SOURCES.add("ensemble", TeacherSource(
    "--teacher ensemble:NxARCH: N members trained here one after another, their logits averaged", False,
    lambda cfg: cfg.teacher.startswith("ensemble:"), _check_arch, _built, lambda cfg: cfg.teacher))
TEACHER_SOURCES.add("pretrained", TeacherSource(
    "--teacher ARCH --pretrained: trained here from torchvision's (or timm's) published weights", False,
    lambda cfg: cfg.pretrained, _check_arch, lambda ctx: _built(ctx, pretrained=True), lambda cfg: cfg.teacher))
TEACHER_SOURCES.add("train", TeacherSource(
    "--teacher ARCH trained here from scratch", False,
    lambda cfg: True, _check_arch, _built, lambda cfg: cfg.teacher))


def teacher_source(cfg: RunConfig) -> tuple[str, TeacherSource]:
    """The source the run's options name (the first of :data:`TEACHER_SOURCES` that applies; ``RunConfig``
    refuses options that name two)."""
    for name in TEACHER_SOURCES.names(sort=False):
        src = TEACHER_SOURCES.get(name)
        if src.applies(cfg):
            return name, src
    raise AssertionError("the 'train' source applies to every run")  # pragma: no cover


def teacher_is_trained(cfg: RunConfig) -> bool:
    """Whether the teacher comes trained (ONNX file, checkpoint, weights file) rather than trained here."""
    return teacher_source(cfg)[1].trained


def teacher_name(cfg: RunConfig) -> str:
    """The teacher as reports and metadata name it: its architecture, or an ONNX teacher's file name."""
    return f"onnx:{Path(cfg.teacher).name}" if cfg.teacher_is_onnx else cfg.teacher


def check_teacher_source(cfg: RunConfig) -> None:
    """The source's own checks (its file exists and parses, its architecture is known): before data is loaded."""
    teacher_source(cfg)[1].check(cfg)


def build_teacher(ctx: Context) -> TeacherModel:
    """The teacher from its source: trained (ONNX file, checkpoint, weights) or ready to train here."""
    return teacher_source(ctx.cfg)[1].build(ctx)


def check_hint(ctx: Context, teacher: TeacherModel) -> None:
    """``--hint``: both named layers exist and their features connect, checked before anything is written."""
    if ctx.cfg.kd.hint and isinstance(teacher, torch.nn.Module):
        Hint(ctx.cfg.kd.hint, teacher, build_model(ctx.student_spec), ctx.data.input_shape, ctx.cfg.kd.hint_weight
             ).close()


def train_teacher(ctx: Context, teacher: TeacherModel, reporter: Reporter | None, log: Log,
                  state_path: Path | None = None, resume: bool | None = None) -> list[dict]:
    """Train the teacher here (its history), or say where the trained one came from (no history)."""
    cfg = ctx.cfg
    _, src = teacher_source(cfg)
    if src.trained:
        log(f"teacher: {src.origin(cfg)} (trained; not retrained)")
        if isinstance(teacher, torch.nn.Module):
            teacher.to(ctx.device).eval()
        return []
    from ..data.labels import labeled_view

    return fit(teacher, labeled_view(ctx.data), ctx.train_config("teacher"), label="teacher", reporter=reporter,
               state_path=state_path, resume=cfg.resume if resume is None else resume)


def teacher_data(ctx: Context) -> Dataset:
    """The data as a PyTorch teacher takes it: the run's, normalized with ``--teacher-mean/--teacher-std`` where a
    trained teacher was given other statistics than the dataset's (an ONNX teacher normalizes its own inputs)."""
    cfg, data = ctx.cfg, ctx.data
    if cfg.teacher_is_onnx or (cfg.teacher_mean is None and cfg.teacher_std is None):
        return data
    c = data.input_shape[0]
    for what, v in (("--teacher-mean", cfg.teacher_mean), ("--teacher-std", cfg.teacher_std)):
        if v is not None and len(v) != c:
            raise DataError(f"{what} has {len(v)} values for {c} input channels")
    return dataclasses.replace(data, mean=tuple(cfg.teacher_mean or data.mean), std=tuple(cfg.teacher_std or data.std))


def as_teacher(ctx: Context, teacher: TeacherModel, tta: bool = True) -> Teacher:
    """The teacher as students see it: its logits with ``--teacher-tta`` applied (``tta=False``: the plain model)."""
    t = (teacher if isinstance(teacher, OnnxTeacher)
         else TorchTeacher.for_data(teacher, teacher_data(ctx), ctx.device, ctx.cfg.train.precision))
    return _with_tta(t, ctx.cfg.teacher_tta) if tta else t


def check_teacher(ctx: Context, teacher: TeacherModel, log: Log) -> float:
    """The teacher's test accuracy, before any student learns from it. A teacher no better than
    predicting the most common class stops the run (``--force`` goes on): its classes, their order or
    its normalization do not match this data."""
    acc = teacher_accuracy(as_teacher(ctx, teacher), ctx.data)
    counts = torch.bincount(ctx.data.y_test, minlength=ctx.data.num_classes)
    chance = float(counts.max()) / max(len(ctx.data.y_test), 1)
    tta = f" with --teacher-tta {ctx.cfg.teacher_tta}" if ctx.cfg.teacher_tta != "none" else ""
    log(f"teacher: {acc * 100:.2f}% on the test split{tta} (chance: {chance * 100:.2f}%)")
    if acc <= chance and not ctx.cfg.force:
        hint = (" (check its class order and normalization: --teacher-mean/--teacher-std)"
                if ctx.cfg.teacher_is_onnx else "")
        raise ModelError(f"the teacher is no better than chance on this data: {acc * 100:.2f}% on the test split, "
                         f"the most common class is {chance * 100:.2f}%{hint}; pass --force to distil anyway")
    return acc


def split_tta(ctx: Context, teacher: TeacherModel, accuracy: float) -> tuple[float, dict | None]:
    """``accuracy`` (the teacher's as the students see it, :func:`check_teacher`) as the report needs it: the
    accuracy for the teacher's own entry, which is the plain network, and under ``--teacher-tta`` the record
    ``{"mode", "accuracy"}`` of the TTA'd one beside it (else None). A PyTorch teacher's entry measures its own
    accuracy on export; an ONNX teacher's is measured here."""
    if ctx.cfg.teacher_tta == "none":
        return accuracy, None
    tta = {"mode": ctx.cfg.teacher_tta, "accuracy": accuracy}
    if isinstance(teacher, OnnxTeacher):
        accuracy = teacher_accuracy(as_teacher(ctx, teacher, tta=False), ctx.data)
    return accuracy, tta


def teacher_logits_for(ctx: Context, teacher: TeacherModel, log: Log = quiet) -> TeacherLogits:
    """How the students get the teacher's logits: cached (and kept on disk with ``--teacher-cache``)
    when their inputs are not augmented, cached per view with ``--teacher-view-cache``, else live."""
    augment = ctx.train_config("student").augment
    progress = None
    if ctx.cfg.teacher_view_cache and augment != "none":
        views = finite_views(augment)
        t0, shown = time.perf_counter(), [0]
        log(f"teacher: its logits on all {views.count} views of the {len(ctx.data.y_train):,} training images "
            f"({augment}), once{' (kept in the cache)' if ctx.cfg.teacher_cache else ''}")

        def progress(done: int, total: int) -> None:  # a line per tenth: the table can take minutes
            if done * 10 // total > shown[0] or done == total:
                shown[0] = done * 10 // total
                log(f"teacher views: {done}/{total} batches ({time.perf_counter() - t0:.0f} s)")

    t0 = time.perf_counter()
    source = teacher_logits(as_teacher(ctx, teacher), ctx.data, augment=augment, device=ctx.device,
                            live=bool(ctx.cfg.kd.hint or ctx.cfg.kd.mixup),  # both need the teacher on the batch
                            view_cache=ctx.cfg.teacher_view_cache, progress=progress,
                            cache_dir=cache_root() / "teacher-logits" if ctx.cfg.teacher_cache else None)
    if progress is not None:
        log(f"teacher views: ready in {time.perf_counter() - t0:.1f} s")
    return source
