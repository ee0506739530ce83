"""Shards as real processes on one --out (issue 48): two started together give the sweep one process gives, every
unit and the teacher trained once; a shard killed in the middle of a unit, rerun, completes the sweep without
training a finished unit again."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# 6 units: 2 baselines, 2 cells x 2 seeds
ARGS = ["--teacher", "mlp:64", "--epochs", "20", "-T", "2,4", "--soft-weight", "0.5", "--seeds", "0,1",
        "--bench-iters", "3", "--bench-batch", "4", "--threads", "1", "--no-baseline-cache"]
UNITS = {"baseline-s0", "baseline-s1", "T2-b0.5-t2-s0", "T2-b0.5-t2-s1", "T4-b0.5-t2-s0", "T4-b0.5-t2-s1"}
TRAINED = re.compile(r"^> (\S+) s(\d+): trained", re.M)


def _start(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdexport", "sweep", *ARGS, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(p: subprocess.Popen) -> str:
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output
    return output


def _trained(*outputs: str) -> list[str]:
    return [f"{name}-s{seed}" for output in outputs for name, seed in TRAINED.findall(output)]


def _same_sweep(a: dict, b: dict) -> None:
    for key in ("cells", "baseline", "grid"):
        assert a[key] == b[key], key
    assert a["best"]["cell"] == b["best"]["cell"] and a["complete"] and b["complete"]
    assert {k: [h["test_accuracy"] for h in v] for k, v in a["histories"].items()} == \
        {k: [h["test_accuracy"] for h in v] for k, v in b["histories"].items()}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "s"
    output = _finish(_start(out))
    assert sorted(_trained(output)) == sorted(UNITS)
    return json.loads((out / "sweep.json").read_text())


def test_two_shards_started_together_give_the_single_process_sweep(tmp_path, single):
    out = tmp_path / "s"
    shards = [_start(out, "--shard", f"{k}/2") for k in range(2)]
    outputs = [_finish(p) for p in shards]
    trained = _trained(*outputs)
    assert sorted(trained) == sorted(UNITS)  # every unit trained, none twice
    assert sum("teacher epoch 1:" in o for o in outputs) == 1  # the teacher trained once; the other shard waited
    _same_sweep(json.loads((out / "sweep.json").read_text()), single)
    assert (out / "best" / "report.json").exists() and not list(out.rglob("*.lock"))


def test_a_shard_killed_mid_unit_and_rerun_completes_the_sweep(tmp_path, single):
    out = tmp_path / "s"
    first = _start(out, "--shard", "0/2")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill it once one unit is finished and the next is part-trained
        if list((out / "cells").glob("*.json")) and list((out / "cells").glob("*.state.pt")):
            break
        assert first.poll() is None, first.communicate()[0]
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    finished = {p.stem: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert finished and len(finished) < 3 and list((out / "cells").glob("*.state.pt"))
    assert not (out / "sweep.json").exists()

    rerun = [_start(out, "--shard", f"{k}/2") for k in range(2)]
    outputs = [_finish(p) for p in rerun]
    trained = _trained(*outputs)
    assert sorted(trained) == sorted(UNITS - set(finished))  # nothing finished is trained again
    assert {p.stem: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json") if p.stem in finished} == finished
    assert "s0: continuing from the last epoch an interrupted run saved" in outputs[0]  # the killed unit
    _same_sweep(json.loads((out / "sweep.json").read_text()), single)
