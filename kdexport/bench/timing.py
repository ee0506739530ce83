"""The one benchmark path: warm-up, timed runs, percentiles. ORT sessions and PyTorch eager
are timed by the same function on the same inputs."""

from __future__ import annotations

import contextlib
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
                  warmup: int, iters: int, max_seconds: float | None = None) -> dict:
    """``{"batch_N": {p50, p90, p99, mean, runs}}`` plus ``throughput_per_s`` at the largest batch.

    ``data`` is a Dataset (its real test images are used) or a function batch -> input tensor."""
    inputs_for = _inputs_for(data)
    out: dict = {}
    for b in batches:
        x = inputs_for(b)
        out[f"batch_{b}"] = time_fn(lambda x=x: run(x), warmup, iters, max_seconds)
    big = max(batches)
    throughput = big / (out[f"batch_{big}"]["p50"] / 1e3)
    return {"latency_ms": out, "throughput_per_s": throughput}


def bench_onnx(path: str | os.PathLike, data: Dataset | InputsFor, batches: list[int], *, threads: int | None = None,
               warmup: int = RunConfig.bench_warmup, iters: int = RunConfig.bench_iters,
               max_seconds: float | None = None, graph_opt: str = "all") -> dict:
    """Latency and throughput of an ONNX file under onnxruntime. A graph whose batch size is fixed (mobile
    exports often fix it at 1) is fed what it accepts: batch B runs as ceil(B / fixed) calls, as an app would
    run it (``bench`` records the fixed batch from the graph)."""
    threads = threads or usable_cores()
    sess = ort_session(path, threads=threads, graph_opt=graph_opt)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    if fixed:
        def run(x: torch.Tensor) -> object:
            return ort_logits(sess, x.numpy())
    else:
        def run(x: torch.Tensor) -> object:
            return sess.run(None, {inp.name: x.numpy()})
    res = latency_table(run, data, batches, warmup, iters, max_seconds)
    res["threads"] = threads
    return res


def bench_torch(model: nn.Module, data: Dataset | InputsFor, batches: list[int], *, threads: int | None = None,
                warmup: int = RunConfig.bench_warmup, iters: int = RunConfig.bench_iters,
                max_seconds: float | None = None) -> dict:
    threads = threads or usable_cores()
    model = model.eval().cpu()

    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(x)

    with torch_threads(threads):
        res = latency_table(run, data, batches, warmup, iters, max_seconds)
    res["threads"] = threads
    return res


def quick_p50(data: Dataset, threads: int | None = None) -> Callable[[str | os.PathLike], float]:
    """A function giving an ONNX file's batch-1 p50 (ms) on ``data``'s test images from a short measurement (5
    warm-up and up to 50 timed runs, 5 s at most): what ``--fallback auto`` weighs each step with."""

    def p50_ms(path: str | os.PathLike) -> float:
        r = bench_onnx(path, data, [1], threads=threads, warmup=5, iters=50, max_seconds=5.0)
        return p50(r, 1)

    return p50_ms
