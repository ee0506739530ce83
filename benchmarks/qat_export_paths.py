"""Which QAT library's INT8 graph does onnxruntime run with INT8 kernels? (issue 45: "measure which gives an ONNX QDQ
file that onnxruntime runs with INT8 kernels, and say why you chose it")

For each student (resnet20, mobilenet_v2 and mobilenet_v3_small with the CIFAR stem; weights as built: the graph, not
the accuracy, is measured), the INT8 graphs each candidate path produces, after onnxruntime's own graph
optimizations (ORT_ENABLE_EXTENDED, what a session runs), counted by op type: how many convolutions and matrix
products run as INT8 kernels (QLinearConv, QGemm, QLinearMatMul, ...) and how many stay in float (Conv, FusedConv,
Gemm, MatMul).

Paths:
- ``ort-static``: kdexport's PTQ (``kdexport.export.quantize``), onnxruntime's static QDQ quantizer: the reference.
- ``torchao-x86``: torchao PT2E QAT with X86InductorQuantizer (``is_qat=True``), converted and exported by
  ``torch.onnx.export`` (its QDQ ops).
- ``torchao-x86-ort-aligned``: the same with the conv+add fusion patterns off (kdexport.export.qat._quantizer).
- ``nncf``: NNCF's PyTorch ``nncf.quantize`` (the model it returns is what NNCF fine-tunes for QAT), exported by
  ``torch.onnx.export``, when nncf is installed.

    python benchmarks/qat_export_paths.py

Writes benchmarks/results/qat_export_paths.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

from kdexport.config import QuantConfig
from kdexport.data.datasets import Dataset
from kdexport.envinfo import result_stamp, stamp_markdown
from kdexport.export.onnx import export_onnx
from kdexport.export.qat import QatStudent, _quantizer, split_shared_calls
from kdexport.export.quantize import quantize_onnx
from kdexport.files import atomic_write_json, atomic_write_text
from kdexport.models.builders import ModelSpec, build_model

HERE = Path(__file__).resolve().parent
STUDENTS = ("resnet20", "mobilenet_v2", "mobilenet_v3_small")
INT8 = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger")
QUANT = QuantConfig(calibration_samples=32, max_accuracy_drop=100)
FLOAT = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedGemm", "FusedMatMul")


def ort_ops(path: Path) -> dict:
    import onnx
    import onnxruntime as ort

    opt = path.with_suffix(".opt.onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(opt)
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    return {"int8_kernels": sum(ops[o] for o in INT8), "float_compute": sum(ops[o] for o in FLOAT),
            "ops": dict(sorted(ops.items()))}


def data_for(n: int = 64) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 10
    return Dataset("imagefolder", x, y, x, y, [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)


def export_graph(graph: torch.nn.Module, example: torch.Tensor, dest: Path) -> None:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(dest), dynamo=True, opset_version=18,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))


def torchao_x86(model, x, dest: Path, aligned: bool) -> None:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    if aligned:
        qat = QatStudent(model, x)
        qat.calibrate([x])
        export_graph(qat.converted(), x[:2], dest)
        return
    graph = torch.export.export(copy.deepcopy(model).train(), (x[:2],),
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},)).module()
    split_shared_calls(graph)  # without it resnet20 is refused ("Input partition has more than one output node")
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=True))
    graph = prepare_qat_pt2e(graph, quantizer)
    move_exported_model_to_eval(graph)
    with torch.no_grad():
        graph(x)
    export_graph(convert_pt2e(graph), x[:2], dest)


def nncf_path(model, x, dest: Path) -> None:
    import nncf

    q = nncf.quantize(copy.deepcopy(model).eval(), nncf.Dataset([x]), subset_size=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(q, (x[:2],), str(dest), opset_version=18, dynamo=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "qat_export_paths"))
    args = ap.parse_args()
    stamp = result_stamp("benchmarks/qat_export_paths.py")
    data = data_for()
    x = data.normalize(data.x_train[:32])
    rows = []
    _ = _quantizer  # the aligned quantizer is the one QatStudent uses
    with tempfile.TemporaryDirectory() as tmp:
        for arch in STUDENTS:
            torch.manual_seed(0)
            model = build_model(ModelSpec(arch, 10, (3, 32, 32), cifar_stem=arch != "resnet20")).eval()
            fp32 = Path(tmp) / f"{arch}.onnx"
            export_onnx(model, fp32, x)
            paths = {
                "ort-static": lambda d, f=fp32: quantize_onnx(f, d, data, mode="static", diagnose=False, quant=QUANT),
                "torchao-x86": lambda d, m=model: torchao_x86(m, x, d, aligned=False),
                "torchao-x86-ort-aligned": lambda d, m=model: torchao_x86(m, x, d, aligned=True),
                "nncf": lambda d, m=model: nncf_path(m, x, d),
            }
            for name, make in paths.items():
                dest = Path(tmp) / f"{arch}-{name}.onnx"
                try:
                    make(dest)
                    row = {"student": arch, "path": name, **ort_ops(dest)}
                except Exception as e:
                    row = {"student": arch, "path": name, "error": f"{type(e).__name__}: "
                                                                  f"{str(e).strip().splitlines()[0][:200]}"}
                    traceback.print_exc()
                print(row, flush=True)
                rows.append(row)
    out = {**stamp, "rows": rows}
    atomic_write_json(Path(args.out).with_suffix(".json"), out)
    atomic_write_text(Path(args.out).with_suffix(".md"), markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    lines = ["# QAT libraries: which INT8 graph onnxruntime runs with INT8 kernels", "", stamp_markdown(out), "",
             "Convolutions and matrix products after onnxruntime's graph optimizations (ORT_ENABLE_EXTENDED): as INT8 "
             "kernels (QLinearConv, QGemm, ...) or in float (Conv, FusedConv, Gemm, MatMul).", "",
             "| student | path | INT8 kernels | float compute | note |", "|---|---|---|---|---|"]
    for r in out["rows"]:
        if "error" in r:
            lines.append(f"| {r['student']} | {r['path']} | - | - | failed: {r['error']} |")
        else:
            lines.append(f"| {r['student']} | {r['path']} | {r['int8_kernels']} | {r['float_compute']} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
