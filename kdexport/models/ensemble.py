"""``ensemble:<N>x<arch>``: N independently trained copies of one architecture; logits averaged.

Hinton et al. (2015) distil an ensemble into one small model. On CIFAR-10 here three 12-epoch
``fastcifar`` runs, though a weaker classifier than one 35-epoch run of the same time, taught a
compact student more (benchmarks/results/README.md, "An ensemble teacher"). Each
member is trained on its own by :func:`kdexport.distill.train.fit` (seed + k for member k, its own
data-dependent init), so the members differ in initialization, data order and augmentation. The
forward pass averages the members' logits (the geometric mean of their probabilities, up to
normalization), so the ensemble is one module: checkpoint, ONNX export, test-time augmentation
and the logit caches treat it like any model.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import ConfigError

MAX_MEMBERS = 16
_ARGS = re.compile(r"^(\d+)x(.+)$")


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def parse_ensemble(args: str) -> tuple[int, str]:
    """``"3xfastcifar:1.5"`` -> ``(3, "fastcifar:1.5")``; ConfigError for anything else."""
    m = _ARGS.match(args.strip())
    if not m:
        raise ConfigError(f"bad spec 'ensemble:{args}': write ensemble:<N>x<arch>, e.g. ensemble:3xfastcifar")
    n, arch = int(m.group(1)), m.group(2).strip()
    if not 2 <= n <= MAX_MEMBERS:
        raise ConfigError(f"an ensemble has 2 to {MAX_MEMBERS} members, got {n}")
    if arch.partition(":")[0].strip() == "ensemble":
        raise ConfigError("an ensemble's members cannot be ensembles")
    return n, arch
