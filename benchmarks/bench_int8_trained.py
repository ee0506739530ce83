"""Static INT8 on a CIFAR-stem model trained on all 50,000 CIFAR-10 training images (issue 4's
"<= 0.5 points on trained models" for resnet50 with the CIFAR stem).

bench_deploy.py trains its CIFAR-stem models on a subset for one epoch so that the whole run stays
under an hour. This script trains one model the same way (``bench_deploy.train_cifar_stem``) on the
full training set, saves it as a kdexport checkpoint in ``--workdir`` (reused by a later run with the
same settings), then measures FP32 vs static INT8 exactly as bench_deploy does (accuracy on the
10,000 test images under every calibration method and with ``--equalize``, size, latency at batch 1
and 32, 2 threads), plus the FP32 logit margins and the per-tensor SQNR of the INT8 activations:
where quantization error arises and how it grows through the network. ``--calibration-draws N``
repeats the default and moving-average calibrations on N-1 other random sets of 300 training images:
how much the drop depends on which images calibrate.

    python benchmarks/bench_int8_trained.py [--arch resnet50] [--epochs 1] [--seed 0] [--data-dir ../shared/datasets]

Writes benchmarks/results/bench_int8_trained.json and .md (``--out`` for another name).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from bench_deploy import THREADS, int8_vs_fp32, recipe, train_cifar_stem, train_subset

from kdexport.allocator import prefer_kept
from kdexport.config import QuantConfig
from kdexport.data.datasets import load_dataset
from kdexport.distill.train import predict_logits
from kdexport.envinfo import git_commit, result_stamp
from kdexport.export.calibration import CALIBRATIONS
from kdexport.export.quantize import quantize_onnx
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec
from kdexport.models.checkpoint import load_model, save_checkpoint

HERE = Path(__file__).resolve().parent


def margins(logits: torch.Tensor) -> dict:
    """Top-1 minus top-2 FP32 logit on the test set: how much noise a prediction can absorb."""
    top2 = logits.topk(2, dim=1).values
    m = top2[:, 0] - top2[:, 1]
    return {"median_top1_top2_margin": m.median().item(), "logit_std": logits.std().item(),
            "logit_abs_max": logits.abs().max().item()}


def activation_sqnr(fp32: str, int8: str, x: np.ndarray, tmp: str) -> list[dict]:
    """Per-tensor signal-to-quantization-noise ratio (dB) of the INT8 model's activations against
    FP32 on the same images (onnxruntime's qdq_loss_debug), in graph order, with the FP32 range."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = f"{tmp}/sqnr-pre.onnx"  # the graph quantize_onnx quantized: its tensor names match the INT8 model's
    quant_pre_process(fp32, pre, skip_symbolic_shape=False)
    graph = onnx.load(pre).graph
    name = graph.input[0].name

    def reader():
        return iter([{name: x[i:i + 32]} for i in range(0, len(x), 32)])

    acts = {}
    for tag, path in (("fp32", pre), ("int8", int8)):
        modify_model_output_intermediate_tensors(path, f"{tmp}/sqnr-{tag}.onnx")
        acts[tag] = collect_activations(f"{tmp}/sqnr-{tag}.onnx", reader())
    err = compute_activation_error(create_activation_matching(acts["int8"], acts["fp32"]))
    out = []
    for node in graph.node:
        t = node.output[0]
        if t in err and "xmodel_err" in err[t]:
            f = np.concatenate(acts["fp32"][t])
            out.append({"tensor": t, "op": node.op_type, "sqnr_db": float(err[t]["xmodel_err"]),
                        "fp32_abs_max": float(np.abs(f).max()), "fp32_abs_mean": float(np.abs(f).mean())})
    return out


def calibration_draws(fp32: str, data, accuracy_fp32: float, draws: int, calibrations: list[str],
                      tmp: str) -> list[dict]:
    """INT8 drop under ``calibrations`` for calibration sets 1..draws-1: quantize_onnx calibrates on
    the first images of a fixed shuffle of the training split, so shuffling that split once more with
    seed k draws another set (draw 0 is the standard set, measured by int8_vs_fp32)."""
    rows = []
    for k in range(1, draws):
        perm = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(k))
        drawn = dataclasses.replace(data, x_train=data.x_train[perm], y_train=data.y_train[perm])
        for cal in calibrations:
            print(f"  calibration draw {k}: {cal}", flush=True)
            q = quantize_onnx(fp32, f"{tmp}/draw.int8.onnx", drawn, mode="static",
                              quant=QuantConfig(calibration=cal, max_accuracy_drop=100.0), accuracy_fp32=accuracy_fp32)
            rows.append({"draw": k, "calibration": cal, "drop_points": q.accuracy_drop_points})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "datasets"))
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the model's initialization and data order")
    ap.add_argument("--train-images", type=int, default=None, help="a random subset (default: all 50,000)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--workdir", default="runs/bench-int8-trained")
    ap.add_argument("--out", default="bench_int8_trained", help="results file name in benchmarks/results (no suffix)")
    ap.add_argument("--sqnr-images", type=int, default=64, help="test images for the per-tensor SQNR (0: skip)")
    ap.add_argument("--calibration", choices=CALIBRATIONS.names(sort=False), default=QuantConfig.calibration)
    ap.add_argument("--calibration-draws", type=int, default=3,
                    help="calibration image sets for the default and moving-average calibrations (1: the standard one)")
    args = ap.parse_args()
    git_commit()  # stamp the results with the code this run starts from, even if the checkout moves on
    torch.set_num_threads(THREADS)
    data = train_subset(load_dataset("cifar10", args.data_dir, download=False), args.train_images)
    spec = ModelSpec(args.arch, 10, (3, 32, 32), cifar_stem=True)
    config = {"spec": spec.to_dict(), "train": dataclasses.asdict(recipe(args.epochs, args.seed)),
              "train_images": len(data.y_train), "seed": args.seed}
    ckpt = Path(args.workdir) / f"{args.arch}-cifar-stem-{args.epochs}ep{f'-s{args.seed}' if args.seed else ''}.pt"
    reused = load_model(ckpt) if ckpt.exists() else None
    if reused and reused[2]["config"] == config:
        print(f"reusing {ckpt}", flush=True)
        model, train_s = reused[0].eval(), reused[2]["metrics"].get("train_seconds")
    else:
        model, spec, history, train_s = train_cifar_stem(args.arch, data, args.epochs, args.seed)
        save_checkpoint(ckpt, model, spec, role="bench", config=config, history=history,
                        metrics={"train_seconds": train_s})
    logits = predict_logits(model, data)
    res: dict = {
        **result_stamp("benchmarks/bench_int8_trained.py", THREADS),
        "threads": THREADS,
        "arch": args.arch,
        "cifar_stem": True,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_images": len(data.y_train),
        "train_seconds": train_s,
        "checkpoint": str(ckpt),
        "accuracy_torch": (logits.argmax(1) == data.y_test).float().mean().item(),
        "fp32_logits": margins(logits),
    }
    parity = data.normalize(data.x_test[data.test_sample(64)])
    with tempfile.TemporaryDirectory() as tmp:
        res.update(int8_vs_fp32(model, data, data, parity, tmp, args.arch, args.iters, args.calibration,
                                compare=True))
        cals = list(dict.fromkeys([args.calibration, "moving-average"]))
        res["calibration_draws"] = [
            {"draw": 0, "calibration": c, "drop_points": res["int8_by_calibration"][c]["drop_points"]} for c in cals
        ] + calibration_draws(f"{tmp}/{args.arch}.onnx", data, res["fp32"]["accuracy"], args.calibration_draws,
                              cals, tmp)
        if args.sqnr_images:
            print("per-tensor SQNR", flush=True)
            x = data.normalize(data.x_test[data.test_sample(args.sqnr_images)]).numpy().astype(np.float32)
            res["activation_sqnr_db"] = activation_sqnr(f"{tmp}/{args.arch}.onnx", f"{tmp}/{args.arch}.int8.onnx",
                                                        x, tmp)
    atomic_write_json(HERE / "results" / f"{args.out}.json", res)
    atomic_write_text(HERE / "results" / f"{args.out}.md", to_markdown(res))
    print(to_markdown(res))


def to_markdown(r: dict) -> str:
    env, lg = r["environment"], r["fp32_logits"]
    by_cal = ", ".join(f"{k} {v['drop_points']:.2f}" for k, v in r["int8_by_calibration"].items())
    return "\n".join([
        "# INT8 on a fully trained CIFAR-stem model (benchmarks/bench_int8_trained.py)",
        "",
        f"{r['created']}; {env['cpu']} ({env['cpu_cores']} cores), {r['threads']} threads; torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}. `{r['command']}`",
        "",
        f"{r['arch']} (CIFAR stem), {r['epochs']} epoch(s) on {r['train_images']} images; FP32 median top-1/top-2 "
        f"logit margin {lg['median_top1_top2_margin']:.2f} (logit std {lg['logit_std']:.2f}).",
        "",
        "| FP32 acc | INT8 acc | drop (pt) | INT8 size (frac) | FP32 p50 @1 | INT8 p50 @1 | INT8 speed-up @1 / @32 | "
        "drop by calibration (pt) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['fp32']['accuracy'] * 100:.2f}% | {r['int8']['accuracy'] * 100:.2f}% | "
        f"{r['int8_accuracy_drop_points']:.2f} ({r['calibration']}) | {r['int8_size_fraction'] * 100:.0f}% | "
        f"{r['fp32']['latency_ms']['batch_1']['p50']:.2f} ms | {r['int8']['latency_ms']['batch_1']['p50']:.2f} ms | "
        f"{r['int8_speedup_batch_1']:.2f}x / {r['int8_speedup_batch_32']:.2f}x | {by_cal} |",
        "",
        "Targets: INT8 >= 1.8x FP32 speed, <= 0.5 points accuracy loss, <= 26% of FP32 size.",
        *equalization_lines(r),
        *draw_lines(r.get("calibration_draws") or []),
        *sqnr_lines(r.get("activation_sqnr_db") or []),
    ]) + "\n"


def equalization_lines(r: dict) -> list[str]:
    on = r.get("int8_equalized")
    if not on:
        return []
    eq = on["equalization"]
    return ["", f"With residual-stream equalization (`--equalize`: {eq['streams']} streams, {eq['tensors']} tensors; "
            f"largest over median per-channel range {eq['range_ratio_before']:.1f} -> {eq['range_ratio_after']:.1f}) "
            f"INT8 ({r['calibration']}) loses {on['drop_points']:.2f} points, without it "
            f"{r['int8_accuracy_drop_points']:.2f}."]


def draw_lines(rows: list[dict]) -> list[str]:
    by_cal: dict[str, list[float]] = {}
    for row in rows:
        by_cal.setdefault(row["calibration"], []).append(row["drop_points"])
    if not rows or len(next(iter(by_cal.values()))) < 2:
        return []
    return ["", f"Drop (points) on {len(next(iter(by_cal.values())))} random sets of calibration images: " + "; ".join(
        f"{c} {', '.join(f'{d:.2f}' for d in ds)} (worst {max(ds):.2f})" for c, ds in by_cal.items()) + "."]


def sqnr_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    worst = min(rows, key=lambda e: e["sqnr_db"])
    peak = max(rows, key=lambda e: e["fp32_abs_max"])
    return [
        "",
        f"Per-tensor SQNR of the INT8 activations against FP32 ({len(rows)} tensors, graph order): "
        f"first {rows[0]['sqnr_db']:.1f} dB ({rows[0]['tensor']}), last {rows[-1]['sqnr_db']:.1f} dB "
        f"({rows[-1]['tensor']}), lowest {worst['sqnr_db']:.1f} dB ({worst['tensor']}). Largest FP32 activation "
        f"{peak['fp32_abs_max']:.1f} ({peak['tensor']}, mean magnitude {peak['fp32_abs_mean']:.2f}).",
    ]


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
