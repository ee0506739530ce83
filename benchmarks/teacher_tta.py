"""A trained teacher's test accuracy under each ``--teacher-tta`` mode, in fp32 and bf16, with the time each
takes over the test split (what a live teacher costs per pass, relative to no TTA); an ensemble's members
alone as well.

    python benchmarks/run_recipe.py cifar10-fast-teacher-anchor            # trains the checkpoint
    python benchmarks/teacher_tta.py runs/recipes/cifar10-fast-teacher-anchor/checkpoints/teacher.pt \\
        --data-dir ../shared/datasets/cifar10-jpeg

Writes benchmarks/results/teacher_tta.json and .md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdexport.allocator import prefer_kept
from kdexport.data.datasets import load_dataset
from kdexport.distill.teacher import TorchTeacher, tta_accuracies
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.checkpoint import load_model

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--out", default=str(HERE / "results" / "teacher_tta"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/teacher_tta.py", usable_cores())
    model, spec, blob = load_model(args.checkpoint)
    data = load_dataset(args.dataset, args.data_dir, download=False)
    rows = []
    for precision in ("fp32", "bf16"):
        for r in tta_accuracies(TorchTeacher.for_data(model, data, "cpu", precision), data):
            rows.append({"precision": precision, "tta": r["tta"], "accuracy": r["accuracy"],
                         "seconds_test_split": r["seconds"]})
            print(rows[-1], flush=True)
    members = []  # an ensemble's members alone (fp32): what averaging them buys
    for k, member in enumerate(getattr(model, "members", []), 1):
        for r in tta_accuracies(TorchTeacher.for_data(member, data, "cpu", "fp32"), data, ("none", "flip")):
            members.append({"member": k, "precision": "fp32", "tta": r["tta"], "accuracy": r["accuracy"]})
            print(members[-1], flush=True)
    hist = blob.get("history") or []
    epochs = max((h["epoch"] for h in hist), default=0)
    n = len(getattr(model, "members", [])) or 1
    result = {**stamp, "checkpoint": args.checkpoint, "arch": spec.arch, "data": data.info(),
              "train_seconds": sum(h["seconds"] for h in hist), "epochs": epochs, "members": n, "rows": rows,
              "member_rows": members}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [f"# Teacher {spec.arch}: test accuracy under test-time augmentation", "", stamp_markdown(result), "",
             f"Checkpoint `{args.checkpoint}` ({f'{n} members x ' if n > 1 else ''}{epochs} epochs, "
             f"{result['train_seconds'] / 60:.1f} min of "
             f"training). Time: one pass of the TTA'd teacher over the {len(data.y_test):,} test images.", "",
             "| precision | --teacher-tta | accuracy | seconds |", "|---|---|---|---|"]
    lines += [f"| {r['precision']} | {r['tta']} | {r['accuracy'] * 100:.2f}% | {r['seconds_test_split']:.1f} |"
              for r in rows]
    if members:
        lines += ["", "Each member alone (fp32):", "", "| member | --teacher-tta | accuracy |", "|---|---|---|"]
        lines += [f"| {r['member']} | {r['tta']} | {r['accuracy'] * 100:.2f}% |" for r in members]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
