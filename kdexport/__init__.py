"""kdexport: distil a small student from a big teacher, export both to ONNX, measure them.

Public Python API (the CLI is a thin layer over these)::

    from kdexport import RunConfig, distill_export
    report = distill_export(RunConfig(dataset="digits", out="runs/demo"))

The names load lazily (PEP 562): ``import kdexport`` imports neither torch nor onnx until a name that needs
them is used, so the CLI answers ``--help`` at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

# public name -> the module that defines it
_API = {
    "RunConfig": "config", "KDConfig": "config", "QuantConfig": "config", "TrainConfig": "config",
    "KdexportError": "errors",
    "DATASETS": "data", "Dataset": "data.datasets", "load_dataset": "data.datasets",
    "MODELS": "models.builders", "ModelSpec": "models.builders", "build_model": "models.builders",
    "kd_loss": "distill.losses", "evaluate": "distill.train", "fit": "distill.train",
    "export_onnx": "export.onnx", "read_metadata": "runtimes.ort",
    "distill_export": "pipeline",
}

__all__ = [  # the names of _API, listed for tools that read __all__ (a test checks they agree)
    "DATASETS", "MODELS", "Dataset", "KDConfig", "KdexportError", "ModelSpec", "QuantConfig", "RunConfig",
    "TrainConfig", "__version__", "build_model", "distill_export", "evaluate", "export_onnx", "fit", "kd_loss",
    "load_dataset", "read_metadata",
]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'kdexport' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import KDConfig, QuantConfig, RunConfig, TrainConfig
    from .data import DATASETS
    from .data.datasets import Dataset, load_dataset
    from .distill.losses import kd_loss
    from .distill.train import evaluate, fit
    from .errors import KdexportError
    from .export.onnx import export_onnx
    from .models.builders import MODELS, ModelSpec, build_model
    from .pipeline import distill_export
    from .runtimes.ort import read_metadata
