"""Top-k prediction from an ONNX file and its metadata alone.

The dozen lines an app copies to do the same without kdexport are in README.md ("quantize, bench,
predict"); tests/test_deploy.py runs them and checks they agree with :func:`predict`.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError, ModelFileError, first_line
from ..runtimes.ort import inspect_classifier, ort_logits, ort_session

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


def load_classifier(path: str | os.PathLike):
    info = inspect_classifier(path)
    meta = check_metadata(info["metadata"], info, repr(os.fspath(path)))
    sess = ort_session(path)
    return sess, meta


def probabilities(scores: np.ndarray) -> tuple[np.ndarray, bool]:
    """Softmax of logits; outputs that already are probabilities (in [0, 1], rows summing to 1) are kept.
    Returns (probabilities, whether softmax was applied)."""
    scores = scores.astype(np.float64)
    if scores.size and scores.min() >= 0 and scores.max() <= 1 and np.allclose(scores.sum(1), 1, atol=1e-3):
        return scores, False
    p = np.exp(scores - scores.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), True


def preprocess(image_path: str | os.PathLike, meta: dict) -> np.ndarray:
    """One image file as the model takes it: decoded as in training (upright, converted to the model's
    channels), resized on its shorter side and center-cropped as the metadata's ``preprocess`` says (files
    without it, exported before kdexport recorded it, are resized to the input size), then normalized."""
    from PIL import Image

    from ..data.images import Geometry, open_image, to_mode

    c, h, w = meta["input_shape"]
    try:
        im = to_mode(open_image(image_path), c)
    except Exception as e:
        raise DataError(f"{os.fspath(image_path)!r} is not a readable image: {first_line(e, 120)}") from None
    pre = meta.get("preprocess")
    img = Geometry.from_dict(pre).apply(im) if pre is not None else im.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.float32).reshape(h, w, c).transpose(2, 0, 1) / 255.0
    mean = np.asarray(meta["mean"], np.float32)[:, None, None]
    std = np.asarray(meta["std"], np.float32)[:, None, None]
    return (x - mean) / std


def predict(model: str | os.PathLike, images: list[str | os.PathLike], top_k: int = 5) -> list[dict]:
    sess, meta = load_classifier(model)
    names = meta["class_names"]
    x = np.stack([preprocess(p, meta) for p in images])
    p, _ = probabilities(ort_logits(sess, x))  # a graph with a fixed batch gets the images one batch at a time
    out = []
    for img, probs in zip(images, p):
        top = probs.argsort()[::-1][: max(1, min(top_k, len(names)))]
        out.append({"image": os.fspath(img), "top": [{"label": names[i], "index": int(i),
                                                      "probability": float(probs[i])} for i in top]})
    return out

