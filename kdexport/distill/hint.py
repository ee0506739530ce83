"""A feature-hint loss (FitNets, Romero et al. 2015): the student's intermediate feature, through a small
trained connector, regresses the teacher's.

``--hint teacher.LAYER:student.LAYER`` names one module of each network by its dotted name (as
``named_modules()`` lists it). Forward hooks capture their outputs; nothing in either model is rewritten.
The connector (a 1x1 convolution for feature maps, with an adaptive average pool when the spatial sizes
differ; a linear layer for flat features) is sized from one dummy forward, trained with the student and
never part of it: the hooks are removed when training ends, so the exported ONNX student is exactly the
student architecture. The term added to the loss is ``hint_weight * MSE(connector(s), t)``. It needs the
teacher's features on every batch, so the teacher runs live (a PyTorch teacher; an ONNX teacher is a
black box and is refused).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import parse_hint
from ..errors import ConfigError


def _module(model: nn.Module, name: str, who: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        near = [n for n in modules if n and (n.startswith(name.split(".")[0]) or name in n)][:6]
        raise ConfigError(f"--hint: the {who} has no module {name!r}"
                          + (f"; some it has: {', '.join(near)}" if near else ""))
    return modules[name]


class _Capture:
    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.value = output[0] if isinstance(output, (tuple, list)) else output

    def take(self) -> torch.Tensor:
        v, self.value = self.value, None
        if v is None:
            raise RuntimeError("the hint layer did not run in this forward pass")
        return v


class Connector(nn.Module):
    """Student feature -> teacher feature's shape."""

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size):
        super().__init__()
        if len(s_shape) == 4 and len(t_shape) == 4:
            self.pool = (nn.AdaptiveAvgPool2d(tuple(t_shape[2:])) if tuple(s_shape[2:]) != tuple(t_shape[2:])
                         else nn.Identity())
            self.proj = nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False)
        elif len(s_shape) == 2 and len(t_shape) == 2:
            self.pool, self.proj = nn.Identity(), nn.Linear(s_shape[1], t_shape[1], bias=False)
        else:
            raise ConfigError(f"--hint: the student's feature has shape {list(s_shape[1:])} and the teacher's "
                              f"{list(t_shape[1:])}; pick layers that are both feature maps or both vectors")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class Hint(nn.Module):
    """Hooks on one teacher and one student layer, the connector, and the hint term."""

    def __init__(self, spec: str, teacher: nn.Module, student: nn.Module, input_shape: tuple[int, ...],
                 weight: float, device: torch.device | str = "cpu"):
        super().__init__()
        t_name, s_name = parse_hint(spec)
        self.weight = weight
        self._t = _Capture(_module(teacher, t_name, "teacher"))
        self._s = _Capture(_module(student, s_name, "student"))
        x = torch.zeros(2, *input_shape, device=next(student.parameters()).device)
        t_was, s_was = teacher.training, student.training
        teacher.eval()
        student.eval()
        with torch.no_grad():
            teacher(x.to(next(teacher.parameters()).device))
            student(x)
        teacher.train(t_was)
        student.train(s_was)
        self.connector = Connector(self._s.take().shape, self._t.take().shape).to(device)

    def term(self) -> torch.Tensor:
        """``weight * MSE(connector(student feature), teacher feature)`` for the batch just run."""
        s, t = self._s.take(), self._t.take().detach().clone()  # clone: the teacher ran in inference mode
        return self.weight * F.mse_loss(self.connector(s.float()), t.float())

    def close(self) -> None:
        """Remove the hooks: the student is the plain architecture again."""
        self._t.handle.remove()
        self._s.handle.remove()
