"""The ``coreml`` runtime: Core ML packages (``.mlpackage``), *checked* here, never run.

Core ML predicts only on macOS (and iOS). On Linux kdexport reads the package with ``coremltools`` and checks
what an app relies on: it is a classifier, its input is an image of the expected size, colour layout and scale
(normalization baked in), its class labels are the run's class names in order, and kdexport's metadata
(``kdexport_metadata`` in the package's user-defined metadata, JSON) is there. ``load`` is one line saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError, ModelFileError, first_line
from . import RUNTIMES
from .base import quiet_torch_logs

EXTRA = "pip install 'kdexport[coreml]'"
META_KEY = "kdexport_metadata"
NOT_RUN = "Core ML predicts only on macOS; kdexport checks .mlpackage files (kdexport verify) but does not run them"


def require() -> None:
    import logging

    logger = logging.getLogger("coremltools")  # its native library is macOS-only: it warns on import elsewhere
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with quiet_torch_logs():
            import coremltools  # noqa: F401
    except ImportError:
        raise ConfigError(f"the coreml runtime is not installed: {EXTRA}") from None
    finally:
        logger.setLevel(level)


def read_spec(path: str | os.PathLike):
    require()
    import coremltools as ct

    path = Path(path)
    if not path.is_dir() or not (path / "Manifest.json").is_file():
        raise ModelFileError(f"{str(path)!r} is not a Core ML package (a .mlpackage folder with a Manifest.json)")
    try:
        return ct.utils.load_spec(str(path))
    except Exception as e:
        raise ModelFileError(f"{str(path)!r} is not a valid Core ML package: {first_line(e, 160)}") from None


def class_labels(spec) -> list[str]:
    """The labels of an ML Program classifier, from its ``classify`` operation (in index order)."""
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "classify":
                    values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                    return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


def describe(spec) -> dict:
    """What an app sees of the package: input (image size, colour layout, scale), outputs, labels, metadata."""
    desc = spec.description
    if len(desc.input) != 1:
        raise ModelFileError(f"expected one input, found {len(desc.input)}")
    inp = desc.input[0]
    kind = inp.type.WhichOneof("Type")
    info = {"input_name": inp.name, "input_kind": kind, "outputs": [o.name for o in desc.output],
            "predicted_feature": desc.predictedFeatureName, "probabilities": desc.predictedProbabilitiesName,
            "class_labels": class_labels(spec) if spec.WhichOneof("Type") == "mlProgram" else [],
            "metadata": {}}
    if kind == "imageType":
        im = inp.type.imageType
        from coremltools.proto import FeatureTypes_pb2 as ft

        info.update(width=im.width, height=im.height,
                    color=ft.ImageFeatureType.ColorSpace.Name(im.colorSpace))
    raw = desc.metadata.userDefined.get(META_KEY)
    if raw:
        try:
            meta = json.loads(raw)
            info["metadata"] = meta if isinstance(meta, dict) else {}
        except ValueError:
            pass
    return info


def _floats(value) -> list[float]:
    tensor = value.immediateValue.tensor
    kind = tensor.WhichOneof("value")
    return [float(f) for f in getattr(tensor, kind).values] if kind in ("floats", "doubles") else []


def preprocessing(spec) -> dict:
    """The image preprocessing the ML Program applies to its input before the network (the scale it multiplies the
    pixels by, the bias it adds), read from the first ``mul`` and ``add`` of the program as coremltools writes them."""
    found = {"scale": None, "bias": None}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            consts = {o.name: op.attributes["val"] for op in block.operations if op.type == "const"
                      for o in op.outputs}
            for op in block.operations[:12]:
                key = {"mul": "scale", "add": "bias"}.get(op.type)
                if key is None or found[key] is not None or "y" not in op.inputs:
                    continue
                for arg in op.inputs["y"].arguments:
                    vals = _floats(consts[arg.name]) if arg.name in consts else _floats(arg.value)
                    if vals:
                        found[key] = vals
    return found


def check_package(path: str | os.PathLike, meta: dict) -> dict:
    """The package at ``path`` checked against what the run says it is (``meta``: class_names, input_shape):
    a classifier whose image input has the model's size and colour layout, labels in order, metadata present.
    Returns what was checked; ModelFileError, one line, on the first disagreement."""
    spec = read_spec(path)
    info = describe(spec)
    c, h, w = meta["input_shape"]
    want_color = "GRAYSCALE" if c == 1 else "RGB"
    problems = []
    if info["input_kind"] != "imageType":
        problems.append(f"input is {info['input_kind']}, not an image")
    elif (info["height"], info["width"], info["color"]) != (h, w, want_color):
        problems.append(f"input image {info['width']}x{info['height']} {info['color']}, expected {w}x{h} {want_color}")
    if info["class_labels"] != list(meta["class_names"]):
        problems.append(f"class labels {info['class_labels'][:5]}... differ from the run's {meta['class_names'][:5]}")
    if not info["predicted_feature"] or not info["probabilities"]:
        problems.append("not a classifier (no class label and probabilities outputs)")
    if info["metadata"].get("class_names") != list(meta["class_names"]):
        problems.append("kdexport metadata missing or different")
    if problems:
        raise ModelFileError(f"{Path(path).name}: " + "; ".join(problems))
    return {"input": f"image {w}x{h} {want_color}", "outputs": info["outputs"],
            "class_labels": len(info["class_labels"]), "metadata": True, "preprocessing": preprocessing(spec)}


class CoreMlRuntime:
    """Core ML on this machine: inspect only (module docstring)."""

    def inspect(self, path: str | os.PathLike) -> dict:
        spec = read_spec(path)
        try:
            info = describe(spec)
        except ModelFileError as e:
            raise ModelFileError(f"{Path(path).name}: {e}") from None
        meta = info["metadata"]
        shape = meta.get("input_shape") or [1 if info.get("color") == "GRAYSCALE" else 3, info.get("height"),
                                            info.get("width")]
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        return {"input_name": info["input_name"], "input_shape": shape, "batch": 1,
                "num_classes": len(info["class_labels"]) or None, "metadata": meta, "bytes": size,
                "runs_here": False}

    def load(self, path: str | os.PathLike, threads: int | None = None):
        raise ModelFileError(f"{Path(path).name}: {NOT_RUN}")

    def version(self) -> str | None:
        from ..envinfo import package_version

        return package_version("coremltools")


RUNTIMES.register("coreml")(CoreMlRuntime())
