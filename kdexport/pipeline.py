"""``distill_export``: data -> teacher -> baseline + distilled student -> ONNX -> benchmark -> report.

Everything is written into a staging folder beside ``--out`` and renamed into place at the end,
so a failed run leaves no half-written output folder behind.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import torch

from . import __version__
from .bench import bench_onnx, bench_torch, onnx_accuracy
from .checkpoint import load_model, read_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from .data import DATASETS, Dataset, load_dataset
from .envinfo import environment, now_iso, usable_cores
from .errors import OutputError
from .export import export_onnx
from .models import ModelSpec, build_model, check_arch, count_flops, count_params
from .report import write_report
from .train import Reporter, TeacherTargets, evaluate, fit, resolve_device

ROLES = ("teacher", "baseline", "student")
PARITY_SAMPLES = 256


def default_out_dir() -> Path:
    return Path("runs") / datetime.now().strftime("distill-%Y%m%d-%H%M%S")


def prepare_out_dir(out: str | os.PathLike | None, overwrite: bool) -> tuple[Path, Path]:
    """Check the output folder can be created; return (final, staging) paths."""
    final = Path(out) if out else default_out_dir()
    if final.exists() and not overwrite:
        raise OutputError(f"output folder {str(final)!r} exists; pass --overwrite to replace it")
    if final.exists() and not final.is_dir():
        raise OutputError(f"output path {str(final)!r} exists and is not a folder")
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as e:
        raise OutputError(f"cannot write output folder {str(final)!r}: {e.strerror or e}") from None
    return final, staging


def commit_out_dir(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)


def validate(cfg: RunConfig) -> None:
    """Cheap checks that need no data: names exist, files exist. Run before anything is written."""
    DATASETS.get(cfg.dataset)
    check_arch(cfg.teacher)
    check_arch(cfg.student)
    if cfg.teacher_checkpoint:
        read_checkpoint(cfg.teacher_checkpoint)
    resolve_device(cfg.train.device)


def _spec(cfg: RunConfig, data: Dataset, arch: str, dropout: float) -> ModelSpec:
    return ModelSpec(arch, data.num_classes, data.input_shape, dropout, cfg.cifar_stem)


def _train_cfg(cfg: RunConfig, data: Dataset, base: TrainConfig) -> TrainConfig:
    import dataclasses

    augment = {"on": True, "off": False, "auto": data.augment_default}[cfg.augment]
    device = str(resolve_device(base.device))
    return dataclasses.replace(base, augment=augment, device=device)


def onnx_metadata(cfg: RunConfig, data: Dataset, role: str, spec: ModelSpec, accuracy: float) -> dict:
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
        "distillation": {"temperature": cfg.kd.temperature, "soft_weight": cfg.kd.soft_weight,
                         "scale_t2": cfg.kd.scale_t2, "soft_loss": cfg.kd.soft_loss,
                         "teacher": cfg.teacher} if role == "student" else None,
    }


def distill_export(cfg: RunConfig, *, reporter: Reporter | None = None,
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """Run the whole job; return the report (also written to OUT/report.json)."""
    t_start = time.perf_counter()
    validate(cfg)
    threads = cfg.threads or usable_cores()
    torch.set_num_threads(threads)
    data = load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    log(f"data: {data.name}: {data.info()['train_size']} train / {data.info()['test_size']} test, "
        f"input {list(data.input_shape)}, {data.num_classes} classes")
    teacher_spec = _spec(cfg, data, cfg.teacher, cfg.teacher_dropout)
    student_spec = _spec(cfg, data, cfg.student, cfg.student_dropout)
    # Build (and so validate) every model and checkpoint before the output folder is created.
    if cfg.teacher_checkpoint:
        teacher, _, _ = load_model(cfg.teacher_checkpoint, expect=teacher_spec)
    else:
        torch.manual_seed(cfg.train.seed)
        teacher = build_model(teacher_spec, pretrained=cfg.pretrained)
    build_model(student_spec)
    final, staging = prepare_out_dir(cfg.out, cfg.overwrite)
    try:
        report = _run(cfg, data, teacher, teacher_spec, student_spec, staging, final, threads,
                      reporter, log)
        report["wall_seconds"] = time.perf_counter() - t_start
        write_report(report, staging)
        commit_out_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {final}/report.json and report.md")
    return report


def _run(cfg: RunConfig, data: Dataset, teacher: torch.nn.Module, teacher_spec: ModelSpec,
         student_spec: ModelSpec, out: Path, final: Path, threads: int, reporter: Reporter | None,
         log: Callable[[str], None]) -> dict:
    cfg_dict = cfg.to_dict()
    cfg_dict["out"] = str(final)
    train_cfg = _train_cfg(cfg, data, cfg.train)
    device = torch.device(train_cfg.device)
    models: dict[str, torch.nn.Module] = {}
    histories: dict[str, list] = {}
    train_seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    if cfg.teacher_checkpoint:
        log(f"teacher: loaded {cfg.teacher_checkpoint}")
        histories["teacher"] = []
        teacher.to(device)
    else:
        histories["teacher"] = fit(teacher, data, _train_cfg(cfg, data, cfg.teacher_train()),
                                   label="teacher", reporter=reporter)
    train_seconds["teacher"] = time.perf_counter() - t0
    models["teacher"] = teacher.eval()
    # Baseline and student: same seed -> same initial weights, same data order, same schedule.
    targets = TeacherTargets(teacher, data, device, cached=not train_cfg.augment)
    for role in ("baseline", "student"):
        torch.manual_seed(cfg.train.seed)
        model = build_model(student_spec)
        t0 = time.perf_counter()
        histories[role] = fit(model, data, train_cfg, label=role, reporter=reporter,
                              **({"teacher": teacher, "kd": cfg.kd, "teacher_targets": targets}
                                 if role == "student" else {}))
        train_seconds[role] = time.perf_counter() - t0
        models[role] = model.eval()

    parity_x = data.normalize(data.x_test[:PARITY_SAMPLES])
    batches = sorted({1, cfg.bench_batch})
    entries: dict[str, dict] = {}
    for role in ROLES:
        model = models[role].cpu()
        spec = teacher_spec if role == "teacher" else student_spec
        acc_torch = evaluate(model, data, "test")["accuracy"]
        ckpt = out / "checkpoints" / f"{role}.pt"
        save_checkpoint(ckpt, model, spec, role=role, config=cfg_dict,
                        metrics={"accuracy": acc_torch}, history=histories[role])
        log(f"{role}: exporting to ONNX and checking parity with onnxruntime")
        onnx_path = out / "onnx" / f"{role}.onnx"
        res = export_onnx(model, onnx_path, parity_x, atol=cfg.parity_atol,
                          metadata=onnx_metadata(cfg, data, role, spec, acc_torch))
        log(f"{role}: benchmarking with onnxruntime ({threads} threads)")
        bench = bench_onnx(onnx_path, data, batches, threads=threads, warmup=cfg.bench_warmup,
                           iters=cfg.bench_iters, max_seconds=20.0)
        entry = {
            "arch": spec.arch,
            "spec": spec.to_dict(),
            "params": count_params(model),
            "flops": count_flops(model, data.input_shape),
            "checkpoint": f"checkpoints/{role}.pt",  # relative to the report's folder
            "onnx_path": f"onnx/{role}.onnx",
            "onnx_bytes": res.onnx_bytes,
            "accuracy_torch": acc_torch,
            "accuracy_onnx": onnx_accuracy(onnx_path, data, threads),
            "parity": res.parity(),
            "latency_ms": bench["latency_ms"],
            "throughput_per_s": bench["throughput_per_s"],
            "train_seconds": train_seconds[role],
            "epochs": len(histories[role]),
            "history": histories[role],
        }
        if role == "student":
            eager = bench_torch(model, data, batches, threads=threads, warmup=cfg.bench_warmup,
                                iters=cfg.bench_iters, max_seconds=20.0)
            entry["torch_eager"] = {"latency_ms": eager["latency_ms"],
                                    "throughput_per_s": eager["throughput_per_s"]}
        entries[role] = entry

    t, s, b = entries["teacher"], entries["student"], entries["baseline"]
    return {
        "kdexport_version": __version__,
        "created": now_iso(),
        "config": cfg_dict,
        "environment": environment(threads),
        "dataset": data.info(),
        "models": entries,
        "kd_gain_points": (s["accuracy_onnx"] - b["accuracy_onnx"]) * 100.0,
        "kd_gain_points_torch": (s["accuracy_torch"] - b["accuracy_torch"]) * 100.0,
        "student_vs_teacher": {
            "speedup_batch_1": t["latency_ms"]["batch_1"]["p50"] / s["latency_ms"]["batch_1"]["p50"],
            "compression_params": t["params"] / s["params"],
            "compression_bytes": t["onnx_bytes"] / s["onnx_bytes"],
            "accuracy_gap_points": (t["accuracy_onnx"] - s["accuracy_onnx"]) * 100.0,
        },
    }
