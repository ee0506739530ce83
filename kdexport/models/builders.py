"""Model registry: ``mlp:<hidden sizes>`` and torchvision classifiers by name.

A spec is ``name`` or ``name:args`` (``mlp:1200,1200``). Builders take the dataset's input shape
and class count, so a model always fits its data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ModelError, first_line
from ..registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; stored in checkpoints and reports."""

    arch: str  # e.g. "mlp:1200,1200" or "resnet18"
    num_classes: int
    input_shape: tuple[int, int, int]
    dropout: float = 0.0
    cifar_stem: bool = False

    def to_dict(self) -> dict:
        return {"arch": self.arch, "num_classes": self.num_classes,
                "input_shape": list(self.input_shape), "dropout": self.dropout,
                "cifar_stem": self.cifar_stem}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(d["arch"], int(d["num_classes"]), tuple(d["input_shape"]),
                   float(d.get("dropout", 0.0)), bool(d.get("cifar_stem", False)))


Builder = Callable[[str, ModelSpec, bool], nn.Module]
MODELS: Registry[Builder] = Registry("model")


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] * k -> Linear."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("mlp")
def _mlp(args: str, spec: ModelSpec, pretrained: bool) -> nn.Module:
    if pretrained:
        raise ModelError("mlp models have no pretrained weights")
    try:
        hidden = [int(v) for v in args.split(",") if v.strip()] if args else [1200, 1200]
    except ValueError:
        raise ConfigError(f"bad mlp spec 'mlp:{args}': use comma-separated hidden sizes, "
                          "e.g. mlp:1200,1200") from None
    if any(h < 1 for h in hidden):
        raise ConfigError(f"mlp hidden sizes must be >= 1, got {hidden}")
    return MLP(math.prod(spec.input_shape), hidden, spec.num_classes, spec.dropout)


TORCHVISION_MODELS = ["resnet18", "resnet34", "resnet50", "resnet101", "vgg11", "vgg16",
                      "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
                      "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_y_400mf"]


def _first(model: nn.Module, kind: type) -> tuple[nn.Module, str, nn.Module] | None:
    for _, mod in model.named_modules():
        for child_name, child in mod.named_children():
            if isinstance(child, kind):
                return mod, child_name, child
    return None


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for _, mod in model.named_modules():
        for child_name, child in mod.named_children():
            if isinstance(child, nn.Linear):
                found = (mod, child_name, child)
    if found is None:
        raise ModelError("model has no Linear classification head to replace")
    return found


def _adapt_input_channels(model: nn.Module, channels: int) -> None:
    """Make the first conv accept ``channels`` inputs (grayscale data on RGB architectures)."""
    parent, name, conv = _first(model, nn.Conv2d)
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():  # keep pretrained filters meaningful: average over RGB
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, name, new)


def _apply_cifar_stem(model: nn.Module) -> None:
    """3x3 stride-1 first conv and no max-pool: the usual ResNet stem for 32x32 inputs."""
    if hasattr(model, "conv1") and hasattr(model, "maxpool"):  # ResNet family
        c = model.conv1
        model.conv1 = nn.Conv2d(c.in_channels, c.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return
    parent, name, conv = _first(model, nn.Conv2d)  # others: keep the conv, drop its stride
    conv.stride = (1, 1)


def _torchvision_builder(tv_name: str) -> Builder:
    def build(args: str, spec: ModelSpec, pretrained: bool) -> nn.Module:
        import torchvision

        if args:
            raise ConfigError(f"{tv_name} takes no ':' arguments")
        if pretrained:
            try:
                weights = torchvision.models.get_model_weights(tv_name).DEFAULT
                model = torchvision.models.get_model(tv_name, weights=weights)
            except Exception as e:
                raise ModelError(f"cannot get pretrained weights for {tv_name} "
                                 f"({type(e).__name__}; are you offline? torchvision downloads "
                                 "them on first use)") from None
            parent, name, head = _last_linear(model)
            setattr(parent, name, nn.Linear(head.in_features, spec.num_classes))
        else:
            model = torchvision.models.get_model(tv_name, num_classes=spec.num_classes)
        _adapt_input_channels(model, spec.input_shape[0])
        if spec.cifar_stem:
            _apply_cifar_stem(model)
        return model

    return build


for _n in TORCHVISION_MODELS:
    MODELS.register(_n)(_torchvision_builder(_n))


def split_arch(arch: str) -> tuple[str, str]:
    name, _, args = arch.partition(":")
    return name.strip(), args.strip()


def check_arch(arch: str) -> None:
    """Raise UnknownNameError early (before any data is loaded) for an unknown model name."""
    MODELS.get(split_arch(arch)[0])


def build_model(spec: ModelSpec, pretrained: bool = False) -> nn.Module:
    name, args = split_arch(spec.arch)
    model = MODELS.get(name)(args, spec, pretrained)
    with torch.no_grad():  # fail now, with a clear message, if the model cannot take the input
        try:
            was = model.training
            model.eval()
            out = model(torch.zeros(1, *spec.input_shape))
            model.train(was)
        except Exception as e:
            raise ModelError(f"{spec.arch} cannot take inputs of shape {list(spec.input_shape)}: "
                             f"{first_line(e, 160)}") from None
    if tuple(out.shape) != (1, spec.num_classes):
        raise ModelError(f"{spec.arch} returns shape {tuple(out.shape)}, expected (1, {spec.num_classes})")
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass at batch 1 (multiply-add = 2 FLOPs), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    model.train(was)
    return int(fc.get_total_flops())
