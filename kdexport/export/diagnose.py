"""Why an INT8 file lost accuracy: the report section every INT8 ONNX file kdexport makes gets (PTQ, fallback, QAT).

- **per class**: each class's accuracy in the FP32 and the INT8 file on the whole test split, worst drop first (a
  2-point average drop is often one class losing 15);
- **worst tensors**: the activations whose own quantization errs most, as the signal-to-quantization-noise ratio
  (dB) between each tensor and its QuantizeLinear -> DequantizeLinear round trip on a few training images: low
  SQNR marks a range stretched by outliers (a candidate for ``--int8-exclude``);
- **FP32 nodes**: the compute nodes (Conv, Gemm, MatMul) the INT8 file still runs in float, each with why: named by
  ``--int8-exclude``, kept by ``--fallback auto``, or left by onnxruntime's quantizer (no INT8 pattern for it).

Whether the file is faster than FP32 on this machine comes from the report's timing (``kdexport.pipeline``).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import numpy as np

from ..data.datasets import Dataset
from ..runtimes.base import load, predictions

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INT8_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul")
LEFT_BY_QUANTIZER = "left in FP32 by onnxruntime's quantizer (no INT8 pattern for it here)"
TOP_TENSORS = 5


def per_class_drop(data: Dataset, pred_fp32: np.ndarray, pred_int8: np.ndarray) -> list[dict]:
    """Each class's test accuracy in both files and its drop in points (FP32 - INT8), worst first."""
    y = data.y_test.numpy()
    rows = []
    for c, name in enumerate(data.class_names):
        mask = y == c
        n = int(mask.sum())
        if n == 0:
            continue
        a32, a8 = float((pred_fp32[mask] == c).mean()), float((pred_int8[mask] == c).mean())
        rows.append({"class": name, "images": n, "accuracy_fp32": a32, "accuracy_int8": a8,
                     "drop_points": (a32 - a8) * 100})
    return sorted(rows, key=lambda r: (-r["drop_points"], r["class"]))


def fp32_nodes(model, why: dict[str, str] | None = None) -> tuple[list[dict], int]:
    """Compute nodes of the INT8 graph ``model`` (an ``onnx.ModelProto``) that run in float: their data input is
    not a DequantizeLinear output. ``[{node, op, why}]`` and the number of compute nodes that run in INT8."""
    why = why or {}
    made_by = {out: n.op_type for n in model.graph.node for out in n.output}
    float_nodes, int8 = [], 0
    for node in model.graph.node:
        if node.op_type in INT8_OPS:
            int8 += 1
        elif node.op_type in COMPUTE_OPS:
            if node.input and made_by.get(node.input[0]) == "DequantizeLinear":
                int8 += 1
            else:
                float_nodes.append({"node": node.name, "op": node.op_type,
                                    "why": why.get(node.name, LEFT_BY_QUANTIZER)})
    return float_nodes, int8


def qdq_sqnr(path: str | os.PathLike, batches: list[np.ndarray], top: int | None = TOP_TENSORS) -> list[dict]:
    """The ``top`` (None: all) activation tensors of a QDQ file with the lowest SQNR (dB) of their own quantization
    round trip (each QuantizeLinear's input against the DequantizeLinear that undoes it), summed over ``batches``."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    graph = model.graph
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    users = defaultdict(list)
    for n in graph.node:
        for t in n.input:
            users[t].append(n)
    pairs = []
    for q in graph.node:
        if q.op_type == "QuantizeLinear" and q.input[0] not in consts:
            dq = next((u for u in users[q.output[0]] if u.op_type == "DequantizeLinear"), None)
            if dq is not None:
                pairs.append((q.input[0], dq.output[0]))
    if not pairs or not batches:
        return []
    have = {o.name for o in graph.output}
    for t in {t for pair in pairs for t in pair} - have:
        graph.output.append(onnx.ValueInfoProto(name=t))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    signal, noise = defaultdict(float), defaultdict(float)
    for x in batches:
        out = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))
        for t, back in pairs:
            a, b = out[t].astype(np.float64), out[back].astype(np.float64)
            signal[t] += float((a * a).sum())
            noise[t] += float(((a - b) ** 2).sum())
    rows = []
    for t, _ in pairs:
        s, n = signal[t], noise[t]
        db = math.inf if n == 0 else (-math.inf if s == 0 else 10 * math.log10(s / n))
        rows.append({"tensor": t, "sqnr_db": round(db, 2) if math.isfinite(db) else None})
    finite = [r for r in rows if r["sqnr_db"] is not None]
    return sorted(finite, key=lambda r: r["sqnr_db"])[:top]  # [:None] keeps all


def int8_diagnosis(fp32: str | os.PathLike, int8: str | os.PathLike, data: Dataset, *, threads: int | None = None,
                   why: dict[str, str] | None = None, batches: list[np.ndarray] | None = None) -> dict:
    """The report's INT8 section for ``int8`` against the ``fp32`` file it came from (both ONNX): per-class drop,
    worst tensors (on ``batches`` of normalized training images; none: skipped) and FP32 nodes with their reason
    (``why``: node name -> reason, for the nodes kdexport kept in float on purpose)."""
    import onnx

    pred32 = predictions(load(fp32, threads), data)
    pred8 = predictions(load(int8, threads), data)
    nodes, int8_count = fp32_nodes(onnx.load(str(int8), load_external_data=False), why)
    return {"per_class": per_class_drop(data, pred32, pred8), "fp32_nodes": nodes, "int8_compute_nodes": int8_count,
            "worst_tensors": qdq_sqnr(int8, batches or []),
            "method": "per-class accuracy on the whole test split; tensor SQNR = 10 log10(sum x^2 / sum (x - "
                      "DQ(Q(x)))^2) on training images; FP32 nodes: Conv/Gemm/MatMul whose input is not "
                      "dequantized"}


def diagnosis_lines(d: dict, limit: int = 3) -> list[str]:
    """The INT8 section as Markdown bullets (report.md, the CLI)."""
    out = []
    worst = [r for r in d.get("per_class", []) if r["drop_points"] > 0][:limit]
    out.append("- worst classes: " + (", ".join(f"{r['class']} {r['accuracy_fp32'] * 100:.1f}% -> "
                                                f"{r['accuracy_int8'] * 100:.1f}% (-{r['drop_points']:.1f})"
                                                for r in worst) if worst else "no class lost accuracy"))
    tensors = d.get("worst_tensors") or []
    if tensors:
        out.append("- lowest-SQNR tensors: " + ", ".join(f"`{r['tensor']}` {r['sqnr_db']:.1f} dB" for r in tensors))
    nodes = d.get("fp32_nodes") or []
    if nodes:
        reasons: dict[str, list[str]] = defaultdict(list)
        for n in nodes:
            reasons[n["why"]].append(n["node"] or n["op"])
        out.append(f"- {len(nodes)} compute node(s) in FP32 ({d.get('int8_compute_nodes', 0)} in INT8): "
                   + "; ".join(f"{', '.join(f'`{x}`' for x in v[:4])}{' ...' if len(v) > 4 else ''}: {k}"
                               for k, v in reasons.items()))
    else:
        out.append(f"- every compute node runs in INT8 ({d.get('int8_compute_nodes', 0)})")
    return out
