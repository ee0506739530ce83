"""Top-k prediction from an ONNX file and its metadata alone.

The dozen lines an app copies to do the same without kdexport are in README.md ("quantize, bench,
predict"); tests/test_deploy.py runs them and checks they agree with :func:`predict`.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError, first_line
from ..runtimes.metadata import check_metadata
from ..runtimes.ort import inspect_classifier, ort_logits, ort_session


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

