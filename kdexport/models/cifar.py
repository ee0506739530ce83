"""Small-image architectures, built for 32x32 inputs (and any size that survives their pooling).

- ``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``: the CIFAR ResNets of He et al. 2016 (section 4.2:
  a 3x3 stem, three stages of ``(depth - 2) / 6`` basic blocks at stride 1, 2, 2, global average pooling), with
  the stage widths the distillation literature uses (16/16/32/64; ``x4``: 32/64/128/256, as in CRD and
  mdistiller) and a 1x1-conv shortcut where the shape changes.
- ``fastcifar[:WIDTH]``: the network of Keller Jordan's airbench94 (2024): a 2x2 patch-whitening conv (frozen,
  initialized from the data by :meth:`FastCifar.data_init`, which the training loop calls), GELU, three
  conv-pool-BN-GELU-conv-BN-GELU groups of widths 64/256/256 times ``WIDTH`` (default 1), a global max-pool and
  a bias-free linear head scaled by 1/9. Its BatchNorms keep their scale fixed at 1 and learn only the bias.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, ModelError

# depth -> stage widths (stem, stage 1, stage 2, stage 3)
CIFAR_RESNETS = {"resnet8": (8, (16, 16, 32, 64)), "resnet14": (14, (16, 16, 32, 64)),
                 "resnet20": (20, (16, 16, 32, 64)), "resnet32": (32, (16, 16, 32, 64)),
                 "resnet44": (44, (16, 16, 32, 64)), "resnet56": (56, (16, 16, 32, 64)),
                 "resnet110": (110, (16, 16, 32, 64)), "resnet8x4": (8, (32, 64, 128, 256)),
                 "resnet32x4": (32, (32, 64, 128, 256))}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, widths: tuple[int, int, int, int], in_channels: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], widths[0]
        for w, stride in zip(widths[1:], (1, 2, 2)):
            blocks = [BasicBlock(cin if j == 0 else w, w, stride if j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _BiasOnlyBN(nn.BatchNorm2d):
    """airbench's BatchNorm: fast running statistics (momentum 0.4 in PyTorch's convention), scale fixed at 1."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


def _dirac_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():  # an implicit residual: the first cin filters start as the identity
        nn.init.dirac_(conv.weight[:min(cin, cout)])
    return conv


class _ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = _dirac_conv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BiasOnlyBN(cout)
        self.conv2 = _dirac_conv(cout, cout)
        self.norm2 = _BiasOnlyBN(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class _GlobalMaxPool(nn.Module):
    """N x C x H x W -> N x C x 1 x 1 by the maximum over each channel: AdaptiveMaxPool2d(1)'s values and gradient
    (to one maximum), written as a reduction: torch 2.11's ONNX exporter has no translation for
    aten.adaptive_max_pool2d, and a reduction exports as one ReduceMax on every supported torch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 2).max(dim=2).values[..., None, None]


class FastCifar(nn.Module):
    PATCH = 2

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        w1, w2 = max(1, round(64 * width)), max(1, round(256 * width))
        self.whiten = nn.Conv2d(in_channels, 2 * in_channels * self.PATCH ** 2, self.PATCH, bias=True)
        self.whiten.weight.requires_grad = False  # set from the data by data_init, then frozen
        with torch.no_grad():
            self.whiten.bias.zero_()
        self.act = nn.GELU()
        self.group1 = _ConvGroup(self.whiten.out_channels, w1)
        self.group2 = _ConvGroup(w1, w2)
        self.group3 = _ConvGroup(w2, w2)
        self.pool = _GlobalMaxPool()
        self.head = nn.Linear(w2, num_classes, bias=False)
        self.scale = 1 / 9

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group3(self.group2(self.group1(self.act(self.whiten(x)))))
        return self.head(torch.flatten(self.pool(x), 1)) * self.scale

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening init: the first conv's filters are the eigenvectors of the covariance of the images'
        2x2 patches, scaled by 1/sqrt(eigenvalue + eps), and their negatives (airbench). ``images`` are
        normalized model inputs (N x C x H x W)."""
        c, k = images.shape[1], self.PATCH
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c * k * k)
        cov = patches.T @ patches / patches.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(-1, c, k, k)
        self.whiten.weight.copy_(torch.cat((filters, -filters)))


def cifar_resnet(name: str, in_channels: int, num_classes: int) -> CifarResNet:
    depth, widths = CIFAR_RESNETS[name]
    return CifarResNet(depth, widths, in_channels, num_classes)


def fastcifar(args: str, in_channels: int, num_classes: int) -> FastCifar:
    try:
        width = float(args) if args else 1.0
    except ValueError:
        raise ConfigError(f"bad spec 'fastcifar:{args}': the argument is a width multiplier, e.g. "
                          "fastcifar:0.5") from None
    if not 0 < width <= 8:
        raise ConfigError(f"fastcifar width multiplier must be in (0, 8], got {width:g}")
    return FastCifar(in_channels, num_classes, width)


def no_pretrained(name: str) -> None:
    raise ModelError(f"{name} has no pretrained weights (it is one of kdexport's own small-image models)")
