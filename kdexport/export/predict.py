"""Top-k prediction from an ONNX file and its metadata alone.

The dozen lines an app copies to do the same without kdexport are in README.md ("quantize, bench,
predict"); tests/test_deploy.py runs them and checks they agree with :func:`predict`.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError, ExportError
from .onnx import inspect_classifier, ort_session


def load_classifier(path: str | os.PathLike):
    info = inspect_classifier(path)
    meta = info["metadata"]
    missing = [k for k in ("class_names", "input_shape", "mean", "std") if k not in meta]
    if missing:
        raise ExportError(f"{os.fspath(path)!r} has no {', '.join(missing)} in its metadata "
                          "(export it with kdexport, or add them to metadata_props)")
    sess = ort_session(path)
    return sess, meta


def preprocess(image_path: str | os.PathLike, meta: dict) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    c, h, w = meta["input_shape"]
    try:
        with Image.open(image_path) as im:
            img = im.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{os.fspath(image_path)!r} is not a readable image: {e}") from None
    x = np.asarray(img, np.float32).reshape(h, w, c).transpose(2, 0, 1) / 255.0
    mean = np.asarray(meta["mean"], np.float32)[:, None, None]
    std = np.asarray(meta["std"], np.float32)[:, None, None]
    return (x - mean) / std


def predict(model: str | os.PathLike, images: list[str | os.PathLike], top_k: int = 5) -> list[dict]:
    sess, meta = load_classifier(model)
    names = meta["class_names"]
    x = np.stack([preprocess(p, meta) for p in images])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out = []
    for img, probs in zip(images, p):
        top = probs.argsort()[::-1][: max(1, min(top_k, len(names)))]
        out.append({"image": os.fspath(img), "top": [{"label": names[i], "index": int(i),
                                                      "probability": float(probs[i])} for i in top]})
    return out

