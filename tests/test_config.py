import pytest

from kdexport.config import KDConfig, RunConfig, TrainConfig
from kdexport.errors import ConfigError


@pytest.mark.parametrize("T", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_must_be_positive_and_finite(T):
    with pytest.raises(ConfigError, match="temperature"):
        KDConfig(temperature=T)


@pytest.mark.parametrize("beta", [-0.1, 1.01, float("nan")])
def test_soft_weight_must_be_in_unit_interval(beta):
    with pytest.raises(ConfigError, match="beta"):
        KDConfig(soft_weight=beta)


@pytest.mark.parametrize("kw,msg", [({"epochs": 0}, "epochs"), ({"lr": 0}, "learning rate"),
                                    ({"optimizer": "rmsprop"}, "optimizer"),
                                    ({"scheduler": "step"}, "scheduler"), ({"batch_size": 0}, "batch")])
def test_train_config_validation(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw)


def test_teacher_epochs_override_and_roundtrip():
    cfg = RunConfig(train=TrainConfig(epochs=3), teacher_epochs=7)
    assert cfg.teacher_train().epochs == 7 and cfg.train.epochs == 3
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config keys: bogus"):
        RunConfig.from_dict({**cfg.to_dict(), "bogus": 1})
