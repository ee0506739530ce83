"""Frozen run configuration. Every CLI option lands here; validation lives here too."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("cosine", "onecycle", "none")
DEVICES = ("auto", "cpu", "cuda")
# Static INT8 activation ranges (onnxruntime calibrators), name -> what it does
CALIBRATIONS = {
    "median": "median of each 32-image batch's min and max (ignores rare outlier images)",
    "moving-average": "mean of each 32-image batch's min and max (dampens rare outliers)",
    "minmax": "min and max over all calibration images",
    "percentile": "99.999th percentile of a histogram",
    "entropy": "KL-divergence-optimal threshold of a histogram",
}
DEFAULT_CALIBRATION = "median"
CALIBRATION_HELP = "; ".join(f"{k}: {v}" for k, v in CALIBRATIONS.items())
EQUALIZE_HELP = ("INT8 static: first rescale the channels of residual streams so that one outlier channel does "
                 "not take the whole 8-bit range (exact in FP32; skips graphs without them). Try it when a "
                 "ResNet-like model fails the accuracy gate.")


@dataclass(frozen=True)
class TrainConfig:
    """What one call of :func:`kdexport.train.fit` needs. Identical for baseline and student."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "cosine"
    seed: int = 0
    device: str = "cpu"
    augment: str = "none"  # a name in kdexport.data.AUGMENTATIONS

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        from .data import AUGMENTATIONS

        AUGMENTATIONS.get(self.augment)
        _check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        _check(_finite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0, "weight decay must be >= 0")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")


@dataclass(frozen=True)
class KDConfig:
    """The distillation loss: (1-beta)*CE + beta*[T^2]*KL(teacher_T || student_T)."""

    temperature: float = 4.0
    soft_weight: float = 0.5
    scale_t2: bool = True
    soft_loss: str = "kl"

    def __post_init__(self) -> None:
        from .losses import SOFT_LOSSES

        SOFT_LOSSES.get(self.soft_loss)
        _check(_finite(self.temperature) and self.temperature > 0,
               f"temperature must be > 0, got {self.temperature}")
        _check(_finite(self.soft_weight) and 0.0 <= self.soft_weight <= 1.0,
               f"soft weight (beta) must be in [0, 1], got {self.soft_weight}")


@dataclass(frozen=True)
class RunConfig:
    """Every option of ``kdexport distill-export``. Recorded verbatim in report.json."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = True
    image_size: int | None = None
    augment: str = "auto"
    teacher_augment: str | None = None  # None: same as augment
    # models
    teacher: str = "mlp:1200,1200"
    student: str = "mlp:14"
    teacher_dropout: float = 0.5
    student_dropout: float = 0.0
    cifar_stem: bool = False
    pretrained: bool = False
    teacher_checkpoint: str | None = None
    # distillation
    kd: KDConfig = field(default_factory=KDConfig)
    # training (baseline and student share it; the teacher may override epochs)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_epochs: int | None = None
    teacher_cache: bool = True  # keep teacher logits on disk (only without augmentation)
    # export + quantization + benchmark
    parity_atol: float = 1e-3
    quantize: str = "none"  # none | static | dynamic (the student)
    max_accuracy_drop: float = 1.0  # points an INT8 model may lose before it is rejected
    calibration_samples: int = 300
    calibration: str = DEFAULT_CALIBRATION  # static INT8 activation ranges: a key of CALIBRATIONS
    equalize: bool = False  # static INT8: rescale residual-stream channels first (kdexport.equalize)
    bench_batch: int = 32
    bench_iters: int = 100
    bench_warmup: int = 10
    threads: int | None = None
    # output
    out: str | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        from .data import AUGMENTATIONS

        for a in (self.augment, self.teacher_augment):
            if a is not None and a != "auto":
                AUGMENTATIONS.get(a)
        for name in ("teacher_dropout", "student_dropout"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"{name.replace('_', ' ')} must be in [0, 1), got {v}")
        _check(self.teacher_epochs is None or self.teacher_epochs >= 1,
               f"teacher epochs must be >= 1, got {self.teacher_epochs}")
        _check(self.image_size is None or self.image_size >= 8, "image size must be >= 8")
        _check(self.parity_atol > 0, "parity tolerance must be > 0")
        _check(self.quantize in ("none", "static", "dynamic"),
               f"quantize must be none, static or dynamic, got {self.quantize!r}")
        _check(self.max_accuracy_drop >= 0, "max accuracy drop must be >= 0")
        _check(self.calibration_samples >= 1, "calibration samples must be >= 1")
        _check(self.calibration in CALIBRATIONS,
               f"calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        _check(self.bench_batch >= 1, "benchmark batch must be >= 1")
        _check(self.bench_iters >= 1, "benchmark iterations must be >= 1")
        _check(self.bench_warmup >= 0, "benchmark warm-up must be >= 0")
        _check(self.threads is None or self.threads >= 1, "threads must be >= 1")

    def teacher_train(self) -> TrainConfig:
        if self.teacher_epochs is None:
            return self.train
        return dataclasses.replace(self.train, epochs=self.teacher_epochs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        kd = KDConfig(**d.pop("kd", {}))
        train = TrainConfig(**d.pop("train", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(kd=kd, train=train, **d)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)
