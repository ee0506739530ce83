"""INT8 quantization with onnxruntime, gated on accuracy.

``static``: QDQ format, uint8 activations calibrated on training images, per-channel int8 weights;
``reduce_range`` (7-bit weights) on x86 CPUs without VNNI, where onnxruntime's U8S8 kernels can
saturate (its documented advice). ``dynamic``: int8 weights, activations quantized at run time
(best for MLPs / Gemm-heavy models). A result whose accuracy drops more than the limit is not kept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .bench import onnx_accuracy
from .config import CALIBRATIONS, DEFAULT_CALIBRATION
from .data import Dataset
from .envinfo import cpu_flags
from .equalize import equalize_residual_streams
from .errors import ConfigError, ExportError, GateError
from .export import read_metadata, set_metadata

MODES = ("static", "dynamic", "none")


@dataclass
class QuantResult:
    path: str
    mode: str
    onnx_bytes: int
    fp32_bytes: int
    accuracy_fp32: float
    accuracy_int8: float
    accuracy_drop_points: float
    calibration_samples: int
    calibration: str | None
    reduce_range: bool
    good: bool
    equalization: dict | None = None  # EqualizeResult.to_dict() when residual streams were equalized


    def to_dict(self) -> dict:
        return asdict(self)


class _Calibration:
    """onnxruntime CalibrationDataReader over batches of normalized training images."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.batches = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # pragma: no cover - not used by the MinMax calibrator
        pass


def calibration_inputs(data: Dataset, n: int, seed: int = 0) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.y_train), generator=g)[:n]
    return data.normalize(data.x_train[idx]).numpy().astype(np.float32)


def calibration_batches(data: Dataset, n: int, batch: int = 32) -> list[np.ndarray]:
    """``calibration_inputs`` in equal batches (the histogram calibrators need them)."""
    x = calibration_inputs(data, n)
    batch = min(batch, len(x))
    return [x[i:i + batch] for i in range(0, len(x) - len(x) % batch, batch)]


def batch_ranges(model, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Each float activation tensor's (min, max) in every batch: ``{tensor: array [len(batches), 2]}``.

    The reductions run inside onnxruntime (a ReduceMin and a ReduceMax per tensor, appended to a copy
    of ``model``), so only two numbers per tensor and batch leave it."""
    import onnx
    from onnx import TensorProto, helper

    from .export import ort_session

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


# CALIBRATIONS name -> (onnxruntime CalibrationMethod, extra_options, range overrides or None). With
# CalibMovingAverage the MinMax calibrator averages the per-batch (``_Calibration``: 32 images) minima
# and maxima, since quantize_static collects every batch before computing ranges. ``median`` replaces
# every activation range computed by MinMax with ``median_ranges`` (TensorQuantOverrides); onnxruntime's
# own MinMax pass still runs, since quantize_static always calibrates.
_CALIBRATORS = {
    "median": ("MinMax", {}, median_ranges),
    "moving-average": ("MinMax", {"CalibMovingAverage": True}, None),
    "minmax": ("MinMax", {}, None),
    "percentile": ("Percentile", {}, None),
    "entropy": ("Entropy", {}, None),
}


def default_reduce_range() -> bool:
    flags = set(cpu_flags())
    return not ({"avx512_vnni", "avx_vnni"} & flags)



def quantize_onnx(model: str | os.PathLike, out: str | os.PathLike, data: Dataset, *, mode: str = "static",
                  calibration_samples: int = 300, max_accuracy_drop: float = 1.0,
                  reduce_range: bool | None = None, threads: int | None = None,
                  calibration: str = DEFAULT_CALIBRATION, equalize: bool = False,
                  accuracy_fp32: float | None = None) -> QuantResult:
    """Quantize ``model`` to ``out``; measure accuracy on ``data``'s test split.

    ``accuracy_fp32``: ``model``'s accuracy on that split when the caller has already measured it
    (``onnx_accuracy``), so that it is not measured again.

    ``equalize`` (static only): rescale residual-stream channels first (``kdexport.equalize``; exact in
    FP32, a no-op on graphs without residual streams).

    Raises GateError (the file is not kept) when the drop exceeds ``max_accuracy_drop`` points."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in ("static", "dynamic"):
        raise ConfigError(f"quantization mode must be static or dynamic, got {mode!r}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    model, out = Path(model), Path(out)
    if out.resolve() == model.resolve():
        raise ConfigError("--out must differ from the input model")
    reduce_range = default_reduce_range() if reduce_range is None else reduce_range
    eq = None
    meta = read_metadata(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.partial")
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quiet = io.StringIO()
        logging.getLogger().setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                quant_pre_process(str(model), str(pre), skip_symbolic_shape=False)
                if mode == "static":
                    import onnx

                    pre_model = onnx.load(str(pre))
                    input_name = pre_model.graph.input[0].name
                    calib = calibration_batches(data, calibration_samples)
                    if equalize:
                        eq = equalize_residual_streams(pre_model, calib)
                        onnx.save(pre_model, str(pre))
                    method, extra, overrides = _CALIBRATORS[calibration]
                    if overrides:
                        extra = {**extra, "TensorQuantOverrides": overrides(pre_model, calib)}
                    quantize_static(str(pre), str(tmp_out), _Calibration(input_name, calib),
                                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=reduce_range,
                                    calibrate_method=getattr(CalibrationMethod, method), extra_options=extra)
                else:
                    quantize_dynamic(str(pre), str(tmp_out), weight_type=QuantType.QInt8, per_channel=True,
                                     reduce_range=reduce_range)
        except Exception as e:
            if tmp_out.exists():
                tmp_out.unlink()
            raise ExportError(f"onnxruntime quantization failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from None
    try:
        set_metadata(tmp_out, {**meta, "quantization": {"mode": mode, "reduce_range": reduce_range,
                                                        "calibration": calibration if mode == "static" else None,
                                                        "calibration_samples": calibration_samples
                                                        if mode == "static" else 0,
                                                        "equalization": eq.to_dict() if eq else None}})
        acc32 = onnx_accuracy(model, data, threads) if accuracy_fp32 is None else accuracy_fp32
        acc8 = onnx_accuracy(tmp_out, data, threads)
        drop = (acc32 - acc8) * 100
        res = QuantResult(str(out), mode, tmp_out.stat().st_size, model.stat().st_size, acc32, acc8, drop,
                          calibration_samples if mode == "static" else 0, calibration if mode == "static" else None,
                          reduce_range, drop <= max_accuracy_drop, eq.to_dict() if eq else None)
        if not res.good:
            hint = ("; another --calibration (" + ", ".join(c for c in CALIBRATIONS if c != calibration)
                    + ") may do better" if mode == "static" else "")
            raise GateError(f"{mode} INT8 model loses {drop:.2f} accuracy points ({acc32 * 100:.2f}% -> "
                            f"{acc8 * 100:.2f}%), more than --max-accuracy-drop {max_accuracy_drop:g}; not kept{hint}")
        os.replace(tmp_out, out)
    finally:
        if tmp_out.exists():
            tmp_out.unlink()
    return res
