"""onnxruntime (CPU execution provider): sessions, the first output over a batch, and what an ONNX classifier
file declares (input, classes, metadata), checked before it is run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFileError, first_line
from . import RUNTIMES
from .base import ModelFile, batched


def ort_session(path: str | os.PathLike | bytes, threads: int | None = None, graph_opt: str = "all",
                providers: list[str] | None = None, config: dict[str, str] | None = None):
    """An onnxruntime session for a model file (or serialized model bytes); ``config``: session config entries."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    for key, value in (config or {}).items():
        so.add_session_config_entry(key, value)
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


def _fixed_batch(session) -> int | None:
    b = session.get_inputs()[0].shape[0]
    return b if isinstance(b, int) and b > 0 else None


def ort_logits(session, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The session's first output over ``x`` in batches (a fixed batch fed what it takes: :func:`batched`)."""
    name = session.get_inputs()[0].name
    return batched(lambda chunk: session.run(None, {name: chunk})[0], x, _fixed_batch(session), batch_size)


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


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The model file and the external data files its weights live in (torch.onnx.export writes
    ``NAME.onnx.data`` beside ``NAME.onnx`` by default)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    extra = {ExternalDataInfo(t).location for t in m.graph.initializer if uses_external_data(t)}
    return [path, *(path.parent / loc for loc in sorted(extra))]


def data_for_model(path: str | os.PathLike, dataset: str, data_dir: str | os.PathLike | None,
                   crop_ratio: float | None = None):
    """The dataset a model is evaluated (calibrated, timed) on, decoded as the model takes it: for image files
    the size comes from the graph (or its metadata) and the crop from the metadata's ``preprocess`` (or
    ``crop_ratio`` for a model without it, else the whole image), never from the photos' defaults."""
    from ..data.datasets import load_dataset
    from ..data.images import Geometry
    from .base import inspect

    size = None
    if dataset in ("imagefolder", "cifar10"):
        info = inspect(path)  # any runtime's file
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
        elif geometry is None and crop_ratio is None and dataset == "imagefolder":
            crop_ratio = 1.0  # a model that states no crop: the whole image resized, not the photos' default crop
    return load_dataset(dataset, data_dir, download=False, image_size=size, crop_ratio=crop_ratio)


class OnnxRuntime:
    """The ``onnxruntime`` runtime: ``.onnx`` and ``.ort`` files on the CPU execution provider."""

    def inspect(self, path: str | os.PathLike) -> dict:
        return inspect_classifier(path)

    def load(self, path: str | os.PathLike, threads: int | None = None, graph_opt: str = "all") -> ModelFile:
        from ..envinfo import usable_cores

        sess = ort_session(path, threads=threads or usable_cores(), graph_opt=graph_opt)
        inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else None for d in inp.shape]
        classes = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) and out.shape[-1] > 0 else None
        meta = dict(sess.get_modelmeta().custom_metadata_map)
        for k, v in meta.items():
            try:
                meta[k] = json.loads(v)
            except (json.JSONDecodeError, TypeError):
                pass
        name = inp.name
        return ModelFile(Path(path), "onnxruntime", name, shape, classes,
                         lambda x: sess.run(None, {name: x})[0], meta)

    def version(self) -> str | None:
        from ..envinfo import package_version

        return package_version("onnxruntime")


RUNTIMES.register("onnxruntime")(OnnxRuntime())
