"""What each trained teacher hands its students: its soft targets on the training images, beside the KD gain its
students got. For every teacher (as the students saw it: its --teacher-tta, bf16), over the 50,000 training images
(unaugmented) and the test split: accuracy, the mean probability of the true class at T=1 and at T=4, and the
mean entropy of the T=4 targets as a fraction of log(classes) (1 = uniform). The KD gain (best cell's mean minus
the baseline's mean, 3 seeds) is read from the sweep result that used the teacher.

    python benchmarks/teacher_targets.py            # the issue's teachers (TEACHERS below; their recipes first)

Each argument, if given, is LABEL|CHECKPOINT|TTA|RESULT (RESULT: a sweep's name in benchmarks/results/). Writes
benchmarks/results/teacher_targets.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from kdexport.allocator import prefer_kept
from kdexport.data.datasets import load_dataset
from kdexport.distill.teacher import TorchTeacher, logits_over, with_tta
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.checkpoint import load_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_R = "runs/recipes/cifar10-fast-teacher-"
TEACHERS = (  # every fastcifar teacher whose fastcifar:0.25 students were measured (T=4, beta=0.9, 3 seeds)
    f"fastcifar, 35 ep|{_R}anchor/checkpoints/teacher.pt|none|cifar10-fast-teacher-students",
    f"fastcifar, 35 ep|{_R}anchor/checkpoints/teacher.pt|flip|cifar10-fast-teacher-losses",
    f"fastcifar:1.5, 16 ep|{_R}wide/teacher.pt|none|cifar10-fast-teacher-wide",
    f"fastcifar:1.5, 19 ep|{_R}wide-long/teacher.pt|flip|cifar10-fast-teacher-students-best",
    f"ensemble:3xfastcifar, 3 x 12 ep|{_R}ensemble/teacher.pt|flip|cifar10-fast-teacher-ensemble",
)


def target_stats(logits: torch.Tensor, y: torch.Tensor, temperature: float = 4.0) -> dict[str, float]:
    """Accuracy, mean true-class probability at T=1 and at ``temperature``, and the mean entropy of the softened
    targets over log(classes)."""
    p1 = logits.softmax(1)
    pt = (logits / temperature).softmax(1)
    entropy = -(pt * pt.clamp_min(1e-12).log()).sum(1) / math.log(logits.shape[1])
    rows = torch.arange(len(y))
    return {"accuracy": float((logits.argmax(1) == y).float().mean()),
            "p_true_t1": float(p1[rows, y].mean()), f"p_true_t{temperature:g}": float(pt[rows, y].mean()),
            f"entropy_t{temperature:g}": float(entropy.mean())}


def kd_gain(result: str) -> dict[str, float]:
    """The sweep's baseline and best cell (means over seeds) and the gain in points."""
    r = json.loads((HERE / "results" / f"{result}.json").read_text())
    return {"cell": r["best"]["cell"], "baseline": r["baseline"]["mean"], "distilled": r["best"]["mean"],
            "gain_points": r["best"]["kd_gain_points"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teachers", nargs="*", default=list(TEACHERS), help="LABEL|CHECKPOINT|TTA|RESULT")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--out", default=str(HERE / "results" / "teacher_targets"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/teacher_targets.py", usable_cores())
    data = load_dataset("cifar10", args.data_dir, download=False)
    rows = []
    for spec in args.teachers:
        label, ckpt, tta, result = spec.split("|")
        model, arch, _ = load_model(ROOT / ckpt)
        teacher = with_tta(TorchTeacher.for_data(model, data, "cpu", "bf16"), tta)
        row = {"label": label, "arch": arch.arch, "checkpoint": ckpt, "tta": tta, "result": result,
               "train": target_stats(logits_over(teacher, data.x_train), data.y_train),
               "test": target_stats(logits_over(teacher, data.x_test), data.y_test), **kd_gain(result)}
        rows.append(row)
        print(row, flush=True)
    result = {**stamp, "data": data.info(), "temperature": 4.0, "precision": "bf16", "rows": rows}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = ["# What each teacher hands its students", "", stamp_markdown(result), "",
             "Each teacher as its students saw it (its --teacher-tta, bf16). Train: the 50,000 training images, "
             "unaugmented. p(true): mean probability of the true class; entropy: of the T=4 targets, as a fraction "
             "of log(10). KD gain: fastcifar:0.25, 10 epochs, T=4, beta=0.9, 3 seeds, from the named sweep.", "",
             "| teacher | TTA | test acc | train acc | train p(true) T=1 | train p(true) T=4 | train entropy T=4 | "
             "test p(true) T=4 | KD gain | sweep |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr, te = r["train"], r["test"]
        lines.append(f"| {r['label']} | {r['tta']} | {te['accuracy'] * 100:.2f}% | {tr['accuracy'] * 100:.2f}% | "
                     f"{tr['p_true_t1']:.3f} | {tr['p_true_t4']:.3f} | {tr['entropy_t4']:.3f} | "
                     f"{te['p_true_t4']:.3f} | {r['gain_points']:+.2f} | `{r['result']}` |")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
