"""The one export path: PyTorch -> ONNX (dynamic batch) -> checker -> metadata -> parity.

A file lands at its final path only after onnxruntime matched PyTorch on real inputs; until then
it lives under a temporary name and is deleted on failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from ..errors import ExportError, ModelFileError, ParityError, first_line
from ..files import staged_file

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclass
class ExportResult:
    path: str
    onnx_bytes: int
    max_abs_diff: float
    top1_agreement: float
    parity_inputs: int
    tolerance: float | None = None  # the max abs difference allowed (relative to logit_scale unless overridden)
    logit_scale: float | None = None  # max |logit| of PyTorch's outputs on the parity inputs

    def parity(self) -> dict[str, float]:
        return {"max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "inputs": self.parity_inputs, "tolerance": self.tolerance, "logit_scale": self.logit_scale}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ort_session(path: str | os.PathLike | bytes, threads: int | None = None, graph_opt: str = "all",
                providers: list[str] | None = None):
    """An onnxruntime session for a model file (or serialized model bytes)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[graph_opt]
    so.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, so, providers=providers or ["CPUExecutionProvider"])


def ort_logits(session, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The session's first output over ``x`` in batches; a graph whose batch size is fixed (common for
    mobile models) gets batches of exactly that size, the last one padded by repeating its last input."""
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    b = fixed or batch_size
    outs = []
    for i in range(0, len(x), b):
        chunk = np.ascontiguousarray(x[i:i + b], dtype=np.float32)
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        outs.append(session.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(outs) if outs else np.empty((0,))


def _to_onnx(model: nn.Module, example: torch.Tensor, dest: str) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), dest, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=True,
                          external_data=False, dynamic_shapes=({0: batch},), verbose=False)


def set_metadata(path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into the file's metadata_props (non-strings as JSON).

    Node-level debug metadata (the exporter's stack traces and module paths, which hold the
    building machine's file paths) is dropped: smaller files, identical bytes wherever they are built."""
    import onnx

    m = onnx.load(str(path))
    for graph in [m.graph, *(f for f in m.functions)]:
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    del m.metadata_props[:]
    for k, v in metadata.items():
        p = m.metadata_props.add()
        p.key = k
        p.value = v if isinstance(v, str) else json.dumps(v)
    m.producer_name = "kdexport"
    onnx.save(m, str(path))


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values decoded."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for p in m.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except (json.JSONDecodeError, TypeError):
            out[p.key] = p.value
    return out


def check_parity(path: str | os.PathLike, model: nn.Module, inputs: torch.Tensor) -> tuple[float, float, float]:
    """Max abs logit difference, top-1 agreement of onnxruntime vs PyTorch on ``inputs``, and the logits'
    scale (max |logit| of PyTorch's outputs)."""
    model.eval()
    with torch.no_grad():
        ref = torch.cat([model(inputs[i:i + 256]) for i in range(0, len(inputs), 256)]).float().numpy()
    got = ort_logits(ort_session(path), inputs.numpy().astype(np.float32))
    if got.shape != ref.shape:
        raise ParityError(f"onnxruntime returned shape {got.shape}, PyTorch {ref.shape}")
    diff = float(np.abs(got - ref).max()) if ref.size else 0.0
    agree = float((got.argmax(1) == ref.argmax(1)).mean()) if ref.size else 1.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return diff, agree, scale


def parity_tolerance(scale: float, rtol: float, atol: float | None) -> float:
    """The largest max-abs logit difference accepted: ``atol`` when given, else ``rtol`` times the logits'
    scale (at least 1): FP32 rounding grows with the size of the logits, a wrong graph does not stay under it."""
    return atol if atol is not None else rtol * max(1.0, scale)


def export_onnx(model: nn.Module, path: str | os.PathLike, parity_inputs: torch.Tensor, *,
                metadata: dict[str, Any] | None = None, rtol: float = RunConfig.parity_rtol,
                atol: float | None = RunConfig.parity_atol, min_top1_agreement: float = 0.99) -> ExportResult:
    """Export ``model`` (taking normalized NCHW float input) and prove the file with onnxruntime.

    ``parity_inputs`` are real, normalized inputs (a few hundred test images); their batch
    dimension also checks the dynamic batch axis.
    """
    import onnx

    path = Path(path)
    model = model.eval().cpu()
    example = parity_inputs[:2].float().contiguous()
    if example.shape[0] < 2:
        example = torch.cat([example, example])[:2]
    with staged_file(path) as tmp:
        try:
            _to_onnx(model, example, str(tmp))
        except Exception as e:
            raise ExportError(f"ONNX export failed: {type(e).__name__}: {first_line(e)}") from None
        set_metadata(tmp, metadata or {})
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            raise ExportError(f"onnx.checker rejected the export: {first_line(e)}") from None
        diff, agree, scale = check_parity(tmp, model, parity_inputs.float())
        tol = parity_tolerance(scale, rtol, atol)
        if not (diff <= tol and agree >= min_top1_agreement):
            how = f"--parity-atol {atol:g}" if atol is not None else f"{rtol:g} x logit scale {scale:.3g}"
            raise ParityError(f"{path.name}: onnxruntime differs from PyTorch (max abs logit diff "
                              f"{diff:.3g} > {tol:.3g} = {how}, or top-1 agreement {agree:.4f} < "
                              f"{min_top1_agreement}); the file was not kept")
    return ExportResult(str(path), path.stat().st_size, diff, agree, int(parity_inputs.shape[0]), tol, scale)


def inspect_classifier(path: str | os.PathLike) -> dict:
    """Input name/shape and class count of an ONNX image classifier; clear errors otherwise."""
    import onnx

    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a directory, not an ONNX file")
    if not path.is_file():
        raise ModelFileError(f"{str(path)!r} does not exist")
    try:
        m = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))  # by path: weights in external data files (.onnx.data) are checked too
    except Exception as e:
        raise ModelFileError(f"{str(path)!r} is not a valid ONNX model: {first_line(e, 160)}") from None
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(m.graph.output) < 1:
        raise ModelFileError(f"{path.name}: expected one image input and a logits output, found {len(inputs)} inputs")

    def dims(vi) -> list[int | None]:
        return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    ishape, oshape = dims(inputs[0]), dims(m.graph.output[0])
    if len(ishape) != 4 or len(oshape) != 2:
        raise ModelFileError(
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
        "batch": ishape[0],  # None when dynamic
        "num_classes": oshape[1],
        "metadata": meta,
        "bytes": path.stat().st_size,
    }


def data_for_model(path: str | os.PathLike, dataset: str, data_dir: str | os.PathLike | None):
    """The dataset a model is evaluated (calibrated, timed) on, decoded as the model takes it: for image files
    the size comes from the graph (or its metadata) and the crop from the metadata's ``preprocess``, never
    from the photos' defaults."""
    from ..data.datasets import load_dataset
    from ..data.images import Geometry

    size = crop_ratio = None
    if dataset in ("imagefolder", "cifar10"):
        info = inspect_classifier(path)
        chw = info["input_shape"]
        if (dataset == "imagefolder" and len(chw) == 3 and isinstance(chw[1], int) and chw[1] == chw[2]
                and chw[1] >= 8):
            size = chw[1]
        pre = info["metadata"].get("preprocess")
        try:
            geometry = Geometry.from_dict(pre) if isinstance(pre, dict) else None
        except (KeyError, TypeError, ValueError):
            geometry = None
        if geometry is not None and geometry.resize > geometry.size and geometry.size == (size or chw[-1]):
            crop_ratio = geometry.crop_ratio
    return load_dataset(dataset, data_dir, download=False, image_size=size, crop_ratio=crop_ratio)


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The model file and the external data files its weights live in (torch.onnx.export writes
    ``NAME.onnx.data`` beside ``NAME.onnx`` by default)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    extra = {ExternalDataInfo(t).location for t in m.graph.initializer if uses_external_data(t)}
    return [path, *(path.parent / loc for loc in sorted(extra))]


def save_self_contained(src: str | os.PathLike, dest: str | os.PathLike, data_name: str | None = None) -> None:
    """Copy an ONNX model into one file (its external data inlined), unless it needs external data
    (2 GB and over), in which case its weights go to ``data_name`` (default ``DEST.data``) beside it."""
    import onnx

    m = onnx.load(str(src))
    dest = Path(dest)
    if m.ByteSize() < 2_000_000_000:
        onnx.save(m, str(dest))
    else:
        onnx.save(m, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=data_name or f"{dest.name}.data")
