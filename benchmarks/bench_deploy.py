"""Deployment numbers for issue 4, side by side in one run on this machine:

1. FP32 peak of this CPU, measured by a large matmul (torch, same thread count).
2. resnet18 at 32x32 (ImageNet stem): onnxruntime FP32 vs PyTorch eager at batch 1.
3. resnet18 and resnet50 with the CIFAR stem, trained briefly on a CIFAR-10 subset: FP32 vs static
   INT8 (QDQ, per-channel, 300 calibration images, ``--calibration``): latency at batch 1, file size,
   test accuracy on the full 10,000-image test set.
4. GFLOP/s achieved by onnxruntime FP32 resnet18 (CIFAR stem) as a fraction of the matmul peak.
5. With ``--trained-dir``: the same on the teachers and baselines of CIFAR recipe runs (trained on all
   50,000 images), with the INT8 accuracy under every calibration method.

    python benchmarks/bench_deploy.py [--data-dir ../shared/datasets] [--train-images 5000] \\
        [--trained-dir runs/recipes/cifar10-resnet50-resnet18-cpu-quick ...]

Writes benchmarks/results/bench_deploy.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from kdexport.allocator import prefer_kept
from kdexport.bench.timing import bench_onnx, bench_torch, p50, time_fn, torch_threads
from kdexport.config import QuantConfig, TrainConfig
from kdexport.data.datasets import load_dataset
from kdexport.distill.teacher import weights_hash
from kdexport.distill.train import evaluate, fit
from kdexport.envinfo import result_stamp
from kdexport.export.calibration import CALIBRATIONS
from kdexport.export.onnx import export_onnx
from kdexport.export.quantize import quantize_onnx
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model, count_flops

HERE = Path(__file__).resolve().parent
THREADS = 2


def matmul_peak(n: int = 2048, reps: int = 20) -> dict:
    """Best FP32 matmul rate among torch, numpy and onnxruntime (their BLAS/MLAS kernels differ:
    a library may not use every vector unit of a given CPU), same thread count."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from kdexport.runtimes.ort import ort_session

    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        g = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "mm",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        )
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), f"{tmp}/mm.onnx")
        sess = ort_session(f"{tmp}/mm.onnx", threads=THREADS)
        runs = {
            "torch": lambda: torch.mm(a, b),
            "numpy": lambda: np.matmul(an, bn),
            "onnxruntime": lambda: sess.run(None, {"a": an, "b": bn}),
        }
        out = {}
        with torch_threads(THREADS):
            for name, fn in runs.items():
                lat = time_fn(fn, warmup=3, iters=reps)
                out[name] = 2 * n**3 / (lat["p50"] / 1e3) / 1e9
    best = max(out, key=out.get)
    return {"n": n, "threads": THREADS, "gflops": out[best], "best_library": best, "by_library": out}


def train_subset(full, n: int | None):
    """``full`` with a fixed random ``n``-image training subset (all images when ``n`` is None)."""
    if n is None:
        return full
    idx = torch.randperm(len(full.y_train), generator=torch.Generator().manual_seed(0))[:n]
    return dataclasses.replace(full, x_train=full.x_train[idx], y_train=full.y_train[idx])


def recipe(epochs: int, seed: int = 0) -> TrainConfig:
    """How every CIFAR-stem benchmark model is trained: SGD 0.05 one-cycle, batch 128, crop-flip."""
    return TrainConfig(epochs=epochs, batch_size=128, optimizer="sgd", lr=0.05, weight_decay=5e-4,
                       scheduler="onecycle", augment="crop-flip", seed=seed)


def train_cifar_stem(arch: str, data, epochs: int, seed: int = 0) -> tuple[torch.nn.Module, ModelSpec, list, float]:
    """A CIFAR-stem ``arch`` trained from ``seed`` with ``recipe``: (model in eval mode, spec, history, seconds)."""
    spec = ModelSpec(arch, 10, (3, 32, 32), cifar_stem=True)
    print(f"{arch} (CIFAR stem): training {epochs} epoch(s) on {len(data.y_train)} images, seed {seed}", flush=True)
    torch.manual_seed(seed)
    model = build_model(spec)
    t0 = time.perf_counter()
    history = fit(model, data, recipe(epochs, seed))
    return model.eval(), spec, history, time.perf_counter() - t0


def int8_vs_fp32(
    model: torch.nn.Module, data, full, parity, tmp: str, name: str, iters: int, calibration: str, compare: bool = False
) -> dict:
    """Export, static-quantize (``calibration``), and measure accuracy (full test set), size and latency
    of both. With ``compare``, also the INT8 accuracy under every other calibration method and with
    residual-stream equalization (neither changes the graph, hence size and latency)."""
    fp32 = f"{tmp}/{name}.onnx"
    export_onnx(model.eval(), fp32, parity)
    def quant(path: str, accuracy_fp32: float | None = None, **kw):
        return quantize_onnx(fp32, path, data, mode="static", quant=QuantConfig(max_accuracy_drop=100.0, **kw),
                             accuracy_fp32=accuracy_fp32)

    q = quant(f"{tmp}/{name}.int8.onnx", calibration=calibration)
    by_cal = {calibration: {"accuracy": q.accuracy_int8, "drop_points": q.accuracy_drop_points}}
    for other in CALIBRATIONS.names(sort=False) if compare else ():
        if other != calibration:
            print(f"  {name}: INT8 accuracy with {other} calibration", flush=True)
            o = quant(f"{tmp}/{name}.{other}.int8.onnx", q.accuracy_fp32, calibration=other)
            by_cal[other] = {"accuracy": o.accuracy_int8, "drop_points": o.accuracy_drop_points}
    if compare:
        print(f"  {name}: INT8 accuracy with residual-stream equalization", flush=True)
        o = quant(f"{tmp}/{name}.eq.int8.onnx", q.accuracy_fp32, calibration=calibration, equalize=True)
        equalized = {"accuracy": o.accuracy_int8, "drop_points": o.accuracy_drop_points,
                     "equalization": o.equalization}
    b32 = bench_onnx(fp32, full, [1, 32], threads=THREADS, iters=iters, max_seconds=20.0)
    b8 = bench_onnx(f"{tmp}/{name}.int8.onnx", full, [1, 32], threads=THREADS, iters=iters, max_seconds=20.0)
    return {
        "fp32": {"bytes": q.fp32_bytes, "accuracy": q.accuracy_fp32, **b32},
        "int8": {"bytes": q.onnx_bytes, "accuracy": q.accuracy_int8, "reduce_range": q.reduce_range, **b8},
        "int8_speedup_batch_1": p50(b32, 1) / p50(b8, 1),
        "int8_speedup_batch_32": p50(b32, 32) / p50(b8, 32),
        "int8_size_fraction": q.onnx_bytes / q.fp32_bytes,
        "int8_accuracy_drop_points": q.accuracy_drop_points,
        "calibration": calibration,
        "int8_by_calibration": by_cal,
        **({"int8_equalized": equalized} if compare else {}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets"))
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument(
        "--trained-dir",
        nargs="+",
        default=[],
        help="CIFAR run folders (recipe workdirs with teacher.pt and cells/baseline-s0.pt): INT8 on trained models",
    )
    ap.add_argument("--calibration", choices=CALIBRATIONS.names(sort=False), default=QuantConfig.calibration,
                    help="static INT8 calibration for the headline numbers (trained checkpoints also get the others)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    res: dict = {
        **result_stamp("benchmarks/bench_deploy.py", THREADS),
        "threads": THREADS,
        "calibration": args.calibration,
    }
    print("matmul peak", flush=True)
    res["matmul_peak"] = matmul_peak()
    full = load_dataset("cifar10", args.data_dir, download=False)
    data = train_subset(full, args.train_images)
    parity = full.normalize(full.x_test[full.test_sample(64)])
    with tempfile.TemporaryDirectory() as tmp:
        # 2. ORT vs eager, resnet18 ImageNet stem at 32x32 (untrained weights: latency only)
        torch.manual_seed(0)
        m = build_model(ModelSpec("resnet18", 10, (3, 32, 32))).eval()
        export_onnx(m, f"{tmp}/r18.onnx", parity)
        o = bench_onnx(f"{tmp}/r18.onnx", full, [1, 32], threads=THREADS, iters=args.iters, max_seconds=20.0)
        e = bench_torch(m, full, [1, 32], threads=THREADS, iters=args.iters, max_seconds=20.0)
        res["resnet18_imagenet_stem_32x32"] = {
            "ort_fp32": o,
            "torch_eager": e,
            "ort_vs_eager_batch_1": p50(e, 1) / p50(o, 1),
            "target": 1.8,
        }
        # 3./4. INT8 vs FP32 on trained CIFAR-stem models
        for arch in ("resnet18", "resnet50"):
            model, _, _, train_s = train_cifar_stem(arch, data, args.epochs)
            flops = count_flops(model, (3, 32, 32))
            entry = {
                "flops_per_image": flops,
                "train_seconds": train_s,
                "train_images": args.train_images,
                "epochs": args.epochs,
                "accuracy_torch": evaluate(model, full)["accuracy"],
                **int8_vs_fp32(model, data, full, parity, tmp, arch, args.iters, args.calibration),
            }
            b32 = entry["fp32"]
            for b in (1, 32):
                gf = flops * b / (p50(b32, b) / 1e3) / 1e9
                entry[f"fp32_gflops_batch_{b}"] = gf
                entry[f"fp32_fraction_of_peak_batch_{b}"] = gf / res["matmul_peak"]["gflops"]
            res[f"{arch}_cifar_stem"] = entry
        # INT8 accuracy on properly trained models: the checkpoints of a CIFAR recipe run
        if args.trained_dir:
            from kdexport.models.checkpoint import load_model

            res["trained_checkpoints"] = {}
            ckpts = [Path(d) / f for d in args.trained_dir for f in ("teacher.pt", "cells/baseline-s0.pt")]
            seen: set[str] = set()
            for ckpt in ckpts:
                if not ckpt.exists():
                    continue
                model, spec, blob = load_model(ckpt)
                digest = weights_hash(model)
                if digest in seen:  # e.g. the same seed-0 baseline in two recipes' folders
                    print(f"{ckpt}: same weights as a checkpoint already measured; skipped", flush=True)
                    continue
                seen.add(digest)
                name = f"{spec.arch}{'-cifar-stem' if spec.cifar_stem else ''}"
                if name in res["trained_checkpoints"]:
                    name += f" ({ckpt.parent.name if ckpt.parent.name != 'cells' else ckpt.parent.parent.name})"
                print(f"trained {spec.arch} from {ckpt}: static INT8", flush=True)
                res["trained_checkpoints"][name] = {
                    "checkpoint": str(ckpt),
                    "epochs": len(blob["history"]),
                    "cifar_stem": spec.cifar_stem,
                    **int8_vs_fp32(model, full, full, parity, tmp, f"trained-{spec.arch}", args.iters,
                                   args.calibration, compare=True),
                }
    atomic_write_json(HERE / "results" / "bench_deploy.json", res)
    atomic_write_text(HERE / "results" / "bench_deploy.md", to_markdown(res))
    print(to_markdown(res))


def to_markdown(r: dict) -> str:
    env, pk = r["environment"], r["matmul_peak"]
    e = r["resnet18_imagenet_stem_32x32"]
    lines = [
        "# Deployment benchmark (benchmarks/bench_deploy.py)",
        "",
        f"{r['created']}; {env['cpu']} ({env['cpu_cores']} cores; flags {', '.join(env['cpu_flags'])}), "
        f"{r['threads']} threads; torch {env['torch']}, onnxruntime {env['onnxruntime']}. "
        "Latency = median of timed runs after warm-up.",
        "",
        f"FP32 matmul peak ({pk['n']}x{pk['n']}; "
        + ", ".join(f"{k} {v:.0f}" for k, v in pk.get("by_library", {}).items())
        + f" GFLOP/s): **{pk['gflops']:.1f} GFLOP/s** ({pk.get('best_library', 'torch')}).",
        "",
        "| resnet18 @32x32 (ImageNet stem) | p50 ms @1 | p50 ms @32 |",
        "|---|---|---|",
        f"| onnxruntime FP32 | {e['ort_fp32']['latency_ms']['batch_1']['p50']:.3f} | "
        f"{e['ort_fp32']['latency_ms']['batch_32']['p50']:.3f} |",
        f"| PyTorch eager | {e['torch_eager']['latency_ms']['batch_1']['p50']:.3f} | "
        f"{e['torch_eager']['latency_ms']['batch_32']['p50']:.3f} |",
        "",
        f"onnxruntime vs eager at batch 1: **{e['ort_vs_eager_batch_1']:.2f}x** (target >= 1.8x).",
        "",
        "| CIFAR stem | train | FP32 acc | INT8 acc | drop (pt) | FP32 size | INT8 size (frac) | FP32 p50 @1 | "
        "INT8 p50 @1 | INT8 speed-up @1 / @32 | FP32 GFLOP/s @1 / @32 (of peak) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch in ("resnet18", "resnet50"):
        m = r[f"{arch}_cifar_stem"]
        lines.append(
            f"| {arch} | {m['epochs']} ep x {m['train_images']} img | {m['fp32']['accuracy'] * 100:.2f}% | "
            f"{m['int8']['accuracy'] * 100:.2f}% | {m['int8_accuracy_drop_points']:.2f} | "
            f"{m['fp32']['bytes'] / 1e6:.1f} MB | {m['int8']['bytes'] / 1e6:.1f} MB "
            f"({m['int8_size_fraction'] * 100:.0f}%) | "
            f"{m['fp32']['latency_ms']['batch_1']['p50']:.2f} | {m['int8']['latency_ms']['batch_1']['p50']:.2f} | "
            f"{m['int8_speedup_batch_1']:.2f}x / {m['int8_speedup_batch_32']:.2f}x | "
            f"{m['fp32_gflops_batch_1']:.0f} ({m['fp32_fraction_of_peak_batch_1'] * 100:.0f}%) / "
            f"{m['fp32_gflops_batch_32']:.0f} ({m['fp32_fraction_of_peak_batch_32'] * 100:.0f}%) |"
        )
    tc = r.get("trained_checkpoints") or {}
    if tc:
        lines += [
            "",
            "INT8 on trained checkpoints (CIFAR-10 recipes' teachers and baselines, trained on all 50,000 images; "
            f"headline columns with {r.get('calibration', 'minmax')} calibration, the last column with each method):",
            "",
            "| model | epochs | FP32 acc | INT8 acc | drop (pt) | INT8 size (frac) | INT8 speed-up @1 / @32 | "
            "drop by calibration (pt) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in tc.items():
            by_cal = ", ".join(f"{k} {v['drop_points']:.2f}" for k, v in m.get("int8_by_calibration", {}).items())
            lines.append(
                f"| {name} | {m['epochs']} | {m['fp32']['accuracy'] * 100:.2f}% | {m['int8']['accuracy'] * 100:.2f}% | "
                f"{m['int8_accuracy_drop_points']:.2f} | {m['int8_size_fraction'] * 100:.0f}% | "
                f"{m['int8_speedup_batch_1']:.2f}x / {m['int8_speedup_batch_32']:.2f}x | {by_cal} |"
            )
    lines += [
        "",
        "Targets: INT8 >= 1.8x FP32 speed, <= 0.5 points accuracy loss, <= 26% of FP32 size; "
        "ORT FP32 resnet18 >= 60% of the matmul peak.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
