"""The one timing harness: interleaved rounds, the median of round p50s with its spread, ratios from the same
rounds, and the twin warning. A fake clock makes the disturbances exact."""

import pytest

from kdexport.bench.timing import disagree, interleaved, ratio


class FakeClock:
    """Seconds that pass only when a fake model runs: 1 ms a call, 2 ms while ``window`` (start, end) lasts."""

    def __init__(self, window: tuple[float, float] = (0.0, 0.0)):
        self.now, self.window = 0.0, window

    def __call__(self) -> float:
        return self.now

    def model(self, cost_ms: float = 1.0):
        def run(x) -> None:
            slow = self.window[0] <= self.now < self.window[1]
            self.now += (2 * cost_ms if slow else cost_ms) / 1e3

        return run


def _time(clock: FakeClock, names, rounds: int, costs=None) -> dict:
    models = {n: (clock.model((costs or {}).get(n, 1.0)), lambda b: None) for n in names}
    return interleaved(models, [1], warmup=0, iters=100, rounds=rounds, clock=clock)


def _p50(r: dict, name: str) -> float:
    return r[name]["latency_ms"]["batch_1"]["p50"]


def test_one_slow_window_cannot_move_one_models_figure():
    """Four identical models (a report's teacher, baseline, student and INT8 file) and one slow spell as long as a
    model's whole measurement. Timed one after another (one round), the spell lands on the first model alone: 2x,
    a "property" it does not have. In five interleaved rounds it lands in at most two rounds of any model, so every
    median stays 1 ms and the twins agree within their spreads."""
    names = ["teacher", "baseline", "student", "int8"]
    one_pass = _time(FakeClock(window=(0.0, 0.2)), names, rounds=1)
    assert _p50(one_pass, "teacher") == pytest.approx(2.0) and _p50(one_pass, "baseline") == pytest.approx(1.0)
    assert disagree(one_pass["teacher"], one_pass["baseline"])
    rounds = _time(FakeClock(window=(0.0, 0.2)), names, rounds=5)
    for n in names:
        assert _p50(rounds, n) == pytest.approx(1.0), n
        assert rounds[n]["latency_ms"]["batch_1"]["spread"] == pytest.approx([1.0, 2.0])  # the spell shows as spread
    assert not disagree(rounds["baseline"], rounds["student"])
    assert ratio(rounds["teacher"], rounds["student"])["median"] == pytest.approx(1.0)


def test_round_statistics_by_hand():
    clock = FakeClock()
    r = _time(clock, ["a", "b"], rounds=4, costs={"a": 3.0, "b": 1.5})
    lat = r["a"]["latency_ms"]["batch_1"]
    assert lat["rounds"] == 4 and lat["runs"] == 100 and lat["round_p50"] == pytest.approx([3.0] * 4)
    assert lat["p50"] == pytest.approx(3.0) and lat["spread"] == pytest.approx([3.0, 3.0])
    assert r["a"]["throughput_per_s"] == pytest.approx(1 / 3.0e-3)
    assert ratio(r["a"], r["b"]) == {"median": pytest.approx(2.0), "spread": pytest.approx([2.0, 2.0])}
    assert clock.now == pytest.approx(0.1 * 3.0 + 0.1 * 1.5)  # 100 runs each, nothing timed twice


def test_twins_disagree_only_beyond_their_spreads_and_a_tolerance():
    def timed(rounds):
        return {"latency_ms": {"batch_1": {"p50": sorted(rounds)[len(rounds) // 2], "spread": [min(rounds),
                                                                                               max(rounds)]}}}

    assert disagree(timed([1.0, 1.1, 1.2]), timed([2.0, 2.1, 2.2]))  # apart, by 2x
    assert not disagree(timed([1.0, 1.5, 2.0]), timed([1.8, 1.9, 2.2]))  # the ranges overlap
    assert not disagree(timed([1.00, 1.00, 1.01]), timed([1.03, 1.03, 1.04]))  # apart, by 3%: steady, not disturbed


def test_rounds_never_exceed_the_runs():
    clock = FakeClock()
    r = interleaved({"a": (clock.model(), lambda b: None)}, [1], warmup=0, iters=3, rounds=5, clock=clock)
    assert r["a"]["latency_ms"]["batch_1"]["rounds"] == 3 and r["a"]["latency_ms"]["batch_1"]["runs"] == 3




def test_each_turn_settles_before_it_is_timed():
    """A model's first two calls after another model ran cost 5x (the previous session's threads still spin):
    settling calls are not timed, so every timed call is steady; with no warm-up allowed they would be timed."""
    clock, last = FakeClock(), []

    def model(name: str):
        def run(x) -> None:
            last.append(name)
            cold = len(last) < 3 or last[-2] != name or last[-3] != name
            clock.now += (5.0 if cold else 1.0) / 1e3

        return run, lambda b: None

    settled = interleaved({"a": model("a"), "b": model("b")}, [1], warmup=10, iters=50, rounds=5, clock=clock)
    for n in "ab":
        lat = settled[n]["latency_ms"]["batch_1"]
        assert lat["p99"] == pytest.approx(1.0) and lat["spread"] == pytest.approx([1.0, 1.0]) and lat["runs"] == 50
    unsettled = interleaved({"a": model("a"), "b": model("b")}, [1], warmup=0, iters=50, rounds=5, clock=clock)
    assert unsettled["a"]["latency_ms"]["batch_1"]["p99"] == pytest.approx(5.0)

def _time_finished_run(finished_run, monkeypatch, rounds: int, slow_file: str | None = None) -> tuple[dict, dict]:
    """``time_models`` over the finished run's four files (teacher, baseline, student, INT8 student; baseline and
    student share one graph), each file run for real by onnxruntime but timed on a fake clock on which the first
    quarter of the timing (one model's whole one-pass measurement) is twice as slow; ``slow_file`` costs 3 ms a
    run throughout, as if something slowed that model alone in every round."""
    import dataclasses
    from pathlib import Path

    import torch

    from kdexport import pipeline
    from kdexport.config import RunConfig
    from kdexport.data.datasets import load_dataset
    from kdexport.distill.context import Context
    from kdexport.report.entry import ModelEntry

    clock = FakeClock(window=(0.0, 0.04 * 2))  # 40 runs of 1 ms, twice as slow: one model's one-pass measurement
    real = pipeline.onnx_runner

    def runner(path, threads=None):
        run_file, tick = real(path, threads), clock.model(3.0 if Path(path).name == slow_file else 1.0)

        def run(x):
            run_file(x)
            tick(x)

        return run

    monkeypatch.setattr(pipeline, "onnx_runner", runner)
    monkeypatch.setattr(pipeline, "interleaved", lambda *a, **k: interleaved(*a, **k, clock=clock))
    cfg = dataclasses.replace(RunConfig(), bench_iters=40, bench_warmup=0, bench_batch=1, bench_rounds=rounds,
                              bench_max_seconds=1000.0)
    ctx = Context(cfg, load_dataset("digits"), None, None, 1, torch.device("cpu"))
    models = {role: ModelEntry.from_dict(d) for role, d in finished_run.report["models"].items()}
    timing = pipeline.time_models(ctx, finished_run.out, models)
    return models, timing


def test_a_one_window_spell_moves_one_pass_figures_but_not_interleaved_ones(finished_run, monkeypatch):
    models, timing = _time_finished_run(finished_run, monkeypatch, rounds=1)  # the old one-pass timing
    assert models["teacher"].p50() == pytest.approx(2.0) and models["baseline"].p50() == pytest.approx(1.0)
    assert timing["speedups"]["baseline_vs_teacher_batch_1"]["median"] == pytest.approx(2.0)  # a false 2x speed-up
    models, timing = _time_finished_run(finished_run, monkeypatch, rounds=5)
    assert [m.p50() for m in models.values()] == pytest.approx([1.0] * 4)
    assert timing["speedups"]["student_int8_vs_fp32_batch_1"]["median"] == pytest.approx(1.0)
    # the spell slows FP32 and INT8 student in the same rounds: a ratio taken within each round cancels it
    assert models["student_int8"].quantization["speedup_vs_fp32_batch_1_spread"] == pytest.approx([1.0, 1.0])
    assert timing["warnings"] == []


def test_twins_apart_in_every_round_get_a_warning_in_the_report(finished_run, monkeypatch):
    from kdexport.pipeline import TWINS
    from kdexport.report.write import to_markdown

    assert ("baseline", "student") in TWINS
    models, timing = _time_finished_run(finished_run, monkeypatch, rounds=5, slow_file="student.onnx")
    assert models["student"].p50() == pytest.approx(3.0) and models["baseline"].p50() == pytest.approx(1.0)
    assert len(timing["warnings"]) == 1 and timing["warnings"][0].startswith("baseline and student share one graph")
    report = dict(finished_run.report, models={r: m.to_dict() for r, m in models.items()},
                  timing=dict(finished_run.report["timing"], rounds=5, **timing))
    md = to_markdown(report)
    assert f"**Warning: {timing['warnings'][0]}.**" in md
    assert "3.000 (3.000-6.000)" in md and "in 5 rounds" in md  # the student's p50 with its spread
