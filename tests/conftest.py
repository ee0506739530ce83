import os
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Tests never touch the user's cache of teacher logits (subprocesses inherit this too).
os.environ["KDEXPORT_CACHE_DIR"] = tempfile.mkdtemp(prefix="kdexport-test-cache-")
SHARED_DATA = Path(os.environ.get("KDEXPORT_TEST_DATA", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from kdexport.data.datasets import load_dataset

    return load_dataset("digits")


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
