"""``kdexport sweep --shard K/N`` and ``--merge`` (issue 48): which units a shard owns, how units, the teacher
and the merge are claimed, the bad inputs, and a sweep finished by its shards in one process. Two real processes
on one --out, and a shard killed mid-unit, are in tests/test_sweep_shards_e2e.py."""

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.config import Grid, KDConfig, parse_shard
from kdexport.errors import ConfigError, OutputError
from kdexport.outputs import claim, lock_output, release_output, unclaim
from kdexport.sweep import shard_units, sweep_units

TINY = ["--teacher", "mlp:64", "--epochs", "2", "-T", "2,4", "--soft-weight", "0.5", "--seeds", "0",
        "--bench-iters", "3", "--bench-batch", "4"]  # 3 units: the baseline and two cells, one seed


def test_shard_values_by_hand():
    assert parse_shard(None) is None
    assert parse_shard("0/1", {}) == (0, 1) and parse_shard(" 3/4 ", {}) == (3, 4)
    slurm = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_STEP": "2",
             "SLURM_ARRAY_TASK_COUNT": "4"}  # --array=1-7:2 -> tasks 1, 3, 5, 7: the fourth
    assert parse_shard("auto", slurm) == (3, 4) and parse_shard("auto/4", slurm) == (3, 4)
    assert parse_shard("auto", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == (0, 2)
    assert parse_shard("auto/5", {"JOB_COMPLETION_INDEX": "4"}) == (4, 5)


@pytest.mark.parametrize("value, env, message", [
    ("2/2", {}, "shard index 2 must be in 0..1"),
    ("0/0", {}, "at least 1"),
    ("1", {}, "expected K/N"),
    ("-1/2", {}, "expected K/N"),
    ("a/b", {}, "expected K/N"),
    ("auto", {}, "no scheduler index"),
    ("auto", {"JOB_COMPLETION_INDEX": "1"}, "pass --shard auto/N"),
    ("auto/3", {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}, "SLURM_ARRAY_TASK_COUNT is 4, not 3"),
    ("auto/2", {"JOB_COMPLETION_INDEX": "x"}, "not a whole number"),
    ("auto/2", {"JOB_COMPLETION_INDEX": "2"}, "shard index 2 must be in 0..1"),
])
def test_bad_shard_values_are_one_line(value, env, message):
    with pytest.raises(ConfigError, match=message):
        parse_shard(value, env)


def test_every_unit_has_exactly_one_owner():
    grid = Grid(temperatures=(2.0, 4.0), soft_weights=(0.5, 0.9), seeds=(0, 1, 2))
    units = sweep_units(grid, KDConfig())
    assert len(units) == 3 + 4 * 3 and [u.name for u in units[:3]] == ["baseline"] * 3
    assert [(u.name, u.seed) for u in units[3:6]] == [("T2-b0.5-t2", 0), ("T2-b0.5-t2", 1), ("T2-b0.5-t2", 2)]
    shares = [shard_units(units, (k, 4)) for k in range(4)]
    assert [len(s) for s in shares] == [4, 4, 4, 3] and shares[1] == [units[1], units[5], units[9], units[13]]
    assert sorted(map(id, sum(shares, []))) == sorted(map(id, units))  # a partition: every unit, once
    assert shard_units(units, None) == units == shard_units(units, (0, 1))


def test_a_claim_excludes_every_other_holder_until_released(tmp_path):
    lock = tmp_path / "unit.lock"
    fd = claim(lock)
    assert fd is not None and claim(lock) is None  # another open file: refused, as another process would be
    other = subprocess.run([sys.executable, "-c", "from pathlib import Path; from kdexport.outputs import claim; "
                            f"print(claim(Path({str(lock)!r})) is None)"], capture_output=True, text=True)
    assert other.stdout.strip() == "True", other.stderr
    unclaim(fd)
    fd2 = claim(lock)
    assert fd2 is not None
    unclaim(fd2)


def test_shards_share_a_folder_that_a_plain_run_cannot_take(tmp_path):
    out = tmp_path / "sweep"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, pathlib; from kdexport.outputs import lock_output; "
                               f"lock_output(pathlib.Path({str(out)!r}), shared=True); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="in use by another kdexport process .shards of a sweep"):
            lock_output(out)
        lock_output(out, shared=True)  # another shard joins
        release_output(out)
        assert (out.parent / ".sweep.lock").exists()  # the first shard still holds it: the file stays
    finally:
        holder.communicate("")
    lock_output(out)  # every shard gone: a plain run takes it
    release_output(out)
    assert not (out.parent / ".sweep.lock").exists()


def _sweep(*args: str):
    return CliRunner().invoke(app, ["sweep", *TINY, *args])


@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2", "--out", "X"], "shard index 2 must be in 0..1"),
    (["--shard", "auto", "--out", "X"], "no scheduler index"),
    (["--shard", "0/2"], "--shard needs --out"),
    (["--shard", "0/2", "--out", "X", "--overwrite"], "--overwrite cannot be combined with --shard"),
    (["--merge", "--shard", "0/2", "--out", "X"], "--merge and --shard do not go together"),
    (["--merge", "--out", "X"], "is not a kdexport sweep"),
    (["--merge"], "--merge needs --out"),
    (["--shard", "0/2", "--out", "X", "--student", "auto", "--latency-budget", "1ms"], "choose it first"),
])
def test_bad_shard_and_merge_requests_are_one_line_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "X").mkdir()
    (tmp_path / "X" / "notes.txt").write_text("not a sweep")
    res = _sweep(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert (tmp_path / "X" / "notes.txt").exists()


def test_a_sweep_finished_by_its_shards_one_after_another(tmp_path):
    """Shard 0 of 2 trains its units and leaves the merge to the last; shards with other options or another grid
    are refused naming them; --merge writes a partial result saying what is missing; shard 1 finishes the sweep
    and writes the whole result, equal to the one a single process writes."""
    out = tmp_path / "s"
    res = _sweep("--out", str(out), "--shard", "0/2")
    assert res.exit_code == 0, res.output
    assert "1 of 3 units are not finished yet" in res.output
    assert not (out / "sweep.json").exists()
    done = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert done == ["T4-b0.5-t2-s0.json", "baseline-s0.json"]  # units 0 and 2 of [baseline, T2, T4]

    res = CliRunner().invoke(app, ["sweep", *TINY[:2], "--epochs", "3", *TINY[4:], "--out", str(out),
                                   "--shard", "1/2"])
    assert res.exit_code == 2 and "another shard of this sweep with other options" in res.output
    assert "train.epochs" in res.output
    res = CliRunner().invoke(app, ["sweep", *TINY[:4], "-T", "2,8", *TINY[6:], "--out", str(out), "--shard", "1/2"])
    assert res.exit_code == 2 and "another grid" in res.output and "temperatures" in res.output

    res = CliRunner().invoke(app, ["sweep", "--merge", "--out", str(out)])
    assert res.exit_code == 0, res.output
    partial = json.loads((out / "sweep.json").read_text())
    assert partial["complete"] is False and partial["missing_units"] == ["T2-b0.5-t2-s0"]
    assert set(partial["cells"]) == {"T4-b0.5-t2"} and partial["best"]["report"] is None
    assert not (out / "best").exists() and "PARTIAL (1 units missing)" in res.output
    md = (out / "sweep.md").read_text()
    assert "Partial result: 1 unit(s) not finished yet** (T2-b0.5-t2-s0)" in md and "| pending |" in md

    res = _sweep("--out", str(out), "--shard", "1/2")
    assert res.exit_code == 0, res.output
    assert "T2-b0.5-t2 s0: trained" in res.output and "baseline s0: trained" not in res.output
    whole = json.loads((out / "sweep.json").read_text())
    assert whole["complete"] is True and "missing_units" not in whole and whole["merged_by"] == "shard 1/2"
    assert (out / "best" / "report.json").exists() and not list(out.rglob("*.lock"))

    single = tmp_path / "one"
    res = _sweep("--out", str(single))
    assert res.exit_code == 0, res.output
    ref = json.loads((single / "sweep.json").read_text())
    for key in ("cells", "baseline", "grid"):
        assert whole[key] == ref[key], key
    assert whole["best"]["cell"] == ref["best"]["cell"]
    assert {k: [h["test_accuracy"] for h in v] for k, v in whole["histories"].items()} == \
        {k: [h["test_accuracy"] for h in v] for k, v in ref["histories"].items()}

    res = _sweep("--out", str(out), "--shard", "0/2")  # a shard started after the end: nothing to do
    assert res.exit_code == 0 and "every unit was already done and merged" in res.output
    assert os.path.getmtime(out / "sweep.json") >= os.path.getmtime(out / "best" / "report.json")


def test_shards_on_machines_without_a_shared_folder_merge_from_copies(tmp_path, finished_run):
    """A CI matrix: each shard writes its own folder (the teacher from a checkpoint, so none trains it), the folders
    are copied into one (artifacts downloaded together) and --merge writes the whole sweep, equal to one process's."""
    import shutil

    teacher = ["--teacher-checkpoint", str(finished_run.out / "checkpoints" / "teacher.pt")]
    for k in range(2):
        res = _sweep(*teacher, "--out", str(tmp_path / f"shard{k}"), "--shard", f"{k}/2")
        assert res.exit_code == 0, res.output
        assert "teacher epoch" not in res.output
    merged = tmp_path / "merged"
    for k in range(2):
        shutil.copytree(tmp_path / f"shard{k}", merged, dirs_exist_ok=True)
    res = CliRunner().invoke(app, ["sweep", "--merge", "--out", str(merged)])
    assert res.exit_code == 0, res.output
    whole = json.loads((merged / "sweep.json").read_text())
    assert whole["complete"] and whole["merged_by"] == "--merge" and (merged / "best" / "report.json").exists()
    res = _sweep(*teacher, "--out", str(tmp_path / "one"))
    assert res.exit_code == 0, res.output
    ref = json.loads((tmp_path / "one" / "sweep.json").read_text())
    assert whole["cells"] == ref["cells"] and whole["baseline"] == ref["baseline"]
