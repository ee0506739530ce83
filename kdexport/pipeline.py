"""``distill_export``: data -> teacher -> baseline + distilled student -> ONNX -> benchmark -> report.

Everything is written into a staging folder beside ``--out`` and renamed into place at the end,
so a failed run leaves no half-written output folder behind. The pieces (``prepare``,
``train_teacher``, ``train_student``, ``export_and_bench``) are shared with ``kdexport sweep``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from . import __version__
from .bench import bench_onnx, bench_torch, onnx_accuracy
from .checkpoint import load_model, read_checkpoint, save_checkpoint
from .config import KDConfig, RunConfig, TrainConfig
from .data import DATASETS, Dataset, load_dataset, resolve_augment
from .envinfo import environment, git_commit, now_iso, usable_cores
from .errors import GateError, OutputError
from .export import export_onnx
from .io import cache_root
from .models import ModelSpec, build_model, check_arch, count_flops, count_params
from .report import write_report
from .train import Reporter, TeacherTargets, evaluate, fit, resolve_device

ROLES = ("teacher", "baseline", "student")
PARITY_SAMPLES = 256
Log = Callable[[str], None]


def _quiet(msg: str) -> None:
    pass


def default_out_dir(prefix: str = "distill") -> Path:
    return Path("runs") / datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S")


def staging_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.partial"


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
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if staging.exists() and not resume:
            shutil.rmtree(staging)
        staging.mkdir(exist_ok=resume)
    except OSError as e:
        raise OutputError(f"cannot write output folder {str(final)!r}: {e.strerror or e}") from None
    return final, staging


RESUME_IGNORES = ("out", "overwrite", "resume", "teacher_cache", "bench_iters", "bench_warmup", "bench_batch",
                  "threads", "parity_atol", "quantize", "max_accuracy_drop", "calibration_samples", "calibration",
                  "equalize")


def check_resume_config(cfg: RunConfig, staging: Path) -> None:
    """Record the run's config in the staging folder; on resume, refuse a changed config."""
    from .io import atomic_write_json
    from .train import _config_diff

    want = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_IGNORES}
    path = staging / "run-config.json"
    if cfg.resume and path.exists():
        import json

        diff = _config_diff(json.loads(path.read_text()), want)
        if diff:
            raise OutputError(f"cannot resume: options differ from the interrupted run: {', '.join(diff)}")
    atomic_write_json(path, want)


def commit_out_dir(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


@dataclass
class Context:
    """Loaded data and validated model specs of one run."""

    cfg: RunConfig
    data: Dataset
    teacher_spec: ModelSpec
    student_spec: ModelSpec
    threads: int
    device: torch.device

    def train_config(self, role: str, seed: int | None = None) -> TrainConfig:
        cfg = self.cfg
        base = cfg.teacher_train() if role == "teacher" else cfg.train
        aug = cfg.teacher_augment if role == "teacher" and cfg.teacher_augment else cfg.augment
        return dataclasses.replace(base, augment=resolve_augment(aug, self.data), device=str(self.device),
                                   seed=base.seed if seed is None else seed)


def prepare(cfg: RunConfig, log: Log = _quiet) -> Context:
    """Validate names and files (cheap checks first), set threads, load the data, build specs."""
    git_commit()  # stamp reports with the code this run starts from, even if the checkout moves on
    DATASETS.get(cfg.dataset)
    check_arch(cfg.teacher)
    check_arch(cfg.student)
    if cfg.teacher_checkpoint:
        read_checkpoint(cfg.teacher_checkpoint)
    device = resolve_device(cfg.train.device)
    threads = cfg.threads or usable_cores()
    torch.set_num_threads(threads)
    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    log(f"data: {data.name}: {len(data.y_train)} train / {len(data.y_test)} test, "
        f"input {list(data.input_shape)}, {data.num_classes} classes")
    ts = ModelSpec(cfg.teacher, data.num_classes, data.input_shape, cfg.teacher_dropout, cfg.cifar_stem)
    ss = ModelSpec(cfg.student, data.num_classes, data.input_shape, cfg.student_dropout, cfg.cifar_stem)
    ctx = Context(cfg, data, ts, ss, threads, device)
    ctx.train_config("teacher")  # resolves augmentation names against the data
    build_model(ss)  # fails now, before anything is written, if the student cannot take the input
    return ctx


def build_teacher(ctx: Context) -> torch.nn.Module:
    if ctx.cfg.teacher_checkpoint:
        model, _, _ = load_model(ctx.cfg.teacher_checkpoint, expect=ctx.teacher_spec)
        return model
    torch.manual_seed(ctx.cfg.train.seed)
    return build_model(ctx.teacher_spec, pretrained=ctx.cfg.pretrained)


def train_teacher(ctx: Context, teacher: torch.nn.Module, reporter: Reporter | None, log: Log,
                  state_path: Path | None = None, resume: bool | None = None) -> list[dict]:
    if ctx.cfg.teacher_checkpoint:
        log(f"teacher: loaded {ctx.cfg.teacher_checkpoint} (not retrained)")
        teacher.to(ctx.device).eval()
        return []
    return fit(teacher, ctx.data, ctx.train_config("teacher"), label="teacher", reporter=reporter,
               state_path=state_path, resume=ctx.cfg.resume if resume is None else resume)


def teacher_targets(ctx: Context, teacher: torch.nn.Module) -> TeacherTargets:
    return TeacherTargets(teacher, ctx.data, ctx.device, cached=ctx.train_config("student").augment == "none",
                          cache_dir=cache_root() / "teacher-logits" if ctx.cfg.teacher_cache else None)


def train_student(ctx: Context, *, seed: int, kd: KDConfig | None, targets: TeacherTargets | None,
                  label: str, reporter: Reporter | None, state_path: Path | None = None,
                  resume: bool | None = None) -> tuple[torch.nn.Module, list[dict]]:
    """Baseline (``kd=None``) or distilled student. Same seed -> same init, data order, schedule."""
    torch.manual_seed(seed)
    model = build_model(ctx.student_spec)
    history = fit(model, ctx.data, ctx.train_config("student", seed), label=label, reporter=reporter,
                  state_path=state_path, resume=ctx.cfg.resume if resume is None else resume,
                  **({"teacher": targets.teacher, "kd": kd, "teacher_targets": targets} if kd else {}))
    return model.eval(), history


def onnx_metadata(cfg: RunConfig, data: Dataset, role: str, spec: ModelSpec, accuracy: float,
                  kd: KDConfig | None = None) -> dict:
    """What an app needs from the file alone: labels, input shape, normalization, provenance."""
    return {
        "kdexport_version": __version__,
        "role": role,
        "arch": spec.arch,
        "dataset": data.name,
        "class_names": data.class_names,
        "input_shape": list(data.input_shape),
        "input_layout": "NCHW",
        "input_range": "pixels scaled to [0, 1], then (x - mean) / std per channel",
        "mean": list(data.mean),
        "std": list(data.std),
        "accuracy_torch": accuracy,
        "distillation": ({**dataclasses.asdict(kd), "teacher": cfg.teacher} if kd else None),
    }


def export_and_bench(ctx: Context, model: torch.nn.Module, spec: ModelSpec, role: str, out: Path, *,
                     history: list[dict], kd: KDConfig | None = None, eager: bool = False,
                     log: Log = _quiet, extra: dict | None = None) -> dict:
    """Checkpoint, export (with parity), benchmark one model; return its report entry.

    Paths in the entry are relative to ``out`` (the report's folder)."""
    cfg, data = ctx.cfg, ctx.data
    model = model.cpu().eval()
    acc_torch = evaluate(model, data, "test")["accuracy"]
    save_checkpoint(out / "checkpoints" / f"{role}.pt", model, spec, role=role, config=cfg.to_dict(),
                    metrics={"accuracy": acc_torch}, history=history)
    log(f"{role}: exporting to ONNX and checking parity with onnxruntime")
    onnx_path = out / "onnx" / f"{role}.onnx"
    parity_x = data.normalize(data.x_test[data.test_sample(PARITY_SAMPLES)])
    res = export_onnx(model, onnx_path, parity_x, atol=cfg.parity_atol,
                      metadata=onnx_metadata(cfg, data, role, spec, acc_torch, kd))
    log(f"{role}: benchmarking with onnxruntime ({ctx.threads} threads)")
    batches = sorted({1, cfg.bench_batch})
    bench = bench_onnx(onnx_path, data, batches, threads=ctx.threads, warmup=cfg.bench_warmup,
                       iters=cfg.bench_iters, max_seconds=20.0)
    entry = {
        "arch": spec.arch,
        "spec": spec.to_dict(),
        "params": count_params(model),
        "flops": count_flops(model, data.input_shape),
        "checkpoint": f"checkpoints/{role}.pt",
        "onnx_path": f"onnx/{role}.onnx",
        "onnx_bytes": res.onnx_bytes,
        "accuracy_torch": acc_torch,
        "accuracy_onnx": onnx_accuracy(onnx_path, data, ctx.threads),
        "parity": res.parity(),
        "latency_ms": bench["latency_ms"],
        "throughput_per_s": bench["throughput_per_s"],
        "epochs": len(history),
        "history": history,
        **(extra or {}),
    }
    if eager:
        e = bench_torch(model, data, batches, threads=ctx.threads, warmup=cfg.bench_warmup,
                        iters=cfg.bench_iters, max_seconds=20.0)
        entry["torch_eager"] = {"latency_ms": e["latency_ms"], "throughput_per_s": e["throughput_per_s"]}
    return entry


def report_header(ctx: Context, final: Path) -> dict:
    cfg_dict = ctx.cfg.to_dict()
    cfg_dict["out"] = str(final)
    return {"kdexport_version": __version__, "created": now_iso(), "config": cfg_dict,
            "environment": environment(ctx.threads), "dataset": ctx.data.info()}


def comparison(models: dict[str, dict]) -> dict:
    t, s, b = models["teacher"], models["student"], models["baseline"]
    return {
        "kd_gain_points": (s["accuracy_onnx"] - b["accuracy_onnx"]) * 100.0,
        "kd_gain_points_torch": (s["accuracy_torch"] - b["accuracy_torch"]) * 100.0,
        "student_vs_teacher": {
            "speedup_batch_1": t["latency_ms"]["batch_1"]["p50"] / s["latency_ms"]["batch_1"]["p50"],
            "compression_params": t["params"] / s["params"],
            "compression_bytes": t["onnx_bytes"] / s["onnx_bytes"],
            "accuracy_gap_points": (t["accuracy_onnx"] - s["accuracy_onnx"]) * 100.0,
        },
    }


def distill_export(cfg: RunConfig, *, reporter: Reporter | None = None, log: Log = _quiet) -> dict | None:
    """Run the whole job; return the report (also written to OUT/report.json).

    Under torchrun every rank trains; only rank 0 writes, exports, benchmarks and returns the report."""
    from .distributed import barrier, init_from_env, is_main, world

    t_start = time.perf_counter()
    init_from_env(cfg.train.device)
    main = is_main()
    if not main:
        reporter, log = None, _quiet
    ctx = prepare(cfg, log)
    if world()[1] > 1 and not cfg.threads:
        ctx.threads = max(1, ctx.threads // world()[1])
        torch.set_num_threads(ctx.threads)
    teacher = build_teacher(ctx)  # validates a teacher checkpoint before anything is written
    final = staging = None
    if main:
        final, staging = prepare_out_dir(cfg.out, cfg.overwrite, cfg.resume)
        check_resume_config(cfg, staging)
    barrier()
    # Every rank reads the per-epoch state on --resume (same folder, shared filesystem); rank 0 writes it.
    state_root = staging if main else (staging_dir(Path(cfg.out)) if cfg.resume and cfg.out else None)

    def state(role: str) -> Path | None:
        return state_root / "train-state" / f"{role}.pt" if state_root is not None else None

    try:
        t0 = time.perf_counter()
        t_hist = train_teacher(ctx, teacher, reporter, log, state("teacher"))
        t_secs = time.perf_counter() - t0
        targets = teacher_targets(ctx, teacher)
        trained = {}
        for role, kd in (("baseline", None), ("student", cfg.kd)):
            t0 = time.perf_counter()
            model, hist = train_student(ctx, seed=cfg.train.seed, kd=kd, targets=targets, label=role,
                                        reporter=reporter, state_path=state(role))
            trained[role] = (model, hist, time.perf_counter() - t0, kd)
        if not main:
            return None
        models: dict[str, dict] = {}
        models["teacher"] = export_and_bench(ctx, teacher, ctx.teacher_spec, "teacher", staging,
                                             history=t_hist, log=log, extra={"train_seconds": t_secs})
        for role, (model, hist, secs, kd) in trained.items():
            models[role] = export_and_bench(ctx, model, ctx.student_spec, role, staging, history=hist, kd=kd,
                                            eager=role == "student", log=log, extra={"train_seconds": secs})
        gate_error = None
        if cfg.quantize != "none":
            try:
                models["student_int8"] = quantize_and_bench(ctx, models["student"], staging, log)
            except GateError as e:  # keep the run and its report; fail the command afterwards
                gate_error = e
                models["student_int8_rejected"] = {"error": str(e)}
        report = {**report_header(ctx, final), "models": models, **comparison(models),
                  "world_size": world()[1], "wall_seconds": time.perf_counter() - t_start}
        shutil.rmtree(staging / "train-state", ignore_errors=True)
        (staging / "run-config.json").unlink(missing_ok=True)
        write_report(report, staging)
        commit_out_dir(staging, final)
    except BaseException:
        if main and staging is not None and staging.exists():
            log(f"run interrupted; its partial state is kept in {staging} (rerun with --resume to continue)")
        raise
    log(f"wrote {final}/report.json and report.md")
    if gate_error is not None:
        raise gate_error
    return report


def quantize_and_bench(ctx: Context, fp32: dict, out: Path, log: Log = _quiet) -> dict:
    """INT8 copy of the exported student, accuracy-gated, benchmarked like the FP32 file."""
    from .quantize import quantize_onnx

    cfg = ctx.cfg
    log(f"student: {cfg.quantize} INT8 quantization with onnxruntime")
    path = out / "onnx" / "student.int8.onnx"
    q = quantize_onnx(out / fp32["onnx_path"], path, ctx.data, mode=cfg.quantize,
                      calibration_samples=cfg.calibration_samples, max_accuracy_drop=cfg.max_accuracy_drop,
                      threads=ctx.threads, calibration=cfg.calibration, equalize=cfg.equalize,
                      accuracy_fp32=fp32["accuracy_onnx"])
    batches = sorted({1, cfg.bench_batch})
    bench = bench_onnx(path, ctx.data, batches, threads=ctx.threads, warmup=cfg.bench_warmup,
                       iters=cfg.bench_iters, max_seconds=20.0)
    return {
        "arch": fp32["arch"], "spec": fp32["spec"], "params": fp32["params"], "flops": fp32["flops"],
        "onnx_path": "onnx/student.int8.onnx", "onnx_bytes": q.onnx_bytes,
        "accuracy_torch": None, "accuracy_onnx": q.accuracy_int8,
        "latency_ms": bench["latency_ms"], "throughput_per_s": bench["throughput_per_s"],
        "quantization": {**q.to_dict(), "path": "onnx/student.int8.onnx",
                         "size_ratio_vs_fp32": q.onnx_bytes / q.fp32_bytes,
                         "speedup_vs_fp32_batch_1": fp32["latency_ms"]["batch_1"]["p50"]
                         / bench["latency_ms"]["batch_1"]["p50"]},
    }
