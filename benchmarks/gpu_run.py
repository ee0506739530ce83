"""Issue 19's GPU check as one prepared script for the device tool (15 minutes of one GPU per session; never CI).

The device takes this checkout, not ../shared, so the data travels packed. Here, once:

    python benchmarks/gpu_run.py pack        # ../shared/datasets/cifar10-jpeg -> .devdata/cifar10-jpeg.tar.gz (~20 MB)
                                             # and its first 20 images per class -> .devdata/cifar10-jpeg-smoke.tar.gz

It prints the device command to give the tool's `run` (carry [".devdata"], timeout_s 590), with this commit filled in:

    KDEXPORT_GIT_COMMIT=<commit> PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_run.py run --out $OUT

`run` unpacks the data into a temporary folder. First a smoke run: steps 1 and 2 on the 20-images-per-class
subset for one epoch (--set teacher_epochs=1 --set train.epochs=1 --set bench_iters=5; results thrown away). A
CUDA-only fault (a tensor left on the wrong device, say) shows there within a minute, and the real steps are then
skipped, so the session keeps most of its device time for a mended rerun (--no-smoke skips it). Then it runs each
step below through benchmarks/run_recipe.py (the recipes say device auto: CUDA there, with the training loop's own
bf16 autocast and channels_last), all of them under a fresh --workroot so that step 2 distils from the teacher
step 1 trained:

  1. cifar10-fast-teacher-wide-long       the strong teacher (fastcifar:1.5, 19 epochs) and its TTA accuracies
  2. cifar10-fast-teacher-students-best   fastcifar:0.25 alone and distilled from it, 3 seeds, exported, benchmarked
  3. cifar10-resnet50-resnet18-cifar-stem-gpu   the seed's best ResNet50 -> ResNet18 cell, time permitting

--steps picks some (e.g. --steps 3: the one step whose results are not yet in benchmarks/results/gpu/; 2 needs 1);
the smoke run then covers those of them it has (none for --steps 3, whose CUDA road trained to the end on an H200).

Each step runs as a subprocess bounded by what is left of --budget-s (default 540 s, the smoke run included, so
that a session's 15 minutes hold the machine's start, the transfers and the idle wait after it); one still running
at the budget is stopped and recorded so, and a step is not started with less than its minimum left. Into --out go
each finished step's NAME.json and NAME.md (stamped with the GPU), gpu_run.json (every step's status and seconds,
the smoke run's too, the environment) and gpu_run.log (all output, the smoke run's first): 8 files, the device's
limit. Back here, copy them into benchmarks/results/gpu/.

A dry run of the same road on the CPU, on a small subset and one epoch:

    python benchmarks/gpu_run.py pack --per-class 20 --dest /tmp/small.tar.gz
    python benchmarks/gpu_run.py run --archive /tmp/small.tar.gz --out /tmp/gpu-dry --allow-cpu --no-smoke \\
        --set teacher_epochs=1 --set train.epochs=1 --set bench_iters=5
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARCHIVE = ROOT / ".devdata" / "cifar10-jpeg.tar.gz"
SMOKE_ARCHIVE = ROOT / ".devdata" / "cifar10-jpeg-smoke.tar.gz"
SMOKE_PER_CLASS = 20
SOURCE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
DATA_NAME = "cifar10-jpeg"

# (recipe, least seconds worth starting it with)
STEPS: tuple[tuple[str, float], ...] = (
    ("cifar10-fast-teacher-wide-long", 60.0),
    ("cifar10-fast-teacher-students-best", 60.0),
    ("cifar10-resnet50-resnet18-cifar-stem-gpu", 150.0),
)
# the smoke run: the fastcifar steps (the targets), one epoch on the subset, within SMOKE_BUDGET_S
SMOKE_STEPS = tuple((name, 0.0) for name, _ in STEPS[:2])
SMOKE_SETS = ["teacher_epochs=1", "train.epochs=1", "bench_iters=5"]
SMOKE_BUDGET_S = 150.0


def pack(src: Path, dest: Path, per_class: int | None = None) -> tuple[Path, int]:
    """``src``'s train/ and test/ class folders as one gzipped tar under the top folder ``cifar10-jpeg``; with
    ``per_class``, only the first that many files (sorted by name) of each class folder. Returns (dest, files)."""
    splits = [src / s for s in ("train", "test")]
    if not all(s.is_dir() for s in splits):
        raise SystemExit(f"{src} is not an ImageFolder with train/ and test/ (see ../shared/datasets/README.md)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    count = 0
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        for split in splits:
            for cls in sorted(p for p in split.iterdir() if p.is_dir()):
                files = sorted(p for p in cls.iterdir() if p.is_file())
                for f in files[:per_class] if per_class else files:
                    tar.add(f, arcname=f"{DATA_NAME}/{split.name}/{cls.name}/{f.name}")
                    count += 1
    os.replace(partial, dest)
    return dest, count


def unpack(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` (as written by :func:`pack`) into ``dest``; returns the dataset folder."""
    if not archive.exists():
        raise SystemExit(f"no {archive}: run `python benchmarks/gpu_run.py pack` here first and carry .devdata")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / DATA_NAME


def _run_bounded(cmd: list[str], log, timeout: float) -> int | None:
    """Run ``cmd`` with its output appended to ``log``; its exit code, or None when stopped at ``timeout``."""
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its whole process group: no stray worker keeps the GPU
        proc.wait()
        return None


def run_steps(steps, data_dir: Path, out: Path, workroot: Path, budget_s: float, sets: list[str], log,
              python: str = sys.executable, clock=time.monotonic, tag: str = "") -> list[dict]:
    """Run each (recipe, least seconds) of ``steps`` through run_recipe.py within ``budget_s`` in all."""
    t0 = clock()
    records = []
    for name, least in steps:
        left = budget_s - (clock() - t0)
        rec = {"recipe": name}
        if left < least:
            rec.update(status="skipped", reason=f"{left:.0f} s left of the budget, under this step's {least:.0f} s")
        else:
            cmd = [python, str(HERE / "run_recipe.py"), name, "--data-dir", str(data_dir), "--workroot", str(workroot),
                   "--results-dir", str(out), *(a for s in sets for a in ("--set", s))]
            log.write(f"\n===== {tag}{name}: {' '.join(cmd)}\n")
            log.flush()
            t = clock()
            rc = _run_bounded(cmd, log, left)
            rec["seconds"] = round(clock() - t, 1)
            if rc is None:
                rec.update(status="stopped", reason=f"still running when the budget ({budget_s:.0f} s) ran out")
            else:
                rec["status"] = "done" if rc == 0 else f"failed (exit {rc})"
        records.append(rec)
        print(f"gpu_run: {tag}{name}: {rec['status']}" + (f" in {rec['seconds']:.0f} s" if "seconds" in rec else "")
              + (f" ({rec['reason']})" if "reason" in rec else ""), flush=True)
    return records


def select_steps(spec: str | None) -> list[int]:
    """``--steps``: comma-separated 1-based step numbers (all when None), in order. Step 2 distils from the
    teacher step 1 trains in the same workroot, so 2 without 1 is refused."""
    if spec is None:
        return list(range(1, len(STEPS) + 1))
    try:
        chosen = sorted({int(p) for p in spec.split(",") if p.strip()})
    except ValueError:
        chosen = []
    if not chosen or not all(1 <= k <= len(STEPS) for k in chosen):
        raise SystemExit(f"gpu_run: --steps takes step numbers 1-{len(STEPS)} separated by commas, not {spec!r}")
    if 2 in chosen and 1 not in chosen:
        raise SystemExit("gpu_run: step 2 distils from the teacher step 1 trains: --steps 2 needs 1 as well")
    return chosen


def smoke_then_steps(data: Path, smoke_data: Path | None, out: Path, tmp: Path, budget_s: float, sets: list[str],
                     log, python: str = sys.executable, clock=time.monotonic, chosen: list[int] | None = None) -> dict:
    """The smoke run (when ``smoke_data``, of the ``chosen`` steps (1-based; all when None) it covers), then, only
    if every smoke step passed, the chosen steps with what is left of ``budget_s``. Returns {"smoke": records (when
    run), "steps": records}."""
    t0 = clock()
    chosen = chosen or select_steps(None)
    steps = [STEPS[k - 1] for k in chosen]
    smoke_steps = [st for st in SMOKE_STEPS if st[0] in {name for name, _ in steps}]
    result: dict = {}
    if smoke_data is not None and smoke_steps:
        result["smoke"] = run_steps(smoke_steps, smoke_data, tmp / "smoke-results", tmp / "smoke-work",
                                    min(SMOKE_BUDGET_S, budget_s), SMOKE_SETS + sets, log, python, clock, "smoke ")
        if any(r["status"] != "done" for r in result["smoke"]):
            result["steps"] = [{"recipe": name, "status": "skipped", "reason": "the smoke run did not pass"}
                               for name, _ in steps]
            return result
    result["steps"] = run_steps(steps, data, out, tmp / "work", budget_s - (clock() - t0), sets, log, python, clock)
    return result


def _device_command() -> str:
    from kdexport.envinfo import git_commit

    commit = git_commit() or "unknown"
    return (f"KDEXPORT_GIT_COMMIT={commit} PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_run.py run "
            f"--out $OUT")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack the CIFAR-10 JPEG copy for the device")
    p.add_argument("--src", type=Path, default=SOURCE)
    p.add_argument("--dest", type=Path, default=ARCHIVE)
    p.add_argument("--per-class", type=int, default=None, help="only this many images per class and split")
    r = sub.add_parser("run", help="on the GPU machine: unpack and run the steps")
    r.add_argument("--out", type=Path, required=True, help="where results, gpu_run.json and gpu_run.log go")
    r.add_argument("--archive", type=Path, default=ARCHIVE)
    r.add_argument("--smoke-archive", type=Path, default=SMOKE_ARCHIVE)
    r.add_argument("--no-smoke", action="store_true", help="skip the smoke run")
    r.add_argument("--budget-s", type=float, default=540.0, help="seconds for all steps together, the smoke run's too")
    r.add_argument("--steps", default=None, metavar="K[,K...]",
                   help="only these steps (1-based; all by default), e.g. 3 when 1 and 2 have results already")
    r.add_argument("--allow-cpu", action="store_true", help="a dry run without CUDA")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to every step's run_recipe.py (a dry run's shorter schedule)")
    args = ap.parse_args()

    if args.cmd == "pack":
        dest, count = pack(args.src, args.dest, args.per_class)
        print(f"packed {count} images into {dest} ({dest.stat().st_size / 2**20:.1f} MiB)")
        if dest.resolve() == ARCHIVE.resolve():
            smoke, n = pack(args.src, SMOKE_ARCHIVE, SMOKE_PER_CLASS)
            print(f"packed {n} images into {smoke} (the smoke run's)")
            print(f'device tool run: carry [".devdata"], timeout_s 590, command:\n  {_device_command()}')
        return

    import torch

    from kdexport.envinfo import environment, now_iso
    from kdexport.files import atomic_write_json

    chosen = select_steps(args.steps)
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("gpu_run: no CUDA device here (--allow-cpu for a dry run on the CPU)")
    report = {"created": now_iso(), "environment": environment(), "budget_s": args.budget_s, "sets": args.sets,
              "steps_chosen": chosen}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        data = unpack(args.archive, Path(tmp))  # a missing archive stops here, before --out is touched
        smoke = None if args.no_smoke else unpack(args.smoke_archive, Path(tmp) / "smoke")
        report["unpack_seconds"] = round(time.monotonic() - t0, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "gpu_run.log", "w") as log:
            report.update(smoke_then_steps(data, smoke, args.out, Path(tmp), args.budget_s - report["unpack_seconds"],
                                           args.sets, log, chosen=chosen))
    report["wall_seconds"] = round(time.monotonic() - t0, 1)
    atomic_write_json(args.out / "gpu_run.json", report)
    print(f"gpu_run: {report['wall_seconds']:.0f} s in all; results in {args.out}")
    if any(s["status"] != "done" for s in report.get("smoke", [])) or any(
            s["status"].startswith("failed") for s in report["steps"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
