"""--select-fraction: the model trains on the part of each batch a small proxy finds hardest."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdexport.config import TrainConfig
from kdexport.distill.hard_examples import HardExampleSelector, n_selected
from kdexport.distill.train import fit
from kdexport.errors import ConfigError, UnknownNameError
from kdexport.models.builders import ModelSpec, build_model


def test_n_selected_by_hand():
    assert [n_selected(1024, 0.5), n_selected(10, 0.01), n_selected(3, 1.0), n_selected(7, 0.5)] == [512, 1, 3, 4]


def _selector(lr=0.1):
    proxy = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        proxy.weight.copy_(torch.eye(3))
    opt = torch.optim.SGD(proxy.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return proxy, HardExampleSelector(proxy, opt, sched, 0.5, "fp32", torch.device("cpu"))


def test_the_hardest_examples_are_kept_in_batch_order_and_the_proxy_learns_from_them():
    proxy, sel = _selector()
    x = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    y = torch.tensor([0, 0, 2, 1])  # the identity proxy is right on 0 and 2, wrong on 1 and 3
    w0 = proxy.weight.detach().clone()
    w = w0.clone().requires_grad_(True)
    F.cross_entropy(x[[1, 3]] @ w.T, y[[1, 3]]).backward()  # the proxy's step: the kept examples' mean loss
    keep = sel.select(x, y)
    assert keep.tolist() == [1, 3]
    assert torch.allclose(proxy.weight, w0 - 0.1 * w.grad)


def test_the_proxy_learns_on_one_batch_in_four_and_ranks_the_others():
    proxy, sel = _selector()
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 3
    weights = []
    for _ in range(5):
        sel.select(x, y)
        weights.append(proxy.weight.detach().clone())
    changed = [not torch.equal(a, b) for a, b in zip([torch.eye(3)] + weights, weights)]
    assert changed == [True, False, False, False, True]
    assert sel.steps == 5 and sel.sched.last_epoch == 5  # the schedule advances every batch, as the model's does


def _run(digits, **kw):
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet8", 10, (1, 8, 8)))
    cfg = TrainConfig(**{"epochs": 3, "batch_size": 200, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "seed": 0,
                         "select_fraction": 0.5, "select_proxy": "mlp:16", **kw})
    return model, cfg


def test_fit_trains_on_the_selected_fraction_and_resumes_bit_for_bit(digits, tmp_path, dies_in_epoch):
    full, cfg = _run(digits)
    h = fit(full, digits, cfg)
    n = digits.x_train.shape[0]
    batches = [200] * (n // 200) + ([n % 200] if n % 200 else [])
    assert [r["trained_examples"] for r in h] == [sum(n_selected(b, 0.5) for b in batches)] * 3
    assert h[-1]["test_accuracy"] > 0.6  # it still learns (chance: 0.1)
    dies_in_epoch(3)
    part, _ = _run(digits)
    with pytest.raises(KeyboardInterrupt):
        fit(part, digits, cfg, state_path=tmp_path / "s.pt")
    assert torch.load(tmp_path / "s.pt", weights_only=True)["selector"]["steps"] > 0
    dies_in_epoch(None)
    again, _ = _run(digits)
    fit(again, digits, cfg, state_path=tmp_path / "s.pt", resume=True)  # the proxy resumes too
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), again.parameters()))
    plain, _ = _run(digits)
    h_plain = fit(plain, digits, TrainConfig(**{**cfg.__dict__, "select_fraction": 1.0}))
    assert "trained_examples" not in h_plain[-1]
    assert not all(torch.equal(p, q) for p, q in zip(full.parameters(), plain.parameters()))


def test_bad_selection_options():
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="select fraction"):
            TrainConfig(select_fraction=bad)
    from kdexport.config import RunConfig
    from kdexport.pipeline import prepare

    with pytest.raises(UnknownNameError, match="unknown model 'tinynet'"):  # before any data is loaded
        prepare(RunConfig(train=TrainConfig(select_fraction=0.5, select_proxy="tinynet")))
    TrainConfig(select_proxy="tinynet")  # not used when off, so not checked
