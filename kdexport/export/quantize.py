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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import QuantConfig
from ..data.datasets import Dataset
from ..envinfo import cpu_flags
from ..errors import ConfigError, ExportError, GateError, first_line
from ..files import staged_file
from ..runtimes.base import file_accuracy
from ..runtimes.ort import read_metadata
from .calibration import CALIBRATIONS
from .equalize import EqualizeResult, equalize_residual_streams
from .onnx import set_metadata


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
    fallback: dict | None = None  # with fallback="auto": the nodes kept in FP32 and what each step cost
    diagnosis: dict | None = None  # kdexport.export.diagnose.int8_diagnosis: per-class drop, worst tensors, FP32 nodes

    def to_dict(self) -> dict:
        return asdict(self)


class CalibrationReader:
    """onnxruntime CalibrationDataReader over batches of normalized training images."""

    def __init__(self, input_name: str, batches: list[np.ndarray]):
        self.batches = iter([{input_name: b} for b in batches])

    def get_next(self):
        return next(self.batches, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates its reader
        return self.batches

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


def default_reduce_range() -> bool:
    flags = set(cpu_flags())
    return not ({"avx512_vnni", "avx_vnni"} & flags)


@contextlib.contextmanager
def _quiet_quantizer():
    """Silence onnxruntime's quantizer (it prints and logs to the root logger) for the duration of
    the call only: the caller's logging configuration is restored afterwards."""
    root = logging.getLogger()
    level = root.level
    sink = io.StringIO()
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        root.setLevel(level)


@dataclass
class _Prepared:
    """onnxruntime's pre-processed graph (and, for static INT8, its calibration batches)."""

    pre: Path
    calib: list[np.ndarray]
    equalization: EqualizeResult | None
    excluded: dict[str, str] = field(default_factory=dict)  # --int8-exclude: node name -> why it stays in FP32


def resolve_exclude(model, names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--int8-exclude`` against the pre-processed graph: each entry a node name or an op type (every node of
    that type). ``{node name: why}``; an entry that matches nothing is a ConfigError naming what the graph has."""
    nodes = [n for n in model.graph.node if n.name]
    by_name = {n.name: n for n in nodes}
    out: dict[str, str] = {}
    for entry in names:
        if entry in by_name:
            out.setdefault(entry, f"--int8-exclude {entry}")
            continue
        of_type = [n.name for n in nodes if n.op_type == entry]
        if not of_type:
            types = sorted({n.op_type for n in nodes})
            raise ConfigError(f"--int8-exclude {entry!r} is neither a node name nor an op type of this model (op "
                              f"types: {', '.join(types)}; node names: {', '.join(list(by_name)[:5])}, ...)")
        for name in of_type:
            out.setdefault(name, f"--int8-exclude {entry}")
    return out


def _prepare(model: Path, tmp: Path, data: Dataset, mode: str, quant: QuantConfig) -> _Prepared:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    with _quiet_quantizer():
        try:
            quant_pre_process(str(model), str(pre), skip_symbolic_shape=False)
        except Exception:  # its symbolic shape inference knows no Gelu (fastcifar); ONNX's own inference does
            quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
    import onnx

    excluded = resolve_exclude(onnx.load(str(pre), load_external_data=False), quant.int8_exclude)
    if mode == "dynamic":
        return _Prepared(pre, [], None, excluded)
    calib = calibration_batches(data, quant.calibration_samples)
    eq = None
    if quant.equalize:
        pre_model = onnx.load(str(pre))
        eq = equalize_residual_streams(pre_model, calib)
        onnx.save(pre_model, str(pre))
    return _Prepared(pre, calib, eq, excluded)


def _quantize(prep: _Prepared, dest: Path, mode: str, quant: QuantConfig, reduce_range: bool,
              exclude: list[str] | None = None) -> None:
    """onnxruntime's quantizer on the pre-processed graph, ``exclude``: nodes kept in FP32 (beside
    ``--int8-exclude``'s)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    exclude = list(dict.fromkeys([*prep.excluded, *(exclude or [])]))

    with _quiet_quantizer():
        if mode == "dynamic":
            quantize_dynamic(str(prep.pre), str(dest), weight_type=QuantType.QInt8, per_channel=not quant.per_tensor,
                             reduce_range=reduce_range, nodes_to_exclude=exclude or [])
            return
        import onnx

        calibration = CALIBRATIONS.get(quant.calibration)
        pre_model = onnx.load(str(prep.pre))
        extra = dict(calibration.extra_options)
        if calibration.overrides:
            extra["TensorQuantOverrides"] = calibration.overrides(pre_model, prep.calib)
        quantize_static(str(prep.pre), str(dest), CalibrationReader(pre_model.graph.input[0].name, prep.calib),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=not quant.per_tensor, reduce_range=reduce_range,
                        calibrate_method=getattr(CalibrationMethod, calibration.method), extra_options=extra,
                        nodes_to_exclude=exclude or [])


def quantize_file(model: str | os.PathLike, dest: str | os.PathLike, data: Dataset, *, mode: str,
                  quant: QuantConfig) -> None:
    """onnxruntime's quantizer alone, no accuracy gate: an INT8 graph to time (``kdexport select``)."""
    reduce_range = default_reduce_range() if quant.reduce_range is None else quant.reduce_range
    with staged_file(dest) as tmp_out, tempfile.TemporaryDirectory() as tmp:
        try:
            _quantize(_prepare(Path(model), Path(tmp), data, mode, quant), tmp_out, mode, quant, reduce_range)
        except ConfigError:
            raise
        except Exception as e:
            raise ExportError(f"onnxruntime quantization failed: {type(e).__name__}: {first_line(e)}") from None


def quantize_onnx(model: str | os.PathLike, out: str | os.PathLike, data: Dataset, *, mode: str,
                  quant: QuantConfig, threads: int | None = None, accuracy_fp32: float | None = None,
                  latency: Callable[[Path], float] | None = None, diagnose: bool = True,
                  record: dict | None = None) -> QuantResult:
    """Quantize ``model`` to ``out`` (``mode`` static or dynamic, settings in ``quant``); measure accuracy on
    ``data``'s test split.

    ``accuracy_fp32``: ``model``'s accuracy on that split when the caller has already measured it
    (``file_accuracy``), so that it is not measured again. ``latency(path)``: a file's batch-1 p50 in ms, with
    which ``--fallback auto`` weighs each step (``kdexport.bench.timing.quick_p50``; None: not timed).

    ``record``: more keys for the file's ``quantization`` metadata (``--quantize qat`` says so there).

    ``diagnose``: add the INT8 report section (:func:`kdexport.export.diagnose.int8_diagnosis`: per-class drop,
    worst tensors, FP32 nodes and why).

    ``quant.equalize`` (static only): rescale residual-stream channels first (``kdexport.export.equalize``;
    exact in FP32, a no-op on graphs without residual streams).

    Raises GateError (the file is not kept) when the drop exceeds ``quant.max_accuracy_drop`` points."""
    if mode not in ("static", "dynamic"):
        raise ConfigError(f"quantization mode must be static or dynamic, got {mode!r}")
    static = mode == "static"
    CALIBRATIONS.get(quant.calibration)
    model, out = Path(model), Path(out)
    if out.resolve() == model.resolve():
        raise ConfigError("--out must differ from the input model")
    reduce_range = default_reduce_range() if quant.reduce_range is None else quant.reduce_range
    meta = read_metadata(model)
    samples = quant.calibration_samples if static else 0
    cal_name = quant.calibration if static else None
    with staged_file(out) as tmp_out, tempfile.TemporaryDirectory() as tmp:
        try:
            prep = _prepare(model, Path(tmp), data, mode, quant)
            _quantize(prep, tmp_out, mode, quant, reduce_range)
        except ConfigError:
            raise
        except Exception as e:
            raise ExportError(f"onnxruntime quantization failed: {type(e).__name__}: {first_line(e)}") from None
        eq = prep.equalization
        acc32 = file_accuracy(model, data, threads) if accuracy_fp32 is None else accuracy_fp32
        acc8 = file_accuracy(tmp_out, data, threads)
        fallback = None
        if (acc32 - acc8) * 100 > quant.max_accuracy_drop and static and quant.fallback == "auto":
            from .fallback import fallback_search

            fallback = fallback_search(prep, tmp_out, data, quant, acc32, acc8, threads,
                                       quantize=lambda dest, exclude: _quantize(prep, dest, mode, quant, reduce_range,
                                                                                exclude),
                                       latency=latency)
            acc8 = fallback["accuracy_int8"]
        set_metadata(tmp_out, {**meta, "quantization": {"mode": mode, "reduce_range": reduce_range,
                                                        "calibration": cal_name, "calibration_samples": samples,
                                                        "equalization": eq.to_dict() if eq else None,
                                                        "fp32_nodes": fallback["fp32_nodes"] if fallback else [],
                                                        **(record or {})}})
        drop = (acc32 - acc8) * 100
        diagnosis = None
        if diagnose:
            from .diagnose import int8_diagnosis
            from .fallback import ranking_batches

            why = dict(prep.excluded)
            for n in (fallback or {}).get("fp32_nodes") or []:
                why.setdefault(n, "--fallback auto (its tensors' quantization erred most)")
            diagnosis = int8_diagnosis(model, tmp_out, data, threads=threads, why=why,
                                       batches=ranking_batches(data, prep.calib))
        res = QuantResult(str(out), mode, tmp_out.stat().st_size, model.stat().st_size, acc32, acc8, drop,
                          samples, cal_name, reduce_range, drop <= quant.max_accuracy_drop,
                          eq.to_dict() if eq else None, fallback, diagnosis)
        if not res.good:
            others = [c for c in CALIBRATIONS.names(sort=False) if c != quant.calibration]
            hint = (f"; another --calibration ({', '.join(others)})" + (" or --fallback auto" if quant.fallback ==
                                                                         "none" else "") + " may do better"
                    if static else "")
            if fallback:
                hint = f"; --fallback auto kept {len(fallback['fp32_nodes'])} nodes in FP32 and {fallback['why']}"
            raise GateError(f"{mode} INT8 model loses {drop:.2f} accuracy points ({acc32 * 100:.2f}% -> "
                            f"{acc8 * 100:.2f}%), more than --max-accuracy-drop {quant.max_accuracy_drop:g}; "
                            f"not kept{hint}")
    return res
