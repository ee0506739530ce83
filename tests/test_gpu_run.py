"""benchmarks/gpu_run.py (issue 19's GPU check) and run_recipe's --set/--workroot/--results-dir, without a GPU:
the data packs and unpacks to the same ImageFolder, the step runner keeps its time budget and says what became of
each step, and an overridden recipe can never write over the committed results or runs."""

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_run  # noqa: E402
import run_recipe  # noqa: E402


def _imagefolder(root: Path, per_class: int) -> dict[str, bytes]:
    files = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                rel = f"{split}/{cls}/{i:03d}.jpg"
                files[rel] = f"{rel} bytes".encode()
                (root / rel).write_bytes(files[rel])
    return files


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pack_unpack_round_trip_and_subset(tmp_path):
    files = _imagefolder(tmp_path / "src", per_class=3)
    dest, count = gpu_run.pack(tmp_path / "src", tmp_path / "d" / "all.tar.gz")
    assert count == 12 and not list((tmp_path / "d").glob("*.partial"))
    assert _files(gpu_run.unpack(dest, tmp_path / "x")) == files  # byte for byte, same layout
    dest, count = gpu_run.pack(tmp_path / "src", tmp_path / "d" / "two.tar.gz", per_class=2)
    got = _files(gpu_run.unpack(dest, tmp_path / "y"))
    assert count == 8 and sorted(got) == sorted(k for k in files if not k.endswith("002.jpg"))  # first 2 by name


def test_pack_refuses_a_folder_without_splits(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(SystemExit, match="train/ and test/"):
        gpu_run.pack(tmp_path, tmp_path / "a.tar.gz")
    with pytest.raises(SystemExit, match="gpu_run.py pack"):
        gpu_run.unpack(tmp_path / "missing.tar.gz", tmp_path)


def test_steps_keep_the_budget_and_report_each_outcome(tmp_path):
    """A fake interpreter stands in for run_recipe.py: its second argument is the step's name."""
    fake = tmp_path / "fake.sh"
    fake.write_text('#!/bin/sh\necho "ran $2"\ncase "$2" in ok) exit 0;; bad) exit 3;; slow) sleep 30;; esac\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    steps = (("ok", 0.0), ("bad", 0.0), ("slow", 0.0), ("late", 1.0))
    with open(tmp_path / "log", "w") as log:
        t = time.monotonic()
        recs = gpu_run.run_steps(steps, tmp_path / "data", tmp_path / "out", tmp_path / "w", 2.0, ["a=1"], log,
                                 python=str(fake))
        took = time.monotonic() - t
    assert [r["status"] for r in recs] == ["done", "failed (exit 3)", "stopped", "skipped"]
    assert took < 10  # the sleeping step was killed at the budget, not waited for
    text = (tmp_path / "log").read_text()
    assert "ran ok" in text and "ran bad" in text and "--workroot" in text and "--set a=1" in text


def test_a_failed_smoke_run_skips_the_real_steps(tmp_path, monkeypatch):
    """The smoke run goes first on its own data, with the short schedule; the real steps run only if it passed."""
    fake = tmp_path / "fake.sh"
    fake.write_text('#!/bin/sh\necho "ran $2 on $4"\ncase "$2:$4" in other:*small) exit 3;; esac\n')  # fails in smoke
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(gpu_run, "STEPS", (("ok", 0.0), ("other", 0.0)))
    for smoke_steps, want in (((("ok", 0.0),), ["done", "done"]), ((("ok", 0.0), ("other", 0.0)), ["skipped"] * 2)):
        monkeypatch.setattr(gpu_run, "SMOKE_STEPS", smoke_steps)
        with open(tmp_path / "log", "w") as log:
            res = gpu_run.smoke_then_steps(tmp_path / "data", tmp_path / "small", tmp_path / "out", tmp_path, 60.0,
                                           [], log, python=str(fake))
        assert [r["status"] for r in res["steps"]] == want
        assert [r["recipe"] for r in res["smoke"]] == [n for n, _ in smoke_steps]
        text = (tmp_path / "log").read_text()
        assert f"ran ok on {tmp_path / 'small'}" in text and "smoke ok" in text and "--set train.epochs=1" in text
        assert (f"ran other on {tmp_path / 'data'}" in text) == (want[0] == "done")
    with open(tmp_path / "log", "w") as log:  # --no-smoke: the steps alone
        res = gpu_run.smoke_then_steps(tmp_path / "data", None, tmp_path / "out", tmp_path, 60.0, [], log,
                                       python=str(fake))
    assert "smoke" not in res and [r["status"] for r in res["steps"]] == ["done", "done"]


def test_steps_can_be_chosen_and_the_smoke_run_covers_only_those(tmp_path, monkeypatch):
    assert gpu_run.select_steps(None) == [1, 2, 3] and gpu_run.select_steps("3") == [3]
    assert gpu_run.select_steps("2, 1") == [1, 2]
    for bad, why in (("4", "1-3"), ("0", "1-3"), ("x", "1-3"), (",", "1-3"), ("2,3", "needs 1")):
        with pytest.raises(SystemExit, match=why):
            gpu_run.select_steps(bad)
    fake = tmp_path / "fake.sh"
    fake.write_text('#!/bin/sh\necho "ran $2 on $4"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(gpu_run, "STEPS", (("one", 0.0), ("two", 0.0), ("three", 0.0)))
    monkeypatch.setattr(gpu_run, "SMOKE_STEPS", (("one", 0.0), ("two", 0.0)))
    with open(tmp_path / "log", "w") as log:
        res = gpu_run.smoke_then_steps(tmp_path / "data", tmp_path / "small", tmp_path / "out", tmp_path, 60.0, [],
                                       log, python=str(fake), chosen=[3])
    assert "smoke" not in res and [r["recipe"] for r in res["steps"]] == ["three"]  # no smoke step covers 3
    with open(tmp_path / "log", "w") as log:
        res = gpu_run.smoke_then_steps(tmp_path / "data", tmp_path / "small", tmp_path / "out", tmp_path, 60.0, [],
                                       log, python=str(fake), chosen=[1, 3])
    assert [r["recipe"] for r in res["smoke"]] == ["one"] and [r["recipe"] for r in res["steps"]] == ["one", "three"]


def test_overrides_change_a_copy_only():
    r = run_recipe.load_recipe("cifar10-fast-teacher-students-best")
    got = run_recipe.apply_overrides(r, ["train.epochs=1", "teacher_epochs=2", "grid.seeds=[0]", "teacher_tta=none"])
    assert got.values["epochs"] == 1 and got.values["teacher_epochs"] == 2
    assert got.values["seeds"] == (0,) and got.values["teacher_tta"] == "none"  # not JSON: kept as a string
    assert r.values["epochs"] == 10 and r.values["seeds"] == (0, 1, 2)
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        run_recipe.apply_overrides(r, ["train.epochs"])
    with pytest.raises(SystemExit, match="not a sweep"):
        run_recipe.apply_overrides(run_recipe.load_recipe("cifar10-fast-teacher-wide-long"), ["grid.seeds=[0]"])


@pytest.mark.parametrize("extra", [[], ["--results-dir", "/tmp/r"], ["--workroot", "/tmp/w"]])
def test_set_needs_its_own_results_and_workroot(monkeypatch, extra):
    monkeypatch.setattr(sys, "argv", ["run_recipe.py", "digits-default", "--set", "train.epochs=1", *extra])
    with pytest.raises(SystemExit, match="--results-dir and --workroot"):
        run_recipe.main()


def test_a_bad_set_is_one_line_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["run_recipe.py", "digits-default", "--set", "train.epoch=1", "--results-dir",
                                      str(tmp_path / "r"), "--workroot", str(tmp_path / "w")])
    with pytest.raises(SystemExit, match=r"^run_recipe.py digits-default: --set: 'train.epoch' is not an option of "
                                         r"kdexport distill-export$"):
        run_recipe.main()
    assert not (tmp_path / "r").exists()


def test_checkpoint_paths_follow_the_workroot(tmp_path):
    r = run_recipe.load_recipe("cifar10-fast-teacher-students-best")
    cfg, _ = run_recipe.recipe_config(r, "/data", str(tmp_path / "o"), workroot=tmp_path)
    assert cfg.teacher_checkpoint == str(tmp_path / "runs/recipes/cifar10-fast-teacher-wide-long/teacher.pt")
    assert cfg.data_dir == "/data"


def test_overridden_run_records_its_changes(tmp_path):
    (path,) = run_recipe.run("digits-default", workroot=tmp_path / "w", results=tmp_path / "r",
                             sets=("train.epochs=1", "bench_iters=2"))
    rep = json.loads(path.read_text())
    assert rep["recipe"]["overrides"] == ["train.epochs=1", "bench_iters=2"]
    assert rep["recipe"]["command"].endswith(
        "--set train.epochs=1 --set bench_iters=2 --workroot DIR --results-dir DIR")
    assert [(m["epochs"], len(m["history"])) for m in rep["models"].values()] == [(1, 1)] * 3
    assert "Not the recipe as committed" in (tmp_path / "r" / "digits-default.md").read_text()


def test_commit_stamp_of_a_copy_without_git(tmp_path, monkeypatch):
    from kdexport.envinfo import git_commit

    monkeypatch.setenv("KDEXPORT_GIT_COMMIT", "abc1234")
    assert git_commit(tmp_path) == "abc1234"
    # a copy that carries a .git (the device tool's, stale) is stamped with what the copier says, not its HEAD
    assert git_commit.__wrapped__(ROOT) == "abc1234"
    monkeypatch.delenv("KDEXPORT_GIT_COMMIT")
    assert git_commit(tmp_path / "other") is None
    assert git_commit.__wrapped__(ROOT) not in (None, "abc1234")  # this checkout's own HEAD
    assert os.environ.get("KDEXPORT_GIT_COMMIT") is None


def test_run_refuses_a_machine_without_cuda_unless_asked(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["gpu_run.py", "run", "--out", str(tmp_path / "o"),
                                      "--archive", str(tmp_path / "none.tar.gz")])
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_run.main()
    assert not (tmp_path / "o").exists()  # refused before anything was written
    monkeypatch.setattr(sys, "argv", sys.argv + ["--allow-cpu"])  # then the missing archive is the next stop
    with pytest.raises(SystemExit, match="gpu_run.py pack"):
        gpu_run.main()
    assert not (tmp_path / "o").exists()


def test_pack_prints_the_device_command_with_the_commit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_run, "ARCHIVE", tmp_path / ".devdata" / "c.tar.gz")
    monkeypatch.setattr(gpu_run, "SMOKE_ARCHIVE", tmp_path / ".devdata" / "s.tar.gz")
    monkeypatch.setattr(gpu_run, "SMOKE_PER_CLASS", 1)
    _imagefolder(tmp_path / "src2", per_class=2)
    monkeypatch.setattr(sys, "argv", ["gpu_run.py", "pack", "--src", str(tmp_path / "src2"),
                                      "--dest", str(tmp_path / ".devdata" / "c.tar.gz")])
    gpu_run.main()
    out = capsys.readouterr().out
    assert "packed 8 images" in out and "KDEXPORT_GIT_COMMIT=" in out and "run --out $OUT" in out
    assert "packed 4 images" in out and "(the smoke run's)" in out  # the first image of each class and split
    assert len(_files(gpu_run.unpack(tmp_path / ".devdata" / "s.tar.gz", tmp_path / "x"))) == 4
