"""``kdexport bench``: latency (and accuracy, given data) of any ONNX image classifier."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .bench import bench_onnx, bench_torch, onnx_accuracy, real_inputs
from .data import Dataset
from .envinfo import environment, now_iso
from .errors import DataError, ExportError
from .export import read_metadata
from .io import atomic_write, atomic_write_json, atomic_write_text


def inspect_classifier(path: str | os.PathLike) -> dict:
    """Input name/shape and class count of an ONNX image classifier; clear errors otherwise."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{str(path)!r} does not exist")
    try:
        m = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(m)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ExportError(f"{str(path)!r} is not a valid ONNX model: {why}") from None
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(m.graph.output) < 1:
        raise ExportError(f"{path.name}: expected one image input and a logits output, found {len(inputs)} inputs")

    def dims(vi) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    ishape, oshape = dims(inputs[0]), dims(m.graph.output[0])
    if len(ishape) != 4 or len(oshape) != 2:
        raise ExportError(
            f"{path.name} is not an image classifier: input shape {ishape}, output shape "
            f"{oshape} (expected N x C x H x W -> N x classes)"
        )
    meta = read_metadata(path)
    chw = ishape[1:]
    if any(d is None for d in chw) and "input_shape" in meta:
        chw = list(meta["input_shape"])
    return {
        "input_name": inputs[0].name,
        "input_shape": chw,
        "num_classes": oshape[1],
        "metadata": meta,
        "bytes": path.stat().st_size,
    }


def bench_models(
    paths: list[Path],
    *,
    batches: list[int],
    threads: list[int],
    iters: int,
    warmup: int,
    max_seconds: float | None,
    graph_opt: str,
    data: Dataset | None = None,
    checkpoint: Path | None = None,
    input_shape: list[int] | None = None,
) -> dict:
    models = {}
    for path in paths:
        info = inspect_classifier(path)
        chw = input_shape or info["input_shape"]
        if any(d is None for d in chw):
            raise ExportError(f"{path.name} has a dynamic input size {chw}; pass --input-shape C,H,W")
        if data is not None:
            if list(data.input_shape) != list(chw):
                raise DataError(f"{path.name} takes inputs {chw}; dataset {data.name} gives {list(data.input_shape)}")
            n_out = info["num_classes"] or _run_once(path, real_inputs(data, 1))
            if n_out != data.num_classes:
                raise DataError(f"{path.name} has {n_out} classes; dataset {data.name} has {data.num_classes}")

            def inputs_for(b: int) -> torch.Tensor:
                return real_inputs(data, b)
        else:
            gen = torch.Generator().manual_seed(0)

            def inputs_for(b: int, chw=chw, gen=gen) -> torch.Tensor:
                return torch.randn(b, *chw, generator=gen)

        entry = {
            "path": str(path),
            "onnx_bytes": info["bytes"],
            "input_shape": chw,
            "num_classes": info["num_classes"],
            "arch": info["metadata"].get("arch"),
            "quantization": info["metadata"].get("quantization"),
            "runs": [],
        }
        for t in threads:
            r = bench_onnx(
                path,
                inputs_for,
                batches,
                threads=t,
                warmup=warmup,
                iters=iters,
                max_seconds=max_seconds,
                graph_opt=graph_opt,
            )
            entry["runs"].append(
                {"threads": t, "latency_ms": r["latency_ms"], "throughput_per_s": r["throughput_per_s"]}
            )
        if data is not None:
            entry["accuracy_onnx"] = onnx_accuracy(path, data, max(threads))
        models[path.stem if path.stem not in models else str(path)] = entry
    result = {
        "created": now_iso(),
        "environment": environment(max(threads)),
        "session": {
            "provider": "CPUExecutionProvider",
            "graph_optimization": graph_opt,
            "intra_op_threads": threads,
            "inter_op_threads": 1,
            "warmup": warmup,
            "iters": iters,
            "max_seconds": max_seconds,
            "batches": batches,
        },
        "dataset": data.info() if data is not None else None,
        "models": models,
    }
    if checkpoint is not None:
        from .checkpoint import load_model

        model, spec, _ = load_model(checkpoint)
        gen = torch.Generator().manual_seed(0)
        inputs_for = (
            (lambda b: real_inputs(data, b))
            if data is not None
            else (lambda b: torch.randn(b, *spec.input_shape, generator=gen))
        )
        result["torch_eager"] = {
            "checkpoint": str(checkpoint),
            "arch": spec.arch,
            "runs": [
                {
                    "threads": t,
                    **{
                        k: v
                        for k, v in bench_torch(
                            model, inputs_for, batches, threads=t, warmup=warmup, iters=iters, max_seconds=max_seconds
                        ).items()
                        if k != "threads"
                    },
                }
                for t in threads
            ],
        }
    return result


def _run_once(path: Path, x: torch.Tensor) -> int:
    from .export import ort_session

    s = ort_session(path)
    return int(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0].shape[1])


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names not dominated in (lower latency, higher accuracy)."""
    front = []
    for n, lat, acc in points:
        if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for _, l2, a2 in points):
            front.append(n)
    return front


def to_markdown(r: dict) -> str:
    b = r["session"]["batches"]
    head = (
        ["model", "threads", "size", "accuracy"] + [f"p50 ms @{x}" for x in b] + [f"p99 ms @{b[0]}", f"img/s @{b[-1]}"]
    )
    lines = [
        "# kdexport bench",
        "",
        f"{r['created']}; {r['environment']['cpu']} ({r['environment']['cpu_cores']} cores), "
        f"onnxruntime {r['environment']['onnxruntime']}, graph optimization {r['session']['graph_optimization']}, "
        f"{r['session']['warmup']} warm-up + up to {r['session']['iters']} timed runs.",
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
        lat = [f"{run['latency_ms'][f'batch_{x}']['p50']:.3f}" for x in b]
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
        lat = run["latency_ms"][f"batch_{b0}"]["p50"]
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
        title="latency vs accuracy",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_bench(r: dict, out: Path) -> None:
    pts = [
        (
            n,
            max(m["runs"], key=lambda x: x["threads"])["latency_ms"][f"batch_{r['session']['batches'][0]}"]["p50"],
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
