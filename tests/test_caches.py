"""Optional caches never crash, fail or poison a run: a write that cannot happen is a warning (a full disk
included: no SIGBUS), an entry is used again only when its bytes match the digest written with it and its values
are finite, and a bad entry is recomputed with a warning."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdexport.cli import app
from kdexport.distill.teacher import TorchTeacher, cached_teacher_logits, teacher_cache_key
from kdexport.models.builders import ModelSpec, build_model

from .conftest import FAST

runner = CliRunner()


@pytest.fixture
def teacher(digits):
    torch.manual_seed(0)
    return TorchTeacher.for_data(build_model(ModelSpec("mlp:32", 10, (1, 8, 8))), digits)


def test_a_table_changed_on_disk_is_recomputed_with_a_warning(teacher, digits, tmp_path):
    clean = cached_teacher_logits(teacher, digits, tmp_path).clone()
    path = tmp_path / f"{teacher_cache_key(teacher, digits)}.npy"
    assert (tmp_path / f"{path.name}.sha256").is_file()
    table = np.load(path, mmap_mode="r+")
    table[:, 3] += 5.0  # the header intact, every value of one class shifted: a poisoned table
    table.flush()
    del table
    with pytest.warns(RuntimeWarning, match="does not match the digest written with it .or it has none.; recomputing"):
        again = cached_teacher_logits(teacher, digits, tmp_path)
    assert torch.equal(again, clean)
    assert torch.equal(cached_teacher_logits(teacher, digits, tmp_path), clean)  # rewritten and trusted again


def test_non_finite_values_are_refused_even_with_a_matching_digest(teacher, digits, tmp_path):
    from kdexport.files import hash_file

    clean = cached_teacher_logits(teacher, digits, tmp_path).clone()
    path = tmp_path / f"{teacher_cache_key(teacher, digits)}.npy"
    table = np.load(path, mmap_mode="r+")
    table[7, 2] = np.nan
    table.flush()
    del table
    (tmp_path / f"{path.name}.sha256").write_text(hash_file(path).hexdigest() + "\n")  # a digest that "matches"
    with pytest.warns(RuntimeWarning, match="its shape, type or values are not this teacher's logits"):
        again = cached_teacher_logits(teacher, digits, tmp_path)
    assert torch.equal(again, clean)


def test_an_entry_without_its_digest_is_not_trusted(teacher, digits, tmp_path):
    cached_teacher_logits(teacher, digits, tmp_path)
    path = tmp_path / f"{teacher_cache_key(teacher, digits)}.npy"
    (tmp_path / f"{path.name}.sha256").unlink()  # written by an older kdexport, or cut off before its digest
    with pytest.warns(RuntimeWarning, match="or it has none"):
        cached_teacher_logits(teacher, digits, tmp_path)
    assert (tmp_path / f"{path.name}.sha256").is_file()


def test_a_broken_teacher_is_one_line_not_advice_about_the_learning_rate(digits, tmp_path):
    from kdexport.errors import ModelError

    torch.manual_seed(0)
    m = build_model(ModelSpec("mlp:32", 10, (1, 8, 8)))
    with torch.no_grad():
        m.net[-1].bias[4] = float("nan")
    with pytest.raises(ModelError, match="NaN or infinite on 1,442 training images"):
        cached_teacher_logits(TorchTeacher.for_data(m, digits), digits, tmp_path)
    assert not list(tmp_path.glob("*.npy"))  # nothing half-written or poisoned is left


def test_a_damaged_cached_baseline_is_trained_again(tmp_path, monkeypatch):
    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(tmp_path / "cache"))
    args = ["distill-export", *FAST]
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "a")]).exit_code == 0
    (entry,) = (tmp_path / "cache" / "baselines").iterdir()
    blob = bytearray((entry / "model.pt").read_bytes())
    blob[-100] ^= 0xFF  # a flipped byte in the cached weights
    (entry / "model.pt").write_bytes(bytes(blob))
    with pytest.warns(RuntimeWarning, match="baseline cache entry .* is not used: its content does not match"):
        res = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / x / "report.json").read_text()) for x in "ab")
    assert "baseline_reused" not in b  # trained again, to the same accuracy
    assert b["models"]["baseline"]["accuracy_onnx"] == a["models"]["baseline"]["accuracy_onnx"]
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "c")])  # and kept again, trusted
    assert "baselines" in json.loads((tmp_path / "c" / "report.json").read_text())["baseline_reused"]


def test_a_cache_path_that_is_a_file_is_a_warning_for_runs_and_one_line_for_cache_commands(tmp_path, monkeypatch):
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KDEXPORT_CACHE_DIR", str(blocker))
    with pytest.warns(RuntimeWarning, match="not saved, going on without it"):
        res = runner.invoke(app, ["distill-export", *FAST, "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    for args in (["cache", "list"], ["cache", "clear"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and f"the cache path '{blocker}' is not a folder" in " ".join(res.output.split())
        assert res.output.count("error:") == 1


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs filled to its last few KiB: every cache write meets a full disk (skipped where mount is not
    allowed)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        with open(mnt / "filler", "wb") as f:
            f.write(b"x" * (1024 * 1024 - 8 * 1024))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_under_every_cache_is_a_warning_not_a_sigbus(full_disk, tmp_path, digits):
    """The teacher's view table (2.9 MB here), its logit table and the baseline cache all meet a full disk; the run
    goes on in memory and finishes (a memory map filled on a full disk used to kill it with SIGBUS, exit 135)."""
    env = {**os.environ, "KDEXPORT_CACHE_DIR": str(full_disk / "cache")}
    cmd = [sys.executable, "-m", "kdexport", "distill-export", *FAST, "--out", str(tmp_path / "o"),
           "--augment", "shift2-flip", "--teacher-view-cache"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    err = " ".join(res.stderr.split())
    assert "teacher view cache not saved, going on without it" in err and "No space left on device" in err
    assert "baseline cache not saved, going on without it" in err
    assert (tmp_path / "o" / "report.json").is_file()
    cmd[cmd.index("--augment") + 1] = "none"  # the plain logit table
    cmd[cmd.index("--out") + 1] = str(tmp_path / "p")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and "teacher-logit cache not saved" in " ".join(res.stderr.split()), res.stderr[-2000:]


@pytest.mark.slow
def test_a_full_disk_under_the_decoded_image_cache(full_disk, tmp_path):
    from PIL import Image

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    env = {**os.environ, "KDEXPORT_CACHE_DIR": str(full_disk / "cache")}
    res = subprocess.run([sys.executable, "-m", "kdexport", "distill-export", *FAST, "--dataset", "imagefolder",
                          "--data-dir", str(root), "--image-size", "40", "--force", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "decoded-image cache not saved, going on without it" in " ".join(res.stderr.split())
