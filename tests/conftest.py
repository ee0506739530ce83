import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Tests never touch the user's cache of teacher logits (subprocesses inherit this too).
os.environ["KDEXPORT_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdexport-test-cache-")
SHARED_DATA = Path(os.environ.get("KDEXPORT_TEST_DATA", ROOT.parent / "shared" / "datasets"))
# Under pytest-xdist (``make test`` runs two workers on two cores), each worker computes on one thread.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2

# The one set of options that makes a CLI run quick (digits, a small teacher, a few epochs, short timing). A test
# that needs other values adds them after it: the last value of a repeated option wins.
FAST = ["--teacher", "mlp:64", "--epochs", "3", "--bench-iters", "3", "--bench-batch", "4"]
# What the finished run below adds to FAST: an INT8 copy (whatever its drop) and the app package.
FINISHED_EXTRA = ["--quantize", "dynamic", "--max-accuracy-drop", "100", "--package"]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def digits():
    from kdexport.data.datasets import load_dataset

    return load_dataset("digits")


@dataclass(frozen=True)
class FinishedRun:
    out: Path  # the run folder
    report: dict  # its report.json
    output: str  # what the CLI printed


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> FinishedRun:
    """One ``kdexport distill-export`` on digits through the CLI (FAST, plus a dynamic INT8 student and its package),
    shared by every test that only reads a finished run. A test that changes files works on a copy."""
    from typer.testing import CliRunner

    from kdexport.cli import app

    out = tmp_path_factory.mktemp("finished") / "run"
    res = CliRunner().invoke(app, ["distill-export", "--out", str(out), *FAST, *FINISHED_EXTRA])
    assert res.exit_code == 0, res.output
    return FinishedRun(out, json.loads((out / "report.json").read_text()), res.output)


def shared_data(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real data not present at {p}")
    return p


@pytest.fixture
def dies_in_epoch(monkeypatch):
    """``dies_in_epoch(n)``: from now on ``fit`` raises KeyboardInterrupt when epoch ``n`` starts (a run killed
    mid-way); ``dies_in_epoch(None)`` lets training run again."""
    import kdexport.distill.train as train_mod

    real = train_mod.train_epoch

    def arm(n: int | None) -> None:
        def dying(loop, state, epoch):
            if epoch == n:
                raise KeyboardInterrupt
            return real(loop, state, epoch)

        monkeypatch.setattr(train_mod, "train_epoch", real if n is None else dying)

    return arm
