"""One training loop for teacher, baseline student and distilled student.

``fit(model, data, cfg)`` trains with cross-entropy; pass ``teacher=`` and ``kd=`` and the same
loop distils. Baseline and distilled student given the same ``TrainConfig`` see the same data
order, augmentation draws and learning-rate schedule, so their difference is the KD loss alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from .config import KDConfig, TrainConfig
from .data import AUGMENTATIONS, Dataset
from .errors import ConfigError, TrainingError
from .io import atomic_torch_save
from .losses import kd_loss


class Reporter(Protocol):
    """Progress sink. The CLI plugs in Rich bars; the library default prints nothing."""

    def start(self, label: str, total_steps: int) -> None: ...
    def step_n(self, n: int, metrics: dict[str, float]) -> None: ...
    def epoch(self, record: dict[str, float]) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def start(self, label: str, total_steps: int) -> None:
        pass

    def step_n(self, n: int, metrics: dict[str, float]) -> None:
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


CACHE_FORMAT = "kdexport-teacher-logits/1"


def weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
        t = v.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors (BatchNorm counters) cannot view as bytes
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def teacher_cache_key(teacher: nn.Module, data: Dataset) -> str:
    """Weights x dataset (pixels, labels, normalization) x transform (no augmentation)."""
    return hashlib.sha256(f"{CACHE_FORMAT}|{weights_hash(teacher)}|{data.fingerprint()}|augment=none"
                          .encode()).hexdigest()[:32]


def cached_teacher_logits(teacher: nn.Module, data: Dataset, device: torch.device,
                          cache_dir: str | os.PathLike | None) -> torch.Tensor:
    """Teacher logits over the training set, from the on-disk cache when a valid entry exists."""
    if cache_dir is None:
        return predict_logits(teacher, data, "train", device=device)
    key = teacher_cache_key(teacher, data)
    path = os.path.join(cache_dir, f"{key}.pt")
    if os.path.exists(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            logits = blob["logits"]
            if blob.get("key") == key and tuple(logits.shape) == (len(data.y_train), data.num_classes):
                return logits
        except Exception:
            pass  # unreadable or stale: recompute and replace
    logits = predict_logits(teacher, data, "train", device=device)
    try:
        atomic_torch_save({"format": CACHE_FORMAT, "key": key, "logits": logits, "dataset": data.name}, path)
    except OSError:
        pass  # a read-only cache only costs time
    return logits


class TeacherTargets:
    """Teacher logits for a batch. Without augmentation the inputs are fixed, so the logits of the
    whole training set are computed once (in eval mode) and indexed, and kept on disk under
    ``cache_dir`` keyed by the teacher's weights, the data and the transform, for later runs,
    seeds and sweep cells. With augmentation the teacher runs live, in inference mode, on
    exactly the view the student sees."""

    def __init__(self, teacher: nn.Module, data: Dataset, device: torch.device, cached: bool,
                 cache_dir: str | os.PathLike | None = None):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.table = cached_teacher_logits(teacher, data, device, cache_dir).to(device) if cached else None

    def __call__(self, idx: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table[idx.to(self.table.device)]
        with torch.inference_mode():
            return self.teacher(xb).float()


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD, fused (one kernel for all parameters) where torch supports it: on 2 CPU cores
    the unfused Adam update of the 2.4M-parameter MNIST teacher costs as much as its forward and
    backward passes."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        cls, kw = torch.optim.Adam, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    else:
        cls, kw = torch.optim.SGD, {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.momentum > 0,
                                    "weight_decay": cfg.weight_decay}
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # older torch or an unsupported device
        return cls(params, **kw)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def fit(model: nn.Module, data: Dataset, cfg: TrainConfig, *, teacher: nn.Module | None = None,
        kd: KDConfig | None = None, label: str = "train", reporter: Reporter | None = None,
        teacher_targets: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        state_path: str | os.PathLike | None = None, resume: bool = False,
        ) -> list[dict[str, float]]:
    """Train ``model`` in place; return the per-epoch history.

    Plain cross-entropy when ``teacher`` is None; otherwise the KD loss of ``kd`` with the
    teacher frozen in eval mode. With ``state_path``, the full training state (model, optimizer,
    scheduler, RNG states, history) is saved atomically after every epoch; ``resume=True``
    continues from it, bit for bit on the CPU. Under torchrun the model is wrapped in DDP.
    """
    from .distributed import all_reduce_sum, world

    rank, world_size = world()
    reporter = (reporter or NullReporter()) if rank == 0 else NullReporter()
    device = resolve_device(cfg.device)
    model.to(device)
    channels_last = _uses_conv(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
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
    start_epoch = 1
    run_cfg = {"train": dataclasses.asdict(cfg), "kd": dataclasses.asdict(kd) if teacher_targets else None,
               "label": label, "world_size": world_size}
    if state_path is not None and resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        diff = _config_diff(state["config"], run_cfg)
        if diff:
            raise ConfigError(f"{label}: cannot resume, options differ from the interrupted run: {', '.join(diff)}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        order_gen.set_state(state["order_rng"])
        aug_gen.set_state(state["aug_rng"])
        torch.set_rng_state(state["torch_rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
    ddp_model = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    reporter.start(label, steps_per_epoch * cfg.epochs)
    if start_epoch > 1:
        reporter.step_n(steps_per_epoch * (start_epoch - 1), {"loss": history[-1]["train_loss"],
                                                              "acc": history[-1]["train_accuracy"]})
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            ddp_model.train()
            t0 = time.perf_counter()
            sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, ce, kd, correct, seen
            lr = opt.param_groups[0]["lr"]
            for step, idx in enumerate(_batches(n, cfg.batch_size, order_gen), 1):
                if world_size > 1:  # this rank's near-equal slice of the global batch
                    if len(idx) < world_size:
                        continue  # every rank sees the same idx, so all skip this tail together
                    idx = idx.tensor_split(world_size)[rank]
                xb = data.x_train[idx]
                if augment is not None:
                    xb = augment(xb, aug_gen)
                xb = data.normalize(xb.to(device, non_blocking=True))
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                yb = data.y_train[idx].to(device, non_blocking=True)
                t_logits = teacher_targets(idx, xb) if teacher_targets is not None else None
                with autocast:
                    logits = ddp_model(xb)
                out = kd_loss(logits.float(), t_logits, yb, kd.temperature, kd.soft_weight, kd.scale_t2,
                              kd.soft_loss)
                loss = out["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                b = yb.shape[0]
                with torch.no_grad():
                    sums += torch.stack([out["loss"].detach() * b, out["ce"] * b, out["kd"] * b,
                                         (logits.detach().argmax(1) == yb).sum(), torch.tensor(b, device=device)]
                                        ).to(sums.dtype)
                if step % 25 == 0 or step == steps_per_epoch:
                    s = sums.tolist()
                    if not math.isfinite(s[0]):
                        raise TrainingError(f"{label}: loss became {s[0]} at epoch {epoch}; lower the learning "
                                            "rate" + (" (the last good epoch's state is kept; fix and --resume)"
                                                      if state_path else ""))
                    reporter.step_n(25 if step % 25 == 0 else step % 25,
                                    {"loss": s[0] / max(s[4], 1), "acc": s[3] / max(s[4], 1)})
            loss_sum, ce_sum, kd_sum, correct, seen = all_reduce_sum(sums).tolist()
            if not math.isfinite(loss_sum):
                raise TrainingError(f"{label}: loss became {loss_sum} at epoch {epoch}; lower the learning rate")
            test = evaluate(model, data, "test", device=device)
            record = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen,
                      "train_ce": ce_sum / seen, "train_kd": kd_sum / seen,
                      "train_accuracy": correct / seen, "test_loss": test["loss"],
                      "test_accuracy": test["accuracy"], "seconds": time.perf_counter() - t0}
            history.append(record)
            reporter.epoch(record)
            if state_path is not None and rank == 0:
                atomic_torch_save({"config": run_cfg, "epoch": epoch, "history": history,
                                   "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                   "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                   "order_rng": order_gen.get_state(), "aug_rng": aug_gen.get_state(),
                                   "torch_rng": torch.get_rng_state()}, state_path)
    finally:
        reporter.finish()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return history
