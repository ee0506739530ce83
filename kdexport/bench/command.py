"""``kdexport bench``: latency (and accuracy, given data) of any image classifier file a runtime of kdexport runs
(``.onnx``/``.ort`` with onnxruntime, ``.xml`` with OpenVINO), every file in the same interleaved rounds."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from ..config import BenchOptions
from ..data.datasets import Dataset, real_inputs
from ..envinfo import check_fits_memory, environment, now_iso, usable_cores
from ..errors import ConfigError, DataError, ModelFileError
from ..files import atomic_write, atomic_write_json, atomic_write_text
from ..models.checkpoint import load_model
from ..runtimes.base import file_accuracy, inspect, load, runtime_for, runtime_version
from ..runtimes.ort import data_for_model
from .timing import InputsFor, eager_runner, file_runner, interleaved, p50, torch_threads


def bench_data(o: BenchOptions) -> Dataset | None:
    """The data to measure accuracy on: ``--dataset``, else the dataset the first model's metadata names (as
    ``quantize`` finds it); one that cannot be loaded then is a warning, not a failure: accuracy is optional here."""
    if o.dataset:
        return data_for_model(o.models[0], o.dataset, o.data_dir)
    try:
        named = inspect(o.models[0])["metadata"].get("dataset")
    except ModelFileError:
        return None  # the model's own error comes with its row
    if not isinstance(named, str):
        return None
    try:
        return data_for_model(o.models[0], named, o.data_dir)
    except (DataError, ConfigError) as e:
        warnings.warn(f"accuracy not measured: {Path(o.models[0]).name} names dataset {named!r}, which cannot be "
                      f"loaded here ({e}); pass --dataset and --data-dir", RuntimeWarning, stacklevel=2)
        return None


def bench_models(o: BenchOptions) -> dict:
    """Time every model of ``o`` (and its accuracy, given a dataset or one named in the first model's metadata);
    return bench.json's content."""
    data = bench_data(o)
    threads = list(o.threads) or [usable_cores()]
    batches = list(o.batch_sizes)
    timing = {"warmup": o.warmup, "iters": o.iters, "max_seconds": o.max_seconds, "rounds": min(o.rounds, o.iters)}
    models = {}
    shapes = {}
    for path in map(Path, o.models):
        info = inspect(path)
        chw = list(o.input_shape) if o.input_shape else info["input_shape"]
        if any(d is None for d in chw):
            raise ModelFileError(f"{path.name} has a dynamic input size {chw}; pass --input-shape C,H,W")
        if not all(isinstance(d, int) and d >= 1 for d in chw):
            raise ModelFileError(f"{path.name}: input shape {chw} is not C x H x W of positive sizes")
        if data is not None:
            if list(data.input_shape) != list(chw):
                raise DataError(f"{path.name} takes inputs {chw}; dataset {data.name} gives {list(data.input_shape)}")
            n_out = info["num_classes"] or _run_once(path, real_inputs(data, 1))
            if n_out != data.num_classes:
                raise DataError(f"{path.name} has {n_out} classes; dataset {data.name} has {data.num_classes}")
        entry = {
            "path": str(path),
            "runtime": runtime_for(path),
            "runtime_version": runtime_version(path),
            "onnx_bytes": info["bytes"],  # every file of the model (an OpenVINO IR's .xml and .bin)
            "input_shape": chw,
            "num_classes": info["num_classes"],
            "arch": info["metadata"].get("arch"),
            "quantization": info["metadata"].get("quantization"),
            "runs": [],
        }
        check_fits_memory(4 * max(batches) * math.prod(chw), f"{path.name}'s input {chw} at batch {max(batches)}",
                          "pass smaller --batch-sizes or --input-shape")
        if info["batch"]:
            entry["fixed_batch"] = info["batch"]
            entry["note"] = (f"the graph's batch is fixed at {info['batch']}: batch B is timed as "
                             f"ceil(B / {info['batch']}) calls")
        if data is not None:
            entry["accuracy_onnx"] = file_accuracy(path, data, max(threads))
        name = next(n for n in (path.stem, path.name, str(path)) if n not in models)  # student, student.xml, ...
        models[name], shapes[name] = entry, chw
    result = {
        "created": now_iso(),
        "environment": environment(max(threads)),
        "session": {
            "provider": "CPUExecutionProvider",
            "graph_optimization": o.graph_opt,
            "intra_op_threads": threads,
            "inter_op_threads": 1,
            **timing,
            "batches": batches,
        },
        "dataset": data.info() if data is not None else None,
        "models": models,
    }
    eager = load_model(o.checkpoint) if o.checkpoint is not None else None
    if eager is not None:
        result["torch_eager"] = {"checkpoint": str(o.checkpoint), "arch": eager[1].arch, "runs": []}
    for t in threads:  # every model (and the eager checkpoint) in the same interleaved rounds, per thread count
        timed = {name: (file_runner(m["path"], t, o.graph_opt), _inputs(data, shapes[name]))
                 for name, m in models.items()}
        if eager is not None:
            timed[EAGER] = (eager_runner(eager[0]), _inputs(data, eager[1].input_shape))
        with torch_threads(t):
            res = interleaved(timed, batches, warmup=o.warmup, iters=o.iters, max_seconds=o.max_seconds,
                              rounds=o.rounds)
        for name, m in models.items():
            m["runs"].append(_run(t, res[name]))
        if eager is not None:
            result["torch_eager"]["runs"].append(_run(t, res[EAGER]))
    return result


EAGER = " torch eager"  # the eager checkpoint's name in the rounds (no ONNX file's stem starts with a space)


def _run(threads: int, r: dict) -> dict:
    return {"threads": threads, "latency_ms": r["latency_ms"], "throughput_per_s": r["throughput_per_s"]}


def _inputs(data: Dataset | None, chw) -> InputsFor:
    """Real test images when there is data, else seeded random inputs of the model's shape."""
    if data is not None:
        return lambda b: real_inputs(data, b)
    gen = torch.Generator().manual_seed(0)
    return lambda b: torch.randn(b, *chw, generator=gen)


def _run_once(path: Path, x: torch.Tensor) -> int:
    return int(load(path).logits(x.numpy()).shape[1])


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names not dominated in (lower latency, higher accuracy)."""
    front = []
    for n, lat, acc in points:
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for _, l2, a2 in points):
            front.append(n)
    return front


def _p50_text(lat: dict) -> str:
    spread = lat.get("spread")
    return f"{lat['p50']:.3f} ({spread[0]:.3f}-{spread[1]:.3f})" if spread else f"{lat['p50']:.3f}"


def to_markdown(r: dict) -> str:
    b = r["session"]["batches"]
    head = (
        ["model", "threads", "size", "accuracy"] + [f"p50 ms @{x}" for x in b] + [f"p99 ms @{b[0]}", f"img/s @{b[-1]}"]
    )
    lines = [
        "# kdexport bench",
        "",
        f"{r['created']}; {r['environment']['cpu']} ({r['environment']['cpu_cores']} cores), "
        + ", ".join(sorted({f"{m.get('runtime', 'onnxruntime')} {m.get('runtime_version') or ''}".strip()
                            for m in r["models"].values()}))
        + f", onnxruntime graph optimization {r['session']['graph_optimization']}, "
        f"{r['session']['warmup']} warm-up + up to {r['session']['iters']} timed runs per model in "
        f"{r['session'].get('rounds', 1)} rounds that go round-robin over the models: a p50 is the median of its "
        "rounds' p50s, with their [min, max] in brackets.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    rows = [(name, m, run) for name, m in r["models"].items() for run in m["runs"]]
    if "torch_eager" in r:
        rows += [(f"{r['torch_eager']['arch']} (PyTorch eager)", None, run) for run in r["torch_eager"]["runs"]]
    for name, m, run in rows:
        acc = f"{m['accuracy_onnx'] * 100:.2f}%" if m and "accuracy_onnx" in m else "-"
        size = f"{m['onnx_bytes'] / 1024:.1f} KB" if m else "-"
        lat = [_p50_text(run["latency_ms"][f"batch_{x}"]) for x in b]
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    str(run["threads"]),
                    size,
                    acc,
                    *lat,
                    f"{run['latency_ms'][f'batch_{b[0]}']['p99']:.3f}",
                    f"{run['throughput_per_s']:.0f}",
                ]
            )
            + " |"
        )
    lines += [f"\nNote: {name}: {m['note']}" for name, m in r["models"].items() if m.get("note")]
    if r.get("pareto"):
        lines += ["", f"Pareto front (latency @{b[0]} vs accuracy): {', '.join(r['pareto'])}"]
    return "\n".join(lines) + "\n"


def plot_pareto(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b0 = r["session"]["batches"][0]
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = []
    for name, m in r["models"].items():
        run = max(m["runs"], key=lambda x: x["threads"])
        lat = p50(run, b0)
        y = m.get("accuracy_onnx", m["onnx_bytes"] / 1e6)
        pts.append((name, lat, y))
        ax.scatter([lat], [y * 100 if "accuracy_onnx" in m else y])
        ax.annotate(name, (lat, y * 100 if "accuracy_onnx" in m else y), fontsize=8)
    has_acc = all("accuracy_onnx" in m for m in r["models"].values())
    if has_acc:
        front = sorted((p for p in pts if p[0] in r.get("pareto", [])), key=lambda p: p[1])
        ax.plot([p[1] for p in front], [p[2] * 100 for p in front], "--", alpha=0.5, label="Pareto front")
        ax.legend()
    ax.set(
        xscale="log",
        xlabel=f"p50 latency at batch {b0} (ms, log)",
        ylabel="test accuracy (%)" if has_acc else "ONNX size (MB)",
        title="latency vs accuracy" if has_acc else "latency vs file size",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_bench(r: dict, out: Path) -> None:
    pts = [
        (
            n,
            p50(max(m["runs"], key=lambda x: x["threads"]), r["session"]["batches"][0]),
            m["accuracy_onnx"],
        )
        for n, m in r["models"].items()
        if "accuracy_onnx" in m
    ]
    if pts and len(pts) == len(r["models"]):
        r["pareto"] = pareto_front(pts)
    atomic_write_json(out / "bench.json", r)
    atomic_write_text(out / "bench.md", to_markdown(r))
    plot_pareto(r, out / "pareto.png")
