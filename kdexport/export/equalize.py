"""Residual-stream equalization: rescale the channels of a network's residual streams before static
INT8 quantization, without changing what the FP32 graph computes.

Static INT8 gives each activation tensor one scale. In a residual network the stream that the
shortcuts carry (``Relu(Add(branch, shortcut))``, block after block) can hold a few channels whose
range is a hundred times the rest; one 8-bit scale for the whole tensor then leaves the other
channels a handful of levels, and the error compounds through every block.

A stream is a set of tensors linked by ``Add`` and ``Relu`` whose values all come from ``Conv``
nodes (the branches' last convs, the downsample convs). Dividing channel ``c`` of every tensor in
the stream by ``s_c`` is exact: the producing convs' output channel ``c`` (weights and bias) is
divided by ``s_c``; ``Add`` is linear and ``Relu`` positively homogeneous, so the division passes
through; every consumer (a ``Conv``, or a global pool then ``Gemm``/``MatMul``) has its input
channel ``c`` weights multiplied by ``s_c``. Producers' weights are quantized per output channel,
so dividing them costs nothing; consumers' weights grow where ``s_c > 1``. ``s_c = r_c**alpha /
w_c**(1 - alpha)`` balances the two (cross-layer equalization, Nagel et al. 2019, with alpha 0.5):
``r_c`` is channel ``c``'s largest magnitude anywhere in the stream on calibration images, ``w_c``
the largest relative weight the consumers apply to it.

A stream with any other producer or consumer is left alone, so any graph is safe to pass in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

_PASS_TO_DENSE = {"ReduceMean", "GlobalAveragePool", "Flatten", "Reshape"}  # [N,C,H,W] -> [N,C]


@dataclass
class _Stream:
    tensors: set[str]
    producers: list = field(default_factory=list)  # Conv nodes: scale output channel by 1/s
    consumers: list = field(default_factory=list)  # (node, weight input index, channel axis): scale by s


@dataclass
class EqualizeResult:
    streams: int  # residual streams rescaled
    tensors: int  # activation tensors in them
    range_ratio_before: float  # largest over median per-channel range, worst stream, before
    range_ratio_after: float

    def to_dict(self) -> dict:
        return asdict(self)


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, *xs: str) -> None:
        roots = [self.find(x) for x in xs]
        for r in roots[1:]:
            self.parent[r] = roots[0]


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def find_streams(graph) -> list[_Stream]:
    """The residual streams of ``graph`` whose every producer and consumer can be rescaled exactly."""
    inits = {i.name: i for i in graph.initializer}
    init_uses: dict[str, int] = defaultdict(int)
    producer, consumers = {}, defaultdict(list)
    for n in graph.node:
        for t in n.input:
            consumers[t].append(n)
            if t in inits:
                init_uses[t] += 1
        for t in n.output:
            producer[t] = n
    uf = _UnionFind()
    for n in graph.node:
        if n.op_type in ("Add", "Relu") and len(n.input) in (1, 2) and n.input[0]:
            uf.union(n.output[0], *n.input)
    groups: dict[str, set[str]] = defaultdict(set)
    for t in list(uf.parent):
        groups[uf.find(t)].add(t)
    outputs = {o.name for o in graph.output}

    def own_weights(node, idx: int) -> bool:
        return len(node.input) > idx and node.input[idx] in inits and init_uses[node.input[idx]] == 1

    streams = []
    for tensors in groups.values():
        members = {id(producer[t]) for t in tensors if t in producer and producer[t].op_type in ("Add", "Relu")}
        if not any(producer.get(t) is not None and producer[t].op_type == "Add" for t in tensors):
            continue  # no shortcut: not a residual stream
        s, ok = _Stream(tensors), True
        for t in tensors:
            p = producer.get(t)
            if t in outputs or p is None:
                ok = False
            elif p.op_type == "Conv":
                ok &= _attr(p, "group", 1) == 1 and own_weights(p, 1) and (len(p.input) < 3 or own_weights(p, 2))
                s.producers.append(p)
            elif p.op_type not in ("Add", "Relu"):
                ok = False
            for c in consumers[t]:
                if id(c) in members or not ok:
                    continue
                if c.op_type == "Conv" and c.input[0] == t and _attr(c, "group", 1) == 1 and own_weights(c, 1):
                    s.consumers.append((c, 1, 1))
                    continue
                dense = _dense_after_pool(c, consumers, own_weights, inits)
                if dense is None:
                    ok = False
                else:
                    s.consumers.append(dense)
            if not ok:
                break
        if ok and s.producers and s.consumers:
            streams.append(s)
    return streams


def _keeps_channels(node, inits) -> bool:
    """Whether ``node`` maps [N,C,H,W] (or, after a pool, [N,C,1,1]) to a tensor whose axis 1 is still C."""
    from onnx import numpy_helper

    def const(i: int):
        name = node.input[i] if len(node.input) > i else ""
        return numpy_helper.to_array(inits[name]).tolist() if name in inits else None

    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type == "ReduceMean":
        axes = _attr(node, "axes", None) or const(1)
        return axes is not None and {a % 4 for a in axes} == {2, 3}
    if node.op_type == "Flatten":
        return _attr(node, "axis", 1) == 1
    if node.op_type == "Reshape":
        shape = const(1)
        return shape is not None and len(shape) == 2
    return False


def _dense_after_pool(node, consumers, own_weights, inits):
    """(Gemm/MatMul, weight index, input-channel axis) reached from a stream tensor through a global
    pool and reshapes to [N, C], each used once; None for anything else."""
    if node.op_type not in ("ReduceMean", "GlobalAveragePool"):
        return None
    seen_pool = False
    while node.op_type in _PASS_TO_DENSE:
        if not _keeps_channels(node, inits):
            return None
        if node.op_type in ("ReduceMean", "GlobalAveragePool"):
            if seen_pool:
                return None
            seen_pool = True
        nxt = consumers[node.output[0]]
        if len(nxt) != 1 or nxt[0].input[0] != node.output[0]:
            return None
        node = nxt[0]
    if node.op_type == "Gemm" and not _attr(node, "transA", 0) and own_weights(node, 1):
        return (node, 1, 1 if _attr(node, "transB", 0) else 0)
    if node.op_type == "MatMul" and own_weights(node, 1):
        return (node, 1, 0)
    return None


def channel_ranges(model, tensors: Iterable[str], batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) largest magnitude of each tensor over ``batches``, via onnxruntime."""
    import onnx

    from ..runtimes.ort import ort_session

    tensors = sorted(tensors)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in known)
    sess = ort_session(probe.SerializeToString(), graph_opt="none")  # no fusion: keep every tensor
    name = probe.graph.input[0].name
    out: dict[str, np.ndarray] = {}
    for x in batches:
        for t, v in zip(tensors, sess.run(tensors, {name: x}), strict=True):
            m = np.abs(np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)).max(axis=1)
            out[t] = m if t not in out else np.maximum(out[t], m)
    return out


def equalize_residual_streams(model, batches: list[np.ndarray], alpha: float = 0.5,
                              max_scale: float = 64.0) -> EqualizeResult:
    """Rescale ``model``'s residual streams in place (see the module docstring); FP32 outputs unchanged
    up to rounding. ``batches``: calibration inputs. Returns what was done."""
    from onnx import numpy_helper

    graph = model.graph
    streams = find_streams(graph)
    if not streams:
        return EqualizeResult(0, 0, 1.0, 1.0)
    ranges = channel_ranges(model, set().union(*(s.tensors for s in streams)), batches)
    inits = {i.name: i for i in graph.initializer}

    def weight(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32)

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    worst_before = worst_after = 1.0
    for s in streams:
        r = np.max([ranges[t] for t in s.tensors], axis=0)
        w = np.zeros_like(r)
        for node, idx, axis in s.consumers:
            wt = np.moveaxis(np.abs(weight(node.input[idx])), axis, 0).reshape(len(r), -1)
            w = np.maximum(w, wt.max(axis=1) / max(wt.max(), 1e-12))
        live = (r > 0) & (w > 0)
        scale = np.ones_like(r)
        scale[live] = r[live] ** alpha / w[live] ** (1 - alpha)
        scale[live] /= np.exp(np.mean(np.log(scale[live])))  # geometric mean 1: overall scale is free
        scale = np.clip(scale, 1 / max_scale, max_scale)
        for p in s.producers:
            wt = weight(p.input[1])
            put(p.input[1], wt / scale.reshape((-1,) + (1,) * (wt.ndim - 1)))
            if len(p.input) > 2 and p.input[2]:
                put(p.input[2], weight(p.input[2]) / scale)
        for node, idx, axis in s.consumers:
            wt = weight(node.input[idx])
            shape = [1] * wt.ndim
            shape[axis] = -1
            put(node.input[idx], wt * scale.reshape(shape))
        med = float(np.median(r[live])) if live.any() else 1.0
        worst_before = max(worst_before, float(r.max() / max(med, 1e-12)))
        after = r / scale
        worst_after = max(worst_after, float(after.max() / max(float(np.median(after[live])), 1e-12)))
    return EqualizeResult(len(streams), sum(len(s.tensors) for s in streams), worst_before, worst_after)
