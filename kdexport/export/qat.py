"""Quantization-aware distillation (``--quantize qat``): the student trains as the INT8 network it ships as, taught
by the FP32 teacher, and leaves as an ordinary INT8 ONNX file (QDQ) that onnxruntime runs with INT8 kernels.

The fake quantization is torchao's PT2E QAT with its x86 quantizer (``X86InductorQuantizer``, ``is_qat=True``):
uint8 per-tensor activations and int8 symmetric per-channel weights (``--per-tensor``: one scale per weight
tensor), the scheme of kdexport's onnxruntime static INT8. Why this library (measured, ``docs/quantization.md``):
its converted graph is standard ``quantize/dequantize`` ops that PyTorch's ONNX exporter writes as
``QuantizeLinear``/``DequantizeLinear`` pairs, which onnxruntime fuses into ``QLinearConv`` (INT8 kernels); it is
maintained with PyTorch and already installed by the litert and executorch extras. NNCF's PyTorch QAT targets
OpenVINO's ``FakeQuantize`` first; Brevitas is another large dependency.

The steps:

1. ``torch.export`` the trained FP32 student (dynamic batch), ``prepare_qat_pt2e``: Conv+BatchNorm pairs are
   simulated folded, fake quantizers inserted on weights and activations.
2. BatchNorm is frozen at once (``move_exported_model_to_eval``): its running statistics are the FP32 student's,
   which is what convert folds into the convolutions; dropout is off. Only the weights, BatchNorm's affine
   parameters and the activation ranges learn.
3. Activation ranges start from calibration: the calibration images go through with the observers on.
4. ``fit`` (kdexport's one training loop) trains it for ``--qat-epochs`` at ``--qat-lr-scale`` times ``--lr``
   (cosine), with the student's loss against the teacher (or labels alone, for the fair twin). Observers learn in
   training steps and are off in evaluation (:meth:`QatStudent.train`), so the test split never moves a range.
5. ``convert_pt2e`` and the ONNX exporter give the QDQ file; parity is checked against the fake-quantized model
   (:data:`QAT_PARITY`: INT8 rounding differs between PyTorch's float simulation and onnxruntime's integer
   kernels, so the rule is looser than FP32's, and top-1 agreement carries it).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig, TrainConfig
from ..data.datasets import Dataset
from ..distill.teacher import Distillation
from ..distill.train import Reporter, fit
from ..errors import ConfigError, ExportError, ParityError, first_line
from .onnx import check_parity

QAT_TOOL = "torchao PT2E QAT (X86InductorQuantizer)"
# The shipped INT8 file against the fake-quantized model it came from. They are not one graph: torchao's x86 scheme
# fake-quantizes the inputs of convolutions and matrix products, onnxruntime's static graph also quantizes additions,
# multiplications and activations (benchmarks/qat_export_paths.py), so their logits differ by more than rounding,
# most on a low-margin student (mobilenet_v3_small at 61%: 85% top-1 agreement, benchmarks/bench_qat.py). The check
# catches a wrong file (wrong weights agree at chance level); the file's accuracy is gated like any INT8 file's.
QAT_PARITY = {"min_top1_agreement": 0.75}


def require_torchao() -> None:
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ConfigError("--quantize qat needs torchao: pip install 'kdexport[qat]'") from None


def split_shared_calls(graph: torch.fx.GraphModule) -> int:
    """Give each call of a module that is called more than once (a ResNet block's one ``ReLU`` after both of its
    convolutions) its own name in the exported graph's module stack: torchao groups nodes into patterns by that
    name and refuses a group with two outputs ("Input partition has more than one output node"). Returns how
    many calls were renamed."""
    from collections import defaultdict

    calls: dict[str, list[torch.fx.Node]] = defaultdict(list)
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack:
            calls[list(stack.values())[-1][0]].append(node)
    renamed = 0
    for nodes in calls.values():
        if len(nodes) > 1 and len({n.target for n in nodes}) == 1:  # one op per call: a parameter-free module
            for k, node in enumerate(nodes):
                stack = dict(node.meta["nn_module_stack"])
                key = list(stack)[-1]
                path, cls = stack[key]
                stack[key] = (f"{path}#call{k}", cls)
                node.meta["nn_module_stack"] = stack
                renamed += 1
    return renamed


def _quantizer(per_tensor: bool):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    class OrtAligned(xiq.X86InductorQuantizer):
        """x86's patterns less those that fuse a convolution with the addition after it (Inductor's int8
        conv+add kernel): onnxruntime quantizes each convolution's output and the addition on its own, and the
        fine-tune should see the rounding the shipped file has."""

        def _annotate_qat_conv2d_bn_binary_unary(self, *args, **kwargs) -> None:
            pass

        def _annotate_qat_conv2d_bn_binary(self, *args, **kwargs) -> None:
            pass

        def _annotate_conv2d_binary_unary(self, *args, **kwargs) -> None:
            pass

        def _annotate_conv2d_binary(self, *args, **kwargs) -> None:
            pass

    config = xiq.get_default_x86_inductor_quantization_config(is_qat=True)
    if per_tensor:
        from torchao.quantization.pt2e.fake_quantize import FusedMovingAvgObsFakeQuantize
        from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver
        from torchao.quantization.pt2e.quantizer import QuantizationSpec

        weight = QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_symmetric,
                                  is_dynamic=False, observer_or_fake_quant_ctr=FusedMovingAvgObsFakeQuantize.with_args(
                                      observer=MovingAverageMinMaxObserver, eps=2 ** -12))
        config = dataclasses.replace(config, weight=weight)
    return OrtAligned().set_global(config)


class QatStudent(nn.Module):
    """A student as its INT8 network: the PT2E-prepared graph with fake quantization, BatchNorm frozen.

    ``train()``/``eval()`` do not touch BatchNorm or dropout (an exported graph has no modules for them; they were
    frozen on preparation): they turn the range observers on and off."""

    def __init__(self, model: nn.Module, example: torch.Tensor, per_tensor: bool = False):
        super().__init__()
        require_torchao()
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

        model = copy.deepcopy(model).cpu().train()
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        try:
            graph = torch.export.export(model, (example[:2].float().contiguous(),),
                                        dynamic_shapes=({0: batch},)).module()
            split_shared_calls(graph)
            graph = prepare_qat_pt2e(graph, _quantizer(per_tensor))
        except Exception as e:
            raise ExportError(f"--quantize qat: torchao could not prepare this model ({type(e).__name__}: "
                              f"{first_line(e, 160)}); use --quantize static (post-training) instead") from None
        move_exported_model_to_eval(graph)
        self.graph = graph
        self.per_tensor = per_tensor
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> QatStudent:
        from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer

        self.training = mode
        self.graph.apply(enable_observer if mode else disable_observer)
        return self

    def calibrate(self, batches: list[torch.Tensor]) -> None:
        """Activation (and weight) ranges from the calibration images: observers on, no gradient."""
        was = self.training
        self.train()
        with torch.no_grad():
            for b in batches:
                self(b)
        self.train(was)

    def float_student(self, model: nn.Module) -> nn.Module:
        """A copy of the FP32 ``model`` carrying the fine-tuned weights (and BatchNorm's affine parameters; its
        running statistics were frozen): the graph keeps the model's parameter names."""
        own = self.graph.state_dict()
        out = copy.deepcopy(model).cpu().eval()
        state = out.state_dict()
        missing = [k for k, v in state.items() if k not in own or tuple(own[k].shape) != tuple(v.shape)]
        if missing:
            raise ExportError(f"--quantize qat: the fine-tuned graph lost {len(missing)} of the model's tensors "
                              f"({', '.join(missing[:3])}, ...)")
        out.load_state_dict({k: own[k].detach().clone() for k in state})
        return out

    def converted(self) -> nn.Module:
        """The quantize/dequantize graph ``convert_pt2e`` makes (BatchNorm folded, int8 weights)."""
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        self.eval()
        return convert_pt2e(copy.deepcopy(self.graph))


def qat_train_config(train: TrainConfig, epochs: int = RunConfig.qat_epochs,
                     lr_scale: float = RunConfig.qat_lr_scale) -> TrainConfig:
    """The fine-tune's schedule: the student's options with ``epochs`` (``--qat-epochs``) at ``lr_scale``
    (``--qat-lr-scale``) x its learning rate, cosine, in FP32 arithmetic, without weight averaging or data selection
    (they would average or skip fake-quantizer state)."""
    return dataclasses.replace(train, epochs=epochs, lr=train.lr * lr_scale, scheduler="cosine", ema=0.0,
                               lookahead=False, select_fraction=1.0, precision="fp32",
                               muon_lr=train.muon_lr * lr_scale)


def train_qat(model: nn.Module, data: Dataset, train: TrainConfig, calibration: list[torch.Tensor], *,
              distill: Distillation | None, label: str, per_tensor: bool = False,
              epochs: int = RunConfig.qat_epochs, lr_scale: float = RunConfig.qat_lr_scale,
              reporter: Reporter | None = None, state_path: str | os.PathLike | None = None,
              resume: bool = False) -> tuple[QatStudent, list[dict]]:
    """Fine-tune a copy of the trained FP32 ``model`` as its INT8 network (``model`` is not changed); with
    ``distill`` against the teacher, else on the labels alone; ``train``: the student's options, made into the
    fine-tune's by :func:`qat_train_config`. Resumes like any training (``state_path``)."""
    if distill is not None and distill.kd.hint:
        raise ConfigError("--quantize qat does not take feature losses (--kd-loss with a hint): the quantized graph "
                          "has no modules to hook; use logit losses or --quantize static")
    qat = QatStudent(model, calibration[0], per_tensor)
    qat.calibrate(calibration)
    history = fit(qat, data, qat_train_config(train, epochs, lr_scale), distill=distill, label=label, reporter=reporter,
                  state_path=state_path, resume=resume, data_init=False)
    return qat.eval(), history


def qat_parity(qat: QatStudent, path: str | os.PathLike, inputs: torch.Tensor) -> dict[str, Any]:
    """The INT8 file against the fake-quantized model it came from, on real inputs: top-1 agreement of at least
    :data:`QAT_PARITY` (ParityError otherwise: the file is not kept), with the max abs logit difference recorded."""
    diff, agree, scale = check_parity(path, qat, inputs.float())
    need = QAT_PARITY["min_top1_agreement"]
    if agree < need:
        raise ParityError(f"{Path(path).name}: onnxruntime's INT8 agrees with the fake-quantized student on "
                          f"{agree:.1%} of {inputs.shape[0]} test images, under {need:.0%}; the file was not kept")
    return {"max_abs_diff": diff, "top1_agreement": agree, "inputs": int(inputs.shape[0]), "logit_scale": scale,
            "rule": f"top-1 agreement >= {need} against the fake-quantized model"}
