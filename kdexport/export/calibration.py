"""Static INT8 calibrations, one registry: how each activation tensor's range is chosen.

Each entry names onnxruntime's calibrator, its extra options, and optionally a function that
computes ``TensorQuantOverrides`` (ranges that replace the calibrator's). With ``moving-average``
the MinMax calibrator averages the per-batch (32-image) minima and maxima, since quantize_static
collects every batch before computing ranges. ``median`` replaces every activation range computed
by MinMax with :func:`median_ranges`; onnxruntime's own MinMax pass still runs, since
quantize_static always calibrates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import CALIBRATIONS


def batch_ranges(model, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each float activation tensor's (min, max) in every batch: ``{tensor: array [len(batches), 2]}``.

    The reductions run inside onnxruntime (a ReduceMin and a ReduceMax per tensor, appended to a copy
    of ``model``), so only two numbers per tensor and batch leave it."""
    import onnx
    from onnx import TensorProto, helper

    from ..runtimes.ort import ort_session

    probe = onnx.shape_inference.infer_shapes(model)
    g = probe.graph
    inits = {i.name for i in g.initializer}
    floats = {v.name for v in (*g.input, *g.value_info, *g.output)
              if v.type.tensor_type.elem_type == TensorProto.FLOAT and v.name not in inits}
    tensors = list(dict.fromkeys(t for t in (g.input[0].name, *(o for n in g.node for o in n.output)) if t in floats))
    for t in tensors:
        for op in ("ReduceMin", "ReduceMax"):
            out = f"{t}/kdexport_{op}"
            g.node.append(helper.make_node(op, [t], [out], keepdims=0))
            g.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, []))
    sess = ort_session(probe.SerializeToString(), graph_opt="none")
    names = [f"{t}/kdexport_{op}" for t in tensors for op in ("ReduceMin", "ReduceMax")]
    per_batch = np.array([sess.run(names, {g.input[0].name: x}) for x in batches], dtype=np.float32)
    return {t: per_batch[:, 2 * i:2 * i + 2] for i, t in enumerate(tensors)}


def median_ranges(model, batches: list[np.ndarray]) -> dict[str, list[dict]]:
    """onnxruntime ``TensorQuantOverrides`` giving each activation the median over ``batches`` of its
    per-batch min and max: an outlier image moves only its own batch's range, and unless such batches
    are the majority the median ignores them (``moving-average`` takes their share of the mean)."""
    return {t: [{"rmin": np.float32(np.median(r[:, 0])), "rmax": np.float32(np.median(r[:, 1]))}]
            for t, r in batch_ranges(model, batches).items()}


@dataclass(frozen=True)
class Calibration:
    method: str  # onnxruntime CalibrationMethod name
    extra_options: dict = field(default_factory=dict)
    overrides: Callable[..., dict] | None = None  # (pre-processed model, batches) -> TensorQuantOverrides


# The names and their help are declared in kdexport.export.
CALIBRATIONS.register("median")(Calibration("MinMax", overrides=median_ranges))
CALIBRATIONS.register("moving-average")(Calibration("MinMax", {"CalibMovingAverage": True}))
CALIBRATIONS.register("minmax")(Calibration("MinMax"))
CALIBRATIONS.register("percentile")(Calibration("Percentile"))
CALIBRATIONS.register("entropy")(Calibration("Entropy"))
