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
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import QuantConfig
from ..data.datasets import Dataset
from ..errors import ExportError, first_line
from ..runtimes.base import file_accuracy, native_quiet, quiet_torch_logs, runtime_version
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
    runs_here: bool = True  # False: this machine cannot run the file (Core ML off macOS): checked, not timed

    @property
    def kept(self) -> bool:
        return self.path is not None

    @property
    def timed(self) -> bool:
        return self.kept and self.runs_here

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
        dest = dest_dir / f.name
        if dest.is_dir():  # a package folder (.mlpackage) left by an earlier attempt
            shutil.rmtree(dest)
        os.replace(f, dest)


def weights_text(quant) -> str:
    """How an INT8 file's weights are scaled, as its note says it."""
    return "per-tensor" if quant.per_tensor else "per-channel"


def keep_fp32(job: TargetJob, row: TargetFile, made: Path, dest: Path, files: list[Path] | None = None) -> Path | None:
    """Prove ``made`` (parity); when it holds, move it (and ``files``) to ``dest`` and measure its accuracy in its
    runtime. Fills ``row``; returns the kept file or None."""
    try:
        row.parity, row.error = prove_fp32(job, made)
    except ExportError as e:  # the runtime refused the file it was given
        row.error = f"{e}; not kept"
    if row.error is not None:
        return None
    return keep(job, row, made, dest, files, accuracy=True)


def keep(job: TargetJob, row: TargetFile, made: Path, dest: Path, files: list[Path] | None = None, *,
         accuracy: bool) -> Path:
    place(files or [made], dest)
    final = dest / made.name
    row.path = str(final.relative_to(job.out))
    row.bytes = sum(size_of(dest / f.name) for f in files or [made])
    if accuracy:
        row.accuracy = file_accuracy(final, job.data, job.threads)
        row.accuracy_drop_points = (job.accuracy_fp32 - row.accuracy) * 100
    return final


def prove_int8(job: TargetJob, row: TargetFile, made: Path, dest: Path, files: list[Path] | None = None) -> None:
    """An INT8 file's accuracy in its runtime on the whole test split, gated against the FP32 ONNX file; kept only
    within ``--max-accuracy-drop``."""
    try:
        acc8 = file_accuracy(made, job.data, job.threads)
    except ExportError as e:  # the runtime refused the file it was given
        row.error = f"{e}; not kept"
        return
    row.accuracy = acc8
    row.accuracy_drop_points, row.error = gate_int8(job, acc8)
    if row.error is None:
        keep(job, row, made, dest, files, accuracy=False)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def sample_inputs(job: TargetJob, n: int) -> torch.Tensor:
    """``n`` real inputs to trace with (repeated when the parity set is smaller)."""
    x = job.parity_x
    return x[torch.arange(n) % len(x)].contiguous()


def calibrate(model, x: torch.Tensor, batch: int) -> None:
    """Run the calibration images through a PT2E-prepared model (its observers record the ranges)."""
    for i in range(0, len(x), batch):
        model(x[i:i + batch])


def int8_file(job: TargetJob, row: TargetFile, quantize, write, path: Path, dest: Path) -> TargetFile:
    """A PT2E INT8 file: ``quantize()`` the model (prepare, calibrate, convert), ``write(model, path)`` it through
    the target's converter, then :func:`prove_int8`. Either step failing is the row's error, not the run's."""
    try:
        with quiet_tool(), torch.no_grad():
            model = quantize()
    except Exception as e:
        row.error = f"PT2E quantization failed: {type(e).__name__}: {first_line(e)}"
        return row
    try:
        write(model, path)
    except ExportError as e:
        row.error = str(e)
        return row
    prove_int8(job, row, path, dest)
    return row


def converter_error(target: str, e: Exception) -> ExportError:
    return ExportError(f"{target}: the converter refused the model: {type(e).__name__}: {first_line(e, 200)} (try "
                       "another target, or report the op it names); the other targets still ship")


@contextlib.contextmanager
def quiet_tool():
    """A converter's own logging and progress bars kept off the run's output."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), native_quiet(), quiet_torch_logs():
        yield


class OnnxTarget:
    """The ONNX file itself: exported and proven by :func:`kdexport.export.onnx.export_onnx`, nothing more here."""

    runtime = "onnxruntime"

    def require(self) -> None:
        pass

    def export(self, job: TargetJob, log) -> list[TargetFile]:
        return []


TARGETS.register("onnx")(OnnxTarget())


class OrtTarget:
    """onnxruntime's mobile format (``.ort``, for ORT Mobile on Android and iOS) from the proven ONNX file (and the
    INT8 ONNX file), by the converter in the onnxruntime wheel; beside each, the ``required_operators.config`` a
    reduced mobile build of onnxruntime needs."""

    runtime = "onnxruntime"

    def require(self) -> None:
        pass

    def export(self, job: TargetJob, log) -> list[TargetFile]:
        from .onnx import convert_to_ort

        version = runtime_version("x.ort")
        dest = job.out / "ort"
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            with quiet_tool():
                made = convert_to_ort(job.onnx_path, Path(tmp))
            ort = next(f for f in made if f.suffix == ".ort")
            row = TargetFile("ort", "fp32", self.runtime, version, None,
                             note="onnxruntime's ORT format (fixed optimizations), with its required_operators.config")
            keep_fp32(job, row, ort, dest, made)
            rows.append(row)
            int8 = job.onnx_path.with_name(f"{job.stem}.int8.onnx")
            if job.int8 and row.kept and int8.is_file():
                with quiet_tool():
                    made8 = convert_to_ort(int8, Path(tmp) / "int8")
                row8 = TargetFile("ort", "int8", self.runtime, version, None,
                                  note="the INT8 ONNX file in ORT format")
                prove_int8(job, row8, next(f for f in made8 if f.suffix == ".ort"), dest, made8)
                rows.append(row8)
        return rows


TARGETS.register("ort")(OrtTarget())


class OpenVinoTarget:
    """OpenVINO IR from the proven ONNX file (``openvino.convert_model`` + ``save_model``, weights kept FP32, not
    compressed to FP16); INT8 with NNCF's post-training quantization on kdexport's calibration images."""

    runtime = "openvino"

    def require(self) -> None:
        from ..runtimes.openvino import EXTRA

        _require("openvino", "nncf", EXTRA)  # NNCF for its INT8

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
            row = TargetFile("openvino", "fp32", self.runtime, version, None,
                             note="IR weights FP32 (not compressed to FP16); run with INFERENCE_PRECISION_HINT f32 "
                                  "(OpenVINO's CPU default is bf16 on CPUs with AVX-512 BF16 or AMX)")
            kept = keep_fp32(job, row, fp32, dest, ir_files(fp32))
            rows.append(row)
            if job.int8 and kept:
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
                              "onnxruntime's static INT8), default preset"
                              + (", per-tensor weights" if job.quant.per_tensor else ""))
        try:
            nncf.set_log_level(logging.ERROR)
            with quiet_tool():
                advanced = None
                if job.quant.per_tensor:
                    from nncf.quantization.advanced_parameters import (
                        AdvancedQuantizationParameters,
                        QuantizationParameters,
                    )

                    advanced = AdvancedQuantizationParameters(
                        weights_quantization_params=QuantizationParameters(per_channel=False))
                q = nncf.quantize(model, nncf.Dataset([x[i:i + 1] for i in range(len(x))]), subset_size=len(x),
                                  advanced_parameters=advanced)
            q.set_rt_info(json.dumps({**job.metadata, "quantization": {"tool": "nncf", "mode": "static",
                                                                       "calibration_samples": len(x)}}), META_KEY)
            path = tmp / f"{job.stem}.int8.xml"
            ov.save_model(q, str(path))
        except Exception as e:
            row.error = f"NNCF quantization failed: {type(e).__name__}: {first_line(e)}"
            return row
        prove_int8(job, row, path, dest, ir_files(path))
        return row


TARGETS.register("openvino")(OpenVinoTarget())


def _require(runtime_module: str, converter: str, extra: str) -> None:
    import importlib

    from ..errors import ConfigError

    with quiet_tool():  # their first import logs from C++ (TensorFlow's oneDNN banner, torch deprecations)
        importlib.import_module(f"kdexport.runtimes.{runtime_module}").require()
    try:
        with quiet_tool():
            importlib.import_module(converter)
    except ImportError:
        raise ConfigError(f"the {runtime_module} target needs {converter.split('.')[0]}: {extra}") from None


class TorchTarget:
    """A target converted from the PyTorch model (not the ONNX file): the FP32 file written by ``write``, proven,
    then (with ``--quantize``) the subclass's INT8 file."""

    runtime: str
    suffix: str
    sample_batch: int

    def export(self, job: TargetJob, log) -> list[TargetFile]:
        version = runtime_version(f"x{self.suffix}")
        dest = job.out / self.runtime
        meta = self.metadata(job)
        sample = (sample_inputs(job, self.sample_batch),)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / f"{job.stem}{self.suffix}"
            self.write(job, job.model, sample, fp32, meta)
            row = TargetFile(self.runtime, "fp32", self.runtime, version, None, note=self.fp32_note())
            kept = keep_fp32(job, row, fp32, dest)
            rows.append(row)
            if job.int8 and kept:
                rows.append(self._int8(job, sample, Path(tmp), dest, meta, version))
        return rows


class LiteRtTarget(TorchTarget):
    """LiteRT (``.tflite``) straight from PyTorch with ``litert-torch`` (no TensorFlow), NCHW float32 input as
    exported, batch 1; INT8 through litert-torch's PT2E quantizer (static, symmetric, per-channel weights) calibrated
    on kdexport's calibration images. Run by ``ai-edge-litert``'s interpreter (XNNPACK)."""

    runtime = "litert"

    def require(self) -> None:
        from ..runtimes.litert import EXTRA

        _require("litert", "litert_torch", EXTRA)

    def _convert(self, job: TargetJob, module, sample, path: Path, meta: dict, quant_config=None) -> None:
        import litert_torch

        from ..runtimes.litert import with_metadata

        try:
            with quiet_tool():
                model = litert_torch.convert(module, sample, quant_config=quant_config)
                model.export(str(path))
        except Exception as e:
            raise converter_error("litert", e) from None
        path.write_bytes(with_metadata(path.read_bytes(), meta))

    suffix, sample_batch = ".tflite", 1

    def metadata(self, job: TargetJob) -> dict:
        from ..runtimes.litert import LAYOUT

        return {**job.metadata, "layout": LAYOUT}

    def fp32_note(self) -> str:
        from ..runtimes.litert import LAYOUT

        return f"litert-torch from PyTorch; input {LAYOUT} float32, batch 1 (batch B = B calls); XNNPACK"

    def write(self, job: TargetJob, module, sample, path: Path, meta: dict) -> None:
        self._convert(job, module, sample, path, meta)

    def _int8(self, job: TargetJob, sample, tmp: Path, dest: Path, meta: dict, version) -> TargetFile:
        from litert_torch.quantize import pt2e_quantizer, quant_config
        from torchao.quantization.pt2e import quantize_pt2e

        x = torch.from_numpy(calibration_inputs(job.data, job.quant.calibration_samples))
        row = TargetFile("litert", "int8", self.runtime, version, None,
                         note=f"litert-torch PT2E static INT8 (symmetric, {weights_text(job.quant)} weights), "
                              f"{len(x)} calibration "
                              "images (the same as onnxruntime's static INT8)")
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
            pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=not job.quant.per_tensor))

        def quantize():
            m = quantize_pt2e.prepare_pt2e(torch.export.export(job.model, sample).module(), quantizer)
            calibrate(m, x, 1)  # the graph is traced at batch 1
            return quantize_pt2e.convert_pt2e(m, fold_quantize=False)

        def write(m, path):
            self._convert(job, m, sample, path, {**meta, "quantization": {
                "tool": "litert-torch pt2e", "mode": "static", "calibration_samples": len(x)}},
                quant_config.QuantConfig(pt2e_quantizer=quantizer))

        return int8_file(job, row, quantize, write, tmp / f"{job.stem}.int8.tflite", dest)


TARGETS.register("litert")(LiteRtTarget())


class ExecuTorchTarget(TorchTarget):
    """ExecuTorch (``.pte``): ``torch.export`` (batch dynamic up to MAX_BATCH) -> ``to_edge_transform_and_lower``
    with the XNNPACK partitioner -> ``to_executorch``; INT8 through the XNNPACK PT2E quantizer (static, symmetric,
    per-channel weights) on kdexport's calibration images. Run by ``executorch.runtime``."""

    runtime = "executorch"
    MAX_BATCH = 64  # the batch the program plans memory for; larger batches are split by the runtime

    def require(self) -> None:
        from ..runtimes.executorch import EXTRA

        _require("executorch", "executorch.exir", EXTRA)

    def _lower(self, module, sample, path: Path, meta: dict) -> None:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        from ..runtimes.executorch import META_METHOD

        try:
            with quiet_tool(), torch.no_grad():
                program = torch.export.export(module, sample, dynamic_shapes=self._dynamic())
                et = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                                 constant_methods={META_METHOD: json.dumps(meta)}).to_executorch()
            path.write_bytes(et.buffer)
        except Exception as e:
            raise converter_error("executorch", e) from None

    def _dynamic(self):
        return ({0: torch.export.Dim("batch", min=1, max=self.MAX_BATCH)},)

    suffix, sample_batch = ".pte", 32  # a batch of 1 would specialize the batch dimension

    def metadata(self, job: TargetJob) -> dict:
        return {**job.metadata, "max_batch": self.MAX_BATCH}

    def fp32_note(self) -> str:
        return f"torch.export -> XNNPACK-lowered .pte; batch dynamic up to {self.MAX_BATCH}"

    def write(self, job: TargetJob, module, sample, path: Path, meta: dict) -> None:
        self._lower(module, sample, path, meta)

    def _int8(self, job: TargetJob, sample, tmp: Path, dest: Path, meta: dict, version) -> TargetFile:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e import quantize_pt2e

        x = torch.from_numpy(calibration_inputs(job.data, job.quant.calibration_samples))
        row = TargetFile("executorch", "int8", self.runtime, version, None,
                         note=f"XNNPACK PT2E static INT8 (symmetric, {weights_text(job.quant)} weights), "
                              f"{len(x)} calibration images "
                              "(the same as onnxruntime's static INT8)")
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(
            is_per_channel=not job.quant.per_tensor))

        def quantize():
            m = torch.export.export(job.model, sample, dynamic_shapes=self._dynamic()).module()
            m = quantize_pt2e.prepare_pt2e(m, quantizer)
            calibrate(m, x, 32)
            return quantize_pt2e.convert_pt2e(m)

        def write(m, path):
            self._lower(m, sample, path, {**meta, "quantization": {
                "tool": "executorch xnnpack pt2e", "mode": "static", "calibration_samples": len(x)}})

        return int8_file(job, row, quantize, write, tmp / f"{job.stem}.int8.pte", dest)


TARGETS.register("executorch")(ExecuTorchTarget())


class AppModel(torch.nn.Module):
    """What a Core ML app feeds and reads: an image scaled to [0, 1] in, class probabilities out (the student with
    its normalization before it and a softmax after it)."""

    def __init__(self, model: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return torch.softmax(self.model((x - self.mean) / self.std), dim=1)


class CoreMlTarget:
    """Core ML (``.mlpackage``, ML Program) with ``coremltools.convert`` from a ``torch.export`` program: an image
    input (pixels scaled by 1/255, normalization baked in), a classifier output (class label and probabilities, the
    class names from the run), weights and compute in FP32. Core ML predicts only on macOS: on Linux the package is
    checked (it loads, its input, outputs, labels and metadata) and its outputs are not run."""

    runtime = "coreml"
    NOT_RUN = "Core ML predicts only on macOS: this file's outputs were NOT run here"

    def require(self) -> None:
        from ..runtimes.coreml import EXTRA

        _require("coreml", "coremltools", EXTRA)

    def export(self, job: TargetJob, log) -> list[TargetFile]:
        import coremltools as ct

        from ..runtimes.coreml import META_KEY, check_package

        meta = job.metadata
        mean, std, names = meta["mean"], meta["std"], meta["class_names"]
        app = AppModel(job.model, mean, std).eval()
        # the wrapper's one claim checked in PyTorch: on real images in [0, 1] it gives softmax(student(x))
        x = sample_inputs(job, min(len(job.parity_x), 64))
        x01 = x * app.std + app.mean
        with torch.no_grad():
            diff = float((app(x01) - torch.softmax(job.model(x), 1)).abs().max())
        c, h, w = x.shape[1:]
        version = runtime_version("x.mlpackage")
        row = TargetFile("coreml", "fp32", self.runtime, version, None, runs_here=False,
                         extra={"baked_preprocessing_max_abs_diff": diff},
                         note=f"{self.NOT_RUN}; image input {w}x{h} {'gray' if c == 1 else 'RGB'} (pixels / 255, "
                              "normalization baked in), classifier output with the class names; FP32 ML Program "
                              "(iOS 16+)")
        if diff > 1e-5:
            row.error = f"the app wrapper (normalization + softmax) differs from the student by {diff:.2e}; not kept"
            return [row]
        layout = ct.colorlayout.GRAYSCALE if c == 1 else ct.colorlayout.RGB
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{job.stem}.mlpackage"
            try:
                with quiet_tool(), torch.no_grad():
                    program = torch.export.export(app, (x01[:1].contiguous(),)).run_decompositions({})
                    ml = ct.convert(program, inputs=[ct.ImageType(name="image", shape=(1, c, h, w), scale=1 / 255,
                                                                  color_layout=layout)],
                                    classifier_config=ct.ClassifierConfig(list(names)), convert_to="mlprogram",
                                    compute_precision=ct.precision.FLOAT32,
                                    minimum_deployment_target=ct.target.iOS16)
                ml.short_description = f"{meta.get('arch', 'student')} distilled by kdexport: {len(names)} classes"
                ml.user_defined_metadata[META_KEY] = json.dumps(meta)
                ml.save(str(path))
            except Exception as e:
                raise converter_error("coreml", e) from None
            try:
                row.extra["checked"] = check_package(path, meta)
            except Exception as e:
                row.error = f"the saved package does not check out: {first_line(e, 200)}; not kept"
                return [row]
            keep(job, row, path, job.out / "coreml", accuracy=False)
        if job.int8:
            rows = [row, TargetFile("coreml", "int8", self.runtime, version, None, runs_here=False,
                                    note="not made: an INT8 file is kept only with its accuracy measured, and Core ML "
                                         "cannot run here")]
            return rows
        return [row]


TARGETS.register("coreml")(CoreMlTarget())


def export_targets(targets: tuple[str, ...], job: TargetJob, log) -> list[TargetFile]:
    """Every target's files for ``job`` (``onnx`` is the job's own file: nothing to do); a target that fails to
    convert is a row with its error, and the others still ship."""
    rows: list[TargetFile] = []
    for name in targets:
        target = TARGETS.get(name)
        if name == "onnx":
            continue
        log(f"{job.stem}: exporting for {name} and checking parity and accuracy in its runtime")
        target.require()  # imports the converter quietly (the run checked it is there before training)
        try:
            rows += target.export(job, log)
        except ExportError as e:
            rows.append(TargetFile(name, "fp32", target.runtime, None, None, error=str(e)))
        for row in rows:
            if row.target == name and row.error:
                log(f"warning: {job.stem} {name} {row.precision}: {row.error}")
    return rows


__all__ = ["TargetFile", "TargetJob", "export_targets"]
