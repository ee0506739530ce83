"""Top-k prediction from an ONNX file and its metadata alone.

The dozen lines an app copies to do the same without kdexport are in README.md ("quantize, bench,
predict"); tests/test_deploy.py runs them and checks they agree with :func:`predict`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError, ModelFileError, first_line
from ..runtimes.base import inspect, load
from ..runtimes.metadata import check_metadata


def _read_labels(path: str | os.PathLike) -> list[str]:
    try:
        return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise ModelFileError(f"labels file {os.fspath(path)!r} cannot be read: {why}") from None


def model_metadata(info: dict, overrides: dict | None, where: str) -> dict:
    """What predict feeds the model and names its answers with: the file's metadata, completed or overridden by a
    package's preprocess.json (``overrides["preprocess"]``, its labels.txt beside it) and then by the options
    (labels, mean, std, image_size, crop_ratio); checked by the one metadata check (``check_metadata``)."""
    from ..data.images import Geometry
    from ..files import read_json

    meta = dict(info["metadata"])
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "preprocess" in o:
        pre = read_json(o["preprocess"], "preprocess file", error=ModelFileError)
        meta.update({k: pre[k] for k in ("mean", "std") if k in pre})
        if isinstance(pre.get("resize_shorter_side"), int) and isinstance(pre.get("center_crop"), int):
            meta["preprocess"] = {"resize_shorter_side": pre["resize_shorter_side"],
                                  "center_crop": pre["center_crop"]}
        shape = pre.get("shape")
        if isinstance(shape, list) and len(shape) == 4:
            meta["input_shape"] = shape[1:]
        labels = Path(o["preprocess"]).parent / str(pre.get("labels", "labels.txt"))
        if labels.is_file() and "labels" not in o:
            meta["class_names"] = _read_labels(labels)
    if "labels" in o:
        meta["class_names"] = _read_labels(o["labels"])
    for key in ("mean", "std"):
        if key in o:
            meta[key] = list(o[key])
    if "image_size" in o or "input_shape" not in meta:
        c, h, w = info["input_shape"]
        side = o.get("image_size")
        meta["input_shape"] = [c, side or h, side or w]
    if "image_size" in o or "crop_ratio" in o:
        meta["preprocess"] = Geometry.for_size(meta["input_shape"][-1], o.get("crop_ratio", 1.0)).to_dict()
    hints = {"class_names": "--labels FILE", "mean": "--mean", "std": "--std"}
    missing = [k for k in hints if k not in meta]
    if any(d is None for d in meta["input_shape"]):
        missing.append("input size")
        hints["input size"] = "--image-size (the graph's size is dynamic)"
    if missing:
        raise ModelFileError(f"{where} has no {', '.join(missing)} in its metadata: pass "
                             f"{', '.join(hints[k] for k in missing)}, or --preprocess with a package's "
                             "preprocess.json")
    return check_metadata(meta, info, where)


def load_classifier(path: str | os.PathLike, overrides: dict | None = None):
    """The file loaded by the runtime its suffix names (:mod:`kdexport.runtimes`) and its checked metadata."""
    info = inspect(path)
    meta = model_metadata(info, overrides, repr(os.fspath(path)))
    return load(path), meta


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


def predict(model: str | os.PathLike, images: list[str | os.PathLike], top_k: int = 5,
            overrides: dict | None = None) -> list[dict]:
    """Top-k labels per image; ``overrides`` (``PredictOptions.overrides()``) say how to feed a model without
    kdexport metadata."""
    loaded, meta = load_classifier(model, overrides)
    names = meta["class_names"]
    x = np.stack([preprocess(p, meta) for p in images])
    p, _ = probabilities(loaded.logits(x))  # a graph with a fixed batch gets the images one batch at a time
    out = []
    for img, probs in zip(images, p):
        top = probs.argsort()[::-1][: max(1, min(top_k, len(names)))]
        out.append({"image": os.fspath(img), "top": [{"label": names[i], "index": int(i),
                                                      "probability": float(probs[i])} for i in top]})
    return out

