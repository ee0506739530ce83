"""How far apart do same-architecture twins land, timed one after another vs in interleaved rounds? (issue 49)

A report times several models; twins (a baseline and its distilled student: one graph, other weights) should get
one latency. This times, all together as a report would, four twin pairs and an FP32/INT8 pair with kdexport's one
harness (``kdexport.bench.timing.interleaved``) in two ways, at batch 1 with the run defaults (10 warm-up runs,
100 timed runs per model, onnxruntime CPU, all usable cores):

- **one pass**: ``rounds=1``, each model's 100 runs one after another;
- **interleaved**: ``rounds=5`` (the default), round-robin over all models, p50 = the median of the round p50s;

each with onnxruntime's default sessions, whose worker threads spin for a while after every call ("spinning":
what reports used before issue 49, so "one pass, spinning" is the old figure), and with the sessions kdexport
times now, whose threads stop when a call returns (``session.force_spinning_stop``, "spin stop").

Models, random weights (latency does not depend on them), each exported twice with different seeds: ``mlp:14``
on digits (the FAST test report's student, ~10 us), ``resnet8``, ``mobilenet_v3_small`` with the CIFAR stem (the
issue's case) and ``resnet18`` with the CIFAR stem on 32x32 CIFAR-10 test images, and the first
``mobilenet_v3_small`` quantized static INT8 (kdexport's defaults) as the FP32/INT8 pair.

Two conditions, 5 repeats each (the plan, fixed before running: repeats use seeds 0-4, the two methods alternate
which goes first, nothing is dropped):

- **quiet**: nothing else runs;
- **one spell**: a busy process takes one core for as long as one model's one-pass measurement (the quiet one-pass
  total divided by the number of models), starting at a random moment (seed = repeat) within the timing: the
  "slow window" of the issue, as a stray job, a page-cache flush or memory freed after training would be.

Per pair and method: the twin gap |a - b| / min(a, b) in percent (median and max over repeats), whether
``disagree`` flags the pair (spreads that do not overlap and > 10% apart: the report's warning), and for the
INT8 pair the INT8-vs-FP32 speed ratio (mean +/- std and range over repeats, per-round medians for interleaved).

    python benchmarks/bench_timing_noise.py [--repeats 5] [--data-dir ../shared/datasets/cifar10-jpeg]

Writes benchmarks/results/bench_timing_noise.json and .md (or --out).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdexport.bench.timing import disagree, interleaved, onnx_runner, ratio, torch_threads
from kdexport.config import QuantConfig, RunConfig
from kdexport.data.datasets import Dataset, load_dataset
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.export.onnx import export_onnx
from kdexport.export.quantize import quantize_file
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model
from kdexport.runtimes.ort import ort_session

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAIRS = {"mlp:14": ("digits", False), "resnet8": ("cifar10", False), "mobilenet_v3_small": ("cifar10", True),
         "resnet18": ("cifar10", True)}
INT8_OF = "mobilenet_v3_small"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
BUSY = "import sys, time\nprint('go', flush=True)\ntime.sleep(float(sys.argv[1]))\nt = time.perf_counter()\n" \
       "while time.perf_counter() - t < float(sys.argv[2]):\n    pass\n"


def cifar_sample(root: Path, n: int = 500) -> Dataset:
    """``n`` CIFAR-10 test JPEGs (every class), decoded: enough real images to check parity and calibrate INT8."""
    from PIL import Image

    classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / "test" / name).iterdir())[:n // 10]]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f, _ in files])
    y = torch.tensor([c for _, c in files])
    return Dataset("cifar10-sample", x, y, x, y, classes, CIFAR_MEAN, CIFAR_STD, source=str(root))


def export_models(tmp: Path, data: dict[str, Dataset]) -> dict[str, tuple[Path, Dataset]]:
    files = {}
    for arch, (ds, stem) in PAIRS.items():
        d = data[ds]
        for twin in ("a", "b"):
            torch.manual_seed(0 if twin == "a" else 1)
            model = build_model(ModelSpec(arch, d.num_classes, d.input_shape, cifar_stem=stem))
            path = tmp / f"{arch.replace(':', '-')}-{twin}.onnx"
            export_onnx(model, path, d.normalize(d.x_test[:64].float()))
            files[f"{arch} {twin}"] = (path, d)
    src, d = files[f"{INT8_OF} a"]
    quantize_file(src, tmp / "int8.onnx", d, mode="static", quant=QuantConfig())
    files[f"{INT8_OF} a INT8"] = (tmp / "int8.onnx", d)
    return files


def spinning_runner(path: Path, threads: int):
    """A session as onnxruntime makes it by default (and kdexport timed before issue 49): threads spin after a call."""
    sess = ort_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x.numpy()})


def time_all(files: dict, rounds: int, threads: int, spin: bool) -> tuple[dict, float]:
    make = spinning_runner if spin else onnx_runner
    models = {name: (make(path, threads), d) for name, (path, d) in files.items()}
    t0 = time.perf_counter()
    with torch_threads(threads):
        res = interleaved(models, [1], warmup=RunConfig.bench_warmup, iters=RunConfig.bench_iters, rounds=rounds)
    return res, time.perf_counter() - t0


def spell(delay: float, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", BUSY, str(delay), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "go"
    return p


def gap(res: dict, a: str, b: str) -> float:
    pa, pb = res[a]["latency_ms"]["batch_1"]["p50"], res[b]["latency_ms"]["batch_1"]["p50"]
    return abs(pa - pb) / min(pa, pb) * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--out", default=str(HERE / "results" / "bench_timing_noise"))
    args = ap.parse_args()
    threads = usable_cores()
    stamp = result_stamp("benchmarks/bench_timing_noise.py", threads)
    data = {"digits": load_dataset("digits"), "cifar10": cifar_sample(Path(args.data_dir))}
    methods = {"one pass, spinning": (1, True), "interleaved, spinning": (RunConfig.bench_rounds, True),
               "one pass, spin stop": (1, False), "interleaved, spin stop": (RunConfig.bench_rounds, False)}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = export_models(Path(tmp), data)
        print(f"{len(files)} models: {', '.join(files)}", flush=True)
        time_all(files, 1, threads, spin=False)  # one untimed pass: every session and page warm before anything counts
        for condition in ("quiet", "one spell"):
            for rep in range(args.repeats):
                order = list(methods) if rep % 2 == 0 else list(methods)[::-1]  # each method first and last
                for method in order:
                    busy = None
                    if condition == "one spell":
                        quiet_total = statistics.median(r["seconds"] for r in runs
                                                        if r["method"] == "one pass, spin stop")
                        window = quiet_total / len(files)
                        delay = random.Random(rep).uniform(0, quiet_total - window)
                        busy = spell(delay, window)
                    res, seconds = time_all(files, methods[method][0], threads, spin=methods[method][1])
                    if busy is not None:
                        busy.wait()
                    runs.append({"condition": condition, "repeat": rep, "method": method, "seconds": seconds,
                                 **({"spell": {"start_s": delay, "seconds": window}} if busy else {}),
                                 "latency_ms": {n: r["latency_ms"]["batch_1"] for n, r in res.items()},
                                 "twin_gap_percent": {arch: gap(res, f"{arch} a", f"{arch} b") for arch in PAIRS},
                                 "twins_flagged": {arch: disagree(res[f"{arch} a"], res[f"{arch} b"])
                                                   for arch in PAIRS},
                                 "int8_vs_fp32": ratio(res[f"{INT8_OF} a"], res[f"{INT8_OF} a INT8"])["median"]})
                    print(f"{condition} #{rep} {method:22s} {seconds:5.2f} s  gaps %: "
                          + "  ".join(f"{a} {runs[-1]['twin_gap_percent'][a]:.1f}" for a in PAIRS)
                          + f"  INT8 speed {runs[-1]['int8_vs_fp32']:.2f}x", flush=True)
    summary = []
    for condition in ("quiet", "one spell"):
        for method in methods:
            rs = [r for r in runs if r["condition"] == condition and r["method"] == method]
            speeds = [r["int8_vs_fp32"] for r in rs]
            summary.append({
                "condition": condition, "method": method, "repeats": len(rs),
                "seconds_median": statistics.median(r["seconds"] for r in rs),
                "twin_gap_percent": {a: {"median": statistics.median(r["twin_gap_percent"][a] for r in rs),
                                         "max": max(r["twin_gap_percent"][a] for r in rs)} for a in PAIRS},
                "twins_flagged": {a: sum(r["twins_flagged"][a] for r in rs) for a in PAIRS},
                "p50_ms_median": {n: statistics.median(r["latency_ms"][n]["p50"] for r in rs) for n in files},
                "int8_vs_fp32": {"mean": statistics.mean(speeds), "std": statistics.stdev(speeds) if len(speeds) > 1
                                 else 0.0, "min": min(speeds), "max": max(speeds)}})
    out = {**stamp, "threads": threads, "warmup": RunConfig.bench_warmup, "iters": RunConfig.bench_iters,
           "methods": {m: {"rounds": r, "spinning": spin} for m, (r, spin) in methods.items()},
           "pairs": list(PAIRS), "int8_of": INT8_OF, "summary": summary, "runs": runs}
    atomic_write_json(Path(args.out).with_suffix(".json"), out)
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    pairs = out["pairs"]
    lines = ["# Timing noise: one pass vs interleaved rounds", "", stamp_markdown(out), "",
             f"Batch 1, {out['warmup']} warm-up + {out['iters']} timed runs per model, {out['threads']} threads, "
             f"all {len(out['summary'][0]['p50_ms_median'])} models timed together; one pass = 1 round, interleaved "
             f"= {out['methods']['interleaved, spin stop']['rounds']} rounds; spinning = onnxruntime's default "
             "sessions (threads spin after each call: how reports were timed before), spin stop = "
             "`session.force_spinning_stop` (how kdexport times now). Twin gap: |a - b| / min(a, b) of two exports "
             "of one architecture, median (max) over the repeats; flagged: repeats in which `disagree` (the report's "
             "warning) fired. INT8: mobilenet_v3_small static INT8 speed vs its FP32 file, mean +/- std (range).",
             "", "| condition | method | s per timing | " + " | ".join(f"{a} gap %" for a in pairs)
             + " | flagged | INT8 vs FP32 |", "|---|---|---|" + "---|" * len(pairs) + "---|---|"]
    for s in out["summary"]:
        g = s["twin_gap_percent"]
        i = s["int8_vs_fp32"]
        flagged = sum(s["twins_flagged"].values())
        lines.append(f"| {s['condition']} | {s['method']} | {s['seconds_median']:.2f} | "
                     + " | ".join(f"{g[a]['median']:.1f} ({g[a]['max']:.1f})" for a in pairs)
                     + f" | {flagged} of {s['repeats'] * len(pairs)} | {i['mean']:.2f} +/- {i['std']:.2f}x "
                       f"({i['min']:.2f}-{i['max']:.2f}) |")
    lines += ["", "Median p50 (ms) over the repeats:", "",
              "| condition | method | " + " | ".join(out["summary"][0]["p50_ms_median"]) + " |",
              "|---|---|" + "---|" * len(out["summary"][0]["p50_ms_median"])]
    for s in out["summary"]:
        lines.append(f"| {s['condition']} | {s['method']} | "
                     + " | ".join(f"{v:.3f}" for v in s["p50_ms_median"].values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
