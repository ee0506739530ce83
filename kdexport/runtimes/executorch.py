"""The ``executorch`` runtime: ``.pte`` programs run by ``executorch.runtime`` (XNNPACK-delegated on the CPU).

kdexport's programs take N x C x H x W float32 with the batch dynamic up to a bound (the memory planned for it;
larger batches are split), and carry kdexport's metadata as a constant method, ``kdexport_metadata`` (JSON),
beside ``forward``. ExecuTorch's threadpool is process-wide: loading a program with ``threads`` sets it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelFileError, first_line
from . import RUNTIMES
from .base import ModelFile, native_quiet, quiet_torch_logs, read_model_bytes

EXTRA = "pip install 'kdexport[executorch]'"
META_METHOD = "kdexport_metadata"
FLOAT = 6  # ExecuTorch's ScalarType::Float


def require() -> None:
    try:
        with quiet_torch_logs():
            import executorch.runtime  # noqa: F401
    except ImportError:
        raise ConfigError(f"the executorch runtime is not installed: {EXTRA}") from None


def _program(path: str | os.PathLike):
    require()
    from executorch.runtime import Runtime

    data = read_model_bytes(path, "an ExecuTorch (.pte) program", b"ET")
    native = None
    try:
        with native_quiet() as native:
            program = Runtime.get().load_program(data)
        program._kdexport_data = data  # the methods point into the program and its bytes: keep both alive
        return program
    except Exception as e:
        why = (native.last() if native else None) or first_line(e, 160)
        raise ModelFileError(f"{str(path)!r} cannot be loaded by ExecuTorch: {why}") from None


def _metadata(program) -> dict:
    if META_METHOD not in program.method_names:
        return {}
    try:
        with native_quiet():
            raw = program.load_method(META_METHOD).execute([])[0]
        meta = json.loads(raw)
    except Exception:
        return {}
    return meta if isinstance(meta, dict) else {}


def set_threads(threads: int) -> None:
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)


class ExecuTorchRuntime:
    """``executorch.runtime`` with the XNNPACK backend compiled in, ``threads`` threads."""

    def inspect(self, path: str | os.PathLike) -> dict:
        return self._inspect(path, _program(path))[0]

    def _inspect(self, path, program):
        name = Path(path).name
        if "forward" not in program.method_names:
            raise ModelFileError(f"{name} has no forward method (methods: {sorted(program.method_names)})")
        with native_quiet():
            method = program.load_method("forward")
        md = method.metadata
        if md.num_inputs() != 1 or md.num_outputs() < 1:
            raise ModelFileError(f"{name}: expected one image input and a logits output, found {md.num_inputs()} "
                                 "inputs")
        ti, to = md.input_tensor_meta(0), md.output_tensor_meta(0)
        ishape, oshape = list(ti.sizes()), list(to.sizes())
        if len(ishape) != 4 or len(oshape) != 2 or int(ti.dtype()) != FLOAT:
            raise ModelFileError(f"{name} is not an image classifier: input {ishape}, output {oshape} (expected "
                                 "float32 N x C x H x W -> N x classes)")
        meta = _metadata(program)
        max_batch = meta.get("max_batch") if isinstance(meta.get("max_batch"), int) else None
        info = {"input_name": "x", "input_shape": ishape[1:], "batch": None if max_batch else ishape[0],
                "max_batch": max_batch or ishape[0], "num_classes": oshape[1], "metadata": meta,
                "bytes": Path(path).stat().st_size}
        return info, method

    def load(self, path: str | os.PathLike, threads: int | None = None) -> ModelFile:
        import torch

        from ..envinfo import usable_cores

        program = _program(path)
        info, method = self._inspect(path, program)
        set_threads(threads or usable_cores())
        bound = info["max_batch"]

        def run(x: np.ndarray) -> np.ndarray:
            _ = program  # held by the closure: freeing it would leave ``method`` dangling
            outs = [method.execute([torch.from_numpy(np.require(x[i:i + bound], np.float32, ["C", "W"]))])[0]
                    for i in range(0, len(x), bound)]
            return (outs[0] if len(outs) == 1 else torch.cat(outs)).numpy().copy()

        return ModelFile(Path(path), "executorch", info["input_name"], [info["batch"], *info["input_shape"]],
                         info["num_classes"], run, info["metadata"])

    def version(self) -> str | None:
        from ..envinfo import package_version

        return package_version("executorch")


RUNTIMES.register("executorch")(ExecuTorchRuntime())
