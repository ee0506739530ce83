"""Does keeping freed memory (kdexport/allocator.py, on by default) pay for CPU training? Against glibc's defaults.

glibc's malloc maps every big tensor afresh and the kernel zero-fills each page on first touch; the CLI tells it to
keep freed memory for reuse instead (`KDEXPORT_MALLOC=system` opts out). The setting is per process, so each
measurement is a child process under one setting: one warm-up step of the model, then one timed epoch of random
CIFAR-shaped images through kdexport's training loop (`fit`, as in `bench_precision.py`), reporting its seconds,
its minor page faults and its peak resident memory. The rounds alternate the two settings for every model; the
medians give milliseconds per step and the speedup, side by side in one run on one machine.

    python benchmarks/bench_allocator.py [--models fastcifar:0.25,fastcifar,fastcifar:1.25,resnet18] [--images 8192]

Writes benchmarks/results/bench_allocator.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("system", "kept")


def child(args: argparse.Namespace) -> None:
    from bench_precision import epoch_seconds, synthetic_cifar

    from kdexport.allocator import keep_freed_memory, state

    keep_freed_memory()  # a no-op under KDEXPORT_MALLOC=system
    epoch_seconds(args.child, synthetic_cifar(args.batch), args.precision, args.batch)  # warm-up
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = epoch_seconds(args.child, synthetic_cifar(args.images), args.precision, args.batch)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"malloc": state(), "seconds": seconds, "minor_faults": usage.ru_minflt - faults,
                      "max_rss_mb": usage.ru_maxrss / 1024}))


def run_child(model: str, mode: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "KDEXPORT_MALLOC": mode}
    cmd = [sys.executable, __file__, "--child", model, "--precision", args.precision, "--images", str(args.images),
           "--batch", str(args.batch)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    rec = json.loads(out.strip().splitlines()[-1])
    if rec["malloc"] != mode:
        raise SystemExit(f"child ran with malloc {rec['malloc']!r}, asked for {mode!r}")
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fastcifar:0.25,fastcifar,fastcifar:1.25,resnet18")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--images", type=int, default=8192, help="images per timed epoch (a multiple of --batch)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_allocator"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    from bench_precision import write_result

    from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores

    stamp = result_stamp("benchmarks/bench_allocator.py", usable_cores())
    stamp["environment"]["malloc"] = "per child: see rows"
    models = args.models.split(",")
    recs: dict[tuple[str, str], list[dict]] = {(m, mode): [] for m in models for mode in MODES}
    for r in range(args.rounds):
        for m in models:
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                recs[(m, mode)].append(run_child(m, mode, args))
                print(f"round {r + 1}/{args.rounds} {m} {mode}: {recs[(m, mode)][-1]['seconds']:.1f} s", flush=True)
    steps = args.images / args.batch
    rows = []
    for m in models:
        med = {mode: statistics.median(x["seconds"] for x in recs[(m, mode)]) for mode in MODES}
        rows.append({"model": m, "runs": {mode: recs[(m, mode)] for mode in MODES},
                     "ms_per_step": {mode: 1000 * med[mode] / steps for mode in MODES},
                     "minor_faults_per_step": {mode: statistics.median(x["minor_faults"] for x in recs[(m, mode)])
                                               / steps for mode in MODES},
                     "max_rss_mb": {mode: max(x["max_rss_mb"] for x in recs[(m, mode)]) for mode in MODES},
                     "speedup": med["system"] / med["kept"]})
    result = {**stamp, "precision": args.precision, "images": args.images, "batch": args.batch,
              "rounds": args.rounds, "rows": rows}
    lines = ["# Keeping freed memory (`KDEXPORT_MALLOC=kept`, the default) vs glibc's defaults, for training",
             "", stamp_markdown(stamp), "",
             f"One child process per measurement: a warm-up step, then one timed epoch of {args.images} random "
             f"CIFAR-shaped images, batch {args.batch}, {args.precision}, SGD, shift2-flip, through kdexport's "
             f"training loop; medians of {args.rounds} rounds, the settings alternating. Page faults are the "
             "timed epoch's minor faults per step; peak RSS is the child's.", "",
             "| model | system ms/step | kept ms/step | speedup | faults/step, system | kept | peak RSS MB, system "
             "| kept |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, fl, rss = r["ms_per_step"], r["minor_faults_per_step"], r["max_rss_mb"]
        lines.append(f"| {r['model']} | {ms['system']:.0f} | {ms['kept']:.0f} | {r['speedup']:.2f}x | "
                     f"{fl['system']:,.0f} | {fl['kept']:,.0f} | {rss['system']:,.0f} | {rss['kept']:,.0f} |")
    write_result(args.out, result, lines)


if __name__ == "__main__":
    main()
