"""Does bf16 autocast pay for training on this CPU? (`--precision bf16` against fp32.)

One epoch over a fixed set of CIFAR-shaped images (random pixels: the arithmetic does not depend on them) for
each model and precision, through kdexport's one training loop (`fit`) with the fastcifar recipes' settings
(SGD, batch 1024, shift2-flip), evaluation excluded; the rounds go through every (model, precision) pair in
turn, and each pair's median training seconds give its milliseconds per 1,024-image step and the estimated
seconds of a 50,000-image epoch. The bf16/fp32 ratios are side by side in one run on one machine; the CPU's
flags (AMX, AVX-512 BF16) are in the stamp.

    python benchmarks/bench_precision.py [--models fastcifar:0.25,fastcifar,fastcifar:1.5] [--images 8192]

Writes benchmarks/results/bench_precision.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from kdexport.allocator import keep_freed_memory
from kdexport.config import TrainConfig
from kdexport.data.datasets import Dataset
from kdexport.distill.train import fit
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model

HERE = Path(__file__).resolve().parent
CIFAR_EPOCH = 50_000


def synthetic_cifar(n: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("synthetic-cifar", x, y, x[:1024], y[:1024], [str(c) for c in range(10)],
                   (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def epoch_seconds(arch: str, data: Dataset, precision: str, batch: int) -> float:
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, 10, (3, 32, 32)))
    cfg = TrainConfig(epochs=1, batch_size=batch, optimizer="sgd", lr=0.1, momentum=0.85, scheduler="none",
                      augment="shift2-flip", precision=precision, device="cpu")
    return fit(model, data, cfg)[0]["train_seconds"]


def write_result(out: str, result: dict, lines: list[str]) -> None:
    """``out``.json and ``out``.md (the Markdown ``lines``), each written atomically; the Markdown printed."""
    atomic_write_json(Path(out).with_suffix(".json"), result)
    atomic_write_text(Path(out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="fastcifar:0.25,fastcifar,fastcifar:1.5")
    ap.add_argument("--images", type=int, default=8192, help="images per timed epoch (a multiple of --batch)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_precision"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_precision.py", usable_cores())
    data = synthetic_cifar(args.images)
    models = args.models.split(",")
    pairs = [(m, p) for m in models for p in ("fp32", "bf16")]
    for m, p in pairs:  # warm-up: first-call costs (allocator, oneDNN kernel choice) stay out of the rounds
        epoch_seconds(m, synthetic_cifar(args.batch), p, args.batch)
    times: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for r in range(args.rounds):
        for m, p in pairs:
            times[(m, p)].append(epoch_seconds(m, data, p, args.batch))
            print(f"round {r + 1}/{args.rounds} {m} {p}: {times[(m, p)][-1]:.1f} s", flush=True)
    steps = args.images / args.batch
    rows = []
    for m in models:
        med = {p: statistics.median(times[(m, p)]) for p in ("fp32", "bf16")}
        rows.append({"model": m, "seconds": {p: times[(m, p)] for p in med},
                     "ms_per_step": {p: 1000 * med[p] / steps for p in med},
                     "epoch_seconds_est": {p: med[p] * CIFAR_EPOCH / args.images for p in med},
                     "bf16_speedup": med["fp32"] / med["bf16"]})
    result = {**stamp, "images": args.images, "batch": args.batch, "rounds": args.rounds, "rows": rows}
    lines = ["# bf16 autocast vs fp32 for training on this CPU", "", stamp_markdown(stamp), "",
             f"CPU flags: {', '.join(stamp['environment']['cpu_flags'])}. One epoch of {args.images} random "
             f"CIFAR-shaped images, batch {args.batch}, SGD, shift2-flip, through kdexport's training loop; the "
             f"median of {args.rounds} rounds.", "",
             "| model | fp32 ms/step | bf16 ms/step | bf16 speedup | est. s per 50k epoch, fp32 | bf16 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ms, est = r["ms_per_step"], r["epoch_seconds_est"]
        lines.append(f"| {r['model']} | {ms['fp32']:.0f} | {ms['bf16']:.0f} | {r['bf16_speedup']:.2f}x | "
                     f"{est['fp32']:.0f} | {est['bf16']:.0f} |")
    write_result(args.out, result, lines)


if __name__ == "__main__":
    keep_freed_memory()  # synthetic tensors, no load_dataset: see kdexport/allocator.py
    main()
