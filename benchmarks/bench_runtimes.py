"""Which runtime should a student ship on? (issue 44) Each student as every target kdexport makes, FP32 and INT8:
parity, accuracy on the whole CIFAR-10 test split run in that runtime, size, latency at batch 1 and 32 with 1 thread
and all threads, all files of a student timed in the same interleaved rounds.

Students (CIFAR-10, 32x32, the JPEG copy in ../shared/datasets): ``fastcifar:0.25``, ``fastcifar:0.5``,
``mobilenet_v3_small`` and ``resnet18`` (both with the CIFAR stem). Pass trained kdexport checkpoints with
``--checkpoint ARCH=PATH``; otherwise the script trains each one on labels alone (no teacher: the runtimes'
comparison does not depend on how the weights were learnt, and INT8's accuracy drop needs trained weights, not
the best ones): fastcifar with the students recipe's settings (SGD one-cycle, batch 1024, label smoothing 0.2,
EMA, bf16, shift2-flip) for ``--epochs`` epochs on the whole training split; mobilenet_v3_small and resnet18, too
slow for that on 2 cores, with Adam 3e-3 cosine for the same epochs: resnet18 at batch 256 on ``--train-images``
images, mobilenet_v3_small at batch 128 on the whole split (its BatchNorm statistics need the steps: FULL_DATA).
The schedule is in the JSON; the accuracies are these runs', not the students' best.

Files: ONNX FP32 (kdexport's export, parity-checked), ONNX static INT8 (onnxruntime QDQ, median calibration, 300
images), OpenVINO FP32 IR (from the ONNX file, FP32 weights, inference precision pinned to f32) and OpenVINO INT8
(NNCF, the same 300 images), LiteRT .tflite FP32 and INT8 (litert-torch; PT2E static INT8 on the same images; batch
1, XNNPACK), ExecuTorch .pte FP32 and INT8 (XNNPACK-lowered; XNNPACK PT2E quantizer on the same images) and a Core
ML package (converted and checked, not run: Core ML predicts only on macOS). Nothing is gated here: a large INT8
drop is reported, not hidden. Latency: kdexport's one harness (10 warm-up, 100 timed runs in 5 interleaved
rounds, p50 = median of the round p50s with its spread).
OpenVINO's own ``benchmark_app`` is run once per OpenVINO file beside it (sync API, one stream, batch 1, the same
threads, f32), to check the harness against the vendor's tool: its C++ loop has no Python call in it.

    python benchmarks/bench_runtimes.py [--epochs 4] [--train-images 10000] [--checkpoint resnet18=PATH ...]
    python benchmarks/bench_runtimes.py --students mobilenet_v3_small --update   # one student again

Writes benchmarks/results/bench_runtimes.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdexport.bench.timing import file_runner, interleaved, ratio, torch_threads
from kdexport.config import QuantConfig, TrainConfig
from kdexport.data.datasets import load_dataset
from kdexport.distill.train import evaluate, fit
from kdexport.envinfo import git_commit, now_iso, result_stamp, stamp_markdown, usable_cores
from kdexport.export.onnx import export_onnx
from kdexport.export.quantize import quantize_onnx
from kdexport.export.targets import TargetJob, export_targets
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model
from kdexport.models.checkpoint import load_model
from kdexport.runtimes.base import file_accuracy, runtime_version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = ("openvino", "litert", "executorch", "coreml")
STUDENTS = {"fastcifar:0.25": False, "fastcifar:0.5": False, "mobilenet_v3_small": True, "resnet18": True}
FAST = dict(batch_size=1024, optimizer="sgd", lr=1.5, momentum=0.85, weight_decay=0.00133, scheduler="onecycle",
            label_smoothing=0.2, ema=0.98, bias_lr_scale=64.0, precision="bf16", augment="shift2-flip")
SLOW = dict(batch_size=256, optimizer="adam", lr=3e-3, scheduler="cosine", augment="crop-flip")
# mobilenet_v3's BatchNorm keeps running statistics with momentum 0.01: after the ~160 steps of 10,000 images they
# have barely moved from their start, and the model in eval mode answers one class (10.00%) whatever it learnt.
# It gets the whole training split at batch 128 (~1,560 steps for 4 epochs).
FULL_DATA = {"fastcifar:0.25", "fastcifar:0.5", "mobilenet_v3_small"}
BATCH = {"mobilenet_v3_small": 128}


def train(arch: str, stem: bool, data, epochs: int, images: int) -> tuple[torch.nn.Module, dict]:
    spec = ModelSpec(arch, data.num_classes, data.input_shape, cifar_stem=stem)
    model = build_model(spec)
    opts = dict(FAST if arch.startswith("fastcifar") else SLOW)
    opts["batch_size"] = BATCH.get(arch, opts["batch_size"])
    augment = opts.pop("augment")
    subset = data
    if arch not in FULL_DATA and images < len(data.y_train):
        idx = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))[:images]
        subset = dataclasses.replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])
    cfg = TrainConfig(epochs=epochs, augment=augment, seed=0, device="cpu", **opts)
    t0 = time.perf_counter()
    fit(model, subset, cfg, label=arch)
    schedule = {**opts, "augment": augment, "epochs": epochs, "train_images": len(subset.y_train),
                "train_seconds": time.perf_counter() - t0}
    return model.cpu().eval(), schedule


def benchmark_app(xml: Path, threads: int, shape: list[int]) -> float | None:
    """OpenVINO's own latency median (ms) for one file, sync API, batch 1; None when the tool is not there."""
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    if not Path(tool).exists():
        return None
    cmd = [tool, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-api", "sync", "-niter", "200",
           "-nthreads", str(threads), "-shape", f"[1,{','.join(map(str, shape))}]", "-infer_precision", "f32"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"Median:\s+([\d.]+) (ms|us)", out)
    return (float(m.group(1)) / (1000 if m.group(2) == "us" else 1)) if m else None


def student_rows(arch: str, stem: bool, data, args, tmp: Path) -> dict:
    ckpt = dict(c.split("=", 1) for c in args.checkpoint).get(arch)
    if ckpt:
        model, spec, _ = load_model(ckpt)
        model, schedule = model.eval(), {"checkpoint": ckpt}
    else:
        print(f"{arch}: training ({args.epochs} epochs)", flush=True)
        model, schedule = train(arch, stem, data, args.epochs, args.train_images)
    acc_torch = evaluate(model, data, "test")["accuracy"]
    out = tmp / arch.replace(":", "-")
    parity_x = data.normalize(data.x_test[data.test_sample(256)])
    meta = {"arch": arch, "dataset": data.name, "class_names": data.class_names, "input_shape": list(data.input_shape),
            "mean": list(data.mean), "std": list(data.std)}
    onnx_path = out / "onnx" / "student.onnx"
    res = export_onnx(model, onnx_path, parity_x, metadata=meta)
    acc32 = file_accuracy(onnx_path, data)
    quant = QuantConfig(max_accuracy_drop=100.0)  # reported, not gated
    q = quantize_onnx(onnx_path, out / "onnx" / "student.int8.onnx", data, mode="static", quant=quant,
                      accuracy_fp32=acc32)
    rows = [{"target": "onnx", "precision": "fp32", "path": onnx_path, "bytes": res.onnx_bytes,
             "parity": res.parity(), "accuracy": acc32},
            {"target": "onnx", "precision": "int8", "path": out / "onnx" / "student.int8.onnx", "bytes": q.onnx_bytes,
             "parity": None, "accuracy": q.accuracy_int8}]
    job = TargetJob(model, onnx_path, out, "student", parity_x, data, meta, acc32, True, quant, 1e-4, None, None)
    for f in export_targets(TARGETS, job, print):
        rows.append({"target": f.target, "precision": f.precision, "path": out / f.path if f.path else None,
                     "bytes": f.bytes, "parity": f.parity, "accuracy": f.accuracy, "error": f.error,
                     "runs_here": f.runs_here, "note": f.note})
    kept = [r for r in rows if r.get("path") and r.get("runs_here", True)]
    for r in rows:
        r["runtime"] = "onnxruntime" if r["target"] == "onnx" else r["target"]
        r["accuracy_drop_points"] = (acc32 - r["accuracy"]) * 100 if r["accuracy"] is not None else None
        r["runs"] = []
    for threads in sorted({1, usable_cores()}):  # ExecuTorch keeps the pool its first program got: "threads" says
        name = {id(r): f"{r['target']} {r['precision']}" for r in kept}
        timed = {name[id(r)]: (file_runner(r["path"], threads), data) for r in kept}
        with torch_threads(threads):
            t = interleaved(timed, [1, 32])
        for r in kept:
            res_r = t[name[id(r)]]
            r["runs"].append({"threads": timed[name[id(r)]][0].threads, "threads_asked": threads,
                              "latency_ms": res_r["latency_ms"],
                              "throughput_per_s": res_r["throughput_per_s"],
                              "speedup_vs_onnx_fp32_batch_1": ratio(t["onnx fp32"], res_r)})
            if r["target"] == "openvino":
                r["runs"][-1]["benchmark_app_median_ms"] = benchmark_app(r["path"], threads,
                                                                         list(data.input_shape))
    for r in rows:
        r["path"] = str(r["path"].relative_to(tmp)) if r.get("path") else None
    return {"arch": arch, "cifar_stem": stem, "measured": {"created": now_iso(), "commit": git_commit()},
            "schedule": schedule, "accuracy_torch": acc_torch,
            "params": sum(p.numel() for p in model.parameters()), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--train-images", type=int, default=10_000)
    ap.add_argument("--students", default=",".join(STUDENTS))
    ap.add_argument("--checkpoint", action="append", default=[], help="ARCH=PATH of a trained kdexport checkpoint")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_runtimes"))
    ap.add_argument("--update", action="store_true",
                    help="replace these students in the existing results (the others keep theirs, each stamped)")
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/bench_runtimes.py")
    data = load_dataset("cifar10", args.data_dir, download=False)
    students = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for arch in args.students.split(","):
            students.append(student_rows(arch, STUDENTS[arch], data, args, Path(tmp)))
            print(markdown({**stamp, "students": students[-1:], "versions": {}}), flush=True)
    versions = {"onnxruntime": runtime_version("x.onnx"), "openvino": runtime_version("x.xml"),
                "litert": runtime_version("x.tflite"), "executorch": runtime_version("x.pte"),
                "coremltools": runtime_version("x.mlpackage")}
    if args.update and Path(args.out).with_suffix(".json").exists():
        old = json.loads(Path(args.out).with_suffix(".json").read_text())
        if old["environment"]["cpu"] != stamp["environment"]["cpu"] or old["versions"] != versions:
            raise SystemExit("--update: the existing results come from another CPU or runtime versions; rerun all")
        for s in old["students"]:  # measured by the run that wrote the file
            s.setdefault("measured", {"created": old["created"], "commit": old["environment"]["git_commit"]})
        mine = {s["arch"]: s for s in students}
        students = [mine.pop(s["arch"], s) for s in old["students"]] + list(mine.values())
    out = {**stamp, "versions": versions, "students": students}
    atomic_write_json(Path(args.out).with_suffix(".json"), out)
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    lines = ["# The student on each runtime", "", stamp_markdown(out), "",
             "Runtimes: " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()) + ". CIFAR-10 test split "
             "(10,000 images) run in each file's own runtime; p50 = median of 5 interleaved rounds' p50s (spread); "
             "benchmark_app: OpenVINO's own median, sync API, batch 1.", ""]
    for s in out["students"]:
        sched = s["schedule"]
        how = (f"checkpoint {sched['checkpoint']}" if "checkpoint" in sched else
               f"trained here on labels alone, {sched['epochs']} epochs on {sched['train_images']:,} images "
               f"({sched['optimizer']}, batch {sched['batch_size']})")
        when = s.get("measured", {})
        lines += [f"## {s['arch']}{' (CIFAR stem)' if s['cifar_stem'] else ''}: {s['params']:,} parameters, {how}, "
                  f"PyTorch {s['accuracy_torch'] * 100:.2f}%", "",
                  f"Measured {when.get('created', out['created'])} at commit {when.get('commit', '-')}.", "",
                  "| runtime | precision | size | parity max diff | accuracy | drop | threads | p50 ms @1 | "
                  "p50 ms @32 | img/s @32 | vs ONNX FP32 @1 | benchmark_app ms @1 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            if not r["runs"]:
                why = (f"not kept: {r.get('error')}" if r.get("error") else
                       "checked, not run (Core ML predicts only on macOS)" if r.get("path") else r.get("note", "-"))
                size = f"{r['bytes'] / 1024:.0f} KB" if r.get("bytes") else "-"
                lines.append(f"| {r['runtime']} | {r['precision']} | {size} | - | - | - | - | - | - | - | - | {why} |")
                continue
            for run in r["runs"]:
                b1, b32 = run["latency_ms"]["batch_1"], run["latency_ms"]["batch_32"]
                sp = run["speedup_vs_onnx_fp32_batch_1"]
                par = f"{r['parity']['max_abs_diff']:.1e}" if r["parity"] else "-"
                app = run.get("benchmark_app_median_ms")
                lines.append(
                    f"| {r['runtime']} | {r['precision']} | {r['bytes'] / 1024:.0f} KB | {par} | "
                    f"{r['accuracy'] * 100:.2f}% | {r['accuracy_drop_points']:+.2f} | {run['threads']} | "
                    f"{b1['p50']:.3f} ({b1['spread'][0]:.3f}-{b1['spread'][1]:.3f}) | {b32['p50']:.2f} | "
                    f"{run['throughput_per_s']:.0f} | {sp['median']:.2f}x | {f'{app:.3f}' if app else '-'} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
