"""INT8 with automatic FP32 fallback (``--fallback auto``): when a static INT8 model loses more accuracy
than the budget, keep the layers whose quantization errs most in float until it fits.

1. Rank the activation tensors of the quantized graph by their local quantization error: the SQNR (dB)
   between each tensor before and after its QuantizeLinear/DequantizeLinear pair, on a few batches of
   training images that were not used for calibration (``kdexport.export.diagnose.qdq_sqnr``, the INT8
   report's measure). A tensor whose range is stretched by outliers has a low SQNR on typical images; errors
   that only accumulate from upstream do not count against it.
2. Keep the worst 1, 2, 4, 8, ... tensors in FP32: their producing node and every node that consumes
   them go to ``nodes_to_exclude``. After each group, re-quantize and measure the accuracy on the whole
   test split and the p50 latency at batch 1, until the drop is within the budget or every ranked tensor
   is in float; then bisect between the last failing and the first passing group size, since every
   node kept in float costs latency.

The result records every step: which nodes were added, the accuracy and the latency it cost.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import QuantConfig
from ..data.datasets import Dataset
from ..runtimes.base import file_accuracy

# A file's batch-1 p50 in ms, given by the caller (kdexport.bench.timing.quick_p50): bench comes after export.
Latency = Callable[[Path], float]

RANK_BATCHES = 4  # calibration batches used to rank tensors


def rank_tensors(float_model: Path, qdq_model: Path, batches: list[np.ndarray]) -> list[tuple[str, float]]:
    """Activation tensors of ``qdq_model``, worst local quantization error (lowest SQNR, dB) first: the INT8
    report's measure (:func:`kdexport.export.diagnose.qdq_sqnr`), every tensor. Their names are ``float_model``'s,
    which the quantizer kept."""
    from .diagnose import qdq_sqnr

    return [(r["tensor"], r["sqnr_db"]) for r in qdq_sqnr(qdq_model, batches[:RANK_BATCHES], top=None)]


def ranking_batches(data: Dataset, calib: list[np.ndarray]) -> list[np.ndarray]:
    """Training images other than the calibration ones (another seeded draw). Ranking on the calibration
    images would hide the fault being looked for: the rare outlier images that stretched a range are
    represented well by it, and their large values dominate the signal power of the SQNR."""
    from .quantize import calibration_inputs

    batch = calib[0].shape[0] if calib else 32
    x = calibration_inputs(data, RANK_BATCHES * batch, seed=1)
    return [x[i:i + batch] for i in range(0, len(x) - len(x) % batch, batch)] or [x]


def tensor_nodes(model: Path) -> Callable[[str], list[str]]:
    """tensor -> the named nodes that produce or consume it in ``model``."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    users: dict[str, list[str]] = defaultdict(list)
    for node in graph.node:
        if node.name:
            for t in [*node.output, *node.input]:
                if t and node.name not in users[t]:
                    users[t].append(node.name)
    return lambda t: users.get(t, [])


def fallback_search(prep, dest: Path, data: Dataset, quant: QuantConfig, acc32: float, acc8: float,
                    threads: int | None, *, quantize: Callable[[Path, list[str]], None],
                    latency: Latency | None = None) -> dict:
    """Grow the set of FP32 nodes until ``dest`` (replaced in place) meets ``quant.max_accuracy_drop``.

    ``prep`` is the pre-processed float graph and calibration batches; ``quantize(path, nodes)``
    re-quantizes with ``nodes`` excluded; ``latency(path)`` times each step (None: steps record no latency).
    Returns the record of the search (``fp32_nodes`` empty and ``why`` set when no group met the budget;
    ``dest`` is then the all-INT8 model, which the caller refuses)."""

    def _p50(path: Path, data: Dataset, threads: int | None) -> float | None:
        return latency(path) if latency is not None else None

    ranked = rank_tensors(prep.pre, dest, ranking_batches(data, prep.calib))
    nodes_of = tensor_nodes(prep.pre)
    budget = quant.max_accuracy_drop
    steps = [{"tensors": 0, "added_nodes": [], "accuracy_int8": acc8, "drop_points": (acc32 - acc8) * 100,
              "p50_ms": _p50(dest, data, threads)}]
    result = {"method": "local SQNR of each QDQ round trip, growing groups (1, 2, 4, ...), then bisection",
              "ranked": [{"tensor": t, "sqnr_db": round(v, 3)} for t, v in ranked[:20]],
              "p50_ms_fp32": _p50(prep.pre, data, threads), "p50_ms_all_int8": steps[0]["p50_ms"],
              "steps": steps, "fp32_nodes": [], "accuracy_int8": acc8, "why": None}
    def nodes_for(k: int) -> list[str]:
        return list(dict.fromkeys(n for t, _ in ranked[:k] for n in nodes_of(t)))

    def trial(k: int, path: Path) -> bool:
        """Quantize with the worst ``k`` tensors in FP32; record the step; whether it meets the budget."""
        nodes = nodes_for(k)
        before = set(nodes_for(steps[-1]["tensors"])) if steps[-1]["tensors"] else set()
        quantize(path, nodes)
        acc = file_accuracy(path, data, threads)
        steps.append({"tensors": k, "added_nodes": [n for n in nodes if n not in before], "fp32_nodes": len(nodes),
                      "accuracy_int8": acc, "drop_points": (acc32 - acc) * 100, "p50_ms": _p50(path, data, threads)})
        return (acc32 - acc) * 100 <= budget

    with tempfile.TemporaryDirectory() as tmp:
        path, best = Path(tmp) / "trial.onnx", Path(tmp) / "best.onnx"
        lo, k, hi = 0, 1, None  # lo: most tensors known to fail; hi: fewest known to pass
        while ranked and hi is None:
            k = min(k, len(ranked))
            if trial(k, path):
                hi = k
                shutil.copyfile(path, best)
            elif k == len(ranked):
                break
            else:
                lo, k = k, k * 2
        while hi is not None and hi - lo > max(1, hi // 8):  # bisect: fewer FP32 nodes cost less latency
            mid = (lo + hi) // 2
            if trial(mid, path):
                hi = mid
                shutil.copyfile(path, best)
            else:
                lo = mid
        if hi is not None:
            shutil.copyfile(best, dest)
            kept = next(s for s in reversed(steps) if s["tensors"] == hi)
            result.update(fp32_nodes=nodes_for(hi), accuracy_int8=kept["accuracy_int8"], p50_ms=kept["p50_ms"])
            return result
    best = min(steps, key=lambda s: s["drop_points"])
    result["why"] = (f"no group met the budget: the best, {best['tensors']} tensor(s) in FP32, still lost "
                     f"{best['drop_points']:.2f} points")
    return result
