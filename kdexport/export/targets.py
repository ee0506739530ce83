"""Targets: the files a student ships as beside its ONNX file, one export path per target, each file proven.

A target (an item of :data:`kdexport.export.TARGETS`) turns the trained PyTorch model and its proven ONNX file
into its runtime's files, FP32 and (with ``--quantize``) INT8, and proves each one as the ONNX file is proven:
parity with PyTorch on real inputs (the same tolerance rule) before an FP32 file is kept, the accuracy of the
file on the whole test split run in *its* runtime, and, for INT8, the drop against the FP32 ONNX file gated by
``--max-accuracy-drop``. A file that fails is not kept and its row says by how much it missed. Timing is the
caller's (``kdexport.bench.timing.interleaved``, beside every other model of the report).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import QuantConfig
from ..data.datasets import Dataset
from ..errors import ExportError, first_line
from ..runtimes.base import file_accuracy, runtime_version
from . import TARGETS
from .onnx import check_parity, parity_tolerance
from .quantize import calibration_inputs


@dataclass
class TargetFile:
    """One file of a target: how it was made and what it proved. ``path`` is relative to the report's folder."""

    target: str
    precision: str  # fp32 | int8
    runtime: str
    runtime_version: str | None
    path: str | None  # None: not kept (see error)
    bytes: int | None = None
    parity: dict | None = None  # FP32: max_abs_diff, top1_agreement, inputs, tolerance, logit_scale
    accuracy: float | None = None  # top-1 on the whole test split, run in its runtime
    accuracy_drop_points: float | None = None  # against the FP32 ONNX file
    note: str = ""
    error: str | None = None
    latency_ms: dict | None = None  # filled by the timing, beside the report's other models
    throughput_per_s: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TargetJob:
    """What every target is given: the model, its proven ONNX file, where to write, how to prove."""

    model: torch.nn.Module  # eval mode, on the CPU, taking normalized N x C x H x W
    onnx_path: Path  # the proven FP32 ONNX file
    out: Path  # the report's folder: files go to out/<target>/
    stem: str  # "student"
    parity_x: torch.Tensor  # real normalized test inputs
    data: Dataset
    metadata: dict
    accuracy_fp32: float  # the FP32 ONNX file's test accuracy
    int8: bool
    quant: QuantConfig
    rtol: float
    atol: float | None
    threads: int | None


def prove_fp32(job: TargetJob, path: Path) -> tuple[dict, str | None]:
    """The ONNX file's parity rule applied to any runtime's file: (parity, error or None)."""
    diff, agree, scale = check_parity(path, job.model, job.parity_x)
    tol = parity_tolerance(scale, job.rtol, job.atol)
    parity = {"max_abs_diff": diff, "top1_agreement": agree, "inputs": int(job.parity_x.shape[0]), "tolerance": tol,
              "logit_scale": scale}
    if diff <= tol and agree >= 0.99:
        return parity, None
    return parity, (f"parity failed: max abs logit diff {diff:.3g} (allowed {tol:.3g}), top-1 agreement "
                    f"{agree:.4f} (needed 0.99); not kept")


def gate_int8(job: TargetJob, acc8: float) -> tuple[float, str | None]:
    drop = (job.accuracy_fp32 - acc8) * 100
    if drop > job.quant.max_accuracy_drop:
        return drop, (f"INT8 loses {drop:.2f} points against the FP32 ONNX file ({job.accuracy_fp32 * 100:.2f}% -> "
                      f"{acc8 * 100:.2f}%), more than --max-accuracy-drop {job.quant.max_accuracy_drop:g}; not kept")
    return drop, None


def place(files: list[Path], dest_dir: Path) -> None:
    """Move a finished model's files into ``dest_dir``, weights first, so the file that names them comes last."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for f in reversed(files):
        os.replace(f, dest_dir / f.name)


@contextlib.contextmanager
def quiet_tool():
    """A converter's own logging and progress bars kept off the run's output."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


class OnnxTarget:
    """The ONNX file itself: exported and proven by :func:`kdexport.export.onnx.export_onnx`, nothing more here."""

    runtime = "onnxruntime"

    def require(self) -> None:
        pass

    def export(self, job: TargetJob, log) -> list[TargetFile]:
        return []


TARGETS.register("onnx")(OnnxTarget())


class OpenVinoTarget:
    """OpenVINO IR from the proven ONNX file (``openvino.convert_model`` + ``save_model``, weights kept FP32, not
    compressed to FP16); INT8 with NNCF's post-training quantization on kdexport's calibration images."""

    runtime = "openvino"

    def require(self) -> None:
        from ..runtimes.openvino import require

        require()
        try:
            import nncf  # noqa: F401
        except ImportError:
            from ..errors import ConfigError
            from ..runtimes.openvino import EXTRA

            raise ConfigError(f"the openvino target's INT8 needs NNCF: {EXTRA}") from None

    def export(self, job: TargetJob, log) -> list[TargetFile]:
        import openvino as ov

        from ..runtimes.openvino import META_KEY, ir_files

        dest = job.out / "openvino"
        version = runtime_version("x.xml")
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            try:
                with quiet_tool():
                    model = ov.convert_model(str(job.onnx_path))
                model.set_rt_info(json.dumps(job.metadata), META_KEY)
                fp32 = tmp / f"{job.stem}.xml"
                ov.save_model(model, str(fp32), compress_to_fp16=False)
            except Exception as e:
                raise ExportError(f"openvino: converting {job.onnx_path.name} failed: {type(e).__name__}: "
                                  f"{first_line(e)}; the other targets still ship") from None
            parity, error = prove_fp32(job, fp32)
            row = TargetFile("openvino", "fp32", self.runtime, version, None, parity=parity, error=error,
                             note="IR weights FP32 (not compressed to FP16); run with INFERENCE_PRECISION_HINT f32 "
                                  "(OpenVINO's CPU default is bf16 on CPUs with AVX-512 BF16 or AMX)")
            if error is None:
                place(ir_files(fp32), dest)
                final = dest / fp32.name
                row.path = str(final.relative_to(job.out))
                row.bytes = sum(f.stat().st_size for f in ir_files(final))
                row.accuracy = file_accuracy(final, job.data, job.threads)
                row.accuracy_drop_points = (job.accuracy_fp32 - row.accuracy) * 100
            rows.append(row)
            if job.int8 and error is None:
                rows.append(self._int8(job, model, tmp, dest, version))
        return rows

    def _int8(self, job: TargetJob, model, tmp: Path, dest: Path, version: str | None) -> TargetFile:
        import nncf
        import openvino as ov

        from ..runtimes.openvino import META_KEY, ir_files

        n = job.quant.calibration_samples
        x = calibration_inputs(job.data, n)
        row = TargetFile("openvino", "int8", self.runtime, version, None,
                         note=f"NNCF post-training quantization, {len(x)} calibration images (the same as "
                              "onnxruntime's static INT8), default preset")
        try:
            nncf.set_log_level(logging.ERROR)
            with quiet_tool():
                q = nncf.quantize(model, nncf.Dataset([x[i:i + 1] for i in range(len(x))]), subset_size=len(x))
            q.set_rt_info(json.dumps({**job.metadata, "quantization": {"tool": "nncf", "mode": "static",
                                                                       "calibration_samples": len(x)}}), META_KEY)
            path = tmp / f"{job.stem}.int8.xml"
            ov.save_model(q, str(path))
        except Exception as e:
            row.error = f"NNCF quantization failed: {type(e).__name__}: {first_line(e)}"
            return row
        acc8 = file_accuracy(path, job.data, job.threads)
        row.accuracy = acc8
        row.accuracy_drop_points, row.error = gate_int8(job, acc8)
        if row.error is None:
            place(ir_files(path), dest)
            final = dest / path.name
            row.path = str(final.relative_to(job.out))
            row.bytes = sum(f.stat().st_size for f in ir_files(final))
        return row


TARGETS.register("openvino")(OpenVinoTarget())


def export_targets(targets: tuple[str, ...], job: TargetJob, log) -> list[TargetFile]:
    """Every target's files for ``job`` (``onnx`` is the job's own file: nothing to do); a target that fails to
    convert is a row with its error, and the others still ship."""
    rows: list[TargetFile] = []
    for name in targets:
        target = TARGETS.get(name)
        if name == "onnx":
            continue
        log(f"{job.stem}: exporting for {name} and checking parity and accuracy in its runtime")
        try:
            rows += target.export(job, log)
        except ExportError as e:
            rows.append(TargetFile(name, "fp32", target.runtime, None, None, error=str(e)))
        for row in rows[-2:]:
            if row.target == name and row.error:
                log(f"warning: {job.stem} {name} {row.precision}: {row.error}")
    return rows


__all__ = ["TargetFile", "TargetJob", "export_targets"]
