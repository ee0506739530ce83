"""The ``litert`` runtime: ``.tflite`` files on LiteRT's interpreter (``ai-edge-litert``), XNNPACK on the CPU.

kdexport's LiteRT files take the input as exported, N x C x H x W (NCHW, float32), batch fixed at 1 as phone
apps run them; a batch of B is B calls. kdexport's metadata travels in the flatbuffer's own metadata list
(``kdexport_metadata``, JSON), where LiteRT's tools keep theirs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelFileError, first_line
from . import RUNTIMES
from .base import ModelFile, native_quiet, read_model_bytes

EXTRA = "pip install 'kdexport[litert]'"
META_NAME = b"kdexport_metadata"
LAYOUT = "NCHW"
NUMERIC = (np.float32, np.int8, np.uint8)  # input types kdexport feeds: float, or quantized with the file's scale


def quantizer(detail: dict):
    """How to turn float32 into what the tensor holds and back: a fully quantized file (int8/uint8 input or output,
    as LiteRT's INT8 converters often make) takes ``round(x / scale) + zero_point``, as an app feeds it."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return (lambda x: np.ascontiguousarray(x, dtype=np.float32)), (lambda y: y.astype(np.float32))
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)

    def q(x):
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)

    def dq(y):
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    return q, dq


def require() -> None:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        raise ConfigError(f"the litert runtime is not installed: {EXTRA}") from None


def _read_bytes(path: str | os.PathLike) -> bytes:
    return read_model_bytes(path, "a LiteRT (.tflite) model", b"TFL3")


def _metadata_from(buf: bytes) -> dict:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() != META_NAME:
            continue
        b = model.Buffers(entry.Buffer())
        raw = b.DataAsNumpy().tobytes() if b.DataLength() else buf[b.Offset():b.Offset() + b.Size()]
        try:
            meta = json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError):
            return {}
        return meta if isinstance(meta, dict) else {}
    return {}


def with_metadata(buf: bytes, meta: dict) -> bytes:
    """The flatbuffer ``buf`` with kdexport's metadata (JSON) added to its metadata list, through LiteRT's own
    generated schema (object API), as LiteRT's metadata tools do."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    entry_buffer = schema.BufferT()
    entry_buffer.data = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    model.buffers.append(entry_buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_NAME.decode(), len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (META_NAME, META_NAME.decode())] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _interpreter(data: bytes, where: str, threads: int | None = None):
    require()
    from ai_edge_litert.interpreter import Interpreter

    native = None
    try:
        with native_quiet() as native:
            it = Interpreter(model_content=data, num_threads=threads or 1)
            it.allocate_tensors()
    except Exception as e:
        why = first_line(e, 160) if str(e).strip() else (native.last() if native else None) or type(e).__name__
        raise ModelFileError(f"{where} cannot be loaded by LiteRT: {why}") from None
    return it


class LiteRtRuntime:
    """LiteRT's interpreter with its default XNNPACK delegate, ``threads`` threads."""

    def inspect(self, path: str | os.PathLike) -> dict:
        return self._inspect(path, _read_bytes(path))[0]

    def _inspect(self, path, data: bytes, threads: int | None = None):
        name = Path(path).name
        it = _interpreter(data, name, threads)
        ins, outs = it.get_input_details(), it.get_output_details()
        if len(ins) != 1 or not outs:
            raise ModelFileError(f"{name}: expected one image input and a logits output, found {len(ins)} inputs")
        ishape, oshape = [int(d) for d in ins[0]["shape"]], [int(d) for d in outs[0]["shape"]]
        if len(ishape) != 4 or len(oshape) != 2 or ins[0]["dtype"] not in NUMERIC:
            raise ModelFileError(f"{name} is not an image classifier: input {ishape} {ins[0]['dtype'].__name__}, "
                                 f"output {oshape} (expected N x C x H x W -> N x classes, float32 or int8/uint8 "
                                 "quantized)")
        try:
            meta = _metadata_from(data)
        except Exception:  # a flatbuffer the interpreter took but the schema cannot walk: no metadata
            meta = {}
        info = {"input_name": ins[0]["name"], "input_shape": ishape[1:], "batch": ishape[0], "num_classes": oshape[1],
                "metadata": meta, "bytes": len(data), "layout": meta.get("layout", LAYOUT)}
        return info, it

    def load(self, path: str | os.PathLike, threads: int | None = None) -> ModelFile:
        from ..envinfo import usable_cores

        info, it = self._inspect(path, _read_bytes(path), threads or usable_cores())
        d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
        i_in, i_out = d_in["index"], d_out["index"]
        q_in, dq_out = quantizer(d_in)[0], quantizer(d_out)[1]

        def run(x: np.ndarray) -> np.ndarray:
            it.set_tensor(i_in, q_in(x))
            it.invoke()
            return dq_out(it.get_tensor(i_out))

        return ModelFile(Path(path), "litert", info["input_name"], [info["batch"], *info["input_shape"]],
                         info["num_classes"], run, info["metadata"])

    def version(self) -> str | None:
        from ..envinfo import package_version

        return package_version("ai-edge-litert")


RUNTIMES.register("litert")(LiteRtRuntime())
