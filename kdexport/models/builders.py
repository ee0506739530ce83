"""Model registry: ``mlp:<hidden sizes>``, every torchvision classifier by name, kdexport's own small-image
models (CIFAR ResNets ``resnet8``...``resnet110``, ``resnet8x4``, ``fastcifar[:width]``), ``timm:<name>`` and
``ensemble:<N>x<arch>`` (N members of one architecture, logits averaged; see :mod:`.ensemble`).

A spec is ``name`` or ``name:args`` (``mlp:1200,1200``, ``timm:resnet10t``). Builders take the
dataset's input shape and class count, so a model always fits its data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..envinfo import check_fits_memory
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
        """A spec read from a file (checkpoint, report): every field checked; ConfigError names the bad one."""
        if not isinstance(d, dict):
            raise ConfigError(f"model spec is a {type(d).__name__}, not an object")
        arch, n, shape = d.get("arch"), d.get("num_classes"), d.get("input_shape")
        dropout, stem = d.get("dropout", 0.0), d.get("cifar_stem", False)
        if not isinstance(arch, str) or not arch:
            raise ConfigError(f"model spec: arch must be a name, got {arch!r}")
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CLASSES:
            raise ConfigError(f"model spec: num_classes must be an integer in [1, {MAX_CLASSES:,}], got {n!r}")
        if (not isinstance(shape, (list, tuple)) or len(shape) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise ConfigError(f"model spec: input_shape must be [C, H, W] of positive integers, got {shape!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ConfigError(f"model spec: dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(stem, bool):
            raise ConfigError(f"model spec: cifar_stem must be true or false, got {stem!r}")
        return cls(arch, n, tuple(shape), float(dropout), stem)


MAX_CLASSES = 1_000_000

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


def mlp_hidden(args: str) -> list[int]:
    """The hidden sizes of ``mlp:ARGS`` (default 1200,1200)."""
    try:
        return [int(v) for v in args.split(",") if v.strip()] if args else [1200, 1200]
    except ValueError:
        raise ConfigError(f"bad mlp spec 'mlp:{args}': use comma-separated hidden sizes, "
                          "e.g. mlp:1200,1200") from None


@MODELS.register("mlp")
def _mlp(args: str, spec: ModelSpec, pretrained: bool) -> nn.Module:
    if pretrained:
        raise ModelError("mlp models have no pretrained weights")
    hidden = mlp_hidden(args)
    if any(h < 1 for h in hidden):
        raise ConfigError(f"mlp hidden sizes must be >= 1, got {hidden}")
    return MLP(math.prod(spec.input_shape), hidden, spec.num_classes, spec.dropout)


# torchvision builders that need keyword arguments beyond num_classes to train as plain classifiers
_TV_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
              "inception_v3": {"aux_logits": False, "init_weights": True}}


def _first(model: nn.Module, kind: type) -> tuple[nn.Module, str, nn.Module] | None:
    for _, mod in model.named_modules():
        for child_name, child in mod.named_children():
            if isinstance(child, kind):
                return mod, child_name, child
    return None


def _adapt_input_channels(model: nn.Module, channels: int) -> None:
    """Make the first conv accept ``channels`` inputs (grayscale data on RGB architectures)."""
    found = _first(model, nn.Conv2d)
    if found is None or found[2].in_channels == channels:
        return
    parent, name, conv = found
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    with torch.no_grad():  # keep pretrained filters meaningful: average over RGB
        new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(parent, name, new)


def _apply_cifar_stem(model: nn.Module, arch: str) -> str | None:
    """A stride-1 stem for 32x32 inputs: ResNets get a 3x3 stride-1 first conv and no max-pool (the usual
    CIFAR ResNet stem); other CNNs keep their first conv with its stride set to 1. A stem that is a
    patch embedding (kernel = stride >= 4: ViT, Swin, ConvNeXt) cannot be made stride-1 and is refused;
    one that already has stride 1 (VGG) is left alone. Returns a note when nothing changed."""
    if hasattr(model, "conv1") and hasattr(model, "maxpool"):  # ResNet family
        c = model.conv1
        model.conv1 = nn.Conv2d(c.in_channels, c.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        return None
    found = _first(model, nn.Conv2d)
    if found is None:
        return f"--cifar-stem does not apply to {arch} (no convolutional stem); built unchanged"
    conv = found[2]
    if tuple(conv.stride) == (1, 1):
        return f"--cifar-stem does not apply to {arch} (its first conv already has stride 1); built unchanged"
    if tuple(conv.kernel_size) == tuple(conv.stride) and conv.stride[0] >= 4:
        raise ConfigError(f"--cifar-stem does not apply to {arch}: its stem is a {conv.stride[0]}x"
                          f"{conv.stride[1]} patch embedding; drop --cifar-stem (and pick --image-size to suit it)")
    conv.stride = (1, 1)
    return None


def _load_matching(model: nn.Module, state: dict, arch: str) -> None:
    """Pretrained weights into a model whose head (and input conv) may differ: every tensor whose name
    and shape match is loaded, the rest (the classifier sized for other classes) keep their init."""
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if len(keep) < len(own) // 2:
        raise ModelError(f"pretrained weights for {arch} do not fit the model built for this data "
                         f"({len(keep)} of {len(own)} tensors match)")
    model.load_state_dict(keep, strict=False)


def _torchvision_builder(tv_name: str) -> Builder:
    def build(args: str, spec: ModelSpec, pretrained: bool) -> nn.Module:
        import torchvision

        if args:
            raise ConfigError(f"{tv_name} takes no ':' arguments")
        kwargs = {"num_classes": spec.num_classes, **_TV_KWARGS.get(tv_name, {})}
        if tv_name.startswith("vit_"):  # a ViT's position embedding is sized for one input size: the data's
            kwargs["image_size"] = spec.input_shape[1]
        model = torchvision.models.get_model(tv_name, **kwargs)
        if pretrained:
            try:
                state = torchvision.models.get_model_weights(tv_name).DEFAULT.get_state_dict(progress=False)
            except Exception as e:
                raise ModelError(f"cannot get pretrained weights for {tv_name} "
                                 f"({type(e).__name__}; are you offline? torchvision downloads "
                                 "them on first use)") from None
            _load_matching(model, state, tv_name)
        _adapt_input_channels(model, spec.input_shape[0])
        return model

    return build


def torchvision_classifiers() -> list[str]:
    """Every classification model torchvision lists (``list_models(module=torchvision.models)``)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


for _n in torchvision_classifiers():
    MODELS.register(_n)(_torchvision_builder(_n))


def _small_image_builder(name: str) -> Builder:
    def build(args: str, spec: ModelSpec, pretrained: bool) -> nn.Module:
        from . import cifar

        if pretrained:
            cifar.no_pretrained(name)
        if name == "fastcifar":
            return cifar.fastcifar(args, spec.input_shape[0], spec.num_classes)
        if args:
            raise ConfigError(f"{name} takes no ':' arguments")
        return cifar.cifar_resnet(name, spec.input_shape[0], spec.num_classes)

    return build


def small_image_models() -> list[str]:
    """kdexport's own 32x32 architectures: the CIFAR ResNets and ``fastcifar`` (see :mod:`.cifar`)."""
    from .cifar import CIFAR_RESNETS

    return [*CIFAR_RESNETS, "fastcifar"]


for _n in small_image_models():
    MODELS.register(_n)(_small_image_builder(_n))


@MODELS.register("timm")
def _timm(args: str, spec: ModelSpec, pretrained: bool) -> nn.Module:
    """``timm:<name>``: any model of timm (optional: ``pip install 'kdexport[timm]'``)."""
    try:
        import timm
    except ImportError:
        raise ModelError(f"timm:{args} needs timm, which is not installed: pip install 'kdexport[timm]'") from None
    if not args:
        raise ConfigError("timm models are named timm:<name>, e.g. timm:resnet18")
    if not timm.is_model(args):
        raise ConfigError(f"timm has no model {args!r} (timm.list_models() lists them)")
    try:
        model = timm.create_model(args, pretrained=pretrained, num_classes=spec.num_classes,
                                  in_chans=spec.input_shape[0])
    except Exception as e:
        raise ModelError(f"cannot build timm:{args}: {type(e).__name__}: {first_line(e, 160)}") from None
    return model


@MODELS.register("ensemble")
def _ensemble(args: str, spec: ModelSpec, pretrained: bool) -> nn.Module:
    from dataclasses import replace

    from .ensemble import Ensemble, parse_ensemble

    n, arch = parse_ensemble(args)
    member = replace(spec, arch=arch)
    return Ensemble([build_model(member, pretrained=pretrained) for _ in range(n)])


def _size_hint(arch: str) -> str:
    """The input size an architecture was designed for, when torchvision or timm say so."""
    name, args = split_arch(arch)
    try:
        if name == "timm":
            import timm

            size = timm.create_model(args, pretrained=False).pretrained_cfg.get("input_size", (0, 0, 0))[1:]
        else:
            import torchvision

            size = torchvision.models.get_model_weights(name).DEFAULT.meta.get("min_size")
    except Exception:
        return ""
    if not size or max(size) <= 1:
        return ""
    return f"; it needs inputs of at least {size[0]}x{size[1]}: pass --image-size {max(size)} (imagefolder data)"


def split_arch(arch: str) -> tuple[str, str]:
    name, _, args = arch.partition(":")
    return name.strip(), args.strip()


def check_arch(arch: str) -> None:
    """Raise UnknownNameError early (before any data is loaded) for an unknown model name."""
    name, args = split_arch(arch)
    MODELS.get(name)
    if name == "ensemble":
        from .ensemble import parse_ensemble

        check_arch(parse_ensemble(args)[1])


def build_model(spec: ModelSpec, pretrained: bool = False, log: Callable[[str], None] | None = None) -> nn.Module:
    """The model ``spec`` names, sized for its data; with ``pretrained``, its published weights (all but a
    head sized for other classes). A model that cannot take the data's input fails here, in one line."""
    name, args = split_arch(spec.arch)
    builder = MODELS.get(name)
    check_fits_memory(estimate_bytes(spec), f"{spec.arch} for inputs {list(spec.input_shape)} and "
                                            f"{spec.num_classes:,} classes", "use smaller inputs or a smaller model")
    model = builder(args, spec, pretrained)
    if spec.cifar_stem and name != "ensemble":  # an ensemble's members have theirs
        note = _apply_cifar_stem(model, spec.arch)
        if note and log:
            log(note)
    with torch.no_grad():  # fail now, with a clear message, if the model cannot take the input
        try:
            was = model.training
            model.eval()
            out = model(torch.zeros(1, *spec.input_shape))
            model.train(was)
        except Exception as e:
            raise ModelError(f"{spec.arch} cannot take inputs of shape {list(spec.input_shape)}: "
                             f"{first_line(e, 160)}{_size_hint(spec.arch)}") from None
    if tuple(out.shape) != (1, spec.num_classes):
        raise ModelError(f"{spec.arch} returns shape {tuple(out.shape)}, expected (1, {spec.num_classes})")
    return model


def estimate_bytes(spec: ModelSpec) -> int:
    """A lower bound of the memory building ``spec`` and running it on one input takes (float32): an MLP's
    weights exactly; for other models one full-resolution feature map of 16 channels and a classifier head
    of 64 x classes. Checked against available memory before anything is allocated."""
    inputs = math.prod(spec.input_shape)
    name, args = split_arch(spec.arch)
    if name == "mlp":
        sizes = [inputs, *mlp_hidden(args), spec.num_classes]
        return 4 * (inputs + sum(a * b for a, b in zip(sizes, sizes[1:])))
    return 4 * (inputs + 16 * spec.input_shape[1] * spec.input_shape[2] + 64 * spec.num_classes)


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
