"""One training loop for teacher, baseline student and distilled student.

``fit(model, data, cfg)`` trains with cross-entropy; pass ``teacher=`` and ``kd=`` and the same
loop distils. Baseline and distilled student given the same ``TrainConfig`` see the same data
order, augmentation draws and learning-rate schedule, so their difference is the KD loss alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from .config import KDConfig, TrainConfig
from .data import AUGMENTATIONS, Dataset
from .errors import ConfigError, TrainingError
from .losses import kd_loss


class Reporter(Protocol):
    """Progress sink. The CLI plugs in Rich bars; the library default prints nothing."""

    def start(self, label: str, total_steps: int) -> None: ...
    def step(self, metrics: dict[str, float]) -> None: ...
    def epoch(self, record: dict[str, float]) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def start(self, label: str, total_steps: int) -> None:
        pass

    def step(self, metrics: dict[str, float]) -> None:
        pass

    def epoch(self, record: dict[str, float]) -> None:
        pass

    def finish(self) -> None:
        pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    perm = torch.randperm(n, generator=generator)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset, split: str = "test", batch_size: int = 512,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits of ``model`` over a whole split, in eval mode."""
    x = data.x_test if split == "test" else data.x_train
    was = model.training
    model.eval()
    out = [model(data.normalize(x[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, x.shape[0], batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.empty(0, data.num_classes)


def evaluate(model: nn.Module, data: Dataset, split: str = "test", batch_size: int = 512,
             device: torch.device | str = "cpu") -> dict[str, float]:
    logits = predict_logits(model, data, split, batch_size, device)
    y = data.y_test if split == "test" else data.y_train
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return {"loss": loss, "accuracy": acc}


class TeacherTargets:
    """Teacher logits for a batch. Without augmentation the inputs are fixed, so the logits of the
    whole training set are computed once (in eval mode) and indexed; with augmentation the
    teacher runs live, in inference mode, on exactly the view the student sees."""

    def __init__(self, teacher: nn.Module, data: Dataset, device: torch.device, cached: bool):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.table = predict_logits(teacher, data, "train", device=device).to(device) if cached else None

    def __call__(self, idx: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[idx.to(self.table.device)]
        with torch.inference_mode():
            return self.teacher(xb).float()


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def fit(model: nn.Module, data: Dataset, cfg: TrainConfig, *, teacher: nn.Module | None = None,
        kd: KDConfig | None = None, label: str = "train", reporter: Reporter | None = None,
        teacher_targets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        ) -> list[dict[str, float]]:
    """Train ``model`` in place; return the per-epoch history.

    Plain cross-entropy when ``teacher`` is None; otherwise the KD loss of ``kd`` with the
    teacher frozen in eval mode.
    """
    reporter = reporter or NullReporter()
    device = resolve_device(cfg.device)
    model.to(device)
    kd = kd or KDConfig()
    if teacher is not None and teacher_targets is None:
        teacher.to(device)
        teacher_targets = TeacherTargets(teacher, data, device, cached=cfg.augment == "none")
    augment = AUGMENTATIONS.get(cfg.augment)
    torch.manual_seed(cfg.seed + 2_000_003)  # dropout masks: a function of the seed alone
    order_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    n = data.x_train.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    opt = _optimizer(model, cfg)
    sched = _scheduler(opt, cfg, steps_per_epoch * cfg.epochs)
    history: list[dict[str, float]] = []
    reporter.start(label, steps_per_epoch * cfg.epochs)
    try:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "ce": 0.0, "kd": 0.0}
            correct, seen = 0, 0
            lr = opt.param_groups[0]["lr"]
            for idx in _batches(n, cfg.batch_size, order_gen):
                xb = data.x_train[idx]
                if augment is not None:
                    xb = augment(xb, aug_gen)
                xb = data.normalize(xb.to(device))
                yb = data.y_train[idx].to(device)
                t_logits = teacher_targets(idx, xb) if teacher_targets is not None else None
                logits = model(xb)
                out = kd_loss(logits, t_logits, yb, kd.temperature, kd.soft_weight, kd.scale_t2,
                              kd.soft_loss)
                loss = out["loss"]
                if not torch.isfinite(loss):
                    raise TrainingError(f"{label}: loss became {loss.item()} at epoch {epoch}; "
                                        "lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                b = yb.shape[0]
                for k in sums:
                    sums[k] += out[k].item() * b
                correct += (logits.detach().argmax(1) == yb).sum().item()
                seen += b
                reporter.step({"loss": sums["loss"] / seen, "acc": correct / seen})
            test = evaluate(model, data, "test", device=device)
            record = {"epoch": epoch, "lr": lr, "train_loss": sums["loss"] / seen,
                      "train_ce": sums["ce"] / seen, "train_kd": sums["kd"] / seen,
                      "train_accuracy": correct / seen, "test_loss": test["loss"],
                      "test_accuracy": test["accuracy"], "seconds": time.perf_counter() - t0}
            history.append(record)
            reporter.epoch(record)
    finally:
        reporter.finish()
    model.eval()
    return history
