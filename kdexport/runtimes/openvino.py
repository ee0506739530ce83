"""The ``openvino`` runtime: OpenVINO IR files (``NAME.xml`` beside ``NAME.bin``) on its CPU plugin.

FP32 means FP32 here: the CPU plugin runs an FP32 IR in bf16 by default on CPUs with AVX-512 BF16 or AMX
(``INFERENCE_PRECISION_HINT``), which moves logits by ~1e-3 and is a choice an app makes; kdexport pins
``f32`` so that parity and accuracy are the file's, and says so in its report. An INT8 IR (NNCF) runs its
quantized operations in int8 whatever the hint. kdexport's metadata travels in the IR's ``rt_info``
(``kdexport/metadata``, JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelFileError, first_line
from . import RUNTIMES
from .base import ModelFile

EXTRA = "pip install 'kdexport[openvino]'"
META_KEY = ["kdexport", "metadata"]
PRECISION_HINT = "f32"


def require() -> None:
    """One line naming the install when OpenVINO is missing."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        raise ConfigError(f"the openvino runtime is not installed: {EXTRA}") from None


def ir_files(path: str | os.PathLike) -> list[Path]:
    """An IR's two files: ``NAME.xml`` and its weights ``NAME.bin``."""
    path = Path(path)
    return [path, path.with_suffix(".bin")]


def read(path: str | os.PathLike):
    """The IR as an ``openvino.Model``, checked to be one: one line naming the file otherwise."""
    require()
    import openvino as ov

    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a directory, not an OpenVINO IR")
    for f in ir_files(path):
        if not f.is_file():
            raise ModelFileError(f"{str(f)!r} does not exist (an OpenVINO IR is NAME.xml with NAME.bin beside it)")
    try:
        return ov.Core().read_model(str(path))
    except Exception as e:
        raise ModelFileError(f"{str(path)!r} is not a valid OpenVINO IR: {first_line(e, 160)}") from None


def _dims(partial_shape) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in partial_shape]


def metadata(model) -> dict:
    if not model.has_rt_info(META_KEY):
        return {}
    try:
        meta = json.loads(model.get_rt_info(META_KEY).astype(str))
    except (ValueError, TypeError):
        return {}
    return meta if isinstance(meta, dict) else {}


class OpenVinoRuntime:
    """OpenVINO's CPU plugin, latency hint, ``threads`` inference threads, FP32 pinned (module docstring)."""

    def inspect(self, path: str | os.PathLike) -> dict:
        model = read(path)
        if len(model.inputs) != 1 or len(model.outputs) < 1:
            raise ModelFileError(f"{Path(path).name}: expected one image input and a logits output, found "
                                 f"{len(model.inputs)} inputs")
        ishape, oshape = _dims(model.inputs[0].get_partial_shape()), _dims(model.outputs[0].get_partial_shape())
        if len(ishape) != 4 or len(oshape) != 2:
            raise ModelFileError(f"{Path(path).name} is not an image classifier: input shape {ishape}, output shape "
                                 f"{oshape} (expected N x C x H x W -> N x classes)")
        meta = metadata(model)
        chw = ishape[1:]
        if any(d is None for d in chw) and "input_shape" in meta:
            chw = list(meta["input_shape"])
        return {"input_name": model.inputs[0].get_any_name(), "input_shape": chw, "batch": ishape[0],
                "num_classes": oshape[1], "metadata": meta, "bytes": sum(f.stat().st_size for f in ir_files(path))}

    def load(self, path: str | os.PathLike, threads: int | None = None) -> ModelFile:
        import openvino as ov

        from ..envinfo import usable_cores

        info = self.inspect(path)
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads or usable_cores(), "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": PRECISION_HINT}
        try:
            compiled = core.compile_model(read(path), "CPU", config)
        except Exception as e:
            raise ModelFileError(f"OpenVINO cannot compile {Path(path).name} for the CPU: "
                                 f"{first_line(e, 160)}") from None
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:  # the cheapest Python call: 20 us vs 43 for infer({0: x}) on a tiny MLP
            request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32), shared_memory=True))
            request.infer()
            return request.get_output_tensor().data.copy()  # the request's buffer is reused next call

        return ModelFile(Path(path), "openvino", info["input_name"], [info["batch"], *info["input_shape"]],
                         info["num_classes"], run, info["metadata"])

    def version(self) -> str | None:
        from ..envinfo import package_version

        return package_version("openvino")


RUNTIMES.register("openvino")(OpenVinoRuntime())
