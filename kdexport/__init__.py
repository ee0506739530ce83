"""kdexport: distil a small student from a big teacher, export both to ONNX, measure them.

Public Python API (the CLI is a thin layer over these)::

    from kdexport import RunConfig, distill_export
    report = distill_export(RunConfig(dataset="digits", out="runs/demo"))
"""

__version__ = "0.1.0"

from .config import KDConfig, RunConfig, TrainConfig  # noqa: E402
from .data import DATASETS, Dataset, load_dataset  # noqa: E402
from .errors import KdexportError  # noqa: E402
from .export import export_onnx, read_metadata  # noqa: E402
from .losses import kd_loss  # noqa: E402
from .models import MODELS, ModelSpec, build_model  # noqa: E402
from .pipeline import distill_export  # noqa: E402
from .train import evaluate, fit  # noqa: E402

__all__ = [
    "__version__", "DATASETS", "MODELS", "Dataset", "KDConfig", "KdexportError", "ModelSpec",
    "RunConfig", "TrainConfig", "build_model", "distill_export", "evaluate", "export_onnx",
    "fit", "kd_loss", "load_dataset", "read_metadata",
]
