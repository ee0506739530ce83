"""The one ONNX export path: PyTorch -> ONNX (dynamic batch) -> checker -> metadata -> parity.

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
from ..errors import ExportError, ParityError, first_line
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


def check_parity(path: str | os.PathLike, model: nn.Module, inputs: torch.Tensor) -> tuple[float, float, float]:
    """Max abs logit difference, top-1 agreement of the file (run in the runtime its suffix names) vs PyTorch on
    ``inputs``, and the logits' scale (max |logit| of PyTorch's outputs)."""
    from ..runtimes.base import load

    model.eval()
    with torch.no_grad():
        ref = torch.cat([model(inputs[i:i + 256]) for i in range(0, len(inputs), 256)]).float().numpy()
    loaded = load(path)
    got = loaded.logits(inputs.numpy().astype(np.float32))
    if got.shape != ref.shape:
        raise ParityError(f"{loaded.runtime} returned shape {got.shape}, PyTorch {ref.shape}")
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


def convert_to_ort(model: str | os.PathLike, dest_dir: str | os.PathLike) -> list[Path]:
    """``model`` (``NAME.onnx``) in onnxruntime's mobile format, by the converter in the onnxruntime wheel
    (``onnxruntime.tools.convert_onnx_models_to_ort``, fixed optimizations): ``NAME.ort`` and
    ``NAME.required_operators.config`` written to ``dest_dir``; returns their paths."""
    import shutil
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    model, dest_dir = Path(model), Path(dest_dir)
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        src = Path(tmp) / model.name
        shutil.copyfile(model, src)
        try:
            convert_onnx_models_to_ort(src, output_dir=Path(tmp) / "ort", optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:
            raise ExportError(f"onnxruntime's ORT-format converter failed: {first_line(e)}") from None
        made = sorted((Path(tmp) / "ort").iterdir())
        dest_dir.mkdir(parents=True, exist_ok=True)
        for f in made:
            shutil.copyfile(f, dest_dir / f.name)
        return [dest_dir / f.name for f in made]
