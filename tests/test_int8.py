"""Issue 45: the INT8 report (per-class drop, worst tensors, FP32 nodes and why), --per-tensor, --int8-exclude, the
slower-INT8 gate of ``kdexport check`` and quantization-aware distillation (--quantize qat)."""

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import QuantConfig, TrainConfig
from kdexport.data.datasets import Dataset
from kdexport.errors import ConfigError
from kdexport.export.diagnose import LEFT_BY_QUANTIZER, diagnosis_lines, fp32_nodes, per_class_drop, qdq_sqnr
from kdexport.export.onnx import export_onnx
from kdexport.export.quantize import quantize_onnx, resolve_exclude
from kdexport.report.check import check_reports, int8_speed_gates

runner = CliRunner()


def _images(n=96, seed=0, classes=4, size=16):
    """Images whose class is visible (a bright quadrant per class), so that a small CNN learns them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randint(0, 80, (n, 3, size, size), dtype=torch.uint8, generator=g)
    h = size // 2
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, :, r * h:(r + 1) * h, col * h:(col + 1) * h] += 150
    return x, y


@pytest.fixture(scope="module")
def data():
    x, y = _images(192)
    xt, yt = _images(64, seed=1)
    return Dataset("imagefolder", x, y, xt, yt, list("abcd"), (0.5,) * 3, (0.25,) * 3)


class Block(torch.nn.Module):
    """conv-bn-relu, conv-bn, add, relu with ONE ReLU module called twice (as in ResNet blocks)."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
        self.conv2, self.bn2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


def small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), Block(8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 4))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    from kdexport.distill.train import fit

    m = small_cnn()
    fit(m, data, TrainConfig(epochs=4, batch_size=32, lr=1e-2))
    path = tmp_path_factory.mktemp("int8") / "cnn.onnx"
    export_onnx(m, path, data.normalize(data.x_test[:32]))
    return m.eval(), path


# -- the report's pieces, by hand ---------------------------------------------------------------------------------

def test_per_class_drop_by_hand():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    data = Dataset("imagefolder", torch.zeros(1, 1, 2, 2, dtype=torch.uint8), y[:1], torch.zeros(8, 1, 2, 2),
                   y, ["a", "b", "c"], (0.5,), (0.5,))
    fp32 = np.array([0, 0, 0, 1, 1, 1, 2, 0])  # a 3/4, b 2/2, c 1/2
    int8 = np.array([0, 1, 1, 1, 1, 1, 2, 2])  # a 1/4, b 2/2, c 2/2
    rows = per_class_drop(data, fp32, int8)
    assert [r["class"] for r in rows] == ["a", "b", "c"]  # worst first: a -50, b 0, c +50
    assert rows[0]["drop_points"] == pytest.approx(50.0) and rows[0]["images"] == 4
    assert rows[2]["drop_points"] == pytest.approx(-50.0) and rows[2]["accuracy_int8"] == 1.0
    lines = diagnosis_lines({"per_class": rows, "fp32_nodes": [], "int8_compute_nodes": 3})
    assert lines[0] == "- worst classes: a 75.0% -> 25.0% (-50.0)" and "every compute node runs in INT8 (3)" in lines[1]


def _graph(nodes, inits, inputs=("x",), outputs=("y",)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, None) for i in inputs],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_fp32_nodes_says_which_run_in_float_and_why():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.uint8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["a"], name="int8_mm"),
             helper.make_node("MatMul", ["a", "w"], ["b"], name="float_mm"),
             helper.make_node("Gemm", ["b", "w"], ["y"], name="excluded_gemm")]
    model = _graph(nodes, [w, s, z])
    nodes_, int8 = fp32_nodes(model, {"excluded_gemm": "--int8-exclude Gemm"})
    assert int8 == 1
    assert nodes_ == [{"node": "float_mm", "op": "MatMul", "why": LEFT_BY_QUANTIZER},
                      {"node": "excluded_gemm", "op": "Gemm", "why": "--int8-exclude Gemm"}]


def test_qdq_sqnr_matches_numpy(tmp_path):
    """x -> Q -> DQ -> Relu: the SQNR of x against its round trip, computed by hand."""
    scale = 0.05
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Relu", ["xd"], ["y"])]
    model = _graph(nodes, [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                           numpy_helper.from_array(np.array(128, np.uint8), "z")])
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 2, (4, 8)).astype(np.float32) for _ in range(3)]  # clipped beyond +-6.4: real noise
    x = np.concatenate(batches).astype(np.float64)
    back = (np.clip(np.round(x / scale) + 128, 0, 255) - 128) * scale
    want = 10 * math.log10((x ** 2).sum() / ((x - back) ** 2).sum())
    (row,) = qdq_sqnr(path, batches)
    assert row["tensor"] == "x" and row["sqnr_db"] == pytest.approx(want, abs=0.01)


# -- options ----------------------------------------------------------------------------------------------------

def test_int8_exclude_resolves_names_and_op_types(trained):
    model = onnx.load(str(trained[1]))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    got = resolve_exclude(model, ("Gemm", convs[0]))
    assert set(got) == {convs[0], *[n.name for n in model.graph.node if n.op_type == "Gemm"]}
    assert got[convs[0]] == f"--int8-exclude {convs[0]}"
    with pytest.raises(ConfigError, match="'Softmaxx' is neither a node name nor an op type of this model"):
        resolve_exclude(model, ("Softmaxx",))


def test_per_tensor_and_exclude_shape_the_int8_file_and_its_report(trained, data, tmp_path):
    _, fp32 = trained

    def weight_scales(path):
        m = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        out = []
        for n in m.graph.node:
            if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None \
                    and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4:
                out.append(inits[n.input[1]].size)
        return out

    base = dict(calibration_samples=64, max_accuracy_drop=100)
    quantize_onnx(fp32, tmp_path / "c.onnx", data, mode="static", quant=QuantConfig(**base))
    quantize_onnx(fp32, tmp_path / "t.onnx", data, mode="static", quant=QuantConfig(**base, per_tensor=True))
    assert weight_scales(tmp_path / "c.onnx") and all(s > 1 for s in weight_scales(tmp_path / "c.onnx"))
    assert weight_scales(tmp_path / "t.onnx") and all(s == 1 for s in weight_scales(tmp_path / "t.onnx"))
    r = quantize_onnx(fp32, tmp_path / "e.onnx", data, mode="static",
                      quant=QuantConfig(**base, int8_exclude=("Gemm",)))
    d = r.diagnosis
    assert [(n["op"], n["why"]) for n in d["fp32_nodes"]] == [("Gemm", "--int8-exclude Gemm")]
    assert d["int8_compute_nodes"] == 3  # the three convolutions
    assert [c["class"] for c in d["per_class"]] and sum(c["images"] for c in d["per_class"]) == 64
    assert d["worst_tensors"] and all(isinstance(t["sqnr_db"], float) for t in d["worst_tensors"])


@pytest.mark.parametrize("args,msg", [(["--qat-epochs", "0"], "--qat-epochs must be a whole number >= 1"),
                                      (["--qat-lr-scale", "0"], "--qat-lr-scale must be in (0, 1]"),
                                      (["--qat-lr-scale", "nan"], "--qat-lr-scale must be in (0, 1]"),
                                      (["--quantize", "qat", "--hint", "teacher.a:student.b"],
                                       "no named layers for --hint")])
def test_bad_qat_options_are_one_line(args, msg):
    res = runner.invoke(app, ["distill-export", *args])
    assert res.exit_code == 2 and msg in " ".join(res.output.split()) and "Traceback" not in res.output


# -- the slower-INT8 gate ---------------------------------------------------------------------------------------

def _report(speedup, rows=None):
    entry = {"arch": "mlp", "accuracy_onnx": 0.9, "onnx_bytes": 100,
             "latency_ms": {"batch_1": {"p50": 1.0}}}
    return {"dataset": {"name": "digits"},
            "models": {"student": entry,
                       "student_int8": {**entry, "quantization": {"speedup_vs_fp32_batch_1": speedup}}},
            **({"runtimes": {"rows": rows}} if rows else {})}


def test_int8_slower_than_fp32_fails_unless_skipped():
    rows = [{"target": "litert", "precision": "fp32", "path": "a", "latency_ms": {"batch_1": {"p50": 0.2}}},
            {"target": "litert", "precision": "int8", "path": "b", "latency_ms": {"batch_1": {"p50": 0.25}}},
            {"target": "openvino", "precision": "fp32", "path": "c", "latency_ms": {"batch_1": {"p50": 0.4}}},
            {"target": "openvino", "precision": "int8", "path": "d", "latency_ms": {"batch_1": {"p50": 0.1}}}]
    gates = {g.model: g for g in int8_speed_gates(_report(0.8, rows))}
    assert not gates["student_int8"].passed and gates["student_int8"].current == pytest.approx(0.8)
    assert not gates["litert:int8"].passed and gates["litert:int8"].current == pytest.approx(0.8)
    assert gates["openvino:int8"].passed and gates["openvino:int8"].current == pytest.approx(4.0)
    assert int8_speed_gates({"models": {"student": {}}}) == []  # no INT8 file, no gate
    from kdexport.config import GateConfig

    assert any(g.metric.startswith("INT8") and not g.passed for g in check_reports(_report(0.8), _report(0.8)))
    skipped = check_reports(_report(0.8), _report(0.8), GateConfig(skip=("int8-speed",)))
    assert not any(g.metric.startswith("INT8") for g in skipped) and all(g.passed for g in skipped)
    assert all(g.passed for g in check_reports(_report(1.5), _report(1.5)))


# -- quantization-aware distillation ----------------------------------------------------------------------------

def test_qat_student_trains_converts_and_matches_its_int8_file(trained, data, tmp_path):
    """The fine-tuned weights differ from the FP32 student's; the INT8 file made from them by the static path
    agrees with the fake-quantized model within the QAT rule; a shared ReLU (ResNet block) is prepared."""
    pytest.importorskip("torchao")
    from kdexport.export.qat import QatStudent, qat_parity, train_qat
    from kdexport.export.quantize import calibration_batches

    model, _ = trained
    calib = [torch.from_numpy(b) for b in calibration_batches(data, 64)]
    qat, hist = train_qat(model, data, TrainConfig(epochs=4, batch_size=32, lr=1e-2), calib, distill=None,
                          label="qat", epochs=2, lr_scale=0.1)
    assert len(hist) == 2 and hist[-1]["lr"] < 1e-3
    assert isinstance(qat, QatStudent) and not qat.training
    fq = [m for m in qat.graph.modules() if type(m).__name__ == "FusedMovingAvgObsFakeQuantize"]
    assert fq and all(int(m.observer_enabled[0]) == 0 for m in fq)  # eval: ranges frozen
    tuned = qat.float_student(model)
    w0, w1 = model[0].weight, tuned[0].weight
    assert not torch.equal(w0, w1) and torch.equal(model[1].running_var, tuned[1].running_var)  # BN stats frozen
    export_onnx(tuned, tmp_path / "tuned.onnx", data.normalize(data.x_test[:32]))
    r = quantize_onnx(tmp_path / "tuned.onnx", tmp_path / "q.onnx", data, mode="static",
                      quant=QuantConfig(calibration_samples=64, max_accuracy_drop=100))
    p = qat_parity(qat, tmp_path / "q.onnx", data.normalize(data.x_test))
    assert p["top1_agreement"] >= 0.95 and p["max_abs_diff"] >= 0  # measured 1.0 here: the classes are plain
    torch.manual_seed(1)
    export_onnx(small_cnn().eval(), tmp_path / "other.onnx", data.normalize(data.x_test[:32]))  # untrained weights
    from kdexport.errors import ParityError

    with pytest.raises(ParityError, match="agrees with the fake-quantized student on .* under 75%"):
        qat_parity(qat, tmp_path / "other.onnx", data.normalize(data.x_test))
    assert r.accuracy_int8 >= 0.9  # the classes are visible: the INT8 student still sees them


def test_qat_resume_is_bit_exact(trained, data, tmp_path, dies_in_epoch):
    pytest.importorskip("torchao")
    from kdexport.export.qat import train_qat
    from kdexport.export.quantize import calibration_batches

    model, _ = trained
    calib = [torch.from_numpy(b) for b in calibration_batches(data, 64)]
    cfg = TrainConfig(epochs=4, batch_size=32, lr=1e-2)
    full, _ = train_qat(model, data, cfg, calib, distill=None, label="qat", epochs=2)
    state = tmp_path / "qat.pt"
    dies_in_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        train_qat(model, data, cfg, calib, distill=None, label="qat", epochs=2, state_path=state)
    dies_in_epoch(None)
    resumed, hist = train_qat(model, data, cfg, calib, distill=None, label="qat", epochs=2, state_path=state,
                              resume=True)
    a, b = full.graph.state_dict(), resumed.graph.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(hist) == 2


def test_qat_on_a_model_torch_export_cannot_capture_is_one_line(data):
    pytest.importorskip("torchao")
    from kdexport.errors import ExportError
    from kdexport.export.qat import QatStudent

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.mean((2, 3)) if y.sum() > 0 else -y.mean((2, 3))  # data-dependent: export refuses it

    with pytest.raises(ExportError, match=r"torchao could not prepare this model \(.*\); use --quantize static"):
        QatStudent(Branchy(), data.normalize(data.x_train[:2]))
