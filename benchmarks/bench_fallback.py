"""INT8 with automatic FP32 fallback on a trained model where a calibration misses the budget.

The model: the teacher of the ``cifar10-resnet50-resnet18-cpu-quick`` recipe (torchvision ResNet50,
ImageNet stem at 32x32, 4 epochs on the CIFAR-10 JPEG copy, SGD 0.05 one-cycle, crop-flip), whose
static INT8 copy with ``minmax`` calibration collapsed to chance (``bench_deploy.json``: -36 points).
Measured side by side in one run: FP32, INT8 minmax (no fallback), INT8 minmax with ``--fallback auto``,
and INT8 with the default calibration; accuracy on the full test split, p50 latency at batch 1 and 32.

    python benchmarks/bench_fallback.py                      # trains once (about 10 minutes), then reuses
    python benchmarks/bench_fallback.py --calibration minmax --max-accuracy-drop 1.0

Writes benchmarks/results/bench_fallback.json and .md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from kdexport.allocator import prefer_kept
from kdexport.bench.timing import bench_onnx, p50
from kdexport.config import QuantConfig, TrainConfig
from kdexport.data.datasets import load_dataset
from kdexport.distill.train import fit
from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.errors import GateError
from kdexport.export.onnx import export_onnx
from kdexport.export.quantize import quantize_onnx
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model
from kdexport.models.checkpoint import load_model, save_checkpoint
from kdexport.runtimes.base import file_accuracy

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SPEC = ModelSpec("resnet50", 10, (3, 32, 32))
RECIPE = TrainConfig(epochs=4, batch_size=128, optimizer="sgd", lr=0.05, weight_decay=5e-4, scheduler="onecycle",
                     seed=0, device="cpu", augment="crop-flip")


def trained_model(data, path: Path) -> torch.nn.Module:
    if path.exists():
        return load_model(path, expect=SPEC)[0]
    print(f"training {SPEC.arch} ({RECIPE.epochs} epochs) -> {path}", flush=True)
    torch.manual_seed(RECIPE.seed)
    model = build_model(SPEC)
    history = fit(model, data, RECIPE, label="resnet50")
    save_checkpoint(path, model, SPEC, role="teacher", config={"train": RECIPE.__dict__}, history=history)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--checkpoint", default=str(ROOT / "runs" / "bench_fallback" / "resnet50.pt"))
    ap.add_argument("--calibration", default="minmax")
    ap.add_argument("--max-accuracy-drop", type=float, default=QuantConfig.max_accuracy_drop)
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(2)
    stamp = result_stamp("benchmarks/bench_fallback.py", 2)
    data = load_dataset("cifar10", args.data_dir, download=False)
    model = trained_model(data, Path(args.checkpoint))
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, data.normalize(data.x_test[data.test_sample(256)]))
        acc32 = file_accuracy(fp32, data)
        files = {"fp32": fp32}
        quants = {f"int8 {args.calibration}": QuantConfig(calibration=args.calibration, max_accuracy_drop=100.0),
                  f"int8 {args.calibration} + fallback auto": QuantConfig(calibration=args.calibration,
                                                                         max_accuracy_drop=args.max_accuracy_drop,
                                                                         fallback="auto"),
                  f"int8 {QuantConfig.calibration} (default)": QuantConfig(max_accuracy_drop=100.0)}
        for name, q in quants.items():
            print(f"quantizing: {name}", flush=True)
            dest = Path(tmp) / f"{len(files)}.onnx"
            try:
                r = quantize_onnx(fp32, dest, data, mode="static", quant=q, accuracy_fp32=acc32)
            except GateError as e:
                rows[name] = {"refused": str(e)}
                continue
            files[name] = dest
            rows[name] = {"accuracy": r.accuracy_int8, "drop_points": r.accuracy_drop_points, "bytes": r.onnx_bytes,
                          "fallback": r.fallback}
        rows["fp32"] = {"accuracy": acc32, "drop_points": 0.0, "bytes": fp32.stat().st_size}
        for name, path in files.items():  # timed one after another in this run, same machine
            b = bench_onnx(path, data, [1, 32], threads=2, iters=args.iters, max_seconds=30.0)
            rows[name].update(p50_ms_batch_1=p50(b, 1), p50_ms_batch_32=p50(b, 32))
    base = rows["fp32"]["p50_ms_batch_1"]
    for r in rows.values():
        if "p50_ms_batch_1" in r:
            r["speedup_vs_fp32_batch_1"] = base / r["p50_ms_batch_1"]
    fb_name = f"int8 {args.calibration} + fallback auto"
    fb = rows.get(fb_name, {})
    target = {"max_accuracy_drop": args.max_accuracy_drop, "min_speedup_batch_1": 1.5,
              "met": bool(fb.get("drop_points") is not None and fb["drop_points"] <= args.max_accuracy_drop
                          and fb.get("speedup_vs_fp32_batch_1", 0) >= 1.5)}
    result = {**stamp, "model": {"spec": SPEC.to_dict(), "recipe": RECIPE.__dict__, "checkpoint": args.checkpoint},
              "rows": rows, "target": target}
    atomic_write_json(HERE / "results" / "bench_fallback.json", result)
    lines = ["# INT8 with automatic FP32 fallback", "",
             stamp_markdown(stamp), "",
             f"Model: torchvision ResNet50 (ImageNet stem) at 32x32, {RECIPE.epochs} epochs on the CIFAR-10 JPEG "
             "copy (the cpu-quick recipe's teacher). Accuracy on all 10,000 test images; latency p50, "
             "onnxruntime CPU, timed in this run.", "",
             "| model | accuracy | drop (points) | p50 ms @1 | p50 ms @32 | speed-up vs FP32 @1 | FP32 nodes |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "refused" in r:
            lines.append(f"| {name} | refused: {r['refused']} | | | | | |")
            continue
        n_fp32 = len((r.get("fallback") or {}).get("fp32_nodes") or [])
        lines.append(f"| {name} | {r['accuracy'] * 100:.2f}% | {r['drop_points']:.2f} | {r['p50_ms_batch_1']:.3f} | "
                     f"{r['p50_ms_batch_32']:.3f} | {r['speedup_vs_fp32_batch_1']:.2f}x | {n_fp32} |")
    if fb.get("fallback"):
        lines += ["", "Fallback steps (tensors kept in FP32 -> accuracy drop, p50 @1):", ""]
        lines += [f"- {s['tensors']} tensor(s), +{len(s['added_nodes'])} node(s): {s['drop_points']:.2f} points, "
                  f"{s['p50_ms']:.3f} ms" for s in fb["fallback"]["steps"]]
        lines += ["", f"Nodes kept in FP32: {', '.join(fb['fallback']['fp32_nodes']) or 'none'}."]
    lines += ["", f"Target (issue 21): drop <= {args.max_accuracy_drop:g} points at >= 1.5x FP32 speed at batch 1: "
              f"{'met' if target['met'] else 'missed'}."]
    atomic_write_text(HERE / "results" / "bench_fallback.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
