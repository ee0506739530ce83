"""Why static INT8 calibration needs robust activation ranges, on one trained checkpoint.

1. The per-batch activation ranges on the calibration images that ``kdexport quantize`` uses (9
   batches of 32, ``kdexport.export.calibration.batch_ranges``): for the tensors whose largest batch maximum is
   furthest above their median batch maximum, every batch's maximum, their mean (what
   ``moving-average`` uses) and median (what ``median`` uses), and the maximum on 64 test images.
2. Where the INT8 error comes from: test accuracy of ``moving-average`` static quantization with 8-bit
   activations and weights, with 16-bit activations (8-bit weights), and with 16-bit weights (8-bit
   activations). onnxruntime runs 16-bit QDQ through float kernels, so these are accuracy probes, not
   deployable models.

    python benchmarks/calibration_ranges.py --checkpoint runs/bench-int8-trained/resnet50-cifar-stem-1ep-s1.pt

(``bench_int8_trained.py --seed 1`` writes that checkpoint.) Writes benchmarks/results/calibration_ranges.json
and .md (``--out`` for another name).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from kdexport.allocator import prefer_kept
from kdexport.data.datasets import load_dataset
from kdexport.envinfo import git_commit, result_stamp
from kdexport.export.calibration import batch_ranges
from kdexport.export.onnx import export_onnx
from kdexport.export.quantize import CalibrationReader, calibration_batches, default_reduce_range
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.checkpoint import load_model
from kdexport.runtimes.base import file_accuracy

HERE = Path(__file__).resolve().parent
THREADS = 2


def quantize(pre: str, out: str, batches: list[np.ndarray], activation_bits: int, weight_bits: int) -> None:
    """kdexport's static settings (QDQ, per-channel weights, moving-average calibration) at the given widths."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    wide = 16 in (activation_bits, weight_bits)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        quantize_static(pre, out, CalibrationReader(onnx.load(pre).graph.input[0].name, batches),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt16 if activation_bits == 16 else QuantType.QUInt8,
                        weight_type=QuantType.QInt16 if weight_bits == 16 else QuantType.QInt8,
                        per_channel=True, reduce_range=default_reduce_range() and not wide,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibMovingAverage": True, "UseQDQContribOps": wide})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets"))
    ap.add_argument("--top", type=int, default=5, help="tensors to list")
    ap.add_argument("--out", default="calibration_ranges", help="results file name in benchmarks/results (no suffix)")
    args = ap.parse_args()
    git_commit()
    torch.set_num_threads(THREADS)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = load_dataset("cifar10", args.data_dir, download=False)
    model = load_model(args.checkpoint)[0].eval()
    res: dict = {**result_stamp("benchmarks/calibration_ranges.py", THREADS), "threads": THREADS,
                 "checkpoint": args.checkpoint}
    with tempfile.TemporaryDirectory() as tmp:
        test_x = data.normalize(data.x_test[data.test_sample(64)])
        export_onnx(model, f"{tmp}/fp32.onnx", test_x)
        pre = f"{tmp}/pre.onnx"
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quant_pre_process(f"{tmp}/fp32.onnx", pre, skip_symbolic_shape=False)
        batches = calibration_batches(data, 300)
        print(f"per-batch ranges on {len(batches)} calibration batches", flush=True)
        graph = onnx.load(pre)
        ranges = batch_ranges(graph, batches)
        test = batch_ranges(graph, [test_x.numpy()])
        rows = []
        for t, r in ranges.items():
            hi = r[:, 1]
            rows.append({"tensor": t, "batch_max": [float(v) for v in hi], "mean_of_batch_max": float(hi.mean()),
                         "median_of_batch_max": float(np.median(hi)), "test_max": float(test[t][0, 1]),
                         "outlier_ratio": float(hi.max() / max(np.median(hi), 1e-12))})
        rows.sort(key=lambda e: -e["outlier_ratio"])
        res.update(calibration_batches=len(batches), tensors=len(rows), top_outliers=rows[:args.top],
                   tensors_with_a_batch_over_4x_median=sum(e["outlier_ratio"] > 4 for e in rows))
        acc32 = file_accuracy(pre, data, THREADS)
        res["accuracy_fp32"] = acc32
        res["moving_average_drop_points"] = {}
        for a, w in ((8, 8), (16, 8), (8, 16)):
            print(f"moving-average static quantization, {a}-bit activations, {w}-bit weights", flush=True)
            quantize(pre, f"{tmp}/a{a}w{w}.onnx", batches, a, w)
            acc = file_accuracy(f"{tmp}/a{a}w{w}.onnx", data, THREADS)
            res["moving_average_drop_points"][f"a{a}w{w}"] = (acc32 - acc) * 100
    atomic_write_json(HERE / "results" / f"{args.out}.json", res)
    atomic_write_text(HERE / "results" / f"{args.out}.md", to_markdown(res))
    print(to_markdown(res))


def to_markdown(r: dict) -> str:
    env, d = r["environment"], r["moving_average_drop_points"]
    lines = [
        "# Activation ranges under calibration (benchmarks/calibration_ranges.py)",
        "",
        f"{r['created']}; {env['cpu']} ({env['cpu_cores']} cores), {r['threads']} threads; onnxruntime "
        f"{env['onnxruntime']}. `{r['command']}`",
        "",
        f"{r['tensors']} activation tensors, {r['calibration_batches']} calibration batches of 32 training images; "
        f"{r['tensors_with_a_batch_over_4x_median']} tensors have a batch whose maximum is over 4x their median "
        "batch maximum.",
        "",
        "| tensor | batch maxima | mean (moving-average) | median (median) | max on 64 test images |",
        "|---|---|---|---|---|",
        *(f"| {e['tensor']} | {', '.join(f'{v:.1f}' for v in e['batch_max'])} | {e['mean_of_batch_max']:.1f} | "
          f"{e['median_of_batch_max']:.1f} | {e['test_max']:.1f} |" for e in r["top_outliers"]),
        "",
        f"FP32 {r['accuracy_fp32'] * 100:.2f}%. Static INT8 with moving-average calibration loses "
        f"{d['a8w8']:.2f} points; with 16-bit activations {d['a16w8']:.2f}; with 16-bit weights {d['a8w16']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
