"""What a teacher costs per epoch (issue 19), side by side in one run: one epoch of the compact student
alone, distilled from the live teacher, from the live flip-TTA'd teacher, and from the flip-TTA'd teacher's
logits cached per view (--teacher-view-cache: the table is built first, its seconds reported apart), in
fp32 and/or bf16 autocast (--precision), through kdexport's one training loop with the student recipe's
settings.

    python benchmarks/run_recipe.py cifar10-fast-teacher-anchor            # trains the teacher checkpoint
    python benchmarks/bench_kd_cost.py runs/recipes/cifar10-fast-teacher-anchor/checkpoints/teacher.pt
    python benchmarks/bench_kd_cost.py CHECKPOINT --precisions bf16 --out benchmarks/results/bench_kd_cost_views

Each row is the training seconds of epoch 1 (evaluation excluded) and its ratio to the student-only epoch
of the same precision. The view table goes to kdexport's teacher-logit cache, where recipes with the same
teacher, data and augmentation find it; a table already there is not timed (the run says so: delete it
first for a fresh build). Writes benchmarks/results/bench_kd_cost.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from kdexport.allocator import prefer_kept
from kdexport.config import KDConfig, TrainConfig
from kdexport.data.datasets import load_dataset
from kdexport.distill.teacher import (
    Distillation,
    LiveLogits,
    TorchTeacher,
    ViewCachedLogits,
    finite_views,
    view_cache_key,
    with_tta,
)
from kdexport.distill.train import fit
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.files import atomic_write_json, atomic_write_text, cache_root
from kdexport.models.builders import ModelSpec, build_model
from kdexport.models.checkpoint import load_model

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="the teacher (a kdexport checkpoint)")
    ap.add_argument("--student", default="fastcifar:0.25")
    ap.add_argument("--recipe", default="cifar10-fast-teacher-students", help="whose train settings to use")
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--no-view-cache", action="store_true", help="skip the view-cached rows")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_kd_cost"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_kd_cost.py", usable_cores())
    recipe = json.loads((HERE / "recipes" / f"{args.recipe}.json").read_text())["config"]
    data = load_dataset("cifar10", args.data_dir, download=False)
    teacher_model, tspec, _ = load_model(args.checkpoint)
    kd = KDConfig(temperature=4.0, soft_weight=0.9)
    rows, tables = [], []
    cache_dir = cache_root() / "teacher-logits"  # where --teacher-view-cache keeps it
    for precision in args.precisions.split(","):
        cfg = TrainConfig(**{**recipe["train"], "epochs": 1, "precision": precision, "seed": 0,
                             "augment": recipe["augment"]})
        base = TorchTeacher.for_data(teacher_model, data, "cpu", precision)
        warm = dataclasses.replace(data, x_train=data.x_train[:2 * cfg.batch_size],
                                   y_train=data.y_train[:2 * cfg.batch_size], x_test=data.x_test[:256],
                                   y_test=data.y_test[:256])
        for distill in (None, Distillation(LiveLogits(base), kd)):  # untimed: oneDNN builds its kernels once
            fit(build_model(ModelSpec(args.student, data.num_classes, data.input_shape)), warm, cfg, distill=distill,
                label=f"{precision} warm-up")
        modes = ("alone", "none", "flip") + (() if args.no_view_cache else ("flip-views",))
        for mode in modes:
            if mode == "flip-views":
                teacher = with_tta(base, "flip")
                views = finite_views(cfg.augment)
                fresh = not (cache_dir / f"{view_cache_key(teacher, data, views)}.npy").exists()
                t0 = time.perf_counter()
                source = ViewCachedLogits(teacher, data, cfg.augment, cache_dir=cache_dir,
                                          progress=lambda d, n: print(f"  views: batch {d}/{n}", flush=True)
                                          if d % 10 == 0 or d == n else None)
                secs = time.perf_counter() - t0
                tables.append({"precision": precision, "tta": "flip", "views": views.count, "fresh": fresh,
                               "seconds": secs if fresh else None, "bytes": int(source.table.numel() * 4)})
                print(tables[-1], flush=True)
                distill = Distillation(source, kd)
            else:
                distill = None if mode == "alone" else Distillation(LiveLogits(with_tta(base, mode)), kd)
            torch.manual_seed(0)  # the same initial student in every row
            model = build_model(ModelSpec(args.student, data.num_classes, data.input_shape))
            rec = fit(model, data, cfg, distill=distill, label=f"{precision} {mode}")[0]
            alone = next((r["train_seconds"] for r in rows if r["precision"] == precision and r["teacher"] is None),
                         rec["train_seconds"])
            teacher_row = ({"tta": "flip", "logits": "view-cached"} if mode == "flip-views"
                           else None if mode == "alone" else {"tta": mode, "logits": "live"})
            rows.append({"precision": precision, "teacher": teacher_row,
                         "train_seconds": rec["train_seconds"], "ratio_to_alone": rec["train_seconds"] / alone,
                         "test_accuracy_after_1_epoch": rec["test_accuracy"]})
            print(rows[-1], flush=True)
    result = {**stamp, "teacher": {"checkpoint": args.checkpoint, "arch": tspec.arch}, "student": args.student,
              "train": recipe["train"], "augment": recipe["augment"], "kd": dataclasses.asdict(kd), "rows": rows,
              "view_tables": tables}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [f"# What a teacher costs: {tspec.arch} -> {args.student}, one epoch", "", stamp_markdown(result), "",
             f"One training epoch ({len(data.y_train):,} images, batch {recipe['train']['batch_size']}, "
             f"{recipe['augment']}; evaluation excluded; after an untimed warm-up of two batches) of the student "
             "alone and distilled from the live teacher, plain or flip-TTA'd (2 passes), or from the flip-TTA'd "
             "teacher's logits cached per view (--teacher-view-cache), with the forward passes in fp32 or bf16 "
             "autocast.", "",
             "| precision | teacher | train s | x student alone |", "|---|---|---|---|"]
    for r in rows:
        t = ("none (student alone)" if r["teacher"] is None
             else f"{r['teacher']['logits']}, TTA {r['teacher']['tta']}")
        lines.append(f"| {r['precision']} | {t} | {r['train_seconds']:.1f} | {r['ratio_to_alone']:.2f}x |")
    for tb in tables:
        live = next(r["train_seconds"] for r in rows if r["precision"] == tb["precision"]
                    and r["teacher"] == {"tta": "flip", "logits": "live"})
        cached = next(r["train_seconds"] for r in rows if r["precision"] == tb["precision"]
                      and r["teacher"] == {"tta": "flip", "logits": "view-cached"})
        built = (f"built in {tb['seconds']:.0f} s ({tb['seconds'] / 60:.1f} min); it pays back after "
                 f"{tb['seconds'] / max(live - cached, 1e-9):.0f} distilled epochs against the live flip-TTA'd "
                 f"teacher" if tb["fresh"] else "read from the cache (not timed)")
        lines += ["", f"View table ({tb['precision']}): {tb['views']} views x {len(data.y_train):,} images, "
                      f"{tb['bytes'] / 2**20:.0f} MiB, {built}."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
