"""The ``executorch`` runtime: ``.pte`` programs run by ``executorch.runtime`` (XNNPACK-delegated on the CPU).

kdexport's programs take N x C x H x W float32 with the batch dynamic up to a bound (the memory planned for it;
larger batches are split), and carry kdexport's metadata as a constant method, ``kdexport_metadata`` (JSON),
beside ``forward``. ExecuTorch's threadpool is process-wide and can be sized only before the first program is loaded
(:func:`set_threads`): later programs run with the pool the first one got.
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


def _program(path: str | os.PathLike, threads: int | None = None):
    """The program at ``path``, loaded with the threadpool sized to ``threads`` when it still can be."""
    global _loaded
    require()
    from executorch.runtime import Runtime

    data = read_model_bytes(path, "an ExecuTorch (.pte) program", b"ET")
    native = None
    try:
        with native_quiet() as native:
            if threads:
                set_threads(threads)
            program = Runtime.get().load_program(data)
            _loaded = True
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


_loaded = False  # a program has been loaded in this process: the threadpool is no longer safe to resize


def set_threads(threads: int) -> int:
    """Size ExecuTorch's process-wide threadpool to ``threads`` if no program has been loaded yet; return the size
    it has. Resizing it after a program is loaded destroys the pool that program's XNNPACK delegate runs on (the
    process aborts: "The futex facility returned an unexpected error code"), so after the first load the pool
    stays as it is and every later program runs with it (a file's run records the size it got)."""
    from executorch.extension.pybindings import portable_lib

    if not _loaded and portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    return portable_lib._threadpool_get_thread_count()


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

        program = _program(path, threads or usable_cores())
        info, method = self._inspect(path, program)
        bound = info["max_batch"]
        pool = set_threads(threads or usable_cores())  # what this process's pool gives it

        def run(x: np.ndarray) -> np.ndarray:
            _ = program  # held by the closure: freeing it would leave ``method`` dangling
            outs = [method.execute([torch.from_numpy(np.require(x[i:i + bound], np.float32, ["C", "W"]))])[0]
                    for i in range(0, len(x), bound)]
            return (outs[0] if len(outs) == 1 else torch.cat(outs)).numpy().copy()

        return ModelFile(Path(path), "executorch", info["input_name"], [info["batch"], *info["input_shape"]],
                         info["num_classes"], run, info["metadata"], threads=pool)

    def version(self) -> str | None:
        from ..envinfo import package_version

        return package_version("executorch")


RUNTIMES.register("executorch")(ExecuTorchRuntime())
