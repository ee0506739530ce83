"""The one timing harness (:func:`interleaved`): warm-up, then rounds that go round-robin over every model being
compared, percentiles, and ratios from the same rounds. ORT sessions and PyTorch eager are timed by the same
function on the same inputs; every latency kdexport reports comes from it."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..config import RunConfig
from ..data.datasets import Dataset, real_inputs
from ..envinfo import usable_cores
from ..runtimes.ort import ort_logits, ort_session


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "runs": int(a.size)}


def time_fn(fn: Callable[[], object], warmup: int = RunConfig.bench_warmup, iters: int = RunConfig.bench_iters,
            max_seconds: float | None = None) -> dict[str, float]:
    """Latency of ``fn()`` in ms: ``warmup`` untimed calls, then up to ``iters`` timed calls
    (stopping early once ``max_seconds`` is spent, after at least 5 runs)."""
    for _ in range(warmup):
        fn()
    samples = []
    start = time.perf_counter()
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and i >= 4 and time.perf_counter() - start > max_seconds:
            break
    return percentiles(samples)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def p50(result: dict, batch: int = 1) -> float:
    """Median latency in ms at ``batch`` of a :func:`latency_table` / :func:`bench_onnx` result."""
    return result["latency_ms"][f"batch_{batch}"]["p50"]


InputsFor = Callable[[int], torch.Tensor]


def _inputs_for(data: Dataset | InputsFor) -> InputsFor:
    return data if callable(data) else (lambda b: real_inputs(data, b))


def latency_table(run: Callable[[torch.Tensor], object], data: Dataset | InputsFor, batches: list[int],
                  warmup: int, iters: int, max_seconds: float | None = None, rounds: int = 1) -> dict:
    """``{"batch_N": {p50, p90, p99, mean, runs, ...}}`` plus ``throughput_per_s`` at the largest batch, for one
    callable: :func:`interleaved` with a single entry.

    ``data`` is a Dataset (its real test images are used) or a function batch -> input tensor."""
    return interleaved({"model": (run, _inputs_for(data))}, batches, warmup=warmup, iters=iters,
                       max_seconds=max_seconds, rounds=rounds)["model"]


Timed = dict[str, tuple[Callable[[torch.Tensor], object], "Dataset | InputsFor"]]  # name -> (run, inputs)


def _call(run: Callable[[torch.Tensor], object], x: torch.Tensor, clock: Callable[[], float]) -> float:
    """One untimed call's duration (warm-up and settling: it decides when to time, it is not a sample)."""
    t0 = clock()
    run(x)
    return clock() - t0


SETTLED = 1.25  # a call within this factor of the model's fastest untimed call: its caches are warm again


def interleaved(models: Timed, batches: list[int], *, warmup: int = RunConfig.bench_warmup,
                iters: int = RunConfig.bench_iters, max_seconds: float | None = None,
                rounds: int = RunConfig.bench_rounds, clock: Callable[[], float] = time.perf_counter) -> dict:
    """The one timing harness. Every model is timed in ``rounds`` rounds that go round-robin over all of them
    (the first model of a round rotates), ``iters / rounds`` runs each round after ``warmup`` untimed calls
    per model: a slow spell of the machine lands in one round of every model it meets, not in one model's
    whole window. Each model's turn in a round starts with untimed calls until one is within ``SETTLED`` of its
    fastest (at most ``warmup``): the models timed before it evicted its weights from the caches, and a
    mobilenet_v3_small's first call after a turn of others takes 2x (eager models, and an ONNX session's threads
    when they spin: :func:`onnx_runner`, add more). ``p50`` is the median of the rounds' p50s and ``spread``
    their [min, max]; ``round_p50`` keeps them, for ratios from the same rounds (:func:`ratio`); p90, p99 and mean
    are over every run. ``max_seconds`` bounds the time spent per model and batch (at least 2 runs a round).
    Returns ``{name: {"latency_ms": {"batch_N": {...}}, "throughput_per_s": ...}}``."""
    rounds = max(1, min(rounds, iters))
    per_round = max(1, -(-iters // rounds))
    budget = None if max_seconds is None else max_seconds / rounds
    out: dict = {name: {"latency_ms": {}} for name in models}
    for b in batches:
        inputs = {name: _inputs_for(data)(b) for name, (_, data) in models.items()}
        best = {name: math.inf for name in models}  # each model's fastest untimed call: what "settled" means
        for name in models:
            for _ in range(warmup):
                best[name] = min(best[name], _call(models[name][0], inputs[name], clock))
        samples: dict[str, list[float]] = {name: [] for name in models}
        round_p50: dict[str, list[float]] = {name: [] for name in models}
        names = list(models)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                run, x = models[name][0], inputs[name]
                for _ in range(warmup):  # settle: caches refilled after the other models' turns
                    dt = _call(run, x, clock)
                    best[name] = min(best[name], dt)
                    if dt <= SETTLED * best[name]:
                        break
                these = []
                start = clock()
                for i in range(per_round):
                    t0 = clock()
                    run(x)
                    these.append((clock() - t0) * 1e3)
                    if budget is not None and i >= 1 and clock() - start > budget:
                        break
                samples[name] += these
                round_p50[name].append(float(np.median(these)))
        for name in models:
            stats = percentiles(samples[name])
            stats.update(p50=float(np.median(round_p50[name])), rounds=rounds,
                         spread=[min(round_p50[name]), max(round_p50[name])], round_p50=round_p50[name])
            out[name]["latency_ms"][f"batch_{b}"] = stats
    big = max(batches)
    for name in models:
        out[name]["throughput_per_s"] = big / (out[name]["latency_ms"][f"batch_{big}"]["p50"] / 1e3)
    return out


def ratio(a: dict, b: dict, batch: int = 1) -> dict:
    """``a``'s p50 over ``b``'s (two :func:`interleaved` results from the same call) as the median of the per-round
    ratios, with their [min, max]: a speed-up that carries its spread."""
    ra, rb = (x["latency_ms"][f"batch_{batch}"]["round_p50"] for x in (a, b))
    per_round = [x / y for x, y in zip(ra, rb)]
    return {"median": float(np.median(per_round)), "spread": [min(per_round), max(per_round)]}


TWIN_TOLERANCE = 0.10  # twins this close (relative) agree whatever their spreads: below what a user acts on


def disagree(a: dict, b: dict, batch: int = 1) -> bool:
    """Whether two models' p50s at ``batch`` lie further apart than their spreads allow: their [min, max] ranges
    of round p50s do not overlap, and the medians differ by more than ``TWIN_TOLERANCE`` (a few microseconds of
    a tiny model's steady, narrow rounds are not a disturbed measurement)."""
    (lo_a, hi_a), (lo_b, hi_b) = (x["latency_ms"][f"batch_{batch}"]["spread"] for x in (a, b))
    pa, pb = (x["latency_ms"][f"batch_{batch}"]["p50"] for x in (a, b))
    return (hi_a < lo_b or hi_b < lo_a) and abs(pa - pb) > TWIN_TOLERANCE * min(pa, pb)


SPIN_STOP = {"session.force_spinning_stop": "1"}  # see onnx_runner


def onnx_runner(path: str | os.PathLike, threads: int | None = None, graph_opt: str = "all"
                ) -> Callable[[torch.Tensor], object]:
    """One call of an ONNX file's session on a batch, as an app makes it; a graph whose batch size is fixed (mobile
    exports often fix it at 1) is fed what it accepts: batch B as ceil(B / fixed) calls.

    The session's worker threads stop spinning when a call returns (``session.force_spinning_stop``): by default
    they spin for 20-50 ms after each call, and with several sessions timed in turns those threads take the cores
    from the next model (resnet18 at 32x32 on 2 cores: 2-5x slower for its first ~5 calls; resnet8 twins split
    0.14 / 0.24 ms). Each call thus starts with its threads asleep, as in an app that runs the model once a frame;
    an app calling one model back to back can be faster (resnet8: 0.136 vs 0.160 ms)."""
    sess = ort_session(path, threads=threads or usable_cores(), graph_opt=graph_opt, config=SPIN_STOP)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    if fixed:
        return lambda x: ort_logits(sess, x.numpy())
    return lambda x: sess.run(None, {inp.name: x.numpy()})


def file_runner(path: str | os.PathLike, threads: int | None = None, graph_opt: str = "all"
                ) -> Callable[[torch.Tensor], object]:
    """One call of any runtime's model file on a batch (:func:`onnx_runner` for ONNX files; others through their
    runtime's :class:`~kdexport.runtimes.base.ModelFile`, a fixed batch fed what it takes)."""
    from ..runtimes.base import load, runtime_for

    if runtime_for(path) == "onnxruntime":
        runner = onnx_runner(path, threads, graph_opt)
        runner.threads = threads or usable_cores()
        return runner
    model = load(path, threads=threads or usable_cores())
    runner = (lambda x: model.logits(x.numpy())) if model.fixed_batch else (lambda x: model.run(x.numpy()))
    runner.threads = model.threads or threads or usable_cores()  # ExecuTorch's pool is process-wide: what it got
    return runner


def eager_runner(model: nn.Module) -> Callable[[torch.Tensor], object]:
    model = model.eval().cpu()

    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(x)

    return run


def bench_onnx(path: str | os.PathLike, data: Dataset | InputsFor, batches: list[int], *, threads: int | None = None,
               warmup: int = RunConfig.bench_warmup, iters: int = RunConfig.bench_iters,
               max_seconds: float | None = None, graph_opt: str = "all", rounds: int = 1) -> dict:
    """Latency and throughput of one ONNX file under onnxruntime, through the one harness (:func:`interleaved`);
    to compare files, time them together with :func:`interleaved`."""
    threads = threads or usable_cores()
    res = latency_table(onnx_runner(path, threads, graph_opt), data, batches, warmup, iters, max_seconds, rounds)
    res["threads"] = threads
    return res


def bench_torch(model: nn.Module, data: Dataset | InputsFor, batches: list[int], *, threads: int | None = None,
                warmup: int = RunConfig.bench_warmup, iters: int = RunConfig.bench_iters,
                max_seconds: float | None = None, rounds: int = 1) -> dict:
    threads = threads or usable_cores()
    with torch_threads(threads):
        res = latency_table(eager_runner(model), data, batches, warmup, iters, max_seconds, rounds)
    res["threads"] = threads
    return res


def quick_p50(data: Dataset, threads: int | None = None) -> Callable[[str | os.PathLike], float]:
    """A function giving an ONNX file's batch-1 p50 (ms) on ``data``'s test images from a short measurement (5
    warm-up and up to 50 timed runs, 5 s at most): what ``--fallback auto`` weighs each step with."""

    def p50_ms(path: str | os.PathLike) -> float:
        r = bench_onnx(path, data, [1], threads=threads, warmup=5, iters=50, max_seconds=5.0)
        return p50(r, 1)

    return p50_ms
