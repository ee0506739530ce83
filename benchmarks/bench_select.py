"""Student selection for latency budgets (default: CIFAR-10 at 32x32), one thread, batch 1.

Measures every default candidate once (exactly as ``kdexport select`` does), then for each budget
(0.5, 1 and 3 ms by default) records the choice and the next two candidates that fit (by FLOPs), and the
selection's own cost. With ``--distill-epochs N`` (and a teacher), it also distils the choice and the two
runners-up under the same schedule, times each shipped file again, and records whether the most capacity
under budget was the most accurate choice.

    python benchmarks/bench_select.py                                   # selection only (about a minute)
    python benchmarks/bench_select.py --distill-epochs 5 --teacher-checkpoint runs/x/checkpoints/teacher.pt \\
        --teacher resnet50

Writes benchmarks/results/bench_select.json and .md (``bench_select_DATASET.*`` for another ``--dataset``).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from kdexport.allocator import prefer_kept
from kdexport.bench.select import Candidate, choose, default_candidates, prepare_candidate, time_candidates
from kdexport.config import LatencyBudget, config_diff, parse_latency_budget
from kdexport.data.datasets import load_dataset
from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.errors import ConfigError, GateError
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.runs import RESUME_IGNORES

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def ranked_fitting(candidates, budget: LatencyBudget, margin: float) -> list[str]:
    cands = copy.deepcopy(candidates)
    try:
        choose(cands, budget, margin)
    except ConfigError:
        return []
    return [c.arch for c in sorted((c for c in cands if c.fits), key=lambda c: -(c.flops or 0))]


def distill(arch: str, budget: str | None, args, out: Path) -> dict:
    """distill-export ARCH (baseline and distilled student under the same schedule); with ``budget``, the
    pipeline times the shipped file again against it. A finished run with the same options is reused."""
    from kdexport.config import RunConfig, TrainConfig
    from kdexport.pipeline import distill_export

    cfg = RunConfig(dataset=args.dataset, data_dir=args.data_dir, teacher=args.teacher,
                    teacher_checkpoint=args.teacher_checkpoint, teacher_epochs=args.teacher_epochs,
                    student=arch, cifar_stem=args.cifar_stem, latency_budget=budget,
                    budget_margin=args.margin, train=TrainConfig(epochs=args.distill_epochs, batch_size=128,
                                                                 optimizer="sgd", lr=0.05, weight_decay=5e-4,
                                                                 scheduler="onecycle"),
                    bench_iters=200, out=str(out / arch.replace(":", "_")), overwrite=True)
    report = Path(cfg.out) / "report.json"
    if report.exists():
        r = json.loads(report.read_text())
        if not _changed(r.get("config") or {}, json.loads(json.dumps(cfg.to_dict()))):
            print(f"{arch}: reusing {report}", flush=True)
            return _summary(r)
    t0 = time.perf_counter()
    try:
        r = distill_export(cfg)
    except GateError:
        r = json.loads(report.read_text())  # a missed budget fails the command with the report kept
    return {**_summary(r), "wall_s": time.perf_counter() - t0}


def _changed(old: dict, new: dict) -> list[str]:
    """Options that differ from a finished run's, ignoring options newer than that run (absent from its
    record) and those that do not change what is trained (``RESUME_IGNORES``: output, benchmark, parity)."""
    def present(d: dict, dotted: str) -> bool:
        for k in dotted.split("."):
            if not isinstance(d, dict) or k not in d:
                return False
            d = d[k]
        return True

    return [k for k in config_diff(old, new) if present(old, k) and k.split(".")[0] not in RESUME_IGNORES]


def _summary(r: dict) -> dict:
    m = r["models"]
    return {"student_accuracy": m["student"]["accuracy_onnx"], "baseline_accuracy": m["baseline"]["accuracy_onnx"],
            "teacher_accuracy": m["teacher"]["accuracy_onnx"], "kd_gain_points": r["kd_gain_points"],
            "budget_check": r.get("budget")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=None, help="default: ../shared/datasets/cifar10-jpeg for cifar10, "
                                                     "../shared/datasets otherwise")
    ap.add_argument("--budgets", default="0.5ms,1ms,3ms")
    ap.add_argument("--margin", type=float, default=0.1)
    ap.add_argument("--cifar-stem", action="store_true")
    ap.add_argument("--distill-epochs", type=int, default=0)
    ap.add_argument("--teacher", default="resnet18")
    ap.add_argument("--teacher-checkpoint", default=None,
                    help="a trained teacher; without it, the first distillation trains --teacher for "
                         "--teacher-epochs and the others reuse its checkpoint")
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--remeasure", action="store_true", help="measure the candidates again on a rerun")
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_select.py", 1)
    shared = ROOT.parent / "shared" / "datasets"
    args.data_dir = args.data_dir or str(shared / "cifar10-jpeg" if args.dataset == "cifar10" else shared)
    name = "bench_select" if args.dataset == "cifar10" else f"bench_select_{args.dataset}"
    data = load_dataset(args.dataset, args.data_dir, download=False)
    out = ROOT / "runs" / name
    saved = out / "candidates.json"  # a rerun (to finish the distillations) keeps the measured choice
    if args.distill_epochs and saved.exists() and not args.remeasure:
        kept = json.loads(saved.read_text())
        cands, select_seconds = [Candidate(**c) for c in kept["candidates"]], kept["select_seconds"]
        measured_stamp = kept["stamp"]
        print(f"reusing the candidate measurement of {measured_stamp['created']} in {saved} (--remeasure to redo it)")
    else:
        measured_stamp = stamp
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:  # what kdexport select does, once for every budget
            built = [prepare_candidate(a, data, cifar_stem=args.cifar_stem, int8=None, tmp=Path(tmp))
                     for a in default_candidates(data.input_shape)]
            time_candidates(built, data, threads=1, batch=1)
            cands = [c for c, _ in built]
        select_seconds = time.perf_counter() - t0
        if args.distill_epochs:
            atomic_write_json(saved, {"stamp": stamp, "select_seconds": select_seconds,
                                      "candidates": [c.__dict__ for c in cands]})
    budgets = {}
    for text in args.budgets.split(","):
        b = parse_latency_budget(text)
        order = ranked_fitting(cands, b, args.margin)
        budgets[text] = {"budget_ms": b.ms, "chosen": order[0] if order else None, "next": order[1:3]}
    result = {**stamp, "candidates_measured": measured_stamp, "select_seconds": select_seconds,
              "margin": args.margin, "cifar_stem": args.cifar_stem,
              "candidates": [c.__dict__ for c in cands], "budgets": budgets, "distilled": None}
    teacher_epochs = args.teacher_epochs if args.teacher_checkpoint is None else None
    if args.distill_epochs:
        done: dict[str, dict] = {}  # one distillation per architecture (a runner-up of two budgets is reused)
        result["distilled"] = {}
        for text, v in budgets.items():
            result["distilled"][text] = {}
            for arch in (a for a in [v["chosen"], *v["next"]] if a):
                key = arch
                if key not in done:
                    done[key] = distill(arch, text, args, out)
                    if args.teacher_checkpoint is None:  # the teacher trained by the first run serves the rest
                        args.teacher_checkpoint = str(out / arch.replace(":", "_") / "checkpoints" / "teacher.pt")
                        args.teacher_epochs = None
                result["distilled"][text][arch] = done[key]
    atomic_write_json(HERE / "results" / f"{name}.json", result)
    lines = [f"# Student selection for a latency budget ({data.name}, input {list(data.input_shape)}, 1 thread, "
             "batch 1)", "",
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
    if args.distill_epochs:
        any_run = next(iter(next(iter(result["distilled"].values())).values()))
        lines += ["", f"## Distilled: the choice and the next two, {args.distill_epochs} epochs each", "",
                  f"Teacher {args.teacher} ({any_run['teacher_accuracy'] * 100:.2f}%), trained by the first run "
                  f"({teacher_epochs or 'given'} epochs) and reused by the others. "
                  "Every student and its baseline: SGD, lr 0.05, one-cycle, batch 128, weight decay 5e-4, "
                  "the data's default augmentation (crop-flip for RGB); T = 4, beta = 0.5. Re-timed: the "
                  "shipped FP32 file timed again after training "
                  "(p50, 1 thread, batch 1) against the budget it was chosen for.", "",
                  "| budget | student | FLOPs | distilled acc | baseline acc | KD gain | re-timed p50 ms | met |",
                  "|---|---|---|---|---|---|---|---|"]
        flops = {c.arch: c.flops for c in cands}
        for text, runs in result["distilled"].items():
            for arch, r in runs.items():
                bc = r["budget_check"] or {}
                lines.append(f"| {text} | {arch} | {flops.get(arch, 0):,} | {r['student_accuracy'] * 100:.2f}% | "
                             f"{r['baseline_accuracy'] * 100:.2f}% | {r['kd_gain_points']:+.2f} | "
                             f"{bc.get('p50_ms', float('nan')):.3f} (vs {bc.get('latency_budget_ms', 0):g} ms) | "
                             f"{'yes' if bc.get('met') else 'NO'} |")
        for text, runs in result["distilled"].items():
            best = max(runs, key=lambda a: runs[a]["student_accuracy"])
            chosen = budgets[text]["chosen"]
            lines.append("")
            lines.append(f"- {text}: the most capacity under budget ({chosen}) "
                         + ("was the most accurate distilled student." if best == chosen else
                            f"was not the most accurate: {best} was, by "
                            f"{(runs[best]['student_accuracy'] - runs[chosen]['student_accuracy']) * 100:.2f} points."))
    else:
        lines += ["", "Not distilled in this run (`--distill-epochs 0`): whether the most capacity under budget "
                  "was the most accurate choice is not measured here."]
    atomic_write_text(HERE / "results" / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
