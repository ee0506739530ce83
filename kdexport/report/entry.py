"""The per-model entry of report.json, typed.

Built by the pipeline and the sweep, read by ``check``, the report writer, the CLI and the
benchmarks through attributes and :meth:`ModelEntry.p50`, never through string key paths. Its JSON
(:meth:`ModelEntry.to_dict`) is the contract documented in README.md ("report.json"): the same keys in
the same order as before it had a type; optional keys are left out when they do not apply (an INT8
entry has no checkpoint, parity or history), except ``accuracy_torch``, which is always written
(``null`` for an INT8 entry).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ReportError

# JSON key order of an entry (the contract); ``quantization`` comes after every older key, then
# ``predictions`` (added later; absent from older reports).
_ORDER = ("arch", "spec", "params", "flops", "checkpoint", "onnx_path", "onnx_bytes", "accuracy_torch",
          "accuracy_onnx", "parity", "latency_ms", "throughput_per_s", "epochs", "history", "train_seconds",
          "torch_eager", "quantization", "predictions")
_ALWAYS = {"accuracy_torch"}


@dataclass
class ModelEntry:
    arch: str
    spec: dict | None = None
    params: int | None = None
    flops: int | None = None
    checkpoint: str | None = None  # relative to the report's folder
    onnx_path: str | None = None  # relative to the report's folder
    onnx_bytes: int | None = None
    accuracy_torch: float | None = None  # fraction in [0, 1]
    accuracy_onnx: float | None = None
    parity: dict | None = None  # {max_abs_diff, top1_agreement, inputs}
    latency_ms: dict[str, dict[str, float]] | None = None  # {"batch_N": {p50, p90, p99, mean, runs}}
    throughput_per_s: float | None = None
    epochs: int | None = None
    history: list[dict] | None = None
    train_seconds: float | None = None
    torch_eager: dict | None = None  # {latency_ms, throughput_per_s} under PyTorch eager
    quantization: dict | None = None  # INT8 entries: QuantResult + size and speed ratios
    predictions: dict | None = None  # prediction_health: spread over classes, flag when collapsed

    def __post_init__(self) -> None:
        assert set(_ORDER) == {f.name for f in dataclasses.fields(self)}, "_ORDER must list every field"

    # -- reading ----------------------------------------------------------------------------------------
    def latency(self, batch: int = 1) -> dict[str, float] | None:
        return (self.latency_ms or {}).get(f"batch_{batch}")

    def p50(self, batch: int = 1) -> float | None:
        """Median onnxruntime latency in ms at ``batch`` (None when not measured)."""
        lat = self.latency(batch)
        return lat.get("p50") if lat else None

    def batch_sizes(self) -> list[int]:
        return sorted(int(k.split("_", 1)[1]) for k in (self.latency_ms or {}))

    def eager_p50(self, batch: int = 1) -> float | None:
        lat = ((self.torch_eager or {}).get("latency_ms") or {}).get(f"batch_{batch}")
        return lat.get("p50") if lat else None

    @property
    def benchmarked(self) -> bool:
        return bool(self.latency_ms)

    # -- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _ORDER if getattr(self, k) is not None or k in _ALWAYS}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "report") -> ModelEntry:
        if not isinstance(d, dict) or "arch" not in d:
            raise ReportError(f"{where} is not a model entry (no arch)")
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in d.items() if k in known}
        if not isinstance(kept["arch"], str):
            raise ReportError(f"{where}.arch is not a string ({kept['arch']!r})")
        for k in ("spec", "parity", "latency_ms", "torch_eager", "quantization", "predictions"):
            if kept.get(k) is not None and not isinstance(kept[k], dict):
                raise ReportError(f"{where}.{k} is not an object ({kept[k]!r})")
        for k, v in (kept.get("latency_ms") or {}).items():
            if not isinstance(v, dict):
                raise ReportError(f"{where}.latency_ms.{k} is not an object ({v!r})")
        if kept.get("history") is not None and not isinstance(kept["history"], list):
            raise ReportError(f"{where}.history is not a list")
        return cls(**kept)


def model_entries(report: dict, which: str = "report") -> dict[str, ModelEntry]:
    """The benchmarked model entries of a report.json, by role (a rejected INT8 entry, which holds only
    its error, is left out)."""
    models = report.get("models")
    if not isinstance(models, dict):
        raise ReportError(f"{which} report has no key models")
    return {role: ModelEntry.from_dict(m, f"{which} report's models.{role}") for role, m in models.items()
            if isinstance(m, dict) and "arch" in m}


def entry_dicts(entries: dict[str, ModelEntry | dict]) -> dict[str, dict]:
    """``{role: entry}`` as report.json holds it."""
    return {role: e.to_dict() if isinstance(e, ModelEntry) else e for role, e in entries.items()}
