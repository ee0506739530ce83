"""A sweep as one process and as two shards on one machine (issue 48): wall time, and whether the results are the
same.

The grid: MNIST (../shared/datasets), teacher mlp:400,400, student mlp:32, 5 epochs each, T in {2, 4} x beta in
{0.5, 0.9} x seeds {0, 1}: 2 baselines + 8 distilled students = 10 units, every one trained (no baseline cache, a
fresh teacher cache). Three ways, each into a fresh --out, once (the plan, fixed before running: one run each, in
this order; the quantity is the wall time of a minutes-long job and the equality of its results):

- **1 process, 2 threads**: `kdexport sweep` as a 2-core user runs it;
- **1 process, 1 thread**: the reference the shards must equal bit for bit (same thread count);
- **2 shards, 1 thread each**: `--shard 0/2` and `--shard 1/2` started together on one --out.

This machine has 2 cores: two shards cannot go faster than the cores allow, and the teacher is trained once
before any unit can start (the other shard waits for it). What N machines give is projected, not measured, from
the measured times: the teacher's training, then the slowest shard's units (the shard owning units K, K+N, ...),
then the merge (export and timing of the best cell), for N = 1, 2, 4, 8.

    python benchmarks/bench_sweep_shards.py [--data-dir ../shared/datasets]

Writes benchmarks/results/bench_sweep_shards.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdexport.config import Grid, KDConfig
from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.sweep import shard_units, sweep_units

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRID = ["-T", "2,4", "--soft-weight", "0.5,0.9", "--seeds", "0,1"]
COMMON = ["--dataset", "mnist", "--teacher", "mlp:400,400", "--student", "mlp:32", "--epochs", "5",
          "--no-baseline-cache", *GRID]


def run(out: Path, threads: int, shards: int, data_dir: str, cache: Path) -> dict:
    """Start ``shards`` processes (1: no --shard) together on ``out``; their wall time and the sweep they wrote."""
    env = {**os.environ, "KDEXPORT_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "kdexport", "sweep", *COMMON, "--data-dir", data_dir, "--threads", str(threads),
           "--out", str(out)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd + ([] if shards == 1 else ["--shard", f"{k}/{shards}"]), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(shards)]
    logs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for p, log in zip(procs, logs):
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{log[-3000:]}")
    return {"wall_seconds": wall, "sweep": json.loads((out / "sweep.json").read_text()),
            "trained": sum(log.count(": trained, ") for log in logs),
            "teacher_trained_by": [k for k, log in enumerate(logs) if "teacher epoch 1:" in log]}


def same(a: dict, b: dict) -> bool:
    keys = ("cells", "baseline", "grid")
    return all(a[k] == b[k] for k in keys) and a["best"]["cell"] == b["best"]["cell"]


def projection(sweep: dict, wall: float) -> dict:
    """Wall time for N machines as fast as this one, from the measured unit and teacher times."""
    grid = Grid(**{k: tuple(v) for k, v in sweep["grid"].items()})
    units = sweep_units(grid, KDConfig())
    secs = {f"{u.name}-s{u.seed}": sum(e["seconds"] for e in sweep["histories"][f"{u.name}-s{u.seed}"])
            for u in units}
    teacher = sum(e["seconds"] for e in sweep["teacher"]["history"])
    units_total = sum(secs.values())
    rest = wall - teacher - units_total  # data loading, teacher logits, export and timing of the best cell
    out = {"teacher_s": teacher, "units_s": units_total, "other_s": rest, "per_unit_s": secs}
    for n in (1, 2, 4, 8):
        slowest = max(sum(secs[f"{u.name}-s{u.seed}"] for u in shard_units(units, (k, n))) for k in range(n))
        out[f"machines_{n}"] = teacher + slowest + rest
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--out", default=str(HERE / "results" / "bench_sweep_shards"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_sweep_shards.py", 2)
    ways = {"1 process, 2 threads": (2, 1), "1 process, 1 thread": (1, 1), "2 shards, 1 thread each": (1, 2)}
    results = {}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for name, (threads, shards) in ways.items():
            print(f"{name} ...", flush=True)
            results[name] = run(Path(tmp) / name.replace(" ", "-").replace(",", ""), threads, shards, args.data_dir,
                                Path(tmp) / f"cache-{threads}-{shards}")
            print(f"  {results[name]['wall_seconds']:.1f} s, {results[name]['trained']} units trained", flush=True)
    ref = results["1 process, 1 thread"]["sweep"]
    rows = []
    for name, r in results.items():
        s = r["sweep"]
        rows.append({"way": name, "wall_seconds": r["wall_seconds"], "units_trained": r["trained"],
                     "teacher_trained_by": r["teacher_trained_by"], "best_cell": s["best"]["cell"],
                     "best_mean": s["best"]["mean"], "baseline_mean": s["baseline"]["mean"],
                     "kd_gain_points": s["best"]["kd_gain_points"], "same_as_1_thread_process": same(s, ref)})
    proj = projection(ref, results["1 process, 1 thread"]["wall_seconds"])
    out = {**stamp, "grid": ref["grid"], "units": len(proj["per_unit_s"]), "rows": rows, "projection_1_thread": proj,
           "cells": ref["cells"], "baseline": ref["baseline"]}
    atomic_write_json(Path(args.out).with_suffix(".json"), out)
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    p = out["projection_1_thread"]
    lines = ["# A sweep as one process and as two shards", "", stamp_markdown(out), "",
             "MNIST, teacher mlp:400,400 -> student mlp:32, 5 epochs, T {2, 4} x beta {0.5, 0.9} x seeds {0, 1}: "
             f"{out['units']} units, each trained once per way (no caches). One run per way.", "",
             "| way | wall s | units trained | teacher trained by | best cell | best | baseline | KD gain | "
             "results equal to 1 process, 1 thread |", "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['way']} | {r['wall_seconds']:.1f} | {r['units_trained']} | "
                     f"{', '.join(map(str, r['teacher_trained_by'])) or '-'} | {r['best_cell']} | "
                     f"{r['best_mean'] * 100:.2f}% | {r['baseline_mean'] * 100:.2f}% | {r['kd_gain_points']:+.2f} | "
                     f"{'yes' if r['same_as_1_thread_process'] else 'no'} |")
    lines += ["", f"Where the single-thread process's {out['rows'][1]['wall_seconds']:.0f} s went: teacher "
              f"{p['teacher_s']:.0f} s, the {out['units']} units {p['units_s']:.0f} s, the rest (data, teacher logits, "
              f"exporting and timing the best cell) {p['other_s']:.0f} s. Projected wall time on N machines as fast as "
              "this one, one single-thread shard each (the teacher first, then the slowest shard's units, then the "
              "merge), not measured:", "", "| machines | projected wall s |", "|---|---|"]
    lines += [f"| {n} | {p[f'machines_{n}']:.0f} |" for n in (1, 2, 4, 8)]
    lines += ["", "Two cores cannot make two shards faster than the cores allow: the shards here share the machine "
              "that one 2-thread process uses alone, and the teacher (trained once, the other shard waiting) and the "
              "merge do not split at all.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
