"""Muon (Jordan et al. 2024): momentum SGD whose update of each convolution filter bank is orthogonalized.

The update of a weight W (``out x in x k x k``, seen as an ``out x (in*k*k)`` matrix) is the Nesterov momentum of its
gradient pushed toward the nearest semi-orthogonal matrix (``U V^T`` for ``U S V^T``, approximately, by a few
Newton-Schulz iterations), and the weight is rescaled to Frobenius norm ``sqrt(out)`` before each step. In
airbench94_muon.py (Keller Jordan's CIFAR-10 speedrun) this reaches airbench94's 94% in 8 epochs instead of 9.9.

:class:`Muon` is one optimizer for the whole model, so that the schedule, checkpoints and resume see one object:
parameter groups with ``orthogonal=True`` take Muon's step (no weight decay: the rescaling bounds the weights),
the others plain Nesterov SGD with weight decay (the same arithmetic as ``torch.optim.SGD(nesterov=True)``).
"""

from __future__ import annotations

import torch

# The quintic iteration's coefficients of airbench94_muon.py / Muon: chosen for a steep slope at zero, so that
# three iterations bring every singular value into roughly [0.5, 1.5] (not exactly to 1, which does not hurt).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3


def orthogonalize(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U V^T`` for the 2-D ``g = U S V^T``: ``steps`` quintic Newton-Schulz iterations in fp32 on the
    matrix scaled to spectral norm <= 1 (by its Frobenius norm). The result's singular vectors are ``g``'s; its
    singular values lie near [0.5, 1.5] rather than at 1."""
    if g.ndim != 2:
        raise ValueError(f"orthogonalize takes a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    x = x / (x.norm() + eps)
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the wide side: X X^T is the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Groups with ``orthogonal=True``: ``buf = m*buf + g``; ``u = g + m*buf`` (Nesterov); ``W *= sqrt(out)/|W|``;
    ``W -= lr * orthogonalize(u)``. Other groups: Nesterov SGD with ``weight_decay`` added to the gradient."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 orthogonal: bool = False):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"bad Muon settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "orthogonal": orthogonal})
        for group in self.param_groups:
            if group["orthogonal"] and any(p.ndim < 2 for p in group["params"]):
                raise ValueError("Muon orthogonalizes matrices and filter banks; a 1-D parameter is in an "
                                 "orthogonal group")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["orthogonal"] and wd:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if m:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.clone()  # torch's SGD: the first buffer is the gradient
                    else:
                        state["momentum_buffer"].mul_(m).add_(g)
                    g = g.add(state["momentum_buffer"], alpha=m)  # Nesterov
                if group["orthogonal"]:
                    p.mul_(p.shape[0] ** 0.5 / p.norm().clamp_min(1e-12))
                    g = orthogonalize(g.reshape(p.shape[0], -1)).view_as(p)
                p.add_(g, alpha=-lr)
        return loss
