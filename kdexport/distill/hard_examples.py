"""--select-fraction: train on the hardest part of each batch, as ranked by a small proxy network.

After airbench96_faster.py (Keller Jordan's CIFAR-10 speedrun, 96% with 0.63x airbench96's FLOPs): a proxy much
smaller than the model (there 32/64/64 channels) sees every batch; the model trains only on the examples the proxy
finds hardest (there 512 of 1,024, by the proxy's loss), so each step costs the model about half a step. The proxy
learns from the same stream: on every ``PROXY_EVERY``-th batch it takes an optimizer step on the examples it
selected.
The proxy is built, seeded and data-initialized like the model, trained with the model's optimizer settings and
schedule, saved in the training state and thrown away at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .precision import autocast

PROXY_EVERY = 4  # airbench96_faster: the proxy trains on one batch in four and only ranks the others


def n_selected(batch: int, fraction: float) -> int:
    """How many of a batch of ``batch`` examples the model trains on (at least 1)."""
    return max(1, min(batch, round(fraction * batch)))


class HardExampleSelector:
    """Ranks each batch by the proxy's loss and keeps the hardest ``fraction``; trains the proxy as it goes."""

    def __init__(self, proxy: nn.Module, opt: torch.optim.Optimizer, sched, fraction: float, precision: str,
                 device: torch.device, label_smoothing: float = 0.0, every: int = PROXY_EVERY):
        self.proxy, self.opt, self.sched = proxy, opt, sched
        self.fraction, self.precision, self.device = fraction, precision, device
        self.label_smoothing, self.every = label_smoothing, every
        self.steps = 0

    def select(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The positions (ascending) in the batch ``x``, ``y`` of the ``fraction`` with the largest proxy loss."""
        learn = self.steps % self.every == 0
        self.proxy.train()
        with torch.set_grad_enabled(learn), autocast(self.precision, self.device):
            logits = self.proxy(x)
        losses = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=self.label_smoothing)
        keep = torch.topk(losses.detach(), n_selected(len(y), self.fraction)).indices.sort().values
        if learn:
            self.opt.zero_grad(set_to_none=True)
            losses[keep].mean().backward()
            self.opt.step()
        self.sched.step()
        self.steps += 1
        return keep

    def state_dict(self) -> dict:
        return {"proxy": {k: v.detach().cpu() for k, v in self.proxy.state_dict().items()},
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.proxy.load_state_dict(state["proxy"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
