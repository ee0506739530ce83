"""How fast does the CLI answer ``--help`` and ``--version``? (issue 43: at most 0.5 s each, wall clock.)

Each command line is run as a fresh process (the ``kdexport`` console script, as a user types it), ``--runs``
times, in interleaved rounds (every command once per round, so a busy moment hits all of them alike); the
median wall time per command is reported with its min and max. Beside them, in the same rounds: the Python
interpreter alone (``python -c pass``) and ``import torch``, the floor and the cost the CLI no longer pays. With
``--compare-ref REF`` the same help commands of an older commit (extracted with ``git archive``, run as
``python -m kdexport`` from that copy) join the rounds, so the before/after ratio comes from one run on one
machine.

    python benchmarks/bench_cli.py [--runs 21] [--compare-ref 522de73]

Writes benchmarks/results/bench_cli.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.files import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_S = 0.5
COMMANDS = ["--help", "--version", "distill-export --help", "sweep --help", "quantize --help", "bench --help",
            "predict --help", "check --help", "package --help", "verify --help", "ensemble --help", "select --help",
            "cache list --help"]


def wall(argv: list[str], cwd: Path | None = None) -> float:
    """Seconds from starting ``argv`` to its exit (its output discarded); a failing command stops the benchmark."""
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "COLUMNS": "120"})
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[:300]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21, help="rounds: each command runs once per round")
    ap.add_argument("--compare-ref", default=None, help="a git commit whose help commands join the rounds")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_cli"))
    args = ap.parse_args()
    script = shutil.which("kdexport", path=str(Path(sys.executable).parent)) or shutil.which("kdexport")
    if script is None:
        raise SystemExit("no kdexport console script next to this Python: pip install -e . first")
    stamp = result_stamp("benchmarks/bench_cli.py")
    lines = {f"kdexport {c}": ([script, *c.split()], None) for c in COMMANDS}
    lines["python -c pass"] = ([sys.executable, "-c", "pass"], None)
    lines["python -c 'import torch'"] = ([sys.executable, "-c", "import torch"], None)
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare_ref:
            old = Path(tmp) / "old"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare_ref, "kdexport"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            for c in ("--help", "--version", "distill-export --help"):
                lines[f"{args.compare_ref}: kdexport {c}"] = ([sys.executable, "-m", "kdexport", *c.split()], old)
        for argv, cwd in lines.values():  # warm-up: the page cache holds every file afterwards
            wall(argv, cwd)
        times: dict[str, list[float]] = {name: [] for name in lines}
        for r in range(args.runs):
            for name, (argv, cwd) in lines.items():
                times[name].append(wall(argv, cwd))
            print(f"round {r + 1}/{args.runs}: kdexport --help {times['kdexport --help'][-1]:.3f} s", flush=True)
    rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs": len(t)}
            for name, t in times.items()}
    cli = {n: r for n, r in rows.items() if n.startswith("kdexport ")}
    result = {**stamp, "runs": args.runs, "target_s": TARGET_S, "compare_ref": args.compare_ref, "commands": rows,
              "slowest_median_s": max(r["median_s"] for r in cli.values()),
              "all_within_target": all(r["median_s"] <= TARGET_S for r in cli.values())}
    md = ["# kdexport's CLI: time to answer --help and --version", "", stamp_markdown(stamp), "",
          f"Each line run {args.runs} times as a fresh process in interleaved rounds; wall seconds. Target: "
          f"{TARGET_S} s (median) for every kdexport line.", "",
          "| command | median s | min s | max s |", "|---|---|---|---|"]
    md += [f"| `{n}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} |" for n, r in rows.items()]
    md += ["", f"Slowest kdexport median: {result['slowest_median_s']:.3f} s; every one within {TARGET_S} s: "
               f"{'yes' if result['all_within_target'] else 'no'}."]
    if args.compare_ref:
        before = rows[f"{args.compare_ref}: kdexport distill-export --help"]["median_s"]
        after = rows["kdexport distill-export --help"]["median_s"]
        result["speedup_distill_export_help"] = before / after
        md.append(f"`distill-export --help`: {before:.2f} s at {args.compare_ref}, {after:.2f} s now "
                  f"({before / after:.1f}x faster, same machine, same rounds).")
    atomic_write_json(Path(args.out).with_suffix(".json"), result)
    atomic_write_text(Path(args.out).with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
