"""Distilling on unlabeled images (issue 46), a pilot on MNIST: few labels, many unlabeled images, a trained
teacher. Every student takes the same schedule and step count; mean +/- sample std over seeds.

Plan (declared before running; one run, no reruns):

- Data: MNIST (../shared/datasets), 60,000 training images; the labels of ``--fractions`` of each class kept
  (seeded by the run's seed, stratified), the rest unlabeled; the 10,000 test images labeled, for measurement.
- Outside teacher: ``--teacher`` (mlp:1200,1200, dropout 0.5, shift2 augmentation) trained once on *all* labels
  (seed 0, ``--teacher-epochs``), then used as a kdexport checkpoint by every run (the situation "a good teacher,
  few labels").
- For every fraction and seed (``--seeds``): one ``distill-export`` with that teacher: the baseline (labeled images
  only, repeated to the same steps), the pseudo-label student (labels + the teacher's top-1) and the distilled
  student (labels + the teacher's outputs; the unlabeled images through the soft term only); ``--student``,
  ``--epochs``, Adam 1e-3 cosine, batch 128, T = 4, beta = 0.9.
- Fraction 0 (no labels at all): the pseudo-label and distilled students only.
- Fraction 1 (all labels): the reference distilled student.
- ``--teacher-here F``: the same at fraction F with the teacher trained *here on those labels only* (no outside
  teacher: semi-supervised learning from F of the labels).

Writes benchmarks/results/bench_unlabeled.json and .md.

    python benchmarks/bench_unlabeled.py [--fractions 0,0.01,0.1,1] [--seeds 0,1,2] [--teacher-here 0.01]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from kdexport.config import KDConfig, RunConfig, TrainConfig
from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.pipeline import distill_export, teacher_only

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROLES = ("baseline", "pseudo_label", "student")


def config(args, out: Path, *, fraction: float, seed: int, teacher_checkpoint: str | None) -> RunConfig:
    return RunConfig(dataset="mnist", data_dir=args.data_dir, download=False, teacher=args.teacher,
                     student=args.student, teacher_dropout=0.5, teacher_augment="shift2", augment="none",
                     teacher_epochs=args.teacher_epochs, teacher_checkpoint=teacher_checkpoint,
                     labels_fraction=fraction, kd=KDConfig(temperature=4.0, soft_weight=0.9),
                     train=TrainConfig(epochs=args.epochs, batch_size=128, optimizer="adam", lr=1e-3,
                                       scheduler="cosine", seed=seed),
                     bench_iters=10, bench_rounds=2, out=str(out), overwrite=True)


def run(args, tmp: Path, name: str, fraction: float, seed: int, teacher: str | None) -> dict:
    print(f"{name}: fraction {fraction:g}, seed {seed}", flush=True)
    report = distill_export(config(args, tmp / f"{name}-{fraction:g}-{seed}", fraction=fraction, seed=seed,
                                   teacher_checkpoint=teacher))
    return job_row(report, name, fraction, seed)


def job_row(report: dict, name: str, fraction: float, seed: int) -> dict:
    """One run's numbers: counts, the teacher's and each student's test accuracy, seconds and agreement."""
    lab = report.get("labels") or {}
    m = report["models"]
    return {"fraction": fraction, "seed": seed, "teacher": name,
            "labeled": lab.get("labeled", report["dataset"]["train_size"]), "unlabeled": lab.get("unlabeled", 0),
            "teacher_accuracy": m["teacher"]["accuracy_onnx"],
            "accuracy": {r: m[r]["accuracy_onnx"] for r in ROLES if r in m},
            "train_seconds": {r: m[r]["train_seconds"] for r in ROLES if r in m},
            "agreement_with_teacher_on_unlabeled": lab.get("agreement_with_teacher_on_unlabeled")}


def stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarize(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["teacher"], r["fraction"]), []).append(r)
    rows = []
    for (teacher, fraction), rs in groups.items():
        row = {"teacher": teacher, "fraction": fraction, "labeled": rs[0]["labeled"], "unlabeled": rs[0]["unlabeled"],
               "seeds": [r["seed"] for r in rs], "teacher_accuracy": stats([r["teacher_accuracy"] for r in rs])}
        for role in ROLES:
            if all(role in r["accuracy"] for r in rs):
                row[role] = stats([r["accuracy"][role] for r in rs])
                row[f"{role}_seconds"] = statistics.median(r["train_seconds"][role] for r in rs)
        if "baseline_seconds" in row and "student_seconds" in row:  # same steps: the distilled epoch's cost
            row["student_cost_vs_baseline"] = row["student_seconds"] / row["baseline_seconds"]
        rows.append(row)
    return rows


def markdown(out: dict) -> str:
    def pct(s):
        return f"{s['mean'] * 100:.2f} +/- {s['std'] * 100:.2f}" if s else "-"

    lines = ["# Distilling on unlabeled images: MNIST pilot", "", stamp_markdown(out), "", out["plan"], "",
             "| teacher | labels | labeled / unlabeled | teacher % | baseline (labels only) % | pseudo-label % | "
             "distilled % | distilled - baseline | distilled - pseudo-label |", "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        d, b, p = r.get("student"), r.get("baseline"), r.get("pseudo_label")
        lines.append(f"| {r['teacher']} | {r['fraction']:g} | {r['labeled']:,} / {r['unlabeled']:,} | "
                     f"{pct(r['teacher_accuracy'])} | {pct(b)} | {pct(p)} | {pct(d)} | "
                     + (f"{(d['mean'] - b['mean']) * 100:+.2f}" if d and b else "-") + " | "
                     + (f"{(d['mean'] - p['mean']) * 100:+.2f}" if d and p else "-") + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--teacher", default="mlp:1200,1200")
    ap.add_argument("--student", default="mlp:300,100")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--fractions", default="0,0.01,0.1,1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--teacher-here", type=float, default=0.01)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_unlabeled"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_unlabeled.py")
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        tmp = Path(tmp)
        teacher = tmp / "teacher.pt"
        print("outside teacher: trained on every label", flush=True)
        t = teacher_only(config(args, tmp / "teacher-run", fraction=1.0, seed=0, teacher_checkpoint=None), teacher)
        for fraction in (float(f) for f in args.fractions.split(",")):
            for seed in seeds:
                runs.append(run(args, tmp, "outside", fraction, seed, str(teacher)))
        if args.teacher_here:
            for seed in seeds:
                runs.append(run(args, tmp, "trained here", args.teacher_here, seed, None))
    plan = (f"Teacher {args.teacher} ({args.teacher_epochs} epochs on all 60,000 labels, seed 0: "
            f"{t['teacher']['tta'][0]['accuracy'] * 100:.2f}%) or, for 'trained here', on the kept labels only; "
            f"student {args.student}, {args.epochs} epochs, Adam 1e-3 cosine, batch 128, T = 4, beta = 0.9; seeds "
            f"{seeds}; the baseline on the labeled images only (repeated to the same steps); test accuracy of the "
            "ONNX files, mean +/- sample std over seeds.")
    out = {**stamp, "plan": plan, "args": vars(args), "rows": summarize(runs), "runs": runs}
    atomic_write_json(Path(args.out).with_suffix(".json"), out)
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
