"""Data modes on 2 cores: a photo set larger than memory budget streams within a memory bound; CIFAR-10 in
memory vs streamed; and the no-flag run's peak memory before and after streaming existed.

Every measurement runs in a child process whose whole process tree (trainer and decoding workers) is
sampled every 0.25 s: peak RSS (counts shared pages once per process, an upper bound) and peak PSS (shared
pages split between processes: the memory the tree really holds).

    python benchmarks/make_photos.py --out /tmp/photos100k --train 100000 --val 2000   # ~20 GB decoded at 224 px
    python benchmarks/bench_stream.py --photos /tmp/photos100k --cifar ../shared/datasets/cifar10-jpeg \\
        --baseline-ref 82bf27f

Writes benchmarks/results/bench_stream.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# -- the child: one epoch of one student through kdexport's training loop -------------------------------------
def child_epoch(args) -> None:
    import torch

    from kdexport.config import TrainConfig
    from kdexport.data.augment import resolve_augment
    from kdexport.data.datasets import load_dataset
    from kdexport.distill.train import fit
    from kdexport.models.builders import ModelSpec, build_model

    torch.set_num_threads(args.threads or os.cpu_count() or 2)
    t0 = time.perf_counter()
    try:
        data = load_dataset(args.dataset, args.data_dir, download=False, image_size=args.image_size,
                            data_mode=args.mode, workers=args.workers)
    except TypeError:  # kdexport before data modes (--baseline-ref): everything in memory
        data = load_dataset(args.dataset, args.data_dir, download=False, image_size=args.image_size)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model = build_model(ModelSpec(args.arch, data.num_classes, data.input_shape, cifar_stem=args.cifar_stem))
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, optimizer="sgd", lr=0.05, weight_decay=5e-5,
                      scheduler="onecycle", augment=resolve_augment("auto", data), device="cpu")

    class Progress:
        def __init__(self):
            self.done, self.total, self.t = 0, 1, time.perf_counter()

        def start(self, label, total_steps):
            self.total = total_steps

        def step_n(self, n, metrics):
            self.done += n
            if self.done % 200 < n or self.done == self.total:
                rate = self.done * cfg.batch_size / (time.perf_counter() - self.t)
                print(f"  step {self.done}/{self.total} ({rate:.1f} img/s, loss {metrics['loss']:.3f})",
                      file=sys.stderr, flush=True)

        def epoch(self, record):
            pass

        def finish(self):
            pass

    hist = fit(model, data, cfg, reporter=Progress())
    r = hist[0]
    n = len(data.y_train)
    train_s = r.get("train_seconds")  # before data modes, only the epoch's time with evaluation was recorded
    wait = r.get("data_wait_seconds")
    geometry = getattr(data, "geometry", None)
    print(json.dumps({"arch": args.arch, "data_mode": getattr(data, "mode", "memory"),
                      "mode_note": getattr(data, "mode_note", "") or "memory (the only mode then)",
                      "input_shape": list(data.input_shape), "preprocess": geometry.to_dict() if geometry else None,
                      "augment": cfg.augment, "train_images": n, "test_images": len(data.y_test),
                      "batch_size": cfg.batch_size, "workers": getattr(data.x_train, "workers", None),
                      "load_seconds": round(load_s, 1), "train_seconds": None if train_s is None else round(train_s, 1),
                      "epoch_seconds_with_eval": round(r["seconds"], 1),
                      "images_per_second": None if train_s is None else round(n / train_s, 1),
                      "data_wait_seconds": None if wait is None else round(wait, 1),
                      "data_wait_share": None if wait is None else round(wait / train_s, 4),
                      "test_accuracy": r["test_accuracy"]}))


# -- the parent: run a child, sample its process tree's memory -------------------------------------------------
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _mem(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of one process, from /proc/PID/smaps_rollup."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[str, dict]:
    """Run ``cmd``; return its stdout and the peak RSS/PSS (MiB) of its process tree and its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=cwd)
    peak = {"rss": 0, "pss": 0, "processes": 1}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pids = _tree(proc.pid)
            mems = [_mem(p) for p in pids]
            peak["rss"] = max(peak["rss"], sum(m[0] for m in mems))
            peak["pss"] = max(peak["pss"], sum(m[1] for m in mems))
            peak["processes"] = max(peak["processes"], len(pids))
            done.wait(0.25)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return out, {"peak_rss_mib": round(peak["rss"] / 2**20), "peak_pss_mib": round(peak["pss"] / 2**20),
                 "max_processes": peak["processes"], "wall_seconds": round(time.perf_counter() - t0, 1)}


def epoch(dataset: str, data_dir: str, arch: str, mode: str, args, pythonpath: str | None = None, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", "--dataset", dataset, "--data-dir", data_dir, "--arch", arch,
           "--mode", mode, "--batch-size", str(kw.get("batch_size", 128))]
    for k in ("image_size", "workers"):
        if kw.get(k) is not None:
            cmd += [f"--{k.replace('_', '-')}", str(kw[k])]
    if kw.get("cifar_stem"):
        cmd.append("--cifar-stem")
    print(f"== {dataset} {arch} --data-mode {mode}", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    out, mem = run_measured(cmd, env=env)
    row = {**json.loads(out.strip().splitlines()[-1]), **mem, "requested_mode": mode}
    print(f"   {row}", file=sys.stderr, flush=True)
    return row


def noflag_rss(trees: dict[str, str], tmp: str) -> dict:
    """Peak memory of ``kdexport distill-export`` with no flags (digits), with each checkout's code."""
    rows = {}
    for name, tree in trees.items():
        env = {**os.environ, "PYTHONPATH": tree, "KDEXPORT_CACHE_DIR": str(Path(tmp) / f"cache-{len(rows)}")}
        _, mem = run_measured([sys.executable, "-m", "kdexport", "distill-export", "--out",
                               str(Path(tmp) / f"run-{len(rows)}")], env=env, cwd=tmp)
        rows[name] = mem
        print(f"== no-flag run, {name}: {mem}", file=sys.stderr, flush=True)
    return rows


def markdown(result: dict) -> str:
    from kdexport.envinfo import stamp_markdown

    lines = ["# Data modes: memory vs stream", "", stamp_markdown(result), ""]
    lines += ["| data | model | asked | chosen | images | load s | train s | epoch s (with eval) | images/s | "
              "waiting for data | peak PSS MiB | peak RSS MiB | processes | test acc |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["epochs"]:
        has_train = r["data_wait_share"] is not None  # rows from code before data modes time the epoch only
        wait = f"{100 * r['data_wait_share']:.1f}%" if has_train else "-"
        train = f"{r['train_seconds']:.1f}" if has_train else "-"
        rate = f"{r['images_per_second']:.1f}" if has_train else "-"
        lines.append(f"| {r['name']} | {r['arch']} {r['input_shape'][1]}px | {r['requested_mode']} | "
                     f"{r['mode_note']} | {r['train_images']:,} | {r['load_seconds']:.1f} | {train} | "
                     f"{r['epoch_seconds_with_eval']:.1f} | {rate} | {wait} | {r['peak_pss_mib']:,} | "
                     f"{r['peak_rss_mib']:,} | {r['max_processes']} | {100 * r['test_accuracy']:.2f}% |")
    if result.get("noflag"):
        lines += ["", "No-flag run (`kdexport distill-export`, digits), whole process tree:", "",
                  "| code | peak PSS MiB | peak RSS MiB | wall s |", "|---|---:|---:|---:|"]
        for name, m in result["noflag"].items():
            lines.append(f"| {name} | {m['peak_pss_mib']:,} | {m['peak_rss_mib']:,} | {m['wall_seconds']:.0f} |")
    lines += ["", *result.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", help="a large ImageFolder (benchmarks/make_photos.py)")
    ap.add_argument("--photos-arch", default="mobilenet_v3_small")
    ap.add_argument("--photos-size", type=int, default=224)
    ap.add_argument("--photos-mode", default="auto", help="--data-mode for the photos (auto picks by the budget)")
    ap.add_argument("--cifar", help="CIFAR-10 as an ImageFolder (../shared/datasets/cifar10-jpeg)")
    ap.add_argument("--cifar-arch", default="resnet20")
    ap.add_argument("--baseline-ref", help="git ref to compare the no-flag run's peak memory against")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_stream"))
    # child options
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", default="imagefolder", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    ap.add_argument("--arch", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--image-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cifar-stem", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true", help="rewrite OUT.md from OUT.json and stop")
    args = ap.parse_args(argv)
    if args.render:
        from kdexport.files import atomic_write_text

        out = Path(args.out)
        result = json.loads(out.with_suffix(".json").read_text())
        atomic_write_text(out.with_suffix(".md"), markdown(result))
        return 0
    if args.child:
        child_epoch(args)
        return 0

    from kdexport.envinfo import result_stamp
    from kdexport.files import atomic_write_json, atomic_write_text

    result = {**result_stamp("benchmarks/bench_stream.py"), "epochs": [], "noflag": None, "notes": []}
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        old = None
        if args.baseline_ref:
            old = str(Path(tmp) / "old")
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", old, args.baseline_ref],
                           check=True, capture_output=True)
        try:
            if args.cifar:
                for mode, path in (("auto", None), ("stream", None), *((("memory", old),) if old else ())):
                    row = epoch("cifar10", args.cifar, args.cifar_arch, mode, args, pythonpath=path)
                    name = f"CIFAR-10 JPEG copy{f', code before data modes ({args.baseline_ref})' if path else ''}"
                    result["epochs"].append({"name": name, **row})
            if old:
                result["noflag"] = noflag_rss({"this commit": str(ROOT), f"before ({args.baseline_ref})": old}, tmp)
        finally:
            if old:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", old], check=False)
    if args.photos:
        n = sum(1 for _ in Path(args.photos, "train").rglob("*.jpg"))
        row = epoch("imagefolder", args.photos, args.photos_arch, args.photos_mode, args, image_size=args.photos_size,
                    batch_size=64)
        result["epochs"].append({"name": f"generated photos ({n:,} train JPEGs, 256-400 px)", **row})
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    from kdexport.allocator import prefer_kept

    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    sys.exit(main())
