"""quantize, bench and predict: the last mile."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import QuantConfig, RunConfig, TrainConfig
from kdexport.data.datasets import Dataset
from kdexport.distill.train import fit
from kdexport.export.onnx import export_onnx
from kdexport.models.builders import ModelSpec, build_model
from kdexport.pipeline import onnx_metadata
from kdexport.runtimes.ort import ort_logits, ort_session, read_metadata

runner = CliRunner()


@pytest.fixture(scope="module")
def student(tmp_path_factory, digits):
    torch.manual_seed(0)
    spec = ModelSpec("mlp:32", 10, (1, 8, 8))
    m = build_model(spec)
    fit(m, digits, TrainConfig(epochs=8))
    path = tmp_path_factory.mktemp("deploy") / "student.onnx"
    export_onnx(m, path, digits.normalize(digits.x_test[:64]),
                metadata=onnx_metadata(RunConfig(), digits, "student", spec, 0.0))
    return path


def test_quantize_dynamic_keeps_accuracy_and_shrinks(student, tmp_path):
    out = tmp_path / "q.onnx"
    res = runner.invoke(app, ["quantize", str(student), "--out", str(out), "--mode", "dynamic"])
    assert res.exit_code == 0, res.output
    assert out.stat().st_size < student.stat().st_size
    assert "dynamic INT8: accuracy" in res.output
    assert "why INT8 differs from FP32:" in res.output and "- worst classes:" in res.output
    from kdexport.runtimes.ort import read_metadata

    meta = read_metadata(out)
    assert meta["quantization"]["mode"] == "dynamic" and meta["class_names"][0] == "0"


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_quantize_accuracy_gate_rejects_and_keeps_no_file(student, tmp_path, monkeypatch, mode):
    import kdexport.export.quantize as q

    real = q.file_accuracy
    monkeypatch.setattr(q, "file_accuracy", lambda p, d, t=None: real(p, d, t) - (0.02 if "partial" in str(p) else 0))
    out = tmp_path / "q.onnx"
    res = runner.invoke(app, ["quantize", str(student), "--out", str(out), "--mode", mode,
                              "--calibration-samples", "64"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "loses 2.00 accuracy points" in text
    # static: the one line names the other calibrations to try (dynamic has none)
    assert ("another --calibration (moving-average, minmax, percentile, entropy)" in text) == (mode == "static")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("arch,cifar_stem,max_ratio", [("resnet18", True, 0.3),
                                                      ("fastcifar:0.25", False, 0.4)])  # GELU: no symbolic shapes
def test_static_quantization_of_a_cnn(tmp_path, arch, cifar_stem, max_ratio):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    data = Dataset("imagefolder", x, y, x[:32], y[:32], [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    m = build_model(ModelSpec(arch, 10, (3, 32, 32), cifar_stem=cifar_stem)).eval()
    export_onnx(m, tmp_path / "r.onnx", data.normalize(x[:8]))
    from kdexport.export.quantize import quantize_onnx

    r = quantize_onnx(tmp_path / "r.onnx", tmp_path / "r8.onnx", data, mode="static",
                      quant=QuantConfig(calibration_samples=32, max_accuracy_drop=100))
    assert r.onnx_bytes < max_ratio * r.fp32_bytes
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "r8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_bench_schema_accuracy_and_pareto(student, tmp_path):
    out = tmp_path / "b"
    res = runner.invoke(app, ["bench", str(student), "--dataset", "digits", "--out", str(out), "--iters", "5",
                              "--warmup", "1", "--batch-sizes", "1,4", "--threads", "1"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "bench.json").read_text())
    m = r["models"]["student"]
    assert set(m["runs"][0]["latency_ms"]) == {"batch_1", "batch_4"}
    assert {"p50", "p90", "p99"} <= set(m["runs"][0]["latency_ms"]["batch_1"])
    assert m["accuracy_onnx"] > 0.5 and r["session"]["graph_optimization"] == "all"
    assert r["environment"]["cpu"] and r["pareto"] == ["student"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_a_plain_torchvision_export(tmp_path):
    m = build_model(ModelSpec("mobilenet_v3_small", 1000, (3, 64, 64))).eval()
    torch.onnx.export(m, (torch.randn(1, 3, 64, 64),), str(tmp_path / "tv.onnx"), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    res = runner.invoke(app, ["bench", str(tmp_path / "tv.onnx"), "--out", str(tmp_path / "b"), "--iters", "3",
                              "--warmup", "1", "--batch-sizes", "1"])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert r["models"]["tv"]["num_classes"] == 1000 and "accuracy_onnx" not in r["models"]["tv"]
    res = runner.invoke(app, ["bench", str(tmp_path / "tv.onnx"), "--dataset", "digits",
                              "--out", str(tmp_path / "c")])
    msg = " ".join(res.output.split())
    assert res.exit_code == 2 and "takes inputs [3, 64, 64]; dataset digits gives [1, 8, 8]" in msg
    res = runner.invoke(app, ["predict", str(tmp_path / "tv.onnx"), str(tmp_path / "tv.onnx")])
    assert res.exit_code != 0 and "has no class_names" in " ".join(res.output.split())


def test_bad_models_one_clear_line(tmp_path, student):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    res = runner.invoke(app, ["bench", str(tmp_path / "junk.onnx"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "is not a valid ONNX model" in res.output and "Traceback" not in res.output
    lin = torch.nn.Linear(5, 3)
    torch.onnx.export(lin, (torch.randn(2, 5),), str(tmp_path / "lin.onnx"), dynamo=False)
    res = runner.invoke(app, ["bench", str(tmp_path / "lin.onnx"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "is not an image classifier" in " ".join(res.output.split())
    m = build_model(ModelSpec("mlp:8", 4, (1, 8, 8))).eval()
    export_onnx(m, tmp_path / "four.onnx", torch.randn(4, 1, 8, 8))
    res = runner.invoke(app, ["bench", str(tmp_path / "four.onnx"), "--dataset", "digits",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "has 4 classes; dataset digits has 10" in " ".join(res.output.split())


def test_predict_on_a_real_image(student, digits, tmp_path):
    sess = ort_session(student)
    pred = ort_logits(sess, digits.normalize(digits.x_test).numpy()).argmax(1)
    i = int(np.nonzero(pred == digits.y_test.numpy())[0][0])
    img = (digits.x_test[i, 0].numpy() * 255 / 16).round().astype(np.uint8)
    Image.fromarray(img, "L").save(tmp_path / "digit.png")
    res = runner.invoke(app, ["predict", str(student), str(tmp_path / "digit.png"), "--top-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    top = out[0]["top"]
    assert len(top) == 3 and top[0]["label"] == str(int(digits.y_test[i]))
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    (tmp_path / "notes.txt").write_text("hello")
    res = runner.invoke(app, ["predict", str(student), str(tmp_path / "notes.txt")])
    assert res.exit_code == 2 and "is not a readable image" in res.output


def test_readme_snippet_matches_predict(student, digits, tmp_path):
    """The app snippet in docs/packages.md runs as printed and agrees with `kdexport predict`."""
    from pathlib import Path

    import kdexport.export.predict as kp

    readme = (Path(__file__).resolve().parents[1] / "docs" / "packages.md").read_text()
    snippet = next(b.split("\n", 1)[1] for b in readme.split("```")[1::2]
                   if b.startswith("python") and "InferenceSession" in b)
    img = (digits.x_test[0, 0].numpy() * 255 / 16).round().astype(np.uint8)
    Image.fromarray(img, "L").save(tmp_path / "digit.png")
    code = snippet.replace('"student.onnx"', repr(str(student))).replace(
        '"photo.jpg"', repr(str(tmp_path / "digit.png"))).replace("print(", "result = (")
    ns: dict = {}
    exec(compile(code, "README snippet", "exec"), ns)
    ours = kp.predict(student, [tmp_path / "digit.png"], 3)[0]["top"]
    assert [label for label, _ in ns["result"]] == [t["label"] for t in ours]


def test_an_int8_exclude_naming_nothing_is_one_line_and_no_file(student, tmp_path):
    out = tmp_path / "q.onnx"
    res = runner.invoke(app, ["quantize", str(student), "--out", str(out), "--int8-exclude", "Nope"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "--int8-exclude 'Nope' is neither a node name nor an op type of this model (op types:" in \
        " ".join(res.output.split())
    assert not out.exists() and not list(tmp_path.iterdir())


def test_percentile_calibration_and_bad_calibration_name(student, tmp_path):
    out = tmp_path / "p.onnx"
    res = runner.invoke(app, ["quantize", str(student), "--out", str(out), "--mode", "static",
                              "--calibration", "percentile", "--calibration-samples", "100"])
    assert res.exit_code == 0, res.output
    from kdexport.runtimes.ort import read_metadata

    assert read_metadata(out)["quantization"]["calibration"] == "percentile"
    res = runner.invoke(app, ["quantize", str(student), "--out", str(out), "--calibration", "magic"])
    assert res.exit_code == 2 and "unknown calibration 'magic'; choose one of:" in res.output


def test_distill_export_quantize_static_records_calibration(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["distill-export", "--out", str(out), "--teacher", "mlp:64", "--epochs", "3",
                              "--bench-iters", "3", "--bench-batch", "4", "--quantize", "static", "--calibration",
                              "percentile", "--calibration-samples", "64", "--max-accuracy-drop", "100", "--equalize"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    q = report["models"]["student_int8"]["quantization"]
    assert q["mode"] == "static" and q["calibration"] == "percentile" and q["calibration_samples"] == 64
    assert q["equalization"]["streams"] == 0 and report["config"]["quant"]["equalize"]  # reached; an MLP has no streams
    assert report["config"]["quant"]["calibration"] == "percentile"
    from kdexport.runtimes.ort import read_metadata

    assert read_metadata(out / "onnx" / "student.int8.onnx")["quantization"]["calibration"] == "percentile"
    assert "static, percentile calibration" in (out / "report.md").read_text()


def test_calibrations_discount_a_rare_outlier(tmp_path):
    """One extreme image in one of three calibration batches: MinMax stretches the input's INT8 range
    to cover it, moving-average takes a third of its pull (the mean of the batches' maxima), median
    ignores it (the middle batch maximum)."""
    import onnx
    from onnx import numpy_helper

    from kdexport.export.quantize import quantize_onnx
    g = torch.Generator().manual_seed(0)
    x = torch.randint(100, 151, (96, 3, 8, 8), dtype=torch.uint8, generator=g)
    x[5] = 255
    y = torch.arange(96) % 4
    data = Dataset("imagefolder", x, y, x[:16], y[:16], list("abcd"), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 6 * 6, 4)).eval()
    export_onnx(m, tmp_path / "m.onnx", data.normalize(x[:8]))

    def input_scale(calibration):
        out = tmp_path / f"{calibration}.onnx"
        r = quantize_onnx(tmp_path / "m.onnx", out, data, mode="static",
                          quant=QuantConfig(calibration_samples=96, max_accuracy_drop=100, calibration=calibration))
        assert r.calibration == calibration
        model = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        (q,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
        return float(inits[q.input[1]])

    lo, hi, mid = (100 / 255 - 0.5) / 0.25, (255 / 255 - 0.5) / 0.25, (150 / 255 - 0.5) / 0.25
    assert input_scale("minmax") == pytest.approx((hi - lo) / 255, rel=1e-3)
    assert input_scale("moving-average") == pytest.approx(((hi + 2 * mid) / 3 - lo) / 255, rel=1e-3)
    assert input_scale("median") == pytest.approx((mid - lo) / 255, rel=1e-3)


def test_batch_ranges_match_numpy_per_batch(tmp_path):
    """batch_ranges reduces every float activation per batch inside onnxruntime: the values must be
    each batch's true min and max, the ReLU's minimum never below 0."""
    import onnx

    from kdexport.export.calibration import batch_ranges

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(12, 3, 8, 8)
    export_onnx(m, tmp_path / "m.onnx", x[:4])
    batches = [x[i:i + 4].numpy() for i in range(0, 12, 4)]
    r = batch_ranges(onnx.load(str(tmp_path / "m.onnx")), batches)
    with torch.no_grad():
        for t, f in (("input", lambda b: b), ("logits", m), ("relu", lambda b: m[1](m[0](b)))):
            want = np.array([[f(torch.from_numpy(b)).min(), f(torch.from_numpy(b)).max()] for b in batches])
            np.testing.assert_allclose(r[t], want, rtol=1e-5, atol=1e-6)
    assert (r["relu"][:, 0] == 0).all() and r["relu"].shape == (3, 2)


def test_fallback_auto_keeps_exactly_the_nodes_around_a_deliberately_bad_range(tmp_path, digits, monkeypatch):
    """One activation ('relu', the first ReLU's output) gets a range 1000x too wide: INT8 collapses to
    chance. --fallback auto must rank that tensor worst and keep exactly its producer and consumer in FP32."""
    from kdexport.config import QuantConfig
    from kdexport.errors import GateError
    from kdexport.export.calibration import CALIBRATIONS, Calibration
    from kdexport.export.quantize import quantize_onnx

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                            torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(512, 10))
    fit(m, digits, TrainConfig(epochs=5))
    export_onnx(m, tmp_path / "m.onnx", digits.normalize(digits.x_test[:16]))
    bad = {"relu": [{"rmin": np.float32(0.0), "rmax": np.float32(2000.0)}]}
    monkeypatch.setitem(CALIBRATIONS._help, "bad", "a deliberately bad range")
    monkeypatch.setitem(CALIBRATIONS._items, "bad", Calibration("MinMax", overrides=lambda model, calib: bad))
    with pytest.raises(GateError, match="or --fallback auto may do better"):
        quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", digits, mode="static",
                      quant=QuantConfig(calibration="bad"))
    r = quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", digits, mode="static",
                      quant=QuantConfig(calibration="bad", fallback="auto"))
    fb = r.fallback
    assert fb["ranked"][0]["tensor"] == "relu"
    assert fb["fp32_nodes"] == ["node_relu", "node_conv2d_1"]  # the ReLU producing it and the conv reading it
    assert fb["steps"][0]["drop_points"] > 50 and r.good and r.accuracy_drop_points <= 1.0
    assert read_metadata(tmp_path / "q.onnx")["quantization"]["fp32_nodes"] == fb["fp32_nodes"]
    import onnx

    nodes = onnx.load(str(tmp_path / "q.onnx")).graph.node
    producer = {o: n.op_type for n in nodes for o in n.output}
    (conv2,) = [n for n in nodes if n.name == "node_conv2d_1"]
    (conv1,) = [n for n in nodes if n.name == "node_conv2d"]
    assert producer[conv2.input[0]] == "Relu"  # kept in float: reads the ReLU's output directly
    assert producer[conv1.input[0]] == "DequantizeLinear"  # the rest stays INT8


def test_fallback_search_grows_then_bisects(tmp_path, monkeypatch, digits):
    """Injected: 40 ranked tensors, the budget holds once the worst 11 are in FP32. The search doubles
    (1, 2, 4, 8, 16) and then bisects between 8 and 16, so it keeps fewer float nodes than 16."""
    from types import SimpleNamespace

    import kdexport.export.fallback as fb
    from kdexport.config import QuantConfig

    ranked = [(f"t{i}", float(i)) for i in range(40)]
    monkeypatch.setattr(fb, "rank_tensors", lambda *a: ranked)
    monkeypatch.setattr(fb, "ranking_batches", lambda *a: [])
    monkeypatch.setattr(fb, "tensor_nodes", lambda model: (lambda t: [f"n_{t}"]))
    excluded = {}

    def quantize(path, nodes):
        excluded[str(path)] = len(nodes)
        path.write_bytes(str(len(nodes)).encode())

    monkeypatch.setattr(fb, "file_accuracy", lambda path, *a: 0.9 if int(path.read_bytes()) >= 11 else 0.5)
    dest = tmp_path / "q.onnx"
    dest.write_bytes(b"0")
    r = fb.fallback_search(SimpleNamespace(pre=tmp_path / "pre.onnx", calib=[]), dest, digits,
                           QuantConfig(max_accuracy_drop=1.0), 0.9, 0.5, 2, quantize=quantize,
                           latency=lambda path: 1.0)
    tried = [s["tensors"] for s in r["steps"][1:]]
    assert tried[:5] == [1, 2, 4, 8, 16] and 11 <= len(r["fp32_nodes"]) <= 12 < 16
    assert int(dest.read_bytes()) == len(r["fp32_nodes"])  # the file kept is the smallest group that passed
