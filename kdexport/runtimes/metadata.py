"""What a model file's metadata must say before kdexport (or an app) can feed it images and name its answers:
one check, used wherever such metadata is read (``predict``, ``package``)."""

from __future__ import annotations

import numpy as np

from ..errors import ModelFileError

MAX_SIDE = 8192  # larger inputs are not a classifier's: refuse before allocating


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def check_metadata(meta: dict, info: dict, where: str) -> dict:
    """The metadata predict relies on, validated against the graph: class names (strings, one per output),
    input shape (C x H x W, positive, as the graph fixes it, bounded), mean and std (C numbers, std > 0).
    Anything else is one line (ExportError, exit 2), never garbage or a traceback."""
    missing = [k for k in ("class_names", "input_shape", "mean", "std") if k not in meta]
    if missing:
        raise ModelFileError(f"{where} has no {', '.join(missing)} in its metadata "
                          "(export it with kdexport, or add them to metadata_props)")
    names, shape = meta["class_names"], meta["input_shape"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFileError(f"{where}: metadata class_names must be a JSON list of strings, got {str(names)[:80]!r}")
    if info["num_classes"] and len(names) != info["num_classes"]:
        raise ModelFileError(f"{where}: metadata lists {len(names)} class names but the model has "
                          f"{info['num_classes']} outputs")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool)
                                                                 and d >= 1 for d in shape)):
        raise ModelFileError(f"{where}: metadata input_shape must be [C, H, W] of positive integers, got {shape!r}")
    if shape[0] not in (1, 3) or max(shape[1:]) > MAX_SIDE:
        raise ModelFileError(f"{where}: metadata input_shape {shape} is not an image input (1 or 3 channels, "
                          f"sides up to {MAX_SIDE})")
    graph = info["input_shape"]
    if any(isinstance(g, int) and g > 0 and g != d for g, d in zip(graph, shape)):
        raise ModelFileError(f"{where}: metadata input_shape {shape} disagrees with the graph's input {graph}")
    c = shape[0]
    for key in ("mean", "std"):
        v = meta[key]
        if not isinstance(v, list) or len(v) != c or not all(_is_num(x) for x in v):
            raise ModelFileError(f"{where}: metadata {key} must be a list of {c} numbers, got {str(v)[:80]!r}")
    if any(x <= 0 for x in meta["std"]):
        raise ModelFileError(f"{where}: metadata std must be > 0, got {meta['std']}")
    pre = meta.get("preprocess")
    if pre is not None:
        ok = isinstance(pre, dict) and all(isinstance(pre.get(k), int) and not isinstance(pre.get(k), bool)
                                           for k in ("resize_shorter_side", "center_crop"))
        if not ok or not (shape[1] == shape[2] == pre["center_crop"] <= pre["resize_shorter_side"] <= MAX_SIDE):
            raise ModelFileError(f"{where}: metadata preprocess must give resize_shorter_side >= center_crop = the "
                                 f"input's side {shape[1:]}, got {str(pre)[:80]!r}")
    return meta
