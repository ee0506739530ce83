"""The arithmetic of training forward passes (``--precision``): one place decides what ``auto`` means."""

from __future__ import annotations

import contextlib

import torch


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16``: ``auto`` is bf16 on CUDA and fp32 on the CPU (where bf16 pays only with AMX)."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: bf16 autocast on the device's type, or nothing."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
