"""Typed errors. The library raises these; the CLI prints one line and exits non-zero."""

from __future__ import annotations


class KdexportError(Exception):
    """Base class for every error kdexport reports to a user."""

    exit_code = 1


class ConfigError(KdexportError):
    """An option has an invalid value (T <= 0, beta outside [0, 1], ...)."""

    exit_code = 2


class UnknownNameError(ConfigError):
    """A registry lookup failed; the message lists the valid choices."""

    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, sorted(choices)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.choices)}")


class DataError(KdexportError):
    """A dataset is missing, unreadable or does not fit the model."""

    exit_code = 2


class ModelError(KdexportError):
    """A model cannot be built or its weights cannot be obtained."""

    exit_code = 2


class CheckpointError(KdexportError):
    """A checkpoint is unreadable, unsafe, or for another architecture / class count."""

    exit_code = 2


class OutputError(KdexportError):
    """The output folder exists (without --overwrite) or cannot be written."""

    exit_code = 2


class StateError(KdexportError):
    """A saved state kdexport reads back (resume files, sweep cells, recorded options) is unreadable or
    inconsistent; the message says how to start that unit afresh."""

    exit_code = 2


class ExportError(KdexportError):
    """ONNX export or its checker failed."""


class ModelFileError(ExportError):
    """An ONNX file given as input is missing, invalid, not an image classifier, or has unusable metadata."""

    exit_code = 2


class ParityError(ExportError):
    """onnxruntime's output does not match PyTorch's on real inputs."""


class TrainingError(KdexportError):
    """Training diverged (NaN / inf loss) or could not proceed."""


class GateError(KdexportError):
    """A quality gate failed (accuracy drop after quantization, regression check)."""


class ReportError(KdexportError):
    """A report cannot be used: missing key, or reports for different datasets or architectures."""

    exit_code = 2


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (at most ``limit`` characters), or its type
    name when it has no message: what a one-line error shows of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
