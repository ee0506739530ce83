"""Compact students as a deployment decision (issue 19): for each student sweep, its baseline and its
distilled student (the best cell, seed 0) in FP32 and INT8, and the teacher, side by side in one run:
ONNX size, p50 latency at batch 1 (onnxruntime CPU, 1 thread and all usable cores; the median over rounds through
all models, so that a slow spell of the machine does not pick one) and test accuracy, with
the mean +/- std over seeds of the FP32 models from the sweep and the Pareto front (accuracy vs ms).

    python benchmarks/run_recipe.py cifar10-fast-teacher-students          # and the other student recipes
    python benchmarks/bench_students.py runs/recipes/cifar10-fast-teacher-students \\
        runs/recipes/cifar10-fast-teacher-resnet18 runs/recipes/cifar10-fast-teacher-fastcifar-0.5 \\
        runs/recipes/cifar10-fast-teacher-wide [--data-dir ../shared/datasets/cifar10-jpeg]

Each teacher and each baseline is listed once: a baseline does not depend on the teacher (same seed, data order
and schedule, so the same accuracies), so two sweeps of one student share it; a distilled row names its teacher.

INT8 is onnxruntime's static QDQ quantization with kdexport's defaults (median calibration, 300 images), its
accuracy measured on the whole test split and never gated here (a large drop is reported, not hidden).
Writes benchmarks/results/bench_students.json, .md and .png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

from kdexport.allocator import prefer_kept
from kdexport.bench.command import pareto_front, plot_pareto
from kdexport.bench.timing import interleaved, onnx_runner, torch_threads
from kdexport.config import QuantConfig
from kdexport.envinfo import result_stamp, stamp_markdown, usable_cores
from kdexport.export.quantize import quantize_onnx
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.runtimes.base import file_accuracy as onnx_accuracy
from kdexport.runtimes.ort import data_for_model, inspect_classifier

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def sweep_rows(sweep_dir: Path) -> list[dict]:
    """The FP32 models a finished sweep exported (best/), with the sweep's seed statistics."""
    s = json.loads((sweep_dir / "sweep.json").read_text())
    best = s["best"]
    rows = [{"name": f"teacher {s['teacher']['arch']}", "role": "teacher", "arch": s["teacher"]["arch"],
             "path": sweep_dir / "best" / "onnx" / "teacher.onnx", "seed_stats": None},
            {"name": f"{s['baseline']['arch']} baseline", "role": "baseline", "arch": s["baseline"]["arch"],
             "path": sweep_dir / "best" / "onnx" / "baseline.onnx",
             "seed_stats": {k: s["baseline"][k] for k in ("mean", "std", "accuracies")}},
            {"name": f"{s['baseline']['arch']} KD {best['cell']} from {s['teacher']['arch']}", "role": "distilled",
             "arch": s["baseline"]["arch"],
             "path": sweep_dir / "best" / "onnx" / "student.onnx",
             "seed_stats": {k: best[k] for k in ("mean", "std", "accuracies")},
             "kd_gain_points": best["kd_gain_points"]}]
    for r in rows:
        if not r["path"].exists():
            raise SystemExit(f"{r['path']} is missing: run the sweep to the end first")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", nargs="+", help="finished sweep folders (their best/ holds the exported models)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"))
    ap.add_argument("--iters", type=int, default=300, help="timed runs per latency (after 30 warm-up runs)")
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds over all models; the median is reported")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_students"))
    args = ap.parse_args()
    cores = usable_cores()
    stamp = result_stamp("benchmarks/bench_students.py", cores)

    rows: list[dict] = []
    listed = set()
    for d in map(Path, args.sweeps):
        for r in sweep_rows(d):
            # Student recipes share teachers, and a baseline does not depend on the teacher (same seed, data order
            # and schedule: the same accuracies): list each once. Any other clash of names gets the sweep's name.
            key = (r["role"], r["arch"], tuple(r["seed_stats"]["accuracies"]) if r["seed_stats"] else None)
            if r["role"] in ("teacher", "baseline") and key in listed:
                continue
            listed.add(key)
            if any(r["name"] == x["name"] for x in rows):
                r["name"] += f" ({d.name})"
            r["sweep"] = str(d)
            rows.append(r)
    data = data_for_model(rows[0]["path"], "cifar10", args.data_dir)
    quant = dataclasses.replace(QuantConfig(), max_accuracy_drop=100.0)  # measured and reported, never gated
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, r in enumerate(rows):
            acc32 = onnx_accuracy(r["path"], data, cores)
            q = Path(tmp) / f"{i}-int8.onnx"
            qr = quantize_onnx(r["path"], q, data, mode="static", quant=quant, threads=cores, accuracy_fp32=acc32)
            for precision, path, acc in (("fp32", r["path"], acc32), ("int8", q, qr.accuracy_int8)):
                models.append({"name": f"{r['name']} {precision.upper()}", "role": r["role"], "arch": r["arch"],
                               "precision": precision, "sweep": r["sweep"], "path": path,
                               "onnx_bytes": inspect_classifier(path)["bytes"], "accuracy_onnx": acc,
                               "seed_stats": r["seed_stats"] if precision == "fp32" else None,
                               "kd_gain_points": r.get("kd_gain_points") if precision == "fp32" else None})
                print(f"{models[-1]['name']}: {acc * 100:.2f}%, {models[-1]['onnx_bytes'] / 1024:.0f} KB", flush=True)
        # Latency through kdexport's one harness: every model in the same interleaved rounds, per thread count, so
        # that a slow spell of the machine hits every model alike; each model's number is the median over rounds of
        # its p50 (files of one architecture should then agree).
        per_round: dict[str, dict[int, list[float]]] = {m["name"]: {} for m in models}
        for t in sorted({1, cores}):
            with torch_threads(t):
                res = interleaved({m["name"]: (onnx_runner(m["path"], t), data) for m in models}, [1], warmup=30,
                                  iters=args.iters * args.rounds, rounds=args.rounds)
            for m in models:
                per_round[m["name"]][t] = res[m["name"]]["latency_ms"]["batch_1"]["round_p50"]
            print(f"latency at {t} thread(s) done", flush=True)
    for m in models:
        del m["path"]
        m["p50_ms_batch1"] = {str(t): statistics.median(v) for t, v in per_round[m["name"]].items()}
        m["p50_ms_batch1_rounds"] = {str(t): v for t, v in per_round[m["name"]].items()}
    front = pareto_front([(m["name"], m["p50_ms_batch1"]["1"], m["accuracy_onnx"]) for m in models])
    for m in models:
        m["pareto"] = m["name"] in front
    result = {**stamp, "data": data.info(), "iters": args.iters, "rounds": args.rounds,
              "quantization": dataclasses.asdict(quant), "models": models}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), to_markdown(result))
    plot_pareto({"session": {"batches": [1]}, "pareto": front,
                 "models": {m["name"]: {"runs": [{"threads": 1,
                                                  "latency_ms": {"batch_1": {"p50": m["p50_ms_batch1"]["1"]}}}],
                                        "accuracy_onnx": m["accuracy_onnx"], "onnx_bytes": m["onnx_bytes"]}
                            for m in models}}, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')}, .md and .png")


def to_markdown(r: dict) -> str:
    threads = sorted({t for m in r["models"] for t in m["p50_ms_batch1"]}, key=int)
    lines = ["# Compact CIFAR-10 students: accuracy vs latency vs size", "", stamp_markdown(r), "",
             "Seed-0 files of each student sweep's best cell and baseline; `over seeds` is the sweep's FP32 test "
             "accuracy over its seeds (mean ± sample std); INT8 = onnxruntime static QDQ, median calibration, 300 "
             "images. Latency: p50 of " + str(r["iters"]) + " runs at batch 1 after 30 warm-up runs, onnxruntime "
             "CPU, median over " + str(r.get("rounds", 1)) + " rounds through all models. Pareto: not beaten on "
             "both 1-thread latency and accuracy by another row.", "",
             "| model | ONNX size | accuracy (seed 0) | over seeds | "
             + " | ".join(f"p50 ms @1, {t} thr" for t in threads) + " | Pareto |",
             "|---|---|---|---|" + "---|" * len(threads) + "---|"]
    for m in r["models"]:
        s = m["seed_stats"]
        n = len(s["accuracies"]) if s else 0
        seeds = (f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f} ({n} seeds)" if n > 1
                 else f"{s['mean'] * 100:.2f} (one seed)" if n else "")
        gain = f" (KD {m['kd_gain_points']:+.2f})" if m.get("kd_gain_points") is not None else ""
        lat = " | ".join(f"{m['p50_ms_batch1'][t]:.3f}" for t in threads)
        lines.append(f"| {m['name']} | {m['onnx_bytes'] / 1024:.0f} KB | {m['accuracy_onnx'] * 100:.2f}% | "
                     f"{seeds}{gain} | {lat} | {'yes' if m['pareto'] else ''} |")
    lines += ["", f"![accuracy vs latency]({Path(r.get('png', 'bench_students.png')).name})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    prefer_kept()  # as the CLI does: see kdexport/allocator.py
    main()
