"""Student selection for latency budgets on CIFAR-10 at 32x32, one thread, batch 1.

Measures every default candidate once (exactly as ``kdexport select`` does), then for each budget
(0.5, 1 and 3 ms by default) records the choice and the next two candidates that fit (by FLOPs), and the
selection's own cost. With ``--distill-epochs N`` (and a teacher), it also distils the choice and the two
runners-up under the same schedule, times each shipped file again, and records whether the most capacity
under budget was the most accurate choice.

    python benchmarks/bench_select.py                                   # selection only (about a minute)
    python benchmarks/bench_select.py --distill-epochs 5 --teacher-checkpoint runs/x/checkpoints/teacher.pt \\
        --teacher resnet50

Writes benchmarks/results/bench_select.json and .md.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from kdexport.bench.select import LatencyBudget, choose, default_candidates, measure, parse_latency_budget
from kdexport.data.datasets import load_dataset
from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.errors import ConfigError
from kdexport.files import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def ranked_fitting(candidates, budget: LatencyBudget, margin: float) -> list[str]:
    cands = copy.deepcopy(candidates)
    try:
        choose(cands, budget, margin)
    except ConfigError:
        return []
    return [c.arch for c in sorted((c for c in cands if c.fits), key=lambda c: -(c.flops or 0))]


def distill(arch: str, args, out: Path) -> dict:
    from kdexport.config import RunConfig, TrainConfig
    from kdexport.pipeline import distill_export

    cfg = RunConfig(dataset="cifar10", data_dir=args.data_dir, teacher=args.teacher,
                    teacher_checkpoint=args.teacher_checkpoint, student=arch, cifar_stem=args.cifar_stem,
                    latency_budget=None, train=TrainConfig(epochs=args.distill_epochs, batch_size=128,
                                                           optimizer="sgd", lr=0.05, weight_decay=5e-4,
                                                           scheduler="onecycle"),
                    bench_iters=100, out=str(out / arch), overwrite=True)
    r = distill_export(cfg)
    return {"accuracy_onnx": r["models"]["student"]["accuracy_onnx"], "kd_gain_points": r["kd_gain_points"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--budgets", default="0.5ms,1ms,3ms")
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--cifar-stem", action="store_true")
    ap.add_argument("--distill-epochs", type=int, default=0)
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--teacher-checkpoint", default=None)
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_select.py", 1)
    data = load_dataset("cifar10", args.data_dir, download=False)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # what kdexport select does, once for every budget
        cands = [measure(a, data, cifar_stem=args.cifar_stem, threads=1, batch=1, int8=None, tmp=Path(tmp))
                 for a in default_candidates(data.input_shape)]
    select_seconds = time.perf_counter() - t0
    budgets = {}
    for text in args.budgets.split(","):
        b = parse_latency_budget(text)
        order = ranked_fitting(cands, b, args.margin)
        budgets[text] = {"budget_ms": b.ms, "chosen": order[0] if order else None, "next": order[1:3]}
    result = {**stamp, "select_seconds": select_seconds, "margin": args.margin, "cifar_stem": args.cifar_stem,
              "candidates": [c.__dict__ for c in cands], "budgets": budgets, "distilled": None}
    if args.distill_epochs:
        out = ROOT / "runs" / "bench_select"
        result["distilled"] = {text: {arch: distill(arch, args, out) for arch in [v["chosen"], *v["next"]] if arch}
                               for text, v in budgets.items()}
    atomic_write_json(HERE / "results" / "bench_select.json", result)
    lines = ["# Student selection for a latency budget (CIFAR-10, 32x32, 1 thread, batch 1)", "",
             stamp_markdown(stamp), "",
             f"All {len(cands)} default candidates measured once in {select_seconds:.0f} s (export + timing, "
             "random weights), then chosen per budget: the most FLOPs whose p50 is within the budget less "
             f"{args.margin:.0%}.", "",
             "| candidate | FLOPs | ONNX bytes | p50 ms | p90 ms |", "|---|---|---|---|---|"]
    for c in sorted(cands, key=lambda c: c.p50_ms or 1e9):
        if c.p50_ms is not None:
            lines.append(f"| {c.arch} | {c.flops:,} | {c.onnx_bytes:,} | {c.p50_ms:.3f} | {c.p90_ms:.3f} |")
    lines += ["", "| budget | chosen | next two that fit |", "|---|---|---|"]
    lines += [f"| {t} | {v['chosen'] or 'none fits'} | {', '.join(v['next']) or '-'} |" for t, v in budgets.items()]
    if not args.distill_epochs:
        lines += ["", "Not distilled in this run (`--distill-epochs 0`): whether the most capacity under budget "
                  "was the most accurate choice is not measured here."]
    atomic_write_text(HERE / "results" / "bench_select.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
