"""Picking the student for a budget: budget parsing, the choice on injected timings, and both commands."""

import json

import pytest
from typer.testing import CliRunner

from kdexport.bench.select import Candidate, choose
from kdexport.cli import app
from kdexport.config import LatencyBudget, parse_latency_budget, parse_size_budget
from kdexport.errors import ConfigError

from .conftest import FAST

runner = CliRunner()


@pytest.mark.parametrize("text,ms,stat", [("2ms", 2.0, "p50"), ("500us", 0.5, "p50"), ("1.5 ms", 1.5, "p50"),
                                          ("2ms@p90", 2.0, "p90"), ("0.25s", 250.0, "p50"),
                                          (" 3 MS @ p90", 3.0, "p90")])
def test_latency_budgets_parse(text, ms, stat):
    assert parse_latency_budget(text) == LatencyBudget(pytest.approx(ms), stat)


@pytest.mark.parametrize("text", ["2", "2 parsecs", "-1ms", "0ms", "ms", "2ms@p99", "fast"])
def test_bad_latency_budgets_are_refused(text):
    with pytest.raises(ConfigError, match="latency budget"):
        parse_latency_budget(text)


def test_size_budgets_parse():
    assert parse_size_budget("500KB") == 512_000 and parse_size_budget("1.5 MB") == 1_572_864
    assert parse_size_budget("2000B") == 2000
    with pytest.raises(ConfigError, match="size budget"):
        parse_size_budget("500 furlongs")


def _c(arch, flops, p50, p90=None, size=1000):
    return Candidate(arch, params=flops // 2, flops=flops, onnx_bytes=size, p50_ms=p50, p90_ms=p90 or p50 * 1.2)


def test_the_largest_fitting_candidate_wins():
    cands = [_c("small", 10, 0.2), _c("mid", 100, 0.9), _c("big", 1000, 3.0), _c("wide", 500, 1.7)]
    assert choose(cands, LatencyBudget(2.0), margin=0.1).arch == "wide"  # 1.7 <= 1.8
    assert [c.fits for c in cands] == [True, True, False, True]
    assert "over budget (3.000 ms > 1.800 ms" in cands[2].note


def test_margin_and_p90_budgets():
    cands = [_c("a", 10, 0.5), _c("b", 100, 1.85, p90=1.9)]
    assert choose(cands, LatencyBudget(2.0), margin=0.1).arch == "a"  # 1.85 > 1.8: the margin excludes b
    assert choose(cands, LatencyBudget(2.0), margin=0.0).arch == "b"
    cands = [_c("a", 10, 0.5, p90=0.6), _c("b", 100, 1.0, p90=2.5)]
    assert choose(cands, LatencyBudget(2.0, "p90"), margin=0.0).arch == "a"  # b's p50 fits, its p90 does not


def test_size_budget_and_nothing_fits():
    cands = [_c("a", 10, 0.5, size=900), _c("b", 100, 0.6, size=5000)]
    assert choose(cands, LatencyBudget(2.0), 0.1, size_budget=1000).arch == "a"
    with pytest.raises(ConfigError, match=r"no candidate fits 0.1 ms \(p50\) \(margin 10%\): the fastest, a, takes "
                                          r"0.500 ms p50"):
        choose(cands, LatencyBudget(0.1), 0.1)
    unmeasured = [Candidate("x", note="cannot be built")]
    with pytest.raises(ConfigError, match="no candidate could be measured"):
        choose(unmeasured, LatencyBudget(1.0), 0.1)


def test_select_command_writes_its_table_and_refuses_an_impossible_budget(tmp_path):
    res = runner.invoke(app, ["select", "--latency-budget", "1s", "--candidates", "mlp:8,mlp:32",
                              "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "s" / "select.json").read_text())
    assert r["chosen"] == "mlp:32" and {c["arch"] for c in r["candidates"]} == {"mlp:8", "mlp:32"}
    assert r["environment"]["cpu"] and (tmp_path / "s" / "select.png").read_bytes()[:4] == b"\x89PNG"
    assert "**chosen**" in (tmp_path / "s" / "select.md").read_text()
    res = runner.invoke(app, ["select", "--latency-budget", "1us", "--candidates", "mlp:8,mlp:32",
                              "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "no candidate fits 0.001 ms" in " ".join(res.output.split())
    assert runner.invoke(app, ["select", "--latency-budget", "2 parsecs"]).exit_code == 2
    assert runner.invoke(app, ["select"]).exit_code == 2  # a budget is required


def test_distill_export_student_auto_distils_the_choice_and_checks_the_budget(tmp_path):
    res = runner.invoke(app, ["distill-export", "--out", str(tmp_path / "a"), *FAST, "--student", "auto",
                              "--latency-budget", "1s", "--candidates", "mlp:8,mlp:16"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["models"]["student"]["arch"] == "mlp:16" and report["config"]["student"] == "auto"
    b = report["budget"]
    assert b["met"] and b["selection"]["chosen"] == "mlp:16" and len(b["selection"]["candidates"]) == 2
    assert not (tmp_path / "a" / "selection.json").exists()  # resume bookkeeping: the report holds it
    assert "Budget: onnx/student.onnx timed again after training" in (tmp_path / "a" / "report.md").read_text()
    # a named student that misses its budget: the run and its report are kept, the command exits 1
    res = runner.invoke(app, ["distill-export", "--out", str(tmp_path / "m"), *FAST, "--latency-budget", "1us"])
    assert res.exit_code == 1 and "misses its budget" in " ".join(res.output.split())
    assert json.loads((tmp_path / "m" / "report.json").read_text())["budget"]["met"] is False
    res = runner.invoke(app, ["distill-export", "--out", str(tmp_path / "x"), *FAST, "--student", "auto"])
    assert res.exit_code == 2 and "--student auto needs --latency-budget" in res.output


def test_resume_with_student_auto_reuses_the_interrupted_runs_choice(tmp_path, monkeypatch):
    import kdexport.pipeline as pl
    from kdexport.config import RunConfig

    out = tmp_path / "run"
    staging = tmp_path / ".run.partial"
    staging.mkdir()
    (staging / "selection.json").write_text(json.dumps({"chosen": "mlp:16", "candidates": []}))
    monkeypatch.setattr(pl, "select_for_run", lambda *a: pytest.fail("measured again on resume"))
    ctx = pl.prepare(RunConfig(student="auto", latency_budget="1s", resume=True, out=str(out)))
    assert ctx.student_spec.arch == "mlp:16" and ctx.selection["chosen"] == "mlp:16"
