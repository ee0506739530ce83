"""What a live teacher costs per epoch (issue 19), side by side in one run: one epoch of the compact student
alone, distilled from the live teacher, and distilled from the live flip-TTA'd teacher, in fp32 and in bf16
autocast (--precision), through kdexport's one training loop with the student recipe's settings.

    python benchmarks/run_recipe.py cifar10-fast-teacher-anchor            # trains the teacher checkpoint
    python benchmarks/bench_kd_cost.py runs/recipes/cifar10-fast-teacher-anchor/checkpoints/teacher.pt

Each row is the training seconds of epoch 1 (evaluation excluded) and its ratio to the student-only epoch
of the same precision. Writes benchmarks/results/bench_kd_cost.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from kdexport.config import KDConfig, TrainConfig
from kdexport.data.datasets import load_dataset
from kdexport.distill.teacher import TTA, Distillation, LiveLogits, TorchTeacher
from kdexport.distill.train import fit
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model
from kdexport.models.checkpoint import load_model

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="the teacher (a kdexport checkpoint)")
    ap.add_argument("--student", default="fastcifar:0.25")
    ap.add_argument("--recipe", default="cifar10-fast-teacher-students", help="whose train settings to use")
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--out", default=str(HERE / "results" / "bench_kd_cost"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_kd_cost.py", usable_cores())
    recipe = json.loads((HERE / "recipes" / f"{args.recipe}.json").read_text())["config"]
    data = load_dataset("cifar10", args.data_dir, download=False)
    teacher_model, tspec, _ = load_model(args.checkpoint)
    kd = KDConfig(temperature=4.0, soft_weight=0.9)
    rows = []
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(**{**recipe["train"], "epochs": 1, "precision": precision, "seed": 0,
                             "augment": recipe["augment"]})
        base = TorchTeacher.for_data(teacher_model, data, "cpu", precision)
        for mode in ("alone", "none", "flip"):
            distill = None if mode == "alone" else Distillation(LiveLogits(TTA[mode](base)), kd)
            torch.manual_seed(0)  # the same initial student in every row
            model = build_model(ModelSpec(args.student, data.num_classes, data.input_shape))
            rec = fit(model, data, cfg, distill=distill, label=f"{precision} {mode}")[0]
            alone = next((r["train_seconds"] for r in rows if r["precision"] == precision and r["teacher"] is None),
                         rec["train_seconds"])
            rows.append({"precision": precision, "teacher": None if mode == "alone" else {"tta": mode},
                         "train_seconds": rec["train_seconds"], "ratio_to_alone": rec["train_seconds"] / alone,
                         "test_accuracy_after_1_epoch": rec["test_accuracy"]})
            print(rows[-1], flush=True)
    result = {**stamp, "teacher": {"checkpoint": args.checkpoint, "arch": tspec.arch}, "student": args.student,
              "train": recipe["train"], "augment": recipe["augment"], "kd": dataclasses.asdict(kd), "rows": rows}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [f"# What a live teacher costs: {tspec.arch} -> {args.student}, one epoch", "", stamp_markdown(result), "",
             f"One training epoch (50,000 images, batch {recipe['train']['batch_size']}, {recipe['augment']}; "
             "evaluation excluded) of the student alone and distilled from the live teacher, plain or flip-TTA'd "
             "(2 passes), with the forward passes in fp32 or bf16 autocast.", "",
             "| precision | teacher | train s | x student alone |", "|---|---|---|---|"]
    for r in rows:
        t = "none (student alone)" if r["teacher"] is None else f"live, TTA {r['teacher']['tta']}"
        lines.append(f"| {r['precision']} | {t} | {r['train_seconds']:.1f} | {r['ratio_to_alone']:.2f}x |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
