import pickle

import pytest
import torch

from kdexport.errors import CheckpointError
from kdexport.models.builders import ModelSpec, build_model
from kdexport.models.checkpoint import load_model, read_checkpoint, save_checkpoint

SPEC = ModelSpec("mlp:16", 10, (1, 8, 8))


def test_roundtrip_records_config_and_environment(tmp_path):
    torch.manual_seed(0)
    m = build_model(SPEC)
    save_checkpoint(tmp_path / "c.pt", m, SPEC, role="teacher", config={"seed": 3}, metrics={"accuracy": 0.5})
    m2, spec, blob = load_model(tmp_path / "c.pt", expect=SPEC)
    assert spec == SPEC and blob["config"] == {"seed": 3} and blob["environment"]["torch"]
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


def test_wrong_arch_or_class_count_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", build_model(SPEC), SPEC, role="teacher", config={})
    with pytest.raises(CheckpointError, match="holds a mlp:16, not a mlp:32"):
        load_model(tmp_path / "c.pt", expect=ModelSpec("mlp:32", 10, (1, 8, 8)))
    with pytest.raises(CheckpointError, match="10 classes; the dataset has 5"):
        load_model(tmp_path / "c.pt", expect=ModelSpec("mlp:16", 5, (1, 8, 8)))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_arbitrary_pickle_is_refused(tmp_path):
    torch.save({"format": "kdexport-checkpoint/1", "model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
