"""kdexport: distil a small student from a big teacher, export both to ONNX, measure them.

Public Python API (the CLI is a thin layer over these)::

    from kdexport import RunConfig, distill_export
    report = distill_export(RunConfig(dataset="digits", out="runs/demo"))
"""

from .config import KDConfig, QuantConfig, RunConfig, TrainConfig
from .data.datasets import DATASETS, Dataset, load_dataset
from .distill.losses import kd_loss
from .distill.train import evaluate, fit
from .errors import KdexportError
from .export.onnx import export_onnx, read_metadata
from .models.builders import MODELS, ModelSpec, build_model
from .pipeline import distill_export
from .version import __version__

__all__ = [
    "__version__", "DATASETS", "MODELS", "Dataset", "KDConfig", "KdexportError", "ModelSpec", "QuantConfig",
    "RunConfig", "TrainConfig", "build_model", "distill_export", "evaluate", "export_onnx",
    "fit", "kd_loss", "load_dataset", "read_metadata",
]
