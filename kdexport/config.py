"""Every option of every command, once: a field of a frozen dataclass with its default, its help
text, its help panel, its choices and (in ``__post_init__``) its validation.

The CLI is generated from these fields (``kdexport.cli`` walks them with :func:`cli_fields`) and
holds no defaults of its own, so ``RunConfig()`` through the Python API and ``kdexport
distill-export`` with no flags are the same run. Nested configs (``kd``, ``train``, ``quant``,
``gates``) flatten into one set of flags; every flag name is unique across the nesting.

This module imports no stage (data, models, runtimes, distill, export, bench, report): an option whose
values come from a stage's registry names it as ``"kdexport.STAGE:REGISTRY"`` in ``choices``, and
:func:`check_choices` resolves it when a config is validated. The registries declare their names in the
stages' light ``__init__`` modules, so listing or checking them imports no torch (``kdexport.registry``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field
from typing import Any

from .errors import ConfigError, UnknownNameError
from .files import CACHE_PARTS

REQUIRED = MISSING

# Help panels, in the order --help shows them (Typer's rich_help_panel). COMMON holds the options most runs need.
COMMON, DATA, MODELS, DISTILLATION, TRAINING = "Common", "Data", "Models", "Distillation", "Training"
TEACHER_CACHE, EXPORT, BENCHMARK, BUDGET, OUTPUT = "Teacher cache", "Export & INT8", "Benchmark", "Budget", "Output"
CONFIG_FILE, FOREIGN, SHARDS = "Config file", "Model without metadata", "Shards"
PANELS = (COMMON, DATA, MODELS, DISTILLATION, TRAINING, TEACHER_CACHE, EXPORT, BENCHMARK, BUDGET, OUTPUT, SHARDS,
          FOREIGN, CONFIG_FILE)


def option(default: Any = REQUIRED, help: str | Callable[[], str] = "", *, flags: tuple[str, ...] = (),
           parse: Callable[[Any], Any] | None = None, argument: bool = False, cli: bool = True,
           cli_type: Any = None, panel: str | None = None, choices: tuple[str, ...] = (), kind: str = "") -> Any:
    """A config field with what the CLI needs to offer it.

    ``help`` may be a function (help built when the CLI is built); ``flags`` the option's names (default
    ``--field-name``); ``parse`` turns the CLI's raw value (of ``cli_type``, e.g. a comma-separated string)
    into the field's value; ``argument`` makes it positional; ``cli=False`` keeps a field out of the CLI (set
    by the library); ``panel`` the --help panel it is listed in; ``choices`` the values it takes: names, and
    ``"module:REGISTRY"`` references whose names are added lazily (:func:`choice_names`); ``kind`` what an
    error calls a value that is not one of them (default: the registry's kind, else the field's name)."""
    meta = {"help": help, "flags": flags, "parse": parse, "argument": argument, "cli": cli, "cli_type": cli_type,
            "panel": panel, "choices": choices, "kind": kind}
    return field(default=default, metadata=meta)


def nested(cls: type) -> Any:
    return field(default_factory=cls, metadata={"nested": True})


def _registry(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def choice_names(choices: tuple[str, ...]) -> list[str]:
    """The values ``choices`` allows, registry references expanded to their names (declaration order)."""
    out: list[str] = []
    for c in choices:
        out += _registry(c).names(sort=False) if ":" in c else [c]
    return list(dict.fromkeys(out))


def choice_help(choices: tuple[str, ...]) -> list[tuple[str, str]]:
    """(name, one-line help) of the registry entries of ``choices`` that have a help line (what --help lists)."""
    parts = []
    for c in choices:
        if ":" in c:
            reg = _registry(c)
            parts += [(n, reg.help(n)) for n in reg.names(sort=False) if reg.help(n)]
    return parts


def check_choices(cfg: Any) -> None:
    """Every field of ``cfg`` with ``choices`` holds one of them (None is "not given" where the default is
    None); else UnknownNameError naming the option and listing the values."""
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if not choices or value is None:
            continue
        allowed = choice_names(choices)
        for v in value if isinstance(value, tuple) else (value,):
            if v not in allowed:
                regs = [c for c in choices if ":" in c]
                kind = (f.metadata.get("kind") or (_registry(regs[0]).kind if len(regs) == 1 else "")
                        or f.name.replace("_", " "))
                raise UnknownNameError(kind, v, allowed)


# -- parsers for list options given as comma-separated text ------------------------------------------

def _split(text: str) -> list[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def parse_floats(text: str, name: str = "value") -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _split(text))
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated numbers, got {text!r}") from None


def parse_ints(text: str, name: str = "value") -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _split(text))
    except ValueError:
        raise ConfigError(f"{name}: expected comma-separated integers, got {text!r}") from None


def parse_switches(text: str, name: str = "value") -> tuple[bool, ...]:
    table = {"on": True, "off": False, "true": True, "false": False}
    try:
        return tuple(table[v.lower()] for v in _split(text))
    except KeyError:
        raise ConfigError(f"{name}: expected on, off or on,off; got {text!r}") from None


def parse_names(values: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated names, from one string or a repeated option."""
    items = [values] if isinstance(values, str) else list(values or ())
    return tuple(n for item in items for n in _split(item))


def format_default(value: Any) -> str:
    """A tuple default as the CLI writes it: ``(2.0, 4.0)`` -> ``2,4``; ``(True,)`` -> ``on``."""
    if isinstance(value, tuple):
        return ",".join(("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float)
                        else str(v) for v in value)
    return value


# -- parsers of single option values (budgets, sizes, hints): pure text -> value --------------------------

_UNITS_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3}
_UNITS_BYTES = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024 ** 2, "mib": 1024 ** 2, "gb": 1024 ** 3}


@dataclass(frozen=True)
class LatencyBudget:
    ms: float
    stat: str = "p50"  # p50 or p90

    def __str__(self) -> str:
        return f"{self.ms:g} ms ({self.stat})"


def parse_latency_budget(text: str) -> LatencyBudget:
    """``2ms``, ``500us``, ``1.5 ms``, ``2ms@p90`` -> a budget in milliseconds on p50 (default) or p90."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zµ]+)\s*(?:@\s*(p50|p90))?\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS_MS or float(m.group(1)) <= 0:
        raise ConfigError(f"latency budget {text!r}: use a positive number with ms, us or s, e.g. 2ms, 500us, "
                          "1.5 ms, 2ms@p90")
    return LatencyBudget(float(m.group(1)) * _UNITS_MS[m.group(2)], m.group(3) or "p50")


def parse_size_budget(text: str) -> int:
    """``500KB``, ``1.5 MB``, ``20000B`` -> bytes (KB = 1024 bytes, as kdexport's reports print sizes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS_BYTES or float(m.group(1)) <= 0:
        raise ConfigError(f"size budget {text!r}: use a positive number with B, KB or MB, e.g. 500KB")
    return int(float(m.group(1)) * _UNITS_BYTES[m.group(2)])


def parse_memory_budget(text: str) -> int:
    """``--memory-budget`` (e.g. 4GB, 512MB, 0 for none) in bytes."""
    units = {"b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40}
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", str(text).lower())
    if not m or (m.group(2) or "b") not in units:
        raise ConfigError(f"memory budget {text!r}: use a number with B, KB, MB, GB or TB, e.g. 4GB")
    return int(float(m.group(1)) * units[m.group(2) or "b"])


def parse_hint(text: str) -> tuple[str, str]:
    """``teacher.LAYER:student.LAYER`` -> (teacher layer, student layer)."""
    parts = text.split(":")
    if len(parts) != 2 or not parts[0].startswith("teacher.") or not parts[1].startswith("student."):
        raise ConfigError(f"--hint takes teacher.LAYER:student.LAYER (dotted module names), got {text!r}")
    t, s = parts[0][len("teacher."):], parts[1][len("student."):]
    if not t or not s:
        raise ConfigError(f"--hint names no layer: {text!r}")
    return t, s


# -- the configs --------------------------------------------------------------------------------------

OPTIMIZERS = ("adam", "sgd", "muon")
SCHEDULERS = ("cosine", "onecycle", "triangle", "linear", "none")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
QUANTIZE_MODES = ("none", "static", "dynamic", "qat")
GRAPH_OPTS = ("none", "basic", "extended", "all")
DATA_MODES = ("auto", "memory", "stream")
FALLBACKS = ("none", "auto")


@dataclass(frozen=True)
class TrainConfig:
    """What one call of :func:`kdexport.distill.train.fit` needs. Identical for baseline and student."""

    epochs: int = option(30, "Epochs for every model (baseline and student always match).", panel=COMMON)
    batch_size: int = option(64, "Training batch size.", panel=TRAINING)
    optimizer: str = option("adam", "adam, sgd (momentum, Nesterov) or muon (airbench94_muon's: every convolution "
                                    "filter bank steps by its orthogonalized Nesterov momentum at --muon-lr and "
                                    "--muon-momentum, rescaled to norm sqrt(out channels), no weight decay; the other "
                                    "parameters by Nesterov SGD with --lr, --momentum and --weight-decay).",
                            panel=TRAINING, choices=OPTIMIZERS)
    lr: float = option(3e-3, "Peak learning rate.", panel=TRAINING)
    weight_decay: float = option(0.0, "Weight decay.", panel=TRAINING)
    momentum: float = option(0.9, "SGD momentum.", panel=TRAINING)
    scheduler: str = option("cosine", "Learning-rate schedule: cosine, onecycle (PyTorch's OneCycleLR; it also cycles "
                                      "SGD's momentum between 0.85 and 0.95), triangle (airbench's: linear from 0.2x "
                                      "the peak to the peak at 23% of the steps, then linear to 0.07x; momentum as "
                                      "given), linear (from the peak to 0 at the last step; airbench94_muon's) or "
                                      "none. It scales every parameter group, --muon-lr's too.",
                            panel=TRAINING, choices=SCHEDULERS)
    muon_lr: float = option(0.24, "--optimizer muon: learning rate of the orthogonalized filter updates (scale-free: "
                                  "an orthogonalized step has the same size whatever the loss's scale).",
                            panel=TRAINING)
    muon_momentum: float = option(0.6, "--optimizer muon: Nesterov momentum of the filter updates.", panel=TRAINING)
    seed: int = option(0, "Seed for initialization, data order, augmentation and dropout.", panel=TRAINING)
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy term (baseline, student and a "
                                         "trained teacher alike), in [0, 1).", panel=TRAINING)
    device: str = option("auto", "auto, cpu or cuda (training only; benchmarks run on CPU).", panel=TRAINING)
    ema: float = option(0.0, "Keep an exponential moving average of the weights with this decay per step (e.g. "
                             "0.999; warmed up as min(decay, (1+t)/(10+t))); the average is what is evaluated, "
                             "saved and exported. 0: off.", panel=TRAINING)
    lookahead: bool = option(False, "airbench's lookahead: every 5 steps, move a running average of the weights "
                                    "(and BatchNorm statistics) toward them by 1 - d and copy it back into the model, "
                                    "with d = 0.95^5 * (progress)^3 growing from 0 to 0.77; the model ends as the "
                                    "average. Not with --ema.", panel=TRAINING)
    bias_lr_scale: float = option(1.0, "Multiply the learning rate of normalization-layer biases (BatchNorm, "
                                       "LayerNorm, GroupNorm) by this (airbench: 64); their weight decay per step "
                                       "stays that of the other weights.", panel=TRAINING)
    precision: str = option("auto", "Arithmetic of the training forward passes and of a live PyTorch teacher: fp32, "
                                    "bf16 (autocast; about 2x faster on a CPU with AMX or AVX-512 BF16) or auto "
                                    "(bf16 on CUDA, fp32 on the CPU). Evaluation, export and every reported accuracy "
                                    "stay fp32.", panel=TRAINING, choices=PRECISIONS)
    clip_grad_norm: float = option(0.0, "Rescale the gradient before each step so that its global L2 norm is at most "
                                        "this (all trained parameters together; 0: off): a guard against a loss "
                                        "whose gradient can spike.", panel=TRAINING)
    eval_every: int = option(1, "Evaluate the test split after every N-th epoch (and always after the last): on a "
                                "CPU each evaluation costs time a long run can spend training. The other epochs' "
                                "records have no test metrics.", panel=TRAINING)
    select_fraction: float = option(1.0, "Train on the hardest part of each batch (airbench96_faster's data "
                                         "filtering; it uses 0.5): a small proxy network (--select-proxy), trained "
                                         "beside the model on one batch in four, ranks each batch's examples by its "
                                         "loss and the model trains on this fraction with the largest, so a step "
                                         "costs the model about that fraction of a full one. Training metrics are "
                                         "over the examples trained on. 1: off.", panel=TRAINING)
    select_proxy: str = option("fastcifar:0.25", "--select-fraction: the proxy's architecture (a model spec, built "
                                                 "for the same data).", panel=TRAINING)
    augment: str = option("none", "Resolved augmentation (set from RunConfig.augment).", cli=False,
                          choices=("kdexport.data:AUGMENTATIONS",))

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check_seed(self.seed)
        _check(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        _check(self.eval_every >= 1, f"eval every must be >= 1 (epochs), got {self.eval_every}")
        _check(self.device in DEVICES or self.device.startswith("cuda:"),
               f"device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        _check(_finite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        _check(_finite(self.weight_decay) and self.weight_decay >= 0, "weight decay must be >= 0")
        _check(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        _check(_finite(self.muon_lr) and self.muon_lr > 0, f"muon lr must be > 0, got {self.muon_lr}")
        _check(0 <= self.muon_momentum < 1, f"muon momentum must be in [0, 1), got {self.muon_momentum}")
        _check(_finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
               f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(_finite(self.ema) and 0 <= self.ema < 1, f"ema decay must be in [0, 1), got {self.ema}")
        _check(not (self.lookahead and self.ema > 0), "--lookahead and --ema both average the weights: choose one")
        _check(_finite(self.bias_lr_scale) and self.bias_lr_scale > 0,
               f"bias lr scale must be > 0, got {self.bias_lr_scale}")
        _check(_finite(self.clip_grad_norm) and self.clip_grad_norm >= 0,
               f"clip grad norm must be >= 0 (0: off), got {self.clip_grad_norm}")
        _check(_finite(self.select_fraction) and 0 < self.select_fraction <= 1,
               f"select fraction must be in (0, 1] (1: off), got {self.select_fraction}")


@dataclass(frozen=True)
class KDConfig:
    """The distillation loss: (1-beta)*CE + beta*[T^2]*KL(teacher_T || student_T)."""

    temperature: float = option(4.0, "Distillation temperature T > 0.", flags=("--temperature", "-T"), panel=COMMON)
    soft_weight: float = option(0.5, "beta: weight of the soft (KD) loss; the hard CE weight is 1 - beta.",
                                panel=COMMON)
    scale_t2: bool = option(True, "Multiply the soft loss by T^2 (Hinton et al.).",
                            flags=("--scale-t2/--no-scale-t2",), panel=DISTILLATION)
    soft_loss: str = option("kl", "--kd-loss kd: how the softened logits are compared.", panel=DISTILLATION,
                            choices=("kdexport.distill:SOFT_LOSSES",))
    loss: str = option("kd", "Distillation loss, mixed with the labels' cross-entropy by --soft-weight.",
                       flags=("--kd-loss",), panel=DISTILLATION, choices=("kdexport.distill:LOSSES",))
    logit_standardization: bool = option(False, "z-score teacher and student logits per sample before the "
                                                "temperature (Sun et al. 2024); works with every --kd-loss.",
                                         panel=DISTILLATION)
    dkd_alpha: float = option(1.0, "DKD: weight of the target-class term (TCKD).", panel=DISTILLATION)
    dkd_beta: float = option(8.0, "DKD: weight of the non-target-class term (NCKD).", panel=DISTILLATION)
    dkd_warmup: float = option(20.0, "DKD: epochs over which its term ramps up linearly from 0 (0: none).",
                               panel=DISTILLATION)
    dist_beta: float = option(1.0, "DIST: weight of the inter-class relation term.", panel=DISTILLATION)
    dist_gamma: float = option(1.0, "DIST: weight of the intra-class relation term.", panel=DISTILLATION)
    mixup: float = option(0.0, "Function matching (Beyer et al. 2022): mix each batch's images with a shuffled copy "
                               "of it, lambda ~ Beta(a, a), and distil on the mixed images, which the teacher sees "
                               "too (live: no cached table holds them); labeled pairs keep the labels' term mixed "
                               "by lambda. a > 0 (e.g. 1.0); 0: off.", flags=("--kd-mixup",), panel=DISTILLATION)
    hint: str | None = option(None, "Add a FitNets feature-hint term: teacher.LAYER:student.LAYER (dotted module "
                                    "names); a trained 1x1-conv connector, dropped before export.", panel=DISTILLATION)
    hint_weight: float = option(1.0, "Weight of the hint term (MSE between connected student and teacher features).",
                                panel=DISTILLATION)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.hint is not None:
            parse_hint(self.hint)
        for name in ("dkd_alpha", "dkd_beta", "dkd_warmup", "dist_beta", "dist_gamma", "hint_weight"):
            v = getattr(self, name)
            _check(_finite(v) and v >= 0, f"{name.replace('_', ' ')} must be a number >= 0, got {v}")
        _check(_finite(self.temperature) and self.temperature > 0,
               f"temperature must be > 0, got {self.temperature}")
        _check(_finite(self.soft_weight) and 0.0 <= self.soft_weight <= 1.0,
               f"soft weight (beta) must be in [0, 1], got {self.soft_weight}")
        _check(_finite(self.mixup) and self.mixup >= 0, f"--kd-mixup must be a number >= 0, got {self.mixup}")
        _check(not (self.mixup and self.soft_weight == 0.0),
               "--kd-mixup mixes images for the soft term: with --soft-weight 0 there is none")


@dataclass(frozen=True)
class QuantConfig:
    """How an INT8 copy is made and when it is refused (``kdexport quantize``, ``distill-export --quantize``)."""

    calibration: str = option("median", "INT8 static: how each activation's range is chosen from the calibration "
                                        "images.", panel=EXPORT, choices=("kdexport.export:CALIBRATIONS",))
    calibration_samples: int = option(300, "INT8 static: training images used for calibration.", panel=EXPORT)
    equalize: bool = option(False, "INT8 static: first rescale the channels of residual streams so that one outlier "
                                   "channel does not take the whole 8-bit range (exact in FP32; skips graphs "
                                   "without them). Try it when a ResNet-like model fails the accuracy gate.",
                            panel=EXPORT)
    reduce_range: bool | None = option(None, "7-bit weights; default: on for CPUs without VNNI.",
                                       flags=("--reduce-range/--no-reduce-range",), panel=EXPORT)
    max_accuracy_drop: float = option(1.0, "INT8: reject the quantized model (exit 1, no file) if it loses more "
                                           "accuracy points than this.", panel=EXPORT)
    fallback: str = option("none", "INT8 static over the accuracy budget: auto keeps the layers whose quantization "
                                   "errs most (lowest SQNR of its own quantization round trip) in FP32, in growing "
                                   "groups, until it fits; none refuses the model.", panel=EXPORT, choices=FALLBACKS)
    per_tensor: bool = option(False, "INT8: one scale per weight tensor instead of one per output channel (what many "
                                     "NPUs require; usually costs accuracy).", panel=EXPORT)
    int8_exclude: tuple[str, ...] = option((), "INT8 static: keep these nodes in FP32, comma-separated ONNX node names "
                                               "or op types (e.g. Gemm,/features/0/Conv); the report lists them.",
                                           cli_type=str, parse=parse_names, panel=EXPORT)

    def __post_init__(self) -> None:
        check_choices(self)
        _check(_finite(self.max_accuracy_drop) and self.max_accuracy_drop >= 0, "max accuracy drop must be >= 0")
        _check(self.calibration_samples >= 1, "calibration samples must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    """Every option of ``kdexport distill-export`` (and of ``sweep``, whose grid replaces T, beta,
    T^2 scaling and the seed). Recorded verbatim in report.json."""

    # data
    dataset: str = option("digits", "The data to distil on.", panel=COMMON, choices=("kdexport.data:DATASETS",))
    data_dir: str | None = option(None, "Local dataset folder (default: $KDEXPORT_DATA_DIR or "
                                        "~/.cache/kdexport/data).", panel=COMMON)
    download: bool = option(True, "Download mnist/cifar10 when not found locally.", panel=DATA)
    image_size: int | None = option(None, "imagefolder: the square input size (default: the median shorter side of "
                                          "the training images, at most 224).", panel=DATA)
    crop_ratio: float | None = option(None, "imagefolder: resize the shorter side to image-size / ratio, then "
                                            "center-crop (torchvision: 0.875 = 256 -> 224); default 0.875 for RGB "
                                            "photos of 64 px and more, else 1 (whole image).", panel=DATA)
    data_mode: str = option("auto", "imagefolder: memory (decode every image once, hold them in RAM), stream (decode "
                                    "each batch from the files in --workers processes) or auto (memory when the "
                                    "decoded set fits --memory-budget; the log says which).",
                            panel=DATA, choices=DATA_MODES)
    memory_budget: str | None = option(None, "--data-mode auto: most decoded image data to hold in memory, e.g. 4GB "
                                             "(default: half the available memory).", panel=DATA)
    workers: int | None = option(None, "Stream mode: decoding worker processes (default: usable cores; 0 decodes "
                                       "in the training process).", panel=DATA)
    labels_fraction: float = option(1.0, "Keep the labels of this fraction of each class's training images (seeded "
                                          "by --seed) and treat the rest as unlabeled: the teacher's outputs teach "
                                          "the student there; 0 keeps none.", panel=DATA)
    unlabeled_dir: str | None = option(None, "A folder of images nobody labeled (any layout, searched recursively), "
                                             "added to the training split: the student learns them from the "
                                             "teacher's outputs alone.", panel=DATA)
    augment: str = option("auto", "Training augmentation; auto: rrc-flip for RGB photos of 64 px and more, crop-flip "
                                  "for smaller RGB images, else none.", panel=DATA,
                          choices=("auto", "kdexport.data:AUGMENTATIONS"))
    teacher_augment: str | None = option(None, "The teacher's augmentation, if different (default: --augment).",
                                         panel=DATA, choices=("kdexport.data:AUGMENTATIONS",))
    teacher_tta: str = option("none", "Test-time augmentation of the teacher's logits that students learn from; its "
                                      "accuracy with it is logged and in report.json (teacher_tta).",
                              panel=DISTILLATION, choices=("kdexport.distill:TTAS",))
    # models
    teacher: str = option("mlp:1200,1200", "Teacher: mlp:SIZES (e.g. mlp:1200,1200), any torchvision classifier "
                                           "name, a CIFAR ResNet or fastcifar[:WIDTH], timm:NAME, ensemble:NxARCH "
                                           "(N members trained on their own, logits averaged), or a trained model "
                                           "as an ONNX file (PATH.onnx).", panel=COMMON)
    student: str = option("mlp:14", "Student: mlp:SIZES (e.g. mlp:14), any torchvision classifier name, "
                                    "a CIFAR ResNet or fastcifar[:WIDTH], or timm:NAME.", panel=COMMON)
    teacher_dropout: float = option(0.5, "Dropout between MLP hidden layers of the teacher.", panel=MODELS)
    student_dropout: float = option(0.0, "Dropout between MLP hidden layers of the student.", panel=MODELS)
    cifar_stem: bool = option(False, "CNNs: stride-1 stem for 32x32 inputs (ResNets: 3x3 conv, no max-pool; others: "
                                     "first conv at stride 1). A --teacher-checkpoint keeps its own.", panel=MODELS)
    pretrained: bool = option(False, "Start the teacher from torchvision's (or timm's) pretrained weights (needs "
                                     "network once).", panel=MODELS)
    teacher_checkpoint: str | None = option(None, "Use this trained teacher (a kdexport checkpoint) instead of "
                                                  "training one.", panel=MODELS)
    teacher_weights: str | None = option(None, "Use the teacher --teacher ARCH with these trained weights (a "
                                               "state_dict saved with torch.save, or .safetensors) instead of "
                                               "training one.", panel=MODELS)
    teacher_mean: tuple[float, ...] | None = option(None, "A trained teacher (ONNX file, --teacher-weights or "
                                                          "--teacher-checkpoint): the per-channel mean it was trained "
                                                          "with, comma-separated (default: an ONNX file's metadata, "
                                                          "else the dataset's).",
                                                    cli_type=str, parse=lambda v: parse_floats(v, "--teacher-mean"),
                                                    panel=MODELS)
    teacher_std: tuple[float, ...] | None = option(None, "A trained teacher: the per-channel std it was trained with "
                                                         "(default: an ONNX file's metadata, else the dataset's).",
                                                   cli_type=str, parse=lambda v: parse_floats(v, "--teacher-std"),
                                                   panel=MODELS)
    student_weights: str | None = option(None, "Start baseline and distilled student from these weights "
                                               "(state_dict or .safetensors).", panel=MODELS)
    student_pretrained: bool = option(False, "Start baseline and distilled student from torchvision's (or timm's) "
                                             "pretrained weights (needs network once).", panel=MODELS)
    force: bool = option(False, "Distil even from a teacher no better than chance on this data.", panel=MODELS)
    # distillation
    kd: KDConfig = nested(KDConfig)
    # training (baseline and student share it; the teacher may override epochs)
    train: TrainConfig = nested(TrainConfig)
    teacher_epochs: int | None = option(None, "Override the teacher's epochs (an ensemble's: each member's).",
                                        panel=TRAINING)
    baseline_cache: bool = option(True, "Keep each baseline student (weights and record) in the cache "
                                        "($KDEXPORT_CACHE_DIR/baselines) under a key of everything its training "
                                        "depends on (student, data, training options, seed, kdexport's code, torch, "
                                        "CPU, threads) and reuse it in a later run or sweep with the same key, e.g. "
                                        "the same student under another teacher or T: the baseline does not see "
                                        "the teacher. Not under torchrun.", panel=TRAINING)
    teacher_cache: bool = option(True, "Without augmentation, keep the teacher's logits on disk ($KDEXPORT_CACHE_DIR "
                                       "or ~/.cache/kdexport) and reuse them across runs, seeds and sweep cells.",
                                 panel=TEACHER_CACHE)
    teacher_view_cache: bool = option(False, "With an augmentation of finitely many views (shift2: 25, "
                                             "shift2-flip: 50, crop-flip: 162), run the teacher once on every view "
                                             "of every training image (views x one pass over the training set, kept "
                                             "like --teacher-cache's table) and look its logits up on each batch "
                                             "instead of running it live: the same logits, and a distilled epoch "
                                             "costs about what the baseline's does. Pays once the students' epochs "
                                             "together outnumber the views (seeds and sweep cells share the table).",
                                      panel=TEACHER_CACHE)
    # export + quantization + benchmark
    parity_rtol: float = option(1e-3, "Max logit difference allowed between onnxruntime and PyTorch, relative to "
                                      "the logits' scale (max |logit|, at least 1).", panel=EXPORT)
    parity_atol: float | None = option(None, "Override --parity-rtol with an absolute max logit difference.",
                                       panel=EXPORT)
    quantize: str = option("none", "Also make an INT8 student: none, static (onnxruntime QDQ, calibrated; CNNs), "
                                   "dynamic (MLPs) or qat (the student fine-tuned as its INT8 network with the "
                                   "teacher, then QDQ; when static loses accuracy).", panel=COMMON,
                           choices=QUANTIZE_MODES)
    quant: QuantConfig = nested(QuantConfig)
    qat_epochs: int = option(2, "--quantize qat: epochs of quantization-aware fine-tuning after FP32 distillation, "
                                "with the teacher (its labels-only twin gets the same).", panel=EXPORT)
    qat_lr_scale: float = option(0.05, "--quantize qat: the fine-tune's learning rate as a fraction of --lr (cosine "
                                       "schedule).", panel=EXPORT)
    targets: tuple[str, ...] = option(("onnx",), "Runtimes to ship the distilled student for, comma-separated: each "
                                                  "file (FP32, and INT8 with --quantize) parity-checked, its accuracy "
                                                  "measured in its runtime and timed beside the others. onnx is always "
                                                  "made.", cli_type=str, parse=parse_names, panel=COMMON,
                                      choices=("kdexport.export:TARGETS",))
    bench_batch: int = option(32, "The larger batch size to benchmark, beside batch 1.", panel=BENCHMARK)
    bench_iters: int = option(100, "Timed runs per model and batch size, over all rounds.", panel=BENCHMARK)
    bench_rounds: int = option(5, "Rounds that go round-robin over every model timed together (teacher, baseline, "
                                  "student, INT8, eager): a model's p50 is the median of its rounds' p50s, reported "
                                  "with their [min, max] as its spread, and ratios come from the same rounds (at "
                                  "most --bench-iters rounds).",
                               panel=BENCHMARK)
    bench_warmup: int = option(10, "Untimed warm-up runs before each latency measurement.", panel=BENCHMARK)
    bench_max_seconds: float = option(20.0, "Time budget per latency measurement; stops early once spent "
                                            "(after at least 5 runs).", panel=BENCHMARK)
    threads: int | None = option(None, "CPU threads for training and inference (default: all usable cores).",
                                 panel=BENCHMARK)
    package: bool = option(False, "Also write OUT/package/: the student as an app-ready folder (kdexport package).",
                           panel=EXPORT)
    # a budget for the shipped student (--student auto picks the largest candidate that meets it)
    latency_budget: str | None = option(None, "Latency budget for the shipped student, e.g. 2ms, 500us, 2ms@p90 "
                                              "(timed at --budget-batch with --budget-threads). With --student auto "
                                              "the candidate with the most FLOPs that fits is distilled; the shipped "
                                              "file is timed again after training and a miss exits 1.", panel=BUDGET)
    size_budget: str | None = option(None, "Size budget for the shipped ONNX file, e.g. 500KB.", panel=BUDGET)
    budget_margin: float = option(0.1, "--student auto: keep this fraction of the latency budget as a margin.",
                                  panel=BUDGET)
    budget_threads: int = option(1, "Threads the budget is measured with.", panel=BUDGET)
    budget_batch: int = option(1, "Batch size the budget is measured at.", panel=BUDGET)
    candidates: tuple[str, ...] = option((), "--student auto: comma-separated candidate architectures (default: "
                                             "kdexport select's).", cli_type=str, parse=parse_names, panel=BUDGET)
    # output
    out: str | None = option(None, "Output folder (default: runs/COMMAND-YYYYmmdd-HHMMSS).", panel=COMMON)
    overwrite: bool = option(False, "Replace an existing --out folder.", panel=OUTPUT)
    resume: bool = option(False, "Continue an interrupted run with the same --out and options (per-epoch state).",
                          panel=OUTPUT)

    def __post_init__(self) -> None:
        check_choices(self)
        _check(len(set(self.targets)) == len(self.targets), f"--targets repeats a target: {','.join(self.targets)}")
        for name in ("teacher_dropout", "student_dropout"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"{name.replace('_', ' ')} must be in [0, 1), got {v}")
        teacher_sources = [n for n, on in (("an ONNX teacher", self.teacher_is_onnx),
                                           ("--teacher-checkpoint", bool(self.teacher_checkpoint)),
                                           ("--teacher-weights", bool(self.teacher_weights)),
                                           ("--pretrained", self.pretrained)) if on]
        _check(len(teacher_sources) <= 1, f"choose one teacher source, not {' and '.join(teacher_sources)}")
        _check(isinstance(self.qat_epochs, int) and not isinstance(self.qat_epochs, bool) and self.qat_epochs >= 1,
               f"--qat-epochs must be a whole number >= 1, got {self.qat_epochs!r}")
        _check(_finite(self.qat_lr_scale) and 0 < self.qat_lr_scale <= 1,
               f"--qat-lr-scale must be in (0, 1], got {self.qat_lr_scale!r}")
        _check(not (self.quantize == "qat" and self.kd.hint),
               "--quantize qat trains the quantized graph, which has no named layers for --hint: drop --hint or use "
               "--quantize static")
        _check(not (self.quantize == "qat" and self.student.startswith("ensemble:")),
               "--quantize qat on an ensemble student is not supported: distil a single student, or --quantize static")
        _check(not (self.kd.hint and self.teacher_view_cache),
               "--hint needs the live teacher's features on every batch: drop --teacher-view-cache")
        _check(not (self.kd.mixup and self.teacher_view_cache),
               "--kd-mixup shows the teacher mixed images that no cached table holds: drop --teacher-view-cache")
        _check(not (self.kd.hint and self.teacher_is_onnx),
               "--hint needs a PyTorch teacher: an ONNX teacher is a black box without named layers")
        _check(not (self.kd.hint and self.student.startswith("ensemble:")),
               "--hint on an ensemble student: its members train one after another and the hint would reach only "
               "the first; distil a single student")
        _check(not (self.student_weights and self.student_pretrained),
               "choose --student-weights or --student-pretrained, not both")
        for name in ("teacher_mean", "teacher_std"):
            v = getattr(self, name)
            _check(v is None or self.teacher_is_onnx or bool(self.teacher_weights or self.teacher_checkpoint),
                   f"--{name.replace('_', '-')} applies to a trained teacher only (an ONNX file, --teacher-weights or "
                   "--teacher-checkpoint): a teacher trained here uses the dataset's normalization")
            _check(v is None or (len(v) > 0 and all(_finite(x) for x in v)), f"{name.replace('_', ' ')}: numbers")
        _check(self.teacher_std is None or all(x > 0 for x in self.teacher_std), "teacher std must be > 0")
        _check(self.teacher_epochs is None or self.teacher_epochs >= 1,
               f"teacher epochs must be >= 1, got {self.teacher_epochs}")
        _check(_finite(self.labels_fraction) and 0.0 <= self.labels_fraction <= 1.0,
               f"--labels-fraction must be in [0, 1], got {self.labels_fraction}")
        unlabeled = self.labels_fraction < 1.0 or bool(self.unlabeled_dir)
        _check(not (unlabeled and self.train.select_fraction < 1),
               "--select-fraction picks hard examples by their labels: it cannot run with unlabeled images")
        _check(not (unlabeled and self.kd.soft_weight == 0.0),
               "unlabeled images teach through the soft term only: --soft-weight 0 would leave them unused")
        _check_image_size(self.dataset, self.image_size)
        _check_data_options(self.dataset, self.crop_ratio, self.memory_budget, self.workers)
        _check(self.parity_atol is None or (_finite(self.parity_atol) and self.parity_atol > 0),
               "parity tolerance must be > 0")
        _check(_finite(self.parity_rtol) and self.parity_rtol > 0, "relative parity tolerance must be > 0")
        _check(self.bench_batch >= 1, "benchmark batch must be >= 1")
        _check(self.bench_iters >= 1, "benchmark iterations must be >= 1")
        _check(self.bench_rounds >= 1, f"benchmark rounds must be >= 1, got {self.bench_rounds}")
        _check(self.bench_warmup >= 0, "benchmark warm-up must be >= 0")
        _check(_finite(self.bench_max_seconds) and self.bench_max_seconds > 0, "benchmark time budget must be > 0")
        _check(self.threads is None or self.threads >= 1, "threads must be >= 1")
        _check_budgets(self.latency_budget, self.size_budget, self.budget_margin, self.budget_threads,
                       self.budget_batch)
        _check(self.student != "auto" or bool(self.latency_budget or self.size_budget),
               "--student auto needs --latency-budget (or --size-budget)")

    @property
    def teacher_is_onnx(self) -> bool:
        """``--teacher PATH.onnx``: a trained black-box teacher run by onnxruntime."""
        return self.teacher.lower().endswith(".onnx")

    def teacher_train(self) -> TrainConfig:
        if self.teacher_epochs is None:
            return self.train
        return dataclasses.replace(self.train, epochs=self.teacher_epochs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return from_dict(cls, d)


@dataclass(frozen=True)
class Grid:
    """``kdexport sweep``'s grid: every T x beta (x T^2 scaling) cell, each over every seed."""

    temperatures: tuple[float, ...] = option((2.0, 4.0, 8.0), "Temperatures, comma-separated.",
                                              flags=("--temperature", "-T"), cli_type=str,
                                              parse=lambda v: parse_floats(v, "--temperature"), panel=COMMON)
    soft_weights: tuple[float, ...] = option((0.5, 0.9), "Soft-loss weights beta, comma-separated.",
                                             flags=("--soft-weight",), cli_type=str,
                                             parse=lambda v: parse_floats(v, "--soft-weight"), panel=COMMON)
    seeds: tuple[int, ...] = option((0, 1, 2), "Seeds, comma-separated; each cell is mean +/- std over them.",
                                    cli_type=str, parse=lambda v: parse_ints(v, "--seeds"), panel=COMMON)
    scale_t2: tuple[bool, ...] = option((True,), "T^2 scaling of the soft loss: on, off, or on,off for both.",
                                        cli_type=str, parse=lambda v: parse_switches(v, "--scale-t2"),
                                        panel=DISTILLATION)
    losses: tuple[str, ...] = option(("kd",), "Distillation losses, comma-separated.", flags=("--kd-loss",),
                                     cli_type=str, parse=parse_names, panel=DISTILLATION,
                                     choices=("kdexport.distill:LOSSES",))

    def __post_init__(self) -> None:
        for name in ("temperatures", "soft_weights", "seeds", "scale_t2", "losses"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"sweep grid: {name.replace('_', ' ')} is empty")
            if len(set(values)) != len(values):
                raise ConfigError(f"sweep grid: {name.replace('_', ' ')} has duplicates: {list(values)}")
        for seed in self.seeds:
            _check_seed(seed)
        for T in self.temperatures:
            for b in self.soft_weights:
                for loss in self.losses:
                    KDConfig(temperature=T, soft_weight=b, loss=loss)  # validates every value

    def kd_configs(self, base: KDConfig | None = None) -> list[KDConfig]:
        """Every cell's loss settings: ``base`` (the run's other KD options) with the grid's T, beta,
        T^2 scaling and loss. DKD and DIST scale by T^2 themselves, so they get no unscaled variant."""
        base = base or KDConfig()
        return [dataclasses.replace(base, temperature=T, soft_weight=b, scale_t2=s, loss=loss)
                for loss in self.losses for s in self.scale_t2 for b in self.soft_weights for T in self.temperatures
                if loss == "kd" or s == self.scale_t2[0]]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ShardOptions:
    """Where a sweep's share of the work is (``kdexport sweep --shard K/N``), not what it trains: never recorded."""

    shard: str | None = option(None, "Run share K of N (0 <= K < N) of the sweep's units, beside the other shards "
                                     "in one --out on a shared filesystem: K/N, or auto (SLURM_ARRAY_TASK_ID and "
                                     "_COUNT) or auto/N (the index from SLURM_ARRAY_TASK_ID or a Kubernetes "
                                     "Indexed Job's JOB_COMPLETION_INDEX). The shard that finishes the last unit "
                                     "writes the merged result.", panel=SHARDS)
    merge: bool = option(False, "Write sweep.json, sweep.md and the heatmap from the units finished so far in --out "
                                "(the options recorded there; a partial result lists the units missing) and, once "
                                "every unit is done, best/.", panel=SHARDS)


def _env_int(env: dict, name: str, default: int | None = None) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--shard auto: {name}={value!r} is not a whole number") from None


def parse_shard(value: str | None, env: dict | None = None) -> tuple[int, int] | None:
    """``--shard``: ``K/N``, ``auto`` (a SLURM array's SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT, stepped
    from SLURM_ARRAY_TASK_MIN by SLURM_ARRAY_TASK_STEP) or ``auto/N`` (the index from SLURM or from a Kubernetes
    Indexed Job's JOB_COMPLETION_INDEX) -> (K, N); None when not sharded. ConfigError, naming the value, else."""
    if value is None:
        return None
    import os

    env = os.environ if env is None else env
    text = str(value).strip()
    head, sep, tail = text.partition("/")
    if head == "auto":
        n = None
        if sep:
            if not re.fullmatch(r"\d+", tail):
                raise ConfigError(f"--shard {value!r}: expected auto or auto/N with N a whole number")
            n = int(tail)
        if env.get("SLURM_ARRAY_TASK_ID") not in (None, ""):
            step = _env_int(env, "SLURM_ARRAY_TASK_STEP", 1) or 1
            k = (_env_int(env, "SLURM_ARRAY_TASK_ID") - _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)) // step
            count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
            if n is None:
                n = count
            elif count is not None and count != n:
                raise ConfigError(f"--shard {value}: SLURM_ARRAY_TASK_COUNT is {count}, not {n}")
            where = "SLURM_ARRAY_TASK_ID"
        elif env.get("JOB_COMPLETION_INDEX") not in (None, ""):
            k, where = _env_int(env, "JOB_COMPLETION_INDEX"), "JOB_COMPLETION_INDEX"
        else:
            raise ConfigError(f"--shard {value}: no scheduler index in the environment (SLURM_ARRAY_TASK_ID or "
                              "JOB_COMPLETION_INDEX); pass --shard K/N")
        if n is None:
            raise ConfigError(f"--shard {value}: {where} gives this shard's index but not the number of shards; "
                              "pass --shard auto/N")
    elif re.fullmatch(r"\d+/\d+", text):
        k, n = (int(x) for x in text.split("/"))
    else:
        raise ConfigError(f"--shard {value!r}: expected K/N (e.g. 0/4: the first of 4 shards), auto or auto/N")
    if n < 1:
        raise ConfigError(f"--shard {value}: the number of shards must be at least 1, got {n}")
    if not 0 <= k < n:
        raise ConfigError(f"--shard {value}: shard index {k} must be in 0..{n - 1} (K/N counts from 0)")
    return k, n


# Options of a sweep that its grid replaces (not offered as single values on `kdexport sweep`).
SWEEP_REPLACES = ("temperature", "soft_weight", "scale_t2", "seed", "loss")


@dataclass(frozen=True)
class QuantizeOptions:
    """``kdexport quantize MODEL --out Q``."""

    model: str = option(REQUIRED, "FP32 ONNX classifier to quantize.", argument=True)
    out: str = option(REQUIRED, "Where to write the INT8 model.")
    mode: str = option("static", "static (QDQ, calibrated; for CNNs) or dynamic (for MLPs).",
                       choices=("static", "dynamic"))
    dataset: str | None = option(None, "Dataset for accuracy/calibration (default: the one named in the model's "
                                       "metadata).", choices=("kdexport.data:DATASETS",))
    data_dir: str | None = option(None, "Local dataset folder.")
    quant: QuantConfig = nested(QuantConfig)

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class BenchOptions:
    """``kdexport bench A.onnx [B.xml ...]``."""

    models: tuple[str, ...] = option(REQUIRED, "One or more image classifier files: .onnx or .ort (onnxruntime), .xml "
                                               "(OpenVINO IR, with its .bin).", argument=True,
                                     cli_type=list[str], parse=tuple)
    out: str = option("runs/bench", "Folder for bench.json, bench.md and pareto.png.")
    batch_sizes: tuple[int, ...] = option((1, 32), "Comma-separated batch sizes.", cli_type=str,
                                          parse=lambda v: tuple(sorted(set(parse_ints(v, "--batch-sizes")))))
    threads: tuple[int, ...] = option((), "Comma-separated intra-op thread counts (default: usable cores).",
                                      cli_type=str, parse=lambda v: parse_ints(v, "--threads"))
    iters: int = option(RunConfig.bench_iters, "Timed runs per model, batch size and thread count, over all rounds "
                                                "(after warm-up).")
    rounds: int = option(RunConfig.bench_rounds, "Rounds that go round-robin over the models: each one's p50 is the "
                                                  "median of its rounds' p50s, with their [min, max] as its spread.")
    warmup: int = option(RunConfig.bench_warmup, "Untimed warm-up runs.")
    max_seconds: float | None = option(None, "Time budget per measurement; stops early once spent.")
    graph_opt: str = option("all", "onnxruntime graph optimization: none, basic, extended, all.", choices=GRAPH_OPTS)
    dataset: str | None = option(None, "Measure accuracy on this dataset's test split too.",
                                 choices=("kdexport.data:DATASETS",))
    data_dir: str | None = option(None, "Local dataset folder.")
    checkpoint: str | None = option(None, "A kdexport checkpoint to time under PyTorch eager for comparison.")
    input_shape: tuple[int, ...] | None = option(None, "C,H,W for models whose input size is dynamic.",
                                                 cli_type=str, parse=lambda v: parse_ints(v, "--input-shape"))

    def __post_init__(self) -> None:
        check_choices(self)
        _check(bool(self.models), "bench needs at least one model")
        _check(bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "batch sizes must be >= 1")
        _check(all(t >= 1 for t in self.threads), "threads must be >= 1")
        _check(self.iters >= 1, "iterations must be >= 1")
        _check(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        _check(self.warmup >= 0, "warm-up must be >= 0")
        _check(self.max_seconds is None or (_finite(self.max_seconds) and self.max_seconds > 0),
               "max seconds must be > 0")
        _check(self.input_shape is None or len(self.input_shape) == 3, "input shape must be C,H,W")


@dataclass(frozen=True)
class PredictOptions:
    """``kdexport predict MODEL.onnx IMAGE...``."""

    model: str = option(REQUIRED, "An image classifier file (.onnx, .ort, or an OpenVINO .xml): kdexport's carry "
                                  "their labels, normalization and crop in their metadata; another's takes them "
                                  "from the options below (or a package's preprocess.json).", argument=True)
    images: tuple[str, ...] = option(REQUIRED, "Image files.", argument=True, cli_type=list[str], parse=tuple)
    top_k: int = option(5, "How many labels to show per image.")
    json_out: bool = option(False, "Print JSON instead of a table.", flags=("--json",))
    preprocess: str | None = option(None, "A package's preprocess.json: the model's normalization and crop, and "
                                          "its labels.txt beside it (the options below win over it).",
                                    panel=FOREIGN)
    labels: str | None = option(None, "A text file of class names, one per line, in output order.",
                                panel=FOREIGN)
    mean: tuple[float, ...] | None = option(None, "Per-channel mean the model expects, comma-separated, in [0, 1] "
                                                  "pixel units.", cli_type=str,
                                            parse=lambda v: parse_floats(v, "--mean"), panel=FOREIGN)
    std: tuple[float, ...] | None = option(None, "Per-channel std the model expects.", cli_type=str,
                                           parse=lambda v: parse_floats(v, "--std"), panel=FOREIGN)
    image_size: int | None = option(None, "The square input side, for a graph whose size is dynamic (default: the "
                                          "graph's).", panel=FOREIGN)
    crop_ratio: float | None = option(None, "Resize the shorter side to image-size / ratio, then center-crop "
                                            "(torchvision: 0.875; default 1, the whole image resized).",
                                      panel=FOREIGN)

    def __post_init__(self) -> None:
        _check(self.top_k >= 1, f"top-k must be >= 1, got {self.top_k}")
        _check(self.std is None or all(_finite(v) and v > 0 for v in self.std), "std must be > 0")
        _check(self.image_size is None or 8 <= self.image_size <= MAX_IMAGE_SIZE,
               f"image size must be in [8, {MAX_IMAGE_SIZE}], got {self.image_size}")
        _check(self.crop_ratio is None or (_finite(self.crop_ratio) and 0.1 <= self.crop_ratio <= 1),
               f"crop ratio must be in [0.1, 1], got {self.crop_ratio}")

    def overrides(self) -> dict:
        """What the options say of the model, for :func:`kdexport.export.predict.predict`."""
        return {k: getattr(self, k) for k in ("preprocess", "labels", "mean", "std", "image_size", "crop_ratio")}


@dataclass(frozen=True)
class PackageOptions:
    """``kdexport package RUN_DIR_or_MODEL.onnx --out PKG``."""

    source: str = option(REQUIRED, "A kdexport run folder (its student, and INT8 copy if any) or an ONNX classifier.",
                         argument=True)
    out: str = option(REQUIRED, "The package folder to write.")
    dataset: str | None = option(None, "Dataset for the test images and accuracy (default: the model's metadata, "
                                       "or the run's).", choices=("kdexport.data:DATASETS",))
    data_dir: str | None = option(None, "Local dataset folder.")
    labels: str | None = option(None, "A text file of class names, one per line, in index order (default: the "
                                      "model's metadata, else the dataset's).")
    mean: tuple[float, ...] | None = option(None, "Per-channel mean the model expects (default: its metadata, else "
                                                  "the dataset's).", cli_type=str,
                                            parse=lambda v: parse_floats(v, "--mean"))
    std: tuple[float, ...] | None = option(None, "Per-channel std the model expects.", cli_type=str,
                                           parse=lambda v: parse_floats(v, "--std"))
    crop_ratio: float | None = option(None, "A model without kdexport metadata: resize the shorter side to its "
                                            "input size / ratio, then center-crop (torchvision: 0.875); default 1, "
                                            "the whole image resized. Recorded in preprocess.json and the card.")
    samples: int = option(8, "Real test images in test_data_set_0/.")
    targets: tuple[str, ...] | None = option(None, "A run folder: which runtimes' files go in beside the ONNX ones, "
                                                   "comma-separated (default: every file the run kept with "
                                                   "distill-export --targets).", cli_type=str, parse=parse_names,
                                             choices=("kdexport.export:TARGETS",))
    overwrite: bool = option(False, "Replace an existing --out folder.")

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.crop_ratio is None or (_finite(self.crop_ratio) and 0.1 <= self.crop_ratio <= 1),
               f"crop ratio must be in [0.1, 1], got {self.crop_ratio}")
        _check(self.samples >= 1, "samples must be >= 1")
        _check(self.std is None or all(_finite(v) and v > 0 for v in self.std), "std must be > 0")


@dataclass(frozen=True)
class CacheListOptions:
    """``kdexport cache list``."""


@dataclass(frozen=True)
class CacheClearOptions:
    """``kdexport cache clear [--part imagefolder|teacher-logits|baselines|all]``."""

    part: str = option("all", "What to clear: imagefolder (decoded images), teacher-logits, baselines (sweeps' "
                              "baseline students), or all.", choices=(*CACHE_PARTS, "all"))

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class VerifyOptions:
    """``kdexport verify PKG``."""

    package: str = option(REQUIRED, "A folder written by kdexport package.", argument=True)


@dataclass(frozen=True)
class EnsembleOptions:
    """``kdexport ensemble A.pt B.pt C.pt --out ensemble.pt``."""

    checkpoints: tuple[str, ...] = option(REQUIRED, "Two or more kdexport checkpoints of one architecture (the "
                                                    "same classes and input size).", argument=True,
                                          cli_type=list[str], parse=tuple)
    out: str = option(REQUIRED, "The ensemble checkpoint to write.")
    overwrite: bool = option(False, "Replace --out if it exists.")


@dataclass(frozen=True)
class SelectOptions:
    """``kdexport select --dataset ... --latency-budget 2ms``."""

    latency_budget: str | None = option(None, "Latency budget: 2ms, 500us, 1.5 ms, or 2ms@p90 for the p90.")
    size_budget: str | None = option(None, "Size budget for the ONNX file, e.g. 500KB.")
    dataset: str = option(RunConfig.dataset, "digits (bundled), mnist, cifar10 or imagefolder.",
                          choices=("kdexport.data:DATASETS",))
    data_dir: str | None = option(None, "Local dataset folder.")
    image_size: int | None = option(None, "imagefolder: resize images to this square size.")
    threads: int = option(1, "Intra-op threads the budget is measured with.")
    batch: int = option(1, "Batch size the budget is measured at.")
    int8: bool = option(False, "Time INT8 copies (static for CNNs, dynamic for MLPs), as --quantize would ship.")
    candidates: tuple[str, ...] = option((), "Comma-separated architectures (default: the registered compact and "
                                             "mobile CNNs, plus MLP sizes for small flat inputs).",
                                         cli_type=str, parse=parse_names)
    cifar_stem: bool = option(False, "Build CNN candidates with the stride-1 stem for 32x32 inputs.")
    margin: float = option(RunConfig.budget_margin, "Keep this fraction of the latency budget as a margin.",
                           flags=("--budget-margin",))
    out: str = option("runs/select", "Folder for select.json, select.md and select.png.")

    def __post_init__(self) -> None:
        check_choices(self)
        _check_budgets(self.latency_budget, self.size_budget, self.margin, self.threads, self.batch)
        _check(bool(self.latency_budget or self.size_budget), "select needs --latency-budget or --size-budget")
        _check_image_size(self.dataset, self.image_size)


def _check_budgets(latency: str | None, size: str | None, margin: float, threads: int, batch: int) -> None:
    if latency:
        parse_latency_budget(latency)
    if size:
        parse_size_budget(size)
    _check(_finite(margin) and 0 <= margin < 1, f"budget margin must be in [0, 1), got {margin}")
    _check(threads >= 1 and batch >= 1, "budget threads and batch must be >= 1")


CHECK_METRICS = ("accuracy", "latency", "size", "int8-speed")


@dataclass(frozen=True)
class GateConfig:
    """The limits of ``kdexport check`` (and the entries they apply to)."""

    max_accuracy_drop: float = option(0.5, "Largest allowed accuracy drop, in points.")
    min_accuracy: float | None = option(None, "Smallest allowed accuracy, a fraction in [0, 1].")
    max_latency_ratio: float = option(1.2, "Largest allowed current/baseline p50 latency at batch 1.")
    max_size_ratio: float = option(1.05, "Largest allowed current/baseline ONNX file size.")
    models: tuple[str, ...] = option(("student",), "Comma-separated report entries to gate (teacher, baseline, "
                                                   "student, student_int8) or runtime rows of --targets "
                                                   "(litert:int8, openvino:fp32, ...).", cli_type=str,
                                     parse=parse_names)
    skip: tuple[str, ...] = option((), "Skip a metric (repeatable). Skip latency when the two reports come from "
                                       "different machines; int8-speed: do not fail an INT8 file of the current "
                                       "report that is slower than its FP32 source.",
                                   cli_type=list[str] | None, parse=parse_names, choices=CHECK_METRICS,
                                   kind="metric to skip")

    def __post_init__(self) -> None:
        check_choices(self)
        _check(bool({"accuracy", "latency", "size"} - set(self.skip)),
               "every gate is skipped (--skip accuracy, latency and size): nothing would be checked")
        _check(bool(self.models), "--models names no report entry to gate")
        _check(self.min_accuracy is None or (_finite(self.min_accuracy) and 0 <= self.min_accuracy <= 1),
               f"min accuracy must be a fraction in [0, 1], got {self.min_accuracy}")
        for name in ("max_accuracy_drop", "max_latency_ratio", "max_size_ratio"):
            v = getattr(self, name)
            _check(_finite(v) and v >= 0, f"{name.replace('_', ' ')} must be a number >= 0, got {v}")


@dataclass(frozen=True)
class CheckOptions:
    """``kdexport check REPORT --baseline BASE``."""

    report: str = option(REQUIRED, "The report.json to gate.", argument=True)
    baseline: str = option(REQUIRED, "The baseline report.json to compare against.")
    gates: GateConfig = nested(GateConfig)
    junit: str | None = option(None, "Also write a JUnit XML file.")
    markdown: str | None = option(None, "Also write a Markdown summary (for a pull-request comment).")


# -- generic helpers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CliField:
    name: str  # the field's name, unique over the nesting
    path: tuple[str, ...]  # e.g. ("kd", "temperature")
    type: Any  # the field's resolved type
    default: Any  # REQUIRED when the option must be given
    meta: dict


def cli_fields(cls: type, exclude: tuple[str, ...] = (), prefix: tuple[str, ...] = ()) -> Iterator[CliField]:
    """The CLI options of a config class, nested configs flattened, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            yield from cli_fields(hints[f.name], exclude, (*prefix, f.name))
        elif f.metadata.get("cli", True) and f.name not in exclude:
            default = f.default if f.default is not MISSING else REQUIRED
            yield CliField(f.name, (*prefix, f.name), hints[f.name], default, dict(f.metadata))


def from_flat(cls: type, values: dict[str, Any], exclude: tuple[str, ...] = ()) -> Any:
    """Build ``cls`` from flat CLI values (``{"temperature": 2.0, ...}``), parsing list options."""
    tree: dict[str, Any] = {}
    for f in cli_fields(cls, exclude):
        if f.name not in values:
            continue
        v = values[f.name]
        if v is None and isinstance(f.default, tuple):
            v = f.default  # a repeatable option given no times
        elif f.meta.get("parse") is not None and v is not None and not isinstance(v, tuple):
            v = f.meta["parse"](v)
        node = tree
        for k in f.path[:-1]:
            node = node.setdefault(k, {})
        node[f.path[-1]] = v
    return from_dict(cls, tree)


def _type_name(t: Any) -> str:
    args = typing.get_args(t)
    if type(None) in args:
        return " or ".join(_type_name(a) for a in args if a is not type(None)) + " or null"
    if typing.get_origin(t) is tuple:
        return "a list of " + {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}.get(
            args[0], str(args[0]))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(t, str(t))


def coerce(value: Any, t: Any, where: str, parse: Callable[[Any], Any] | None = None) -> Any:
    """``value`` (read from a JSON/YAML file or a dict) as a field of type ``t``: lists become tuples (a single
    value a list of one), integers floats where a number is wanted, text of a list option is parsed as the CLI
    parses it; anything else of the wrong type is one line naming ``where``."""
    args = typing.get_args(t)
    if type(None) in args:
        if value is None:
            return None
        t = next(a for a in args if a is not type(None))
    if typing.get_origin(t) is tuple:
        if isinstance(value, str) and parse is not None:
            return parse(value)
        item = typing.get_args(t)[0]
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, item, where) for v in value)
        if not isinstance(value, (dict, str)):
            return (coerce(value, item, where),)
    elif t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif t in (bool, str) and isinstance(value, t):
        return value
    elif t is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif t is Any:
        return value
    raise ConfigError(f"{where} must be {_type_name(t)}, got {value!r}")


def from_dict(cls: type, d: dict[str, Any], where: str = "") -> Any:
    """Build a (nested) config from a dict such as ``to_dict()`` wrote; unknown keys and values of the wrong type
    are an error naming the key (prefixed by ``where``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config keys{' in ' + where if where else ''}: {', '.join(sorted(unknown))}")
    kw = {}
    for k, v in d.items():
        key = f"{where}.{k}" if where else k
        if fields[k].metadata.get("nested"):
            kw[k] = from_dict(hints[k], v, key)
        else:
            kw[k] = coerce(v, hints[k], key)
    try:
        return cls(**kw)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{cls.__name__}: {e}") from None


# -- config files (--config FILE) --------------------------------------------------------------------------

def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON config file's mapping (JSON for .json, YAML otherwise; YAML reads JSON too)."""
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path!r} cannot be read: {getattr(e, 'strerror', None) or e}") from None
    try:
        if path.lower().endswith(".json"):
            import json

            value = json.loads(text)
        else:
            import yaml

            value = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: the parser's first line says where
        raise ConfigError(f"config file {path!r} is not valid {'JSON' if path.lower().endswith('.json') else 'YAML'}: "
                          f"{str(e).splitlines()[0][:160]}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of option names to values, not a "
                          f"{type(value).__name__}")
    return value


RECIPE_KEY = "recipe"  # a config file's metadata for benchmarks/run_recipe.py, which the commands skip


Classes = tuple[tuple[type, tuple[str, ...]], ...]  # a command's config classes, each with the fields it excludes


def file_values(path: str, classes: Classes, command: str = "") -> dict[str, Any]:
    """The options a config file gives, flat (field name -> value), for a command built from ``classes``: see
    :func:`mapping_values`. The file's ``recipe`` section (benchmarks/run_recipe.py's) is skipped."""
    raw = dict(read_config_file(path))
    raw.pop(RECIPE_KEY, None)
    return mapping_values(raw, classes, command, f"config file {path!r}")


def mapping_values(raw: dict, classes: Classes, command: str = "", source: str = "config") -> dict[str, Any]:
    """``raw``'s options, flat (field name -> value), for a command built from ``classes`` (each a config class and
    the fields it excludes). Keys are option names (as run-config.json writes them, or as the flags spell them:
    ``kd-loss``), at the top or under the nested section they belong to (``kd``, ``train``, ``quant``,
    ``gates``); an unknown key or a value of the wrong type is one line naming it and ``source``."""
    fields = [f for cls, ex in classes for f in cli_fields(cls, ex) if not f.meta["argument"]]
    arguments = {f.name for cls, ex in classes for f in cli_fields(cls, ex) if f.meta["argument"]}
    sections = {f.path[0] for f in fields if len(f.path) > 1}
    cmd = f"kdexport {command}" if command else "this command"

    def aliases(f: CliField) -> set[str]:
        names = {f.name}
        for flag in f.meta["flags"]:
            for part in flag.split("/"):
                if part.startswith("--") and not part.startswith("--no-"):
                    names.add(part[2:].replace("-", "_"))
        return names

    out: dict[str, Any] = {}

    def take(mapping: dict, section: str | None) -> None:
        for key, value in mapping.items():
            name = str(key).replace("-", "_")
            if section is None and name in sections and isinstance(value, dict):
                take(value, name)
                continue
            where = f"{section}.{key}" if section else str(key)
            match = [f for f in fields if name in aliases(f) and (section is None or f.path[0] == section)]
            if not match:
                why = (" (a positional argument: give it on the command line)" if name in arguments else "")
                raise ConfigError(f"{source}: {where!r} is not an option of {cmd}{why}")
            f = match[0]
            if f.name in out:
                raise ConfigError(f"{source} gives {f.name!r} twice")
            out[f.name] = coerce(value, f.type, f"{source}: {where}", f.meta.get("parse"))

    take(raw, None)
    return out


def to_file_dict(cfg: Any, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``cfg``'s options as a config file holds them (nested sections, lists; no positional arguments and no
    field the CLI does not offer): what ``--print-config`` prints and a run records as run-config.json."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.metadata.get("nested"):
            sub = to_file_dict(v, exclude)
            if sub:
                out[f.name] = sub
        elif f.metadata.get("cli", True) and not f.metadata.get("argument") and f.name not in exclude:
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two (nested) config dicts: the one comparison of
    configs (a resumed run against its recorded options, a training state against its loop's settings)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


MAX_IMAGE_SIZE = 8192
MAX_SEED = 2**32 - 1


def _check_image_size(dataset: str, image_size: int | None) -> None:
    """``--image-size``: imagefolder data only (the other datasets have a fixed size), in [8, 8192]."""
    if image_size is None:
        return
    _check(dataset == "imagefolder", f"--image-size applies to imagefolder data only; {dataset} has a fixed size")
    _check(8 <= image_size <= MAX_IMAGE_SIZE, f"image size must be in [8, {MAX_IMAGE_SIZE}], got {image_size}")


def _check_data_options(dataset: str, crop_ratio: float | None, budget: str | None, workers: int | None) -> None:
    _check(crop_ratio is None or dataset in ("imagefolder", "cifar10"),
           f"--crop-ratio applies to image files (imagefolder); {dataset} has a fixed size")
    _check(crop_ratio is None or (_finite(crop_ratio) and 0.1 <= crop_ratio <= 1),
           f"crop ratio must be in [0.1, 1], got {crop_ratio}")
    if budget is not None:
        parse_memory_budget(budget)
    _check(workers is None or 0 <= workers <= 256, f"workers must be in [0, 256], got {workers}")


def _check_seed(seed: int) -> None:
    _check(0 <= seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {seed}")
