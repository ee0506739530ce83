"""``kdexport package`` and ``kdexport verify``: a self-describing folder an app or an edge deployment
can drop into its build and check.

A package holds ``model.onnx`` (+ ``model.int8.onnx`` when the run has one), ``model.ort`` and its
``model.required_operators.config`` (onnxruntime's mobile format, made by the converter that ships in
the onnxruntime wheel and proven to give the ``.onnx`` file's outputs), ``labels.txt``,
``preprocess.json``, ``test_data_set_0/`` (``input_0.pb`` / ``output_0.pb``, the ONNX model-zoo layout,
from real test images; ``output_0.int8.pb`` for the INT8 file), a model card ``README.md`` (YAML front
matter in the Hugging Face model-card format) and ``SHA256SUMS``. It is written in a staging folder and
renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bench.timing import interleaved, onnx_runner
from ..config import PackageOptions
from ..data.datasets import Dataset, Normalization, real_images
from ..errors import DataError, ExportError, first_line
from ..export.onnx import convert_to_ort, save_self_contained, set_metadata
from ..files import atomic_write_text, hash_file
from ..outputs import commit_out_dir, prepare_out_dir
from ..runtimes.base import file_accuracy
from ..runtimes.metadata import check_metadata
from ..runtimes.ort import data_for_model, inspect_classifier, ort_logits, ort_session, read_metadata

MODEL, MODEL_INT8, MODEL_ORT = "model.onnx", "model.int8.onnx", "model.ort"
TEST_DIR = "test_data_set_0"
SUMS = "SHA256SUMS"
PIXEL_FORMATS = {1: "Gray8", 3: "Rgb8"}  # ONNX's standard image metadata (Image.BitmapPixelFormat)


@dataclass
class PackageSource:
    """What goes into a package: the model file(s), labels, normalization and measured numbers."""

    fp32: Path
    int8: Path | None
    class_names: list[str]
    input_shape: list[int]
    mean: list[float]
    std: list[float]
    dataset: str | None
    report: dict | None = None  # the run's report.json, when packaging a run folder
    meta: dict = field(default_factory=dict)
    preprocess: dict | None = None  # resize_shorter_side + center_crop: how a photo becomes the input

    def normalize(self, scale: float) -> Normalization:
        return Normalization(scale, tuple(self.mean), tuple(self.std))


def _source(src: Path, *, dataset: str | None, data_dir: str | None, labels: str | None,
            mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
            crop_ratio: float | None = None) -> tuple[PackageSource, Dataset | None]:
    report = None
    if src.is_dir():
        if not (src / "report.json").is_file():
            raise DataError(f"{str(src)!r} is neither an ONNX file nor a kdexport run folder (no report.json)")
        report = json.loads((src / "report.json").read_text())
        student = report.get("models", {}).get("student", {})
        fp32 = src / student.get("onnx_path", "onnx/student.onnx")
        int8 = src / "onnx" / "student.int8.onnx"
        int8 = int8 if "student_int8" in report.get("models", {}) and int8.is_file() else None
    else:
        fp32, int8 = src, None
    info = inspect_classifier(fp32)
    meta = info["metadata"]
    dataset = dataset or meta.get("dataset")
    data = None
    if crop_ratio is not None and "preprocess" in meta:
        raise DataError(f"{fp32.name} states its crop in its metadata ({meta['preprocess']}); --crop-ratio is for a "
                        "model without it")
    if dataset:
        data = data_for_model(fp32, dataset, data_dir or (report or {}).get("config", {}).get("data_dir"),
                              crop_ratio=crop_ratio)
    names = (Path(labels).read_text().splitlines() if labels else meta.get("class_names")
             or (data.class_names if data else None))
    chw = [d if d is not None else w for d, w in zip(info["input_shape"], meta.get("input_shape") or
                                                     (data.input_shape if data else info["input_shape"]))]
    mean = list(mean or meta.get("mean") or (data.mean if data else []))
    std = list(std or meta.get("std") or (data.std if data else []))
    missing = [what for what, v in (("class names (--labels or --dataset)", names), ("--mean", mean),
                                    ("--std", std), ("a dataset for test images (--dataset)", data)) if not v]
    if missing:
        raise DataError(f"{fp32.name} has no kdexport metadata; pass {', '.join(missing)}")
    if len(names) != info["num_classes"] and info["num_classes"]:
        raise DataError(f"{fp32.name} has {info['num_classes']} outputs but {len(names)} class names")
    if any(d is None for d in chw) or list(chw) != list(data.input_shape):
        raise DataError(f"{fp32.name} takes inputs {chw}; dataset {data.name} gives {list(data.input_shape)}")
    if len(mean) != chw[0] or len(std) != chw[0]:
        raise DataError(f"mean/std need {chw[0]} values (one per input channel)")
    # what the package will state, checked as `kdexport predict` checks a file's metadata: one rule for both
    check_metadata({"class_names": [str(n) for n in names], "input_shape": list(chw), "mean": mean, "std": std,
                    **({"preprocess": meta["preprocess"]} if "preprocess" in meta else {})}, info, repr(str(fp32)))
    # the crop the test images went through (the model's own, or --crop-ratio's): what the package states
    pre = meta.get("preprocess") or (data.geometry.to_dict() if data is not None else None)
    return PackageSource(fp32, int8, [str(n) for n in names], list(chw), [float(v) for v in mean],
                         [float(v) for v in std], data.name if data else None, report, meta, pre), data


def sha256(path: Path) -> str:
    return hash_file(path).hexdigest()


def _test_inputs(src: PackageSource, data: Dataset, n: int, batch: int | None) -> np.ndarray:
    """``n`` real test images as the model takes them (no more than a fixed batch size: the test set must run
    as it is in any runtime)."""
    idx = data.test_sample(n if batch is None else min(n, batch))
    return src.normalize(data.scale)(data.x_test[idx]).numpy()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort_logits(ort_session(path), x)


def output_kinds(path: Path, x: np.ndarray) -> list[dict]:
    """Each output of the model at ``path``, run on the test inputs ``x``: its name, shape and kind,
    ``probabilities`` (every value in [0, 1], each row summing to 1) or ``logits`` (any other N x classes output),
    else ``other``."""
    sess = ort_session(path)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    outs = sess.run(None, {inp.name: np.ascontiguousarray(x[:fixed or len(x)], dtype=np.float32)})
    kinds = []
    for meta, y in zip(sess.get_outputs(), outs):
        y = np.asarray(y)
        if y.ndim != 2:
            kind = "other"
        elif y.size and y.min() >= 0 and y.max() <= 1 and np.allclose(y.sum(1), 1, atol=1e-3):
            kind = "probabilities"
        else:
            kind = "logits"
        kinds.append({"name": meta.name, "shape": ["N" if not isinstance(d, int) else d for d in meta.shape],
                      "kind": kind})
    return kinds


def output_text(kind: dict) -> str:
    """How an app reads the classifier's output (the first)."""
    if kind["kind"] == "probabilities":
        return (f"The output `{kind['name']}` holds probabilities already (non-negative, each row sums to 1 on "
                "the test images): do not apply softmax.")
    return f"The output `{kind['name']}` holds logits: apply softmax for probabilities."


def outputs_match(got: np.ndarray, want: np.ndarray, int8: bool = False) -> str | None:
    """None when ``got`` reproduces ``want`` (same top-1 for every input, logits within a tolerance scaled to
    their size: 1e-3 for FP32 graphs, 10% for INT8 ones, whose kernels differ between CPUs); else why not."""
    if got.shape != want.shape:
        return f"output shape {list(got.shape)}, expected {list(want.shape)}"
    tol = (0.1 if int8 else 1e-3) * max(1.0, float(np.abs(want).max()))
    diff = float(np.abs(got - want).max())
    agree = float((got.argmax(-1) == want.argmax(-1)).mean())
    if diff > tol or agree < 1.0:
        return f"max abs difference {diff:.3g} (tolerance {tol:.3g}), top-1 agreement {agree:.2f}"
    return None


def _card(src: PackageSource, name: str, accuracy: float | None, latency: dict, files: list[str], output: dict,
          unfit: str | None = None) -> str:
    """A model card: Hugging Face YAML front matter (JSON values, which YAML reads) and sections."""
    report = src.report or {}
    cfg = report.get("config", {})
    env = report.get("environment") or latency.get("environment", {})
    ds = src.dataset or "unknown"
    results = ([{"task": {"type": "image-classification", "name": "Image Classification"},
                 "dataset": {"name": ds, "type": ds, "split": "test"},
                 "metrics": [{"type": "accuracy", "value": round(accuracy, 6), "name": "Top-1 accuracy (ONNX)"}]}]
               if accuracy is not None else [])
    front = {"license": "other", "library_name": "onnx",
             "tags": ["onnx", "image-classification", "knowledge-distillation", "kdexport"],
             "datasets": [ds], "metrics": ["accuracy"], "model-index": [{"name": name, "results": results}]}
    lines = ["---"] + [f"{k}: {json.dumps(v)}" for k, v in front.items()] + ["---", "", f"# {name}", ""]
    if unfit:
        lines += [f"> **Not fit to ship:** on the test split this model is {unfit}. Its accuracy below is no use to "
                  "an app; retrain it, or check its labels and preprocessing.", ""]
    arch = src.meta.get("arch") or (report.get("models", {}).get("student", {}).get("arch")) or "unknown"
    lines += ["## Intended use", "",
              f"Image classification into {len(src.class_names)} classes ({', '.join(src.class_names[:10])}"
              f"{', ...' if len(src.class_names) > 10 else ''}) for images like the `{ds}` dataset's. Architecture: "
              f"`{arch}`. Not evaluated outside that data.", "",
              "## Preprocessing", "",
              f"Input `{src.meta.get('input_name', 'input')}`, NCHW float32 of shape "
              f"[N, {', '.join(map(str, src.input_shape))}]: {_geometry_text(src.preprocess)['resize']}"
              f" (for {src.input_shape[2]}x{src.input_shape[1]}), "
              f"{'grayscale' if src.input_shape[0] == 1 else 'RGB'}, x = (pixel / 255 - mean) / std with mean "
              f"{src.mean} and std {src.std}. {output_text(output)} All of it is "
              "in `preprocess.json`; class names, one per line in index order, in `labels.txt`.", ""]
    kd = (src.meta.get("distillation") or {})
    if kd or cfg:
        lines += ["## Teacher and distillation", "",
                  f"Distilled by kdexport from teacher `{kd.get('teacher', cfg.get('teacher', '?'))}`: "
                  + ", ".join(f"{k} {v}" for k, v in kd.items() if k != "teacher") + ".", ""]
    lines += ["## Accuracy, size and latency", "",
              "| file | runtime | bytes | accuracy (test split, in its runtime) | p50 ms @1 |", "|---|---|---|---|---|"]
    notes = []
    for f in files:
        row = latency.get("files", {}).get(f, {})
        acc, p50 = row.get("accuracy"), row.get("p50")
        acc_text = f"{acc * 100:.2f}%" if acc is not None else "-"
        p50_text = f"{p50:.3f}" if p50 is not None else "-"
        runtime = row.get("runtime", "onnxruntime")
        lines.append(f"| {f} | {runtime} | {row.get('bytes', 0):,} | {acc_text} | {p50_text} |")
        if row.get("runtime") == "coreml":
            notes.append(f"`{f}`: {row['note']}.")
    lines += [""] + notes if notes else []
    lines += ["", f"Measured in each file's runtime (onnxruntime: CPU execution provider) on "
              f"{env.get('cpu', 'this machine')} ({env.get('cpu_cores', '?')} cores), onnxruntime "
              f"{env.get('onnxruntime', '?')}"
              f"{', ' + report['created'] if report.get('created') else ''}. Latency on another device will differ:"
              " measure it there.", "",
              "## Limitations", "",
              "- Accuracy is measured on one test split; images unlike the training data (other cameras, crops, "
              "classes outside the label list) get confident wrong answers.",
              "- The INT8 file's kernels differ between CPUs; `kdexport verify` checks it within a tolerance.",
              "- Check the files with `kdexport verify` (checksums and the test data) on the target machine.", ""]
    return "\n".join(lines)


def package(source: str | os.PathLike, out: str | os.PathLike, *, dataset: str | None = None,
            data_dir: str | None = None, labels: str | None = None, mean: tuple[float, ...] | None = None,
            std: tuple[float, ...] | None = None, samples: int = PackageOptions.samples,
            overwrite: bool = False, crop_ratio: float | None = None,
            targets: tuple[str, ...] | None = None) -> Path:
    """Write the package for a run folder or an ONNX classifier to ``out``; return its path. ``targets``: which
    runtimes' files of a run folder go in (default: every file the run kept with ``--targets``)."""
    from ..envinfo import environment
    from ..runtimes.base import load, prediction_health, predictions

    src, data = _source(Path(source), dataset=dataset, data_dir=data_dir, labels=labels, mean=mean, std=std,
                        crop_ratio=crop_ratio)
    final, staging = prepare_out_dir(out, overwrite)
    try:
        save_self_contained(src.fp32, staging / MODEL)
        info = inspect_classifier(staging / MODEL)
        _set_image_metadata(staging / MODEL, src, info["input_name"])
        files = [MODEL]
        if src.int8 is not None:
            save_self_contained(src.int8, staging / MODEL_INT8)
            _set_image_metadata(staging / MODEL_INT8, src, info["input_name"])
            files.append(MODEL_INT8)
        convert_to_ort(staging / MODEL, staging)
        files.append(MODEL_ORT)
        (staging / TEST_DIR).mkdir()
        x = _test_inputs(src, data, samples, info["batch"])
        want = _run(staging / MODEL, x)
        why = outputs_match(_run(staging / MODEL_ORT, x), want)
        if why:
            raise ExportError(f"{MODEL_ORT} does not reproduce {MODEL}: {why}")
        _write_tensor(staging / TEST_DIR / "input_0.pb", x, info["input_name"])
        _write_tensor(staging / TEST_DIR / "output_0.pb", want, "logits")
        if src.int8 is not None:
            _write_tensor(staging / TEST_DIR / "output_0.int8.pb", _run(staging / MODEL_INT8, x), "logits")
        atomic_write_text(staging / "labels.txt", "\n".join(src.class_names) + "\n")
        target_rows = _add_target_files(Path(source), src, staging, x, want, targets)
        kinds = output_kinds(staging / MODEL, x)
        pre = {"input_name": info["input_name"], "layout": "NCHW", "dtype": "float32",
               "shape": [info["batch"] or "N", *src.input_shape], "size": src.input_shape[1:],
               **_geometry_text(src.preprocess),
               "channel_order": "gray" if src.input_shape[0] == 1 else "RGB", "scale": 1 / 255,
               "mean": src.mean, "std": src.std, "formula": "x = (pixel * scale - mean) / std, per channel",
               "output": {"name": kinds[0]["name"], "index": 0, "kind": kinds[0]["kind"],
                          "apply_softmax": kinds[0]["kind"] != "probabilities"},
               "outputs": kinds, "labels": "labels.txt"}
        atomic_write_text(staging / "preprocess.json", json.dumps(pre, indent=2) + "\n")
        measured = {"environment": environment(), "files": {}}
        models = (src.report or {}).get("models", {})
        norm = src.normalize(data.scale)
        health = (models.get("student") or {}).get("predictions")
        if health is None and data is not None:  # a model from elsewhere: its predictions on the test split
            pred = predictions(load(staging / MODEL), data, normalize=norm)
            health = prediction_health(pred, data.y_test.numpy(), data.num_classes)
        roles = {MODEL: "student", MODEL_INT8: "student_int8", MODEL_ORT: None}
        untimed = []
        for f in files:
            entry = models.get(roles[f], {}) if roles[f] else {}
            acc = entry.get("accuracy_onnx")
            p50 = (entry.get("latency_ms") or {}).get("batch_1", {}).get("p50")
            if (acc is None or p50 is None) and data is not None:
                acc, p50 = file_accuracy(staging / f, data, normalize=norm), None
                untimed.append(f)
            measured["files"][f] = {"bytes": (staging / f).stat().st_size, "accuracy": acc, "p50": p50}
        if untimed:  # what the run did not time (a model from elsewhere, the .ort file): together, in rounds
            res = interleaved({f: (onnx_runner(staging / f), lambda b: norm(real_images(data, b))) for f in untimed},
                              [1], warmup=5, iters=50, max_seconds=10.0, rounds=5)
            for f in untimed:
                measured["files"][f]["p50"] = res[f]["latency_ms"]["batch_1"]["p50"]
        arch = src.meta.get("arch") or models.get("student", {}).get("arch") or Path(src.fp32).stem
        name = f"{arch}-{src.dataset}".replace(":", "-").replace(",", "-")
        src.meta["input_name"] = info["input_name"]
        accuracy = measured["files"][MODEL]["accuracy"]
        for row in target_rows:
            measured["files"][row["file"]] = {"bytes": row["bytes"], "accuracy": row["accuracy"],
                                              "p50": ((row["latency_ms"] or {}).get("batch_1") or {}).get("p50"),
                                              "runtime": row["runtime"], "note": row["card_note"]}
        atomic_write_text(staging / "README.md", _card(src, name, accuracy, measured,
                                                       files + [r["file"] for r in target_rows], kinds[0],
                                                       (health or {}).get("flag")))
        write_sums(staging)
        commit_out_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def target_name(row: dict) -> str:
    """Where a run's file for another runtime goes in a package: ``TARGET/model[.int8].SUFFIX``."""
    suffix = Path(row["path"]).suffix
    return f"{row['target']}/model{'.int8' if row['precision'] == 'int8' else ''}{suffix}"


def _expected_name(target: str) -> str:
    return f"{TEST_DIR}/output_0.{target}.int8.pb"


def _add_target_files(source: Path, src: PackageSource, staging: Path, x: np.ndarray, want: np.ndarray,
                      targets: tuple[str, ...] | None) -> list[dict]:
    """Copy a run's kept files for other runtimes (``distill-export --targets``) into the package, each run again
    on the package's test inputs: an FP32 file must give ``output_0.pb``'s logits, an INT8 file's own are written
    beside them (``output_0.TARGET.int8.pb``) for ``verify``. A Core ML package is checked, not run."""
    from ..runtimes.base import load
    from ..runtimes.coreml import check_package

    rows = [r for r in ((src.report or {}).get("runtimes") or {}).get("rows", [])
            if r.get("target") not in ("onnx", "ort") and r.get("path")]  # a package makes its own model.ort
    wanted = set(targets) - {"onnx", "ort"} if targets is not None else None
    if wanted is not None:
        if not source.is_dir() and wanted:
            raise DataError(f"--targets {','.join(sorted(wanted))}: a package of a single ONNX file holds only it; "
                            "package a run folder made with distill-export --targets")
        missing = wanted - {r["target"] for r in rows}
        if missing:
            raise DataError(f"the run at {str(source)!r} has no kept file for {', '.join(sorted(missing))}: rerun "
                            f"distill-export with --targets onnx,{','.join(sorted(missing))}")
        rows = [r for r in rows if r["target"] in wanted]
    added = []
    for row in rows:
        path = source / row["path"]
        name = target_name(row)
        dest = staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest)
        else:
            shutil.copyfile(path, dest)
            if path.suffix == ".xml":
                shutil.copyfile(path.with_suffix(".bin"), dest.with_suffix(".bin"))
        note = row.get("note", "")
        if row.get("runs_here", True):
            got = load(dest).logits(x)
            if row["precision"] == "int8":
                _write_tensor(staging / _expected_name(row["target"]), got, "logits")
            else:
                why = outputs_match(got, want)
                if why:
                    raise ExportError(f"{name} does not reproduce {MODEL}: {why}")
        else:
            check_package(dest, {"class_names": src.class_names, "input_shape": src.input_shape})
            note = "checked (inputs, labels, metadata), not run: Core ML predicts only on macOS"
        added.append({**row, "file": name, "card_note": note})
    return added


def _geometry_text(pre: dict | None) -> dict:
    """preprocess.json's resize/crop keys, from the model's ``preprocess`` metadata (older files: no crop)."""
    if not isinstance(pre, dict):
        return {"resize": "resize to size (height, width), bilinear, no crop"}
    r, c = pre.get("resize_shorter_side"), pre.get("center_crop")
    return {"resize": f"resize the shorter side to {r} (bilinear, the longer side truncated), then center-crop "
                      f"{c}x{c} (offsets rounded half to even)", "resize_shorter_side": r, "center_crop": c}


def _set_image_metadata(path: Path, src: PackageSource, input_name: str) -> None:
    """kdexport's keys plus ONNX's standard image metadata (MetadataProps.md) and the IMAGE denotation."""
    import onnx

    meta = {**read_metadata(path), "class_names": src.class_names, "input_shape": src.input_shape,
            "mean": src.mean, "std": src.std, "dataset": src.dataset,
            **({"preprocess": src.preprocess} if src.preprocess else {}),
            "Image.BitmapPixelFormat": PIXEL_FORMATS.get(src.input_shape[0], "Rgb8"),
            "Image.ColorSpaceGamma": "SRGB", "Image.NominalPixelRange": "Normalized_0_1"}
    set_metadata(path, meta)
    m = onnx.load(str(path))
    for i in m.graph.input:
        if i.name == input_name:
            i.type.denotation = "IMAGE"
    onnx.save(m, str(path))


def _write_tensor(path: Path, array: np.ndarray, name: str) -> None:
    from onnx import numpy_helper

    path.write_bytes(numpy_helper.from_array(array, name).SerializeToString())


MAX_TENSOR_BYTES = 256 * 2**20  # a test tensor larger than this is not a package's (read no further)
MAX_SUMS_BYTES = 2**20
REQUIRED = (MODEL, "labels.txt", "preprocess.json", "README.md", f"{TEST_DIR}/input_0.pb", f"{TEST_DIR}/output_0.pb")
_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")  # sha256sum's text and binary forms


def _read_tensor(path: Path) -> np.ndarray:
    """A float32 ONNX TensorProto file (a package's test data), or ValueError saying why not."""
    import onnx
    from onnx import numpy_helper

    if path.stat().st_size > MAX_TENSOR_BYTES:
        raise ValueError(f"{path.stat().st_size:,} bytes, more than a test tensor holds")
    t = onnx.TensorProto()
    try:
        t.ParseFromString(path.read_bytes())
        array = numpy_helper.to_array(t)
    except Exception as e:  # DecodeError, a size that does not match its data, an unknown type
        raise ValueError(f"not an ONNX tensor ({first_line(e, 100)})") from None
    if array.dtype != np.float32 or array.ndim not in (2, 4) or not np.isfinite(array).all():
        raise ValueError(f"not a finite float32 batch (dtype {array.dtype}, shape {list(array.shape)})")
    return array


def unsafe_name(name: str) -> str | None:
    """Why ``name`` (from a checksum list) may not be read inside a package, or None: only relative names of plain
    parts, so a listed name can never reach a file outside the folder."""
    if not name or "\x00" in name or name != name.strip():
        return "not a file name"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or "\\" in name:
        return "an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "a path with an empty, '.' or '..' part"
    return None


def _plain_file(pkg: Path, name: str) -> Path | None:
    """``pkg/name`` when it is a regular file reached through no symbolic link (every part checked with lstat),
    else None."""
    path = pkg
    for part in name.split("/"):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return None
    return path if stat.S_ISREG(mode) else None


def _contents(pkg: Path) -> tuple[list[str], list[str]]:
    """(regular files, symbolic links) below ``pkg``, relative POSIX names, no link followed."""
    files, links = [], []
    for root, dirs, names in os.walk(pkg, followlinks=False):
        for n in [*dirs, *names]:
            p = Path(root) / n
            rel = p.relative_to(pkg).as_posix()
            if p.is_symlink():
                links.append(rel)
            elif n in names and p.is_file():
                files.append(rel)
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
    return sorted(files), sorted(links)


def _listed_files(pkg: Path) -> list[str]:
    return [f for f in _contents(pkg)[0] if f != SUMS]


def write_sums(pkg: Path) -> None:
    """``SHA256SUMS`` in sha256sum's format (``sha256sum -c SHA256SUMS`` checks it too)."""
    atomic_write_text(pkg / SUMS, "".join(f"{sha256(pkg / f)}  {f}\n" for f in _listed_files(pkg)))


def read_sums(pkg: Path) -> tuple[dict[str, str], list[str]]:
    """``SHA256SUMS``'s entries (name -> digest) and one failure line per line it cannot trust: not UTF-8 text, not
    sha256sum's format, a name that would leave the package, a name listed twice."""
    path = _plain_file(pkg, SUMS)
    if path is None:
        return {}, [f"{SUMS}: missing (or not a plain file)"]
    if path.stat().st_size > MAX_SUMS_BYTES:
        return {}, [f"{SUMS}: {path.stat().st_size:,} bytes, too large for a checksum list"]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return {}, [f"{SUMS}: not UTF-8 text"]
    listed: dict[str, str] = {}
    failures = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUMS_LINE.fullmatch(line)
        if m is None:
            failures.append(f"{SUMS} line {n}: not 'SHA256  NAME'")
            continue
        digest, name = m.group(1).lower(), m.group(2)
        why = unsafe_name(name)
        if why:
            failures.append(f"{SUMS} line {n}: {name!r} is {why}, outside what a package may name; not read")
        elif name in listed:
            failures.append(f"{SUMS} line {n}: {name!r} is listed twice")
        else:
            listed[name] = digest
    return listed, failures


def verify(pkg: str | os.PathLike) -> list[str]:
    """Every way the package at ``pkg`` fails to reproduce itself on this machine, one line each ([] = good).

    A package is a folder of plain files: a symbolic link anywhere in it fails, and no name in ``SHA256SUMS`` is
    read unless it is a relative path of plain parts to a regular file inside the folder. Every file must be
    listed with its checksum, the files a package needs (``REQUIRED``) must be among them, and the test data must
    come out of every model file. Nothing a package holds makes this raise: a file that cannot be read or parsed
    is a failure line."""
    pkg = Path(pkg)
    if not pkg.is_dir():
        raise DataError(f"{str(pkg)!r} is not a package folder")
    pkg = pkg.resolve()
    files, links = _contents(pkg)
    failures = [f"{link}: a symbolic link; a package holds plain files only" for link in links]
    listed, bad = read_sums(pkg)
    failures += bad
    good: set[str] = set()
    for name, digest in listed.items():
        path = _plain_file(pkg, name)
        if path is None:
            failures.append(f"{name}: missing (or not a plain file in the package)")
        elif sha256(path) != digest:
            failures.append(f"{name}: checksum differs from {SUMS}")
        else:
            good.add(name)
    failures += [f"{name}: not listed in {SUMS}" for name in files if name != SUMS and name not in listed]
    if listed or not bad:
        failures += [f"{name}: required, not listed in {SUMS}" for name in REQUIRED if name not in listed]
    tensors: dict[str, np.ndarray] = {}
    for name in (f"{TEST_DIR}/input_0.pb", f"{TEST_DIR}/output_0.pb", f"{TEST_DIR}/output_0.int8.pb"):
        path = _plain_file(pkg, name)
        if path is None:
            continue
        try:
            tensors[name] = _read_tensor(path)
        except (OSError, ValueError) as e:
            failures.append(f"{name}: {e}")
    x, want = tensors.get(f"{TEST_DIR}/input_0.pb"), tensors.get(f"{TEST_DIR}/output_0.pb")
    if x is None or want is None:
        return failures + [f"{TEST_DIR}: no readable input_0.pb and output_0.pb to check the models with"]
    expected: dict[str, Any] = {MODEL: want, MODEL_ORT: want}
    if f"{TEST_DIR}/output_0.int8.pb" in tensors:
        expected[MODEL_INT8] = tensors[f"{TEST_DIR}/output_0.int8.pb"]
    for f, y in expected.items():
        path = _plain_file(pkg, f)
        if path is None:
            if f != MODEL_INT8 and f not in listed and f"{f}: missing" not in failures:
                failures.append(f"{f}: missing")
            continue
        try:
            why = outputs_match(_run(path, x), y, int8=f == MODEL_INT8)
        except Exception as e:  # a damaged or foreign model file: its runtime's own words
            why = f"onnxruntime cannot run it: {first_line(e, 160)}"
        if why:
            failures.append(f"{f}: {why}")
    return failures + _verify_targets(pkg, good, x, want)


_TARGET_FILE = re.compile(r"([a-z0-9_-]+)/model(\.int8)?\.(xml|tflite|pte|mlpackage)")


def _verify_targets(pkg: Path, good: set[str], x: np.ndarray, want: np.ndarray) -> list[str]:
    """Every other runtime's file the package holds (``TARGET/model[.int8].SUFFIX``, among the files whose
    checksums held) run on the test inputs in its runtime: FP32 files must give ``output_0.pb``, INT8 ones their
    ``output_0.TARGET.int8.pb``; a Core ML package is checked against ``labels.txt`` and the input's shape. A runtime
    missing here is a failure naming its install: an unchecked file is not a verified one."""
    from ..runtimes.base import load
    from ..runtimes.coreml import check_package

    names = sorted({n.split(".mlpackage/")[0] + ".mlpackage" if ".mlpackage/" in n else n for n in good})
    failures = []
    for name in names:
        m = _TARGET_FILE.fullmatch(name)
        if m is None:
            continue
        target, int8, suffix = m.group(1), bool(m.group(2)), m.group(3)
        path = pkg / name
        try:
            if suffix == "mlpackage":
                labels = (pkg / "labels.txt").read_text().splitlines() if "labels.txt" in good else []
                check_package(path, {"class_names": labels, "input_shape": list(x.shape[1:])})
                continue
            if suffix == "xml" and name[:-4] + ".bin" not in good:
                failures.append(f"{name}: its weights {name[:-4]}.bin are missing or failed their checksum")
                continue
            if int8:
                exp_name = _expected_name(target)
                if exp_name not in good:
                    failures.append(f"{name}: no {exp_name} (listed, checksum held) to check it against")
                    continue
                expected = _read_tensor(pkg / exp_name)
            else:
                expected = want
            why = outputs_match(load(path).logits(x), expected, int8=int8)
        except Exception as e:  # a damaged or foreign file, or a runtime not installed here: one line
            why = f"cannot be checked: {first_line(e, 200)}"
        if why:
            failures.append(f"{name}: {why}")
    return failures
