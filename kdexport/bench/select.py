"""Pick the student for a budget, by measurement: ``kdexport select`` and ``distill-export --student auto``.

Every candidate architecture is built for the data's input shape and class count (random weights: latency
does not depend on them), exported to ONNX (INT8-quantized when asked) and timed with onnxruntime exactly
as ``bench`` times a model (p50 and p90 at the given batch and threads). The chosen student is the
candidate with the most capacity (FLOPs) whose latency (p50, or p90 with ``2ms@p90``) is within the budget
less a margin (default 10%), and whose file fits a size budget when one is given. Candidates over budget
are kept in the table, marked, not hidden.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import LatencyBudget, RunConfig
from ..data.datasets import Dataset
from ..errors import ConfigError, KdexportError, first_line
from ..files import atomic_write, atomic_write_json, atomic_write_text

# Compact and mobile CNNs (width multipliers where the family has them), and MLP sizes for flat inputs.
CNN_CANDIDATES = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                  "mnasnet0_5", "mnasnet1_0", "squeezenet1_1", "mobilenet_v2", "mobilenet_v3_large",
                  "regnet_x_400mf", "efficientnet_b0", "resnet18")
SMALL_IMAGE_CANDIDATES = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet56", "resnet8x4", "fastcifar:0.25",
                          "fastcifar:0.5", "fastcifar")
SMALL_IMAGE_MAX_SIDE = 64  # images up to this size (CIFAR, MNIST) also get kdexport's own small-image models
MLP_CANDIDATES = ("mlp:8", "mlp:16", "mlp:32", "mlp:64", "mlp:128", "mlp:256", "mlp:512", "mlp:1024",
                  "mlp:256,256", "mlp:512,512", "mlp:1200,1200")
FLAT_MAX_INPUTS = 1024  # inputs up to this many values (8x8 digits, 28x28 MNIST) also get MLP candidates

@dataclass
class Candidate:
    arch: str
    params: int | None = None
    flops: int | None = None
    fits: bool = False  # within every budget (set by choose)
    onnx_bytes: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    note: str = ""  # why it does not fit, or could not be measured
    p50_spread_ms: list[float] | None = None  # [min, max] of its round p50s

    def latency(self, stat: str) -> float | None:
        return self.p90_ms if stat == "p90" else self.p50_ms


def is_flat(input_shape: tuple[int, ...]) -> bool:
    """Small inputs that MLPs suit (8x8 digits, 28x28 MNIST)."""
    return math.prod(input_shape) <= FLAT_MAX_INPUTS


def default_candidates(input_shape: tuple[int, ...]) -> list[str]:
    small = len(input_shape) == 3 and max(input_shape[1:]) <= SMALL_IMAGE_MAX_SIDE
    return [*(MLP_CANDIDATES if is_flat(input_shape) else ()), *(SMALL_IMAGE_CANDIDATES if small else ()),
            *CNN_CANDIDATES]


def int8_mode(input_shape: tuple[int, ...]) -> str:
    """How ``--int8`` quantizes candidates: dynamic (MLP-friendly) for small flat inputs, else static."""
    return "dynamic" if is_flat(input_shape) else "static"


def choose(candidates: list[Candidate], budget: LatencyBudget | None, margin: float,
           size_budget: int | None = None) -> Candidate:
    """Mark which candidates fit; return the one with the most FLOPs that does (ties: the faster).
    Raises ConfigError (exit 2) naming the fastest candidate when none fits."""
    measured = [c for c in candidates if c.p50_ms is not None]
    for c in measured:
        lat = c.latency(budget.stat) if budget else None
        over_time = budget is not None and lat > budget.ms * (1 - margin)
        over_size = size_budget is not None and c.onnx_bytes > size_budget
        c.fits = not (over_time or over_size)
        c.note = ("; ".join(n for n in (
            f"over budget ({lat:.3f} ms > {budget.ms * (1 - margin):.3f} ms with the {margin:.0%} margin)"
            if over_time else "", f"over size ({c.onnx_bytes:,} > {size_budget:,} bytes)" if over_size else "")
            if n)) or c.note
    fitting = [c for c in measured if c.fits]
    if not fitting:
        if not measured:
            raise ConfigError("no candidate could be measured on this data")
        stat = budget.stat if budget else "p50"
        fastest = min(measured, key=lambda c: c.latency(stat))
        smallest = min(measured, key=lambda c: c.onnx_bytes)
        what = (f"{budget}" if budget else "") + (f"{' and ' if budget else ''}{size_budget:,} bytes"
                                                   if size_budget else "")
        raise ConfigError(f"no candidate fits {what} (margin {margin:.0%}): the fastest, {fastest.arch}, takes "
                          f"{fastest.latency(stat):.3f} ms {stat}; the smallest, {smallest.arch}, is "
                          f"{smallest.onnx_bytes:,} bytes")
    return max(fitting, key=lambda c: (c.flops or 0, -(c.latency(budget.stat if budget else "p50") or 0)))


def prepare_candidate(arch: str, data: Dataset, *, cifar_stem: bool, int8: str | None,
                      tmp: Path) -> tuple[Candidate, Path | None]:
    """Build and export (and quantize) one candidate; its row, and its file (None when it cannot be built)."""
    from ..export.onnx import export_onnx
    from ..models.builders import ModelSpec, build_model, count_flops, count_params

    c = Candidate(arch)
    try:
        torch.manual_seed(0)
        model = build_model(ModelSpec(arch, data.num_classes, data.input_shape, cifar_stem=cifar_stem)).eval()
    except KdexportError as e:
        c.note = f"cannot be built for this data: {first_line(e, 120)}"
        return c, None
    c.params, c.flops = count_params(model), count_flops(model, data.input_shape)
    path = tmp / f"{arch.replace(':', '_').replace(',', '_')}.onnx"
    export_onnx(model, path, data.normalize(data.x_test[:8]))
    if int8:
        from ..config import QuantConfig
        from ..export.quantize import quantize_file

        q = tmp / f"{path.stem}.int8.onnx"
        quantize_file(path, q, data, mode=int8, quant=QuantConfig(calibration_samples=64))
        path = q
    c.onnx_bytes = path.stat().st_size
    return c, path


def time_candidates(rows: list[tuple[Candidate, Path | None]], data: Dataset, *, threads: int, batch: int,
                    iters: int = 100, rounds: int = RunConfig.bench_rounds) -> None:
    """Time every built candidate as ``bench`` times models: together, in interleaved rounds (p50 = the median of
    its rounds' p50s), so no candidate's figure is one slow spell of the machine."""
    from .timing import interleaved, onnx_runner, torch_threads

    built = {c.arch: (c, path) for c, path in rows if path is not None}
    if not built:
        return
    timed = {arch: (onnx_runner(path, threads), data) for arch, (_, path) in built.items()}
    with torch_threads(threads):
        res = interleaved(timed, [batch], warmup=10, iters=iters, max_seconds=3.0, rounds=rounds)
    for arch, (c, _) in built.items():
        lat = res[arch]["latency_ms"][f"batch_{batch}"]
        c.p50_ms, c.p90_ms, c.p50_spread_ms = lat["p50"], lat["p90"], lat["spread"]


def select_student(data: Dataset, *, candidates: list[str] | None = None, budget: LatencyBudget | None,
                   size_budget: int | None = None, margin: float = 0.1, threads: int = 1, batch: int = 1,
                   int8: str | None = None, cifar_stem: bool = False, log=None) -> dict:
    """Measure every candidate and choose (see module doc); return the whole table and the choice."""
    import time

    t0 = time.perf_counter()
    names = list(candidates or default_candidates(data.input_shape))
    with tempfile.TemporaryDirectory() as tmp:
        built = []
        for i, arch in enumerate(names, 1):
            if log:
                log(f"select: {i}/{len(names)} {arch}: building and exporting")
            built.append(prepare_candidate(arch, data, cifar_stem=cifar_stem, int8=int8, tmp=Path(tmp)))
        if log:
            log(f"select: timing {sum(p is not None for _, p in built)} candidates in interleaved rounds")
        time_candidates(built, data, threads=threads, batch=batch)
    rows = [c for c, _ in built]
    chosen = choose(rows, budget, margin, size_budget)
    return {"budget": asdict(budget) if budget else None, "size_budget_bytes": size_budget, "margin": margin,
            "threads": threads, "batch": batch, "int8": int8, "cifar_stem": cifar_stem, "chosen": chosen.arch,
            "candidates": [asdict(c) for c in rows], "seconds": time.perf_counter() - t0}


def to_markdown(r: dict, env: dict | None = None) -> str:
    b = r["budget"]
    head = (f"Budget: {b['ms']:g} ms ({b['stat']}) less a {r['margin']:.0%} margin" if b else "No latency budget")
    if r.get("size_budget_bytes"):
        head += f"; size at most {r['size_budget_bytes']:,} bytes"
    lines = ["# kdexport select", "", f"{head}; batch {r['batch']}, {r['threads']} thread(s), "
             f"{'INT8 (' + r['int8'] + ')' if r['int8'] else 'FP32'}"
             + (f", on {env['cpu']}" if env else "") + f". Chosen: **{r['chosen']}** (the most FLOPs that fit). "
             f"Selection took {r['seconds']:.0f} s.", "",
             "| candidate | params | FLOPs | ONNX bytes | p50 ms | p90 ms | fits |", "|---|---|---|---|---|---|---|"]
    for c in sorted(r["candidates"], key=lambda c: (c["p50_ms"] is None, c["p50_ms"] or 0)):
        mark = "**chosen**" if c["arch"] == r["chosen"] else ("yes" if c["fits"] else f"no: {c['note']}")
        if c["p50_ms"] is None:
            lines.append(f"| {c['arch']} | - | - | - | - | - | no: {c['note']} |")
            continue
        lines.append(f"| {c['arch']} | {c['params']:,} | {c['flops']:,} | {c['onnx_bytes']:,} | {c['p50_ms']:.3f} | "
                     f"{c['p90_ms']:.3f} | {mark} |")
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stat = (r["budget"] or {}).get("stat", "p50")
    pts = [c for c in r["candidates"] if c["p50_ms"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in pts:
        lat = c["p90_ms"] if stat == "p90" else c["p50_ms"]
        color = "tab:green" if c["arch"] == r["chosen"] else ("tab:blue" if c["fits"] else "tab:red")
        ax.scatter([max(c["flops"], 1)], [lat], color=color)
        ax.annotate(c["arch"], (max(c["flops"], 1), lat), fontsize=7)
    if r["budget"]:
        ax.axhline(r["budget"]["ms"], ls="--", color="k", alpha=0.6, label=f"budget {r['budget']['ms']:g} ms")
        ax.axhline(r["budget"]["ms"] * (1 - r["margin"]), ls=":", color="k", alpha=0.4, label="budget less margin")
        ax.legend(fontsize=8)
    ax.set(xscale="log", xlabel="FLOPs per image (log)", ylabel=f"{stat} latency, ms (batch {r['batch']})",
           title="candidates: latency vs capacity (green chosen, red over budget)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_select(r: dict, out: Path, env: dict) -> None:
    atomic_write_json(out / "select.json", {**r, "environment": env})
    atomic_write_text(out / "select.md", to_markdown(r, env))
    plot(r, out / "select.png")
