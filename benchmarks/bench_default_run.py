"""Does a feature leave the no-flag run alone? (issue 44: "the default install and the no-flag run are unchanged
in size and time"). Runs the no-flag ``kdexport distill-export`` (digits, --no-baseline-cache so both train the
same models) with this checkout and with ``--against REV`` (a git worktree of that commit, same virtual
environment), alternately, ``--runs`` times each; compares the median wall time and the run's outputs (file names
and the report's accuracies, which must be equal: training is deterministic on one machine). Also lists the core
install's requirements at both commits.

    python benchmarks/bench_default_run.py --against 65a12a8~1 [--runs 3]

Writes benchmarks/results/bench_default_run.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.files import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# The venv's editable install maps ``kdexport`` to this checkout through a meta-path finder that PYTHONPATH does not
# override: the bootstrap drops it and puts ``src`` first, then runs ``python -m kdexport ARGS``.
BOOT = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(f)]; "
        "sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'kdexport'; {what}")


def kdexport_from(src: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BOOT.format(what="runpy.run_module('kdexport', run_name='__main__')"),
                           str(src), *args], check=True, cwd=src, capture_output=True, text=True, **kw)


def one_run(src: Path, out: Path) -> dict:
    where = subprocess.run([sys.executable, "-c", BOOT.format(what="import kdexport; print(kdexport.__file__)"),
                            str(src)], cwd=src, check=True, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(src)):
        raise SystemExit(f"{src} imports kdexport from {where}: the comparison would run one code twice")
    t0 = time.perf_counter()
    kdexport_from(src, "distill-export", "--out", str(out), "--overwrite", "--no-baseline-cache")
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {"wall_seconds": wall, "accuracies": {r: m.get("accuracy_onnx") for r, m in report["models"].items()},
            "files": files, "kdexport_version": report["kdexport_version"]}


def requirements(src: Path) -> list[str]:
    return tomllib.loads((src / "pyproject.toml").read_text())["project"]["dependencies"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="the commit to compare with (a git revision)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_default_run"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_default_run.py")
    rev = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            runs = {"this": [], rev: []}
            for i in range(args.runs):
                for name, src in (("this", ROOT), (rev, old)) if i % 2 == 0 else ((rev, old), ("this", ROOT)):
                    r = one_run(src, Path(tmp) / f"{name}-{i}")
                    print(f"{name} run {i}: {r['wall_seconds']:.1f} s", flush=True)
                    runs[name].append(r)
            reqs = {"this": requirements(ROOT), rev: requirements(old)}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    med = {k: statistics.median(r["wall_seconds"] for r in v) for k, v in runs.items()}
    same_acc = all(r["accuracies"] == runs["this"][0]["accuracies"] for v in runs.values() for r in v)
    same_files = runs["this"][0]["files"] == runs[rev][0]["files"]
    out = {**stamp, "against": rev, "median_wall_seconds": med, "ratio_this_vs_against": med["this"] / med[rev],
           "same_accuracies": same_acc, "same_files": same_files, "core_requirements": reqs,
           "same_core_requirements": reqs["this"] == reqs[rev], "runs": runs}
    md = "\n".join([
        "# The no-flag run before and after", "", stamp_markdown(out), "",
        f"`kdexport distill-export --no-baseline-cache` (digits), {args.runs} runs each, alternated.", "",
        "| code | median wall s | runs (s) |", "|---|---|---|",
        *(f"| {k} | {med[k]:.1f} | " + ", ".join(f"{r['wall_seconds']:.1f}" for r in v) + " |"
          for k, v in runs.items()),
        "", f"Ratio this / {rev}: {out['ratio_this_vs_against']:.3f}. Same accuracies: {same_acc}. Same files: "
        f"{same_files}. Same core requirements: {out['same_core_requirements']}.", ""])
    atomic_write_json(Path(args.out).with_suffix(".json"), out)
    atomic_write_text(Path(args.out).with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
