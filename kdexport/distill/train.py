"""One training loop for teacher, baseline student and distilled student.

``fit(model, data, cfg)`` trains with cross-entropy; pass ``distill=Distillation(...)`` (the
teacher's logits and the loss, ``kdexport.distill.teacher``) and the same loop distils. Baseline and
distilled student given the same ``TrainConfig`` see the same data order, augmentation draws and
learning-rate schedule, so their difference is the loss alone. ``fit`` sets up (device, optimizer,
schedule, resume) and runs :func:`train_epoch` once per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from ..config import TrainConfig, config_diff
from ..data.datasets import Dataset, eval_batch
from ..data.loader import epoch_plan, train_batches
from ..errors import ConfigError, StateError, TrainingError, first_line
from ..files import atomic_torch_save
from .hard_examples import HardExampleSelector
from .losses import kd_loss
from .mixup import draw, mix_images
from .muon import Muon
from .precision import autocast
from .teacher import Distillation


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


@torch.no_grad()
def predict_logits(model: nn.Module, data: Dataset, split: str = "test", batch_size: int = 512,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits of ``model`` over a whole split, in eval mode."""
    x = data.x_test if split == "test" else data.x_train
    batch_size = eval_batch(x.shape, batch_size)
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


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def norm_biases(model: nn.Module) -> list[nn.Parameter]:
    """The trainable biases of the model's normalization layers (what ``--bias-lr-scale`` speeds up)."""
    return [m.bias for m in model.modules() if isinstance(m, NORM_LAYERS)
            and isinstance(getattr(m, "bias", None), nn.Parameter) and m.bias.requires_grad]


def check_optimizer(model: nn.Module, cfg: TrainConfig) -> None:
    """One line now if ``cfg``'s optimizer cannot train ``model`` (muon without a convolution filter)."""
    if cfg.optimizer == "muon" and not any(p.ndim == 4 and p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--optimizer muon orthogonalizes convolution filters and {type(model).__name__} has "
                          "none: use sgd or adam")


def _optimizer(model: nn.Module, cfg: TrainConfig, extra: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """Adam or SGD, fused (one kernel for all parameters) where torch supports it: on 2 CPU cores
    the unfused Adam update of the 2.4M-parameter MNIST teacher costs as much as its forward and
    backward passes. With ``bias_lr_scale`` != 1, normalization biases are a second group whose learning rate
    is scaled and whose weight decay is divided by the same factor (the same decay per step). ``muon``: the same
    SGD groups, and every 4-D (convolution filter) parameter in a group that takes Muon's orthogonalized step."""
    params = [p for p in model.parameters() if p.requires_grad] + list(extra or [])
    check_optimizer(model, cfg)
    filters = [p for p in params if p.ndim == 4] if cfg.optimizer == "muon" else []
    if cfg.optimizer == "adam":
        cls, kw = torch.optim.Adam, {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    else:
        cls, kw = torch.optim.SGD, {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.momentum > 0,
                                    "weight_decay": cfg.weight_decay}
    biases = norm_biases(model) if cfg.bias_lr_scale != 1.0 else []
    ids = {id(p) for p in biases + filters}
    groups: list[dict] = [{"params": [p for p in params if id(p) not in ids]}]
    if biases:
        groups.append({"params": biases, "lr": cfg.lr * cfg.bias_lr_scale,
                       "weight_decay": cfg.weight_decay / cfg.bias_lr_scale})
    if filters:
        groups.append({"params": filters, "orthogonal": True, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum,
                       "weight_decay": 0.0})
        return Muon([g for g in groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay)
    try:
        return cls(groups, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # older torch or an unsupported device
        return cls(groups, **kw)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total_steps, 1))
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                   total_steps=max(total_steps, 1))
    if cfg.scheduler == "triangle":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: triangle(step, total_steps))
    if cfg.scheduler == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / max(total_steps, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def triangle(step: int, total_steps: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07) -> float:
    """airbench's learning-rate factor at ``step``: linear from ``start`` to 1 at ``peak`` of the steps, then
    linear to ``end`` at the last step."""
    top = int(peak * total_steps)
    if step < top:
        return start + (1 - start) * step / top
    return 1 + (end - 1) * (step - top) / max(total_steps - top, 1)


DATA_INIT_SAMPLES = 5000


def init_from_data(model: nn.Module, data: Dataset, seed: int, n: int = DATA_INIT_SAMPLES) -> bool:
    """Call ``model.data_init`` (if it has one) on ``n`` normalized training images drawn with ``seed``."""
    if not callable(getattr(model, "data_init", None)):
        return False
    g = torch.Generator().manual_seed(seed + 3_000_017)
    idx = torch.randperm(data.x_train.shape[0], generator=g)[:n]
    model.data_init(data.normalize(data.x_train[idx]))
    return True


def _uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


class _Average:
    """A copy of a model's state (``shadow``) kept beside it, with a count of updates; saved and restored with the
    training state. ``_pairs`` are (average, live tensor), built once: load_state_dict copies in place."""

    def __init__(self, model: nn.Module):
        self.updates = 0
        state = model.state_dict()
        self.shadow = {k: v.detach().clone() for k, v in state.items()}
        self._pairs = [(self.shadow[k], v.detach()) for k, v in state.items()]

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        self.updates = int(state["updates"])


class WeightAverage(_Average):
    """An exponential moving average of a model's floating-point state (weights and BatchNorm statistics;
    integer counters are copied), updated after every optimizer step with decay min(decay, (1+t)/(10+t))."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for avg, v in self._pairs:
            if v.dtype.is_floating_point:
                avg.lerp_(v, 1 - d)  # avg = d * avg + (1 - d) * v
            else:
                avg.copy_(v)

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """The model with the averaged state for the block (evaluation), its own state restored after."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)


class Lookahead(_Average):
    """airbench's lookahead: every ``every`` optimizer steps the average moves toward the model's floating-point
    state by ``1 - d`` and is copied back into the model, with ``d = 0.95^5 * (t / total)^3`` (0 at first: no
    averaging while the learning rate is high); after the last step (``total_steps``) the model is the average.
    Integer counters are left alone."""

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5):
        super().__init__(model)
        self.total, self.every = max(total_steps, 1), every
        self._pairs = [(avg, v) for avg, v in self._pairs if v.dtype.is_floating_point]

    def decay(self, t: int) -> float:
        return 0.95 ** 5 * (t / self.total) ** 3

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        if self.updates % self.every == 0:
            d = self.decay(self.updates)
            for avg, v in self._pairs:
                avg.lerp_(v, 1 - d)
                v.copy_(avg)
        elif self.updates == self.total:  # the last step: the model ends as the average (airbench)
            for avg, v in self._pairs:
                v.copy_(avg)


@dataclass
class TrainState:
    """Everything that continues a run bit for bit: model, optimizer, schedule, RNG streams, history."""

    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    order_gen: torch.Generator  # data order
    aug_gen: torch.Generator  # augmentation draws
    history: list[dict[str, float]]
    record: dict  # the settings a resume must match
    distill: Distillation | None = None  # its trained parts (a hint connector) are saved too
    ema: WeightAverage | None = None  # --ema: the averaged weights (saved, evaluated, exported)
    lookahead: Lookahead | None = None  # --lookahead
    selector: HardExampleSelector | None = None  # --select-fraction: the proxy, its optimizer and schedule

    def save(self, path: str | os.PathLike, epoch: int) -> None:
        atomic_torch_save({"config": self.record, "epoch": epoch, "history": self.history,
                           "model": _cpu_state(self.model),
                           "distill": self.distill.state_dict() if self.distill else {},
                           "ema": self.ema.state_dict() if self.ema else None,
                           "lookahead": self.lookahead.state_dict() if self.lookahead else None,
                           "selector": self.selector.state_dict() if self.selector else None,
                           "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                           "order_rng": self.order_gen.get_state(), "aug_rng": self.aug_gen.get_state(),
                           "torch_rng": torch.get_rng_state()}, path)

    def load(self, path: str | os.PathLike, label: str) -> int:
        """Restore from ``path``; return the next epoch. A state saved with other settings is refused; an
        unreadable or inconsistent one is one line saying how to start this model afresh."""
        fresh = f"delete {str(path)!r} (or rerun without --resume) to train this model afresh"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise StateError(f"{label}: its training state is unreadable ({first_line(e, 80)}); {fresh}") from None
        if not isinstance(state, dict) or not isinstance(state.get("config"), dict):
            raise StateError(f"{label}: {str(path)!r} is not a kdexport training state; {fresh}")
        diff = config_diff(state["config"], self.record)
        if diff:
            raise ConfigError(f"{label}: cannot resume, options differ from the interrupted run: {', '.join(diff)}")
        try:
            self.model.load_state_dict(state["model"])
            if self.distill is not None:
                self.distill.load_state_dict(state.get("distill") or {})
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            if self.lookahead is not None:
                self.lookahead.load_state_dict(state["lookahead"])
            if self.selector is not None:
                self.selector.load_state_dict(state["selector"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.order_gen.set_state(state["order_rng"])
            self.aug_gen.set_state(state["aug_rng"])
            torch.set_rng_state(state["torch_rng"])
            self.history = list(state["history"])
            return int(state["epoch"]) + 1
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise StateError(f"{label}: its training state is inconsistent ({type(e).__name__}: "
                             f"{first_line(e, 80)}); {fresh}") from None


def _cpu_state(model: nn.Module) -> dict:
    """``model.state_dict()`` on the CPU, with its per-module versions (``_metadata``): a module that loads older
    versions differently (torchao's observers reset ``eps`` when they find none) must see its own again."""
    from collections import OrderedDict

    state = model.state_dict()
    out = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    if hasattr(state, "_metadata"):
        out._metadata = state._metadata  # type: ignore[attr-defined]
    return out


@dataclass
class Loop:
    """The per-run constants one epoch needs."""

    data: Dataset
    cfg: TrainConfig
    device: torch.device
    label: str
    distill: Distillation | None
    net: nn.Module  # the model, DDP-wrapped under torchrun
    channels_last: bool
    reporter: Reporter
    resumable: bool  # a per-epoch state is kept (for the NaN message)


def _resume_hint(loop: Loop) -> str:
    return " (the last good epoch's state is kept; fix and --resume)" if loop.resumable else ""


def _nonfinite(loop: Loop, sums: list[float], epoch: int) -> TrainingError:
    """The advice fits the cause: a non-finite distillation term with a finite CE is the teacher's."""
    hint = _resume_hint(loop)
    if loop.distill is not None and math.isfinite(sums[1]) and not math.isfinite(sums[2]):
        return TrainingError(f"{loop.label}: the distillation loss became {sums[2]} at epoch {epoch} while the "
                             f"cross-entropy stayed finite: the teacher's logits are NaN or infinite; check the "
                             f"teacher{hint}")
    return TrainingError(f"{loop.label}: loss became {sums[0]} at epoch {epoch}; lower the learning rate{hint}")


def _nonfinite_gradient(loop: Loop, norms: list[torch.Tensor], epoch: int) -> TrainingError:
    """A non-finite gradient norm under --clip-grad-norm: the clipped step would be zero (an overflowing norm) or
    NaN, so the run would train on silently or fail later with a loss that hides the cause: stop now."""
    bad = next(v for v in (float(n) for n in norms) if not math.isfinite(v))
    return TrainingError(f"{loop.label}: the gradient norm became {bad} at epoch {epoch}, which clipping cannot "
                         f"bound; lower the learning rate or the soft-loss weight{_resume_hint(loop)}")


def _timed(it, waited: list[float]):
    """``it``'s items, adding the time each ``next`` took to ``waited[0]``."""
    it = iter(it)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield item


def _inputs(loop: Loop, raw: torch.Tensor) -> torch.Tensor:
    """A raw batch as the student takes it: normalized, channels-last where that is faster."""
    xb = loop.data.normalize(raw)
    return xb.contiguous(memory_format=torch.channels_last) if loop.channels_last else xb


def train_epoch(loop: Loop, state: TrainState, epoch: int) -> dict[str, float]:
    """One pass over the training set; return the epoch's record (train and test metrics)."""
    from ..distributed import all_reduce_sum, world

    rank, world_size = world()
    data, cfg, device = loop.data, loop.cfg, loop.device
    n = data.x_train.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    loop.net.train()
    t0 = time.perf_counter()
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # loss, ce, kd, correct, seen, labeled seen
    lr = state.opt.param_groups[0]["lr"]
    plan = epoch_plan(n, cfg.batch_size, state.order_gen, rank, world_size)  # this rank's slice of each batch
    batches = train_batches(data, cfg.augment, plan, state.aug_gen, pin_memory=device.type == "cuda", epoch=epoch,
                            seed=cfg.seed)
    waited = [0.0]  # seconds spent waiting for the next batch (decoding that the workers did not hide)
    norms: list[torch.Tensor] = []  # --clip-grad-norm: each step's gradient norm before clipping
    clipped = [p for g in state.opt.param_groups for p in g["params"]] if cfg.clip_grad_norm > 0 else []
    for step, (idx, raw, views) in enumerate(_timed(batches, waited), 1):
        raw = raw.to(device, non_blocking=True)
        yb = data.y_train[idx].to(device, non_blocking=True)
        xb = None
        if state.selector is not None:  # --select-fraction: the batch's hardest examples, by the proxy
            xb = _inputs(loop, raw)
            keep = state.selector.select(xb, yb)
            xb, yb, raw = xb[keep], yb[keep], raw[keep]
            idx = idx[keep.to(idx.device)]
            views = views[keep.to(views.device)] if views is not None else None
        mix = None
        if loop.distill is not None and loop.distill.kd.mixup > 0:  # --kd-mixup: student and teacher see mixed images
            mix = draw(loop.distill.kd.mixup, len(raw), cfg.seed, rank, epoch, step, device)
            raw, xb, views = mix_images(raw, mix), None, None
        if xb is None:
            xb = _inputs(loop, raw)
        with autocast(cfg.precision, device):
            logits = loop.net(xb)
        out = (loop.distill.loss(logits.float(), idx, raw, yb, epoch=epoch - 1 + step / steps_per_epoch,
                                 label_smoothing=cfg.label_smoothing, views=views, mix=mix)
               if loop.distill is not None else kd_loss(logits.float(), None, yb, label_smoothing=cfg.label_smoothing))
        state.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if clipped:  # the norm before clipping, kept: the epoch's record says how often it bit
            norms.append(torch.nn.utils.clip_grad_norm_(clipped, cfg.clip_grad_norm).detach())
        state.opt.step()
        state.sched.step()
        if state.ema is not None:
            state.ema.update(state.model)
        if state.lookahead is not None:
            state.lookahead.update(state.model)
        b = yb.shape[0]
        with torch.no_grad():
            sums += torch.stack([out["loss"].detach() * b, out["ce"] * b, out["kd"] * b,
                                 (logits.detach().argmax(1) == yb).sum(), torch.tensor(b, device=device),
                                 (yb >= 0).sum()]).to(sums.dtype)  # an unlabeled image (-1) is never correct
        if step % 25 == 0 or step == steps_per_epoch:
            s = sums.tolist()
            if norms and not bool(torch.isfinite(torch.stack(norms[-25:])).all()):  # the cause, before its effect
                raise _nonfinite_gradient(loop, norms[-25:], epoch)
            if not math.isfinite(s[0]):
                raise _nonfinite(loop, s, epoch)
            loop.reporter.step_n(25 if step % 25 == 0 else step % 25,
                                 {"loss": s[0] / max(s[4], 1), "acc": s[3] / max(s[5], 1)})
    loss_sum, ce_sum, kd_sum, correct, seen, labeled = all_reduce_sum(sums).tolist()
    if not math.isfinite(loss_sum):
        raise _nonfinite(loop, [loss_sum, ce_sum, kd_sum], epoch)
    train_seconds = time.perf_counter() - t0
    record = {"epoch": epoch, "lr": lr, "train_loss": loss_sum / seen, "train_ce": ce_sum / seen,
              "train_kd": kd_sum / seen, "train_accuracy": correct / max(labeled, 1)}
    if state.selector is not None:
        record["trained_examples"] = int(seen)  # of n: the rest were the easy ones the proxy skipped
    if norms:
        n_all = torch.stack(norms).float()
        record.update(grad_norm_median=n_all.median().item(), grad_norm_max=n_all.max().item(),
                      clipped_steps=int((n_all > cfg.clip_grad_norm).sum()))
    if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:  # --eval-every: the last epoch is always evaluated
        with state.ema.applied(state.model) if state.ema is not None else contextlib.nullcontext(state.model) as m:
            test = evaluate(m, data, "test", device=device)
        record.update(test_loss=test["loss"], test_accuracy=test["accuracy"])
    return {**record, "seconds": time.perf_counter() - t0, "train_seconds": train_seconds,
            "data_wait_seconds": waited[0]}


def fit(model: nn.Module, data: Dataset, cfg: TrainConfig, *, distill: Distillation | None = None,
        label: str = "train", reporter: Reporter | None = None, state_path: str | os.PathLike | None = None,
        resume: bool = False, data_init: bool = True) -> list[dict[str, float]]:
    """Train ``model`` in place; return the per-epoch history.

    Plain cross-entropy without ``distill``; otherwise ``distill``'s loss against its teacher's
    logits. With ``state_path``, the full training state (model, optimizer, scheduler, RNG states,
    history) is saved atomically after every epoch; ``resume=True`` continues from it, bit for bit on
    the CPU. Under torchrun the model is wrapped in DDP. With ``data_init`` (the default; off when the
    model starts from given weights), a model with a ``data_init(images)`` method (``fastcifar``'s
    whitening layer) is first initialized from a seeded sample of training images.
    """
    from ..distributed import world
    from ..models.ensemble import Ensemble

    if isinstance(model, Ensemble):
        return _fit_members(model, data, cfg, distill=distill, label=label, reporter=reporter,
                            state_path=state_path, resume=resume, data_init=data_init)
    rank, world_size = world()
    reporter = (reporter or NullReporter()) if rank == 0 else NullReporter()
    device = resolve_device(cfg.device)
    if data_init:
        init_from_data(model, data, cfg.seed)
    model.to(device)
    channels_last = _uses_conv(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    torch.manual_seed(cfg.seed + 2_000_003)  # dropout masks: a function of the seed alone
    steps_per_epoch = math.ceil(data.x_train.shape[0] / cfg.batch_size)
    opt = _optimizer(model, cfg, distill.parameters() if distill else None)
    selector = _selector(data, cfg, device, steps_per_epoch * cfg.epochs) if cfg.select_fraction < 1 else None
    state = TrainState(model, opt, _scheduler(opt, cfg, steps_per_epoch * cfg.epochs),
                       torch.Generator().manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed + 1_000_003),
                       [], {"train": dataclasses.asdict(cfg), "kd": distill.settings() if distill else None,
                            "label": label, "world_size": world_size}, distill,
                       WeightAverage(model, cfg.ema) if cfg.ema > 0 else None,
                       Lookahead(model, steps_per_epoch * cfg.epochs) if cfg.lookahead else None, selector)
    start_epoch = 1
    if state_path is not None and resume and os.path.exists(state_path):
        start_epoch = state.load(state_path, label)
    net = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    loop = Loop(data, cfg, device, label, distill, net, channels_last, reporter, state_path is not None)
    reporter.start(label, steps_per_epoch * cfg.epochs)
    if start_epoch > 1:
        reporter.step_n(steps_per_epoch * (start_epoch - 1), {"loss": state.history[-1]["train_loss"],
                                                              "acc": state.history[-1]["train_accuracy"]})
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            record = train_epoch(loop, state, epoch)
            state.history.append(record)
            reporter.epoch(record)
            if state_path is not None and rank == 0:
                state.save(state_path, epoch)
    finally:
        reporter.finish()
        if distill is not None:
            distill.close()  # hint hooks off: the student is the plain architecture again
    if state.ema is not None:
        model.load_state_dict(state.ema.shadow)  # what is evaluated is what is shipped
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    return state.history


def selection_proxy(cfg: TrainConfig, data: Dataset) -> nn.Module:
    """--select-fraction's proxy network (``cfg.select_proxy`` for ``data``), seeded apart from the model; one line
    now (ModelError, ConfigError) if it cannot take the data or the optimizer cannot train it."""
    from ..models.builders import ModelSpec, build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 4_000_037)
        proxy = build_model(ModelSpec(cfg.select_proxy, len(data.class_names), tuple(data.input_shape)))
    try:
        check_optimizer(proxy, cfg)
    except ConfigError as e:
        raise ConfigError(f"--select-proxy {cfg.select_proxy}: {e}") from None
    return proxy


def _selector(data: Dataset, cfg: TrainConfig, device: torch.device, total_steps: int) -> HardExampleSelector:
    """--select-fraction's proxy, initialized from the data like the model, with an optimizer and schedule of the
    model's settings."""
    proxy = selection_proxy(cfg, data)
    init_from_data(proxy, data, cfg.seed)
    proxy.to(device)
    if _uses_conv(proxy):
        proxy.to(memory_format=torch.channels_last)
    opt = _optimizer(proxy, cfg)
    return HardExampleSelector(proxy, opt, _scheduler(opt, cfg, total_steps), cfg.select_fraction, cfg.precision,
                               device, cfg.label_smoothing)


def _fit_members(model: nn.Module, data: Dataset, cfg: TrainConfig, *, distill: Distillation | None, label: str,
                 reporter: Reporter | None, state_path: str | os.PathLike | None, resume: bool,
                 data_init: bool) -> list[dict[str, float]]:
    """An ensemble: each member trained on its own by :func:`fit` with seed ``cfg.seed + k`` (its own init,
    data order and augmentation draws) and its own training state (``<state>-member<k>``, so --resume
    continues at the member it stopped in). The history is the members' in turn, each record tagged
    with its member (1-based)."""
    history: list[dict[str, float]] = []
    n = len(model.members)
    for k, member in enumerate(model.members):
        path = None if state_path is None else member_state_path(state_path, k + 1)
        hist = fit(member, data, dataclasses.replace(cfg, seed=cfg.seed + k), distill=distill,
                   label=f"{label} {k + 1}/{n}", reporter=reporter, state_path=path, resume=resume,
                   data_init=data_init)
        history += [{**r, "member": k + 1} for r in hist]
    model.eval()
    return history


def member_state_path(state_path: str | os.PathLike, member: int) -> Path:
    """Where an ensemble's member (1-based) keeps its training state: ``<state>-member<k>.pt``."""
    p = Path(state_path)
    return p.with_name(f"{p.stem}-member{member}{p.suffix}")


def remove_training_state(state_path: str | os.PathLike) -> None:
    """Delete a finished model's training state, an ensemble's members' included."""
    p = Path(state_path)
    for f in (p, *p.parent.glob(f"{glob.escape(p.stem)}-member*{glob.escape(p.suffix)}")):
        f.unlink(missing_ok=True)
