"""Where a CPU training step's time goes, and does the batch size change the images per second?

On a GPU a bigger batch fills the device (airbench trains at 1,024); on a CPU the convolutions already run at
the cores' rate at small batches, so a smaller batch would buy more optimizer steps for the same wall time. Two
measurements, through kdexport's one training loop (`fit`, as in `bench_precision.py`, SGD, shift2-flip, random
CIFAR-shaped images: the arithmetic does not depend on the pixels):

- for each batch of --batches: one epoch of --images images, the median of --rounds rounds (the rounds go
  through every batch in turn), as images per second, the estimated seconds of a 50,000-image epoch and the
  achieved training GFLOP/s, counting a training image as 3x its forward FLOPs (`count_flops`: the forward
  pass plus the two products of the backward pass, an estimate that also counts the frozen first layer);
- a torch.profiler pass over two steps at the largest batch: each operator's share of the self CPU time, the
  convolutions (forward and backward) summed, so what a compiler's fusion of the rest could save is bounded.

    python benchmarks/bench_step.py [--model fastcifar:1.25] [--batches 128,256,512,1024] [--images 8192]

Writes benchmarks/results/bench_step.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench_precision import CIFAR_EPOCH, epoch_seconds, synthetic_cifar, write_result
from torch.profiler import ProfilerActivity, profile

from kdexport.allocator import keep_freed_memory
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.models.builders import ModelSpec, build_model, count_flops

HERE = Path(__file__).resolve().parent
TOP = 8  # operators listed by name in the profile table; the rest are summed


def op_shares(arch: str, batch: int, precision: str) -> list[dict]:
    """Self CPU seconds and share of each operator over a two-step epoch (after a one-step warm-up), largest first."""
    epoch_seconds(arch, synthetic_cifar(batch), precision, batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        epoch_seconds(arch, synthetic_cifar(2 * batch), precision, batch)
    events = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(s for _, s in events)
    return [{"op": k, "self_seconds": s, "share": s / total} for k, s in sorted(events, key=lambda e: -e[1])]


def is_conv(op: str) -> bool:
    return "convolution" in op


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fastcifar:1.25")
    ap.add_argument("--batches", default="128,256,512,1024")
    ap.add_argument("--images", type=int, default=8192, help="images per timed epoch (a multiple of every batch)")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_step"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if any(args.images % b for b in batches):
        raise SystemExit(f"--images {args.images} is not a multiple of every batch in {batches}")
    stamp = result_stamp("benchmarks/bench_step.py", usable_cores())
    flops = count_flops(build_model(ModelSpec(args.model, 10, (3, 32, 32))), (3, 32, 32))
    data = synthetic_cifar(args.images)
    for b in batches:  # warm-up: first-call costs (allocator, oneDNN kernel choice) stay out of the rounds
        epoch_seconds(args.model, synthetic_cifar(b), args.precision, b)
    times: dict[int, list[float]] = {b: [] for b in batches}
    for r in range(args.rounds):
        for b in batches:
            times[b].append(epoch_seconds(args.model, data, args.precision, b))
            print(f"round {r + 1}/{args.rounds} batch {b}: {times[b][-1]:.1f} s", flush=True)
    rows = []
    for b in batches:
        med = statistics.median(times[b])
        rows.append({"batch": b, "seconds": times[b], "images_per_second": args.images / med,
                     "epoch_seconds_est": med * CIFAR_EPOCH / args.images,
                     "train_gflops_per_second": 3 * flops * args.images / med / 1e9})
    ops = op_shares(args.model, max(batches), args.precision)
    conv = sum(o["share"] for o in ops if is_conv(o["op"]))
    result = {**stamp, "model": args.model, "precision": args.precision, "images": args.images,
              "rounds": args.rounds, "forward_flops_per_image": flops, "rows": rows,
              "profile_batch": max(batches), "convolution_share": conv, "ops": ops}
    lines = [f"# Training step of {args.model} on this CPU: batch size and where the time goes", "",
             stamp_markdown(stamp), "",
             f"CPU flags: {', '.join(stamp['environment']['cpu_flags'])}. {args.precision} autocast, SGD, "
             f"shift2-flip, through kdexport's training loop; one epoch of {args.images} random CIFAR-shaped "
             f"images per measurement, the median of {args.rounds} rounds. GFLOP/s counts a training image as 3x "
             f"its forward pass ({flops / 1e6:.0f} MFLOPs): an estimate.", "",
             "| batch | images/s | est. s per 50k epoch | training GFLOP/s |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['images_per_second']:.0f} | {r['epoch_seconds_est']:.0f} | "
                     f"{r['train_gflops_per_second']:.0f} |")
    lines += ["", f"Self CPU time of two steps at batch {max(batches)} (torch.profiler): convolutions, forward and "
              f"backward, **{100 * conv:.1f}%**.", "", "| operator | share |", "|---|---|"]
    lines += [f"| `{o['op']}` | {100 * o['share']:.1f}% |" for o in ops[:TOP]]
    lines.append(f"| the other {len(ops) - TOP} | {100 * sum(o['share'] for o in ops[TOP:]):.1f}% |")
    write_result(args.out, result, lines)


if __name__ == "__main__":
    keep_freed_memory()  # synthetic tensors, no load_dataset: see kdexport/allocator.py
    main()
