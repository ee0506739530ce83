"""--optimizer muon (orthogonalized filter updates, airbench94_muon's) and --scheduler linear."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdexport.config import TrainConfig
from kdexport.distill.muon import Muon, orthogonalize
from kdexport.distill.train import _optimizer, fit
from kdexport.errors import ConfigError
from kdexport.models.builders import ModelSpec, build_model


def test_orthogonalize_brings_a_filter_bank_near_orthogonal():
    g = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))  # 64 filters of 64 x 3 x 3
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.5  # U S' V^T with S' near [0.5, 1.5], not exactly 1
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 1.5  # and g itself was not


def test_orthogonalize_keeps_the_singular_vectors_and_ignores_scale_and_orientation():
    gen = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(40, 12, generator=gen))
    s = torch.linspace(1.0, 3.0, 12)
    g = u @ torch.diag(s) @ v.T
    o = orthogonalize(g)
    core = u.T @ o @ v  # diagonal if o = U S' V^T
    assert torch.allclose(core, torch.diag(torch.diagonal(core)), atol=1e-4)
    assert (torch.diagonal(core) > 0.5).all() and (torch.diagonal(core) < 1.5).all()
    assert torch.allclose(orthogonalize(7.0 * g), o, atol=1e-5)  # the step's size does not follow the gradient's
    assert torch.allclose(orthogonalize(g.T), o.T, atol=1e-5)  # tall matrices iterate on their transpose
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.ones(2, 2, 2))


def test_muon_step_by_hand():
    gen = torch.Generator().manual_seed(2)
    w = nn.Parameter(torch.randn(4, 3, 3, 3, generator=gen))
    w0 = w.detach().clone()
    opt = Muon([w], lr=0.1, momentum=0.5, orthogonal=True)
    g1, g2 = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)

    def expected(p, u):
        return p * 2.0 / p.norm() - 0.1 * orthogonalize(u.reshape(4, -1)).view(4, 3, 3, 3)  # sqrt(4 filters) = 2

    w.grad = g1.clone()
    opt.step()
    w1 = expected(w0, g1 + 0.5 * g1)  # the first buffer is the gradient; Nesterov adds m * buffer
    assert torch.allclose(w.detach(), w1, atol=1e-6)
    w.grad = g2.clone()
    opt.step()
    assert torch.allclose(w.detach(), expected(w1, g2 + 0.5 * (0.5 * g1 + g2)), atol=1e-6)


def test_muon_sgd_groups_match_torch_nesterov_sgd():
    gen = torch.Generator().manual_seed(3)
    a = nn.Parameter(torch.randn(5, 7, generator=gen))
    b = nn.Parameter(a.detach().clone())
    mine = Muon([a], lr=0.05, momentum=0.85, weight_decay=0.01)
    ref = torch.optim.SGD([b], lr=0.05, momentum=0.85, nesterov=True, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(5, 7, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        mine.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_an_orthogonal_group_refuses_a_vector():
    with pytest.raises(ValueError, match="1-D"):
        Muon([nn.Parameter(torch.ones(3))], lr=0.1, orthogonal=True)


def test_muon_puts_exactly_the_conv_filters_in_the_orthogonal_group():
    model = build_model(ModelSpec("resnet8", 10, (1, 8, 8)))
    cfg = TrainConfig(optimizer="muon", lr=0.5, momentum=0.85, weight_decay=0.002, bias_lr_scale=64.0,
                      muon_lr=0.3, muon_momentum=0.6)
    opt = _optimizer(model, cfg)
    assert isinstance(opt, Muon)
    ortho = [g for g in opt.param_groups if g["orthogonal"]]
    assert len(ortho) == 1 and (ortho[0]["lr"], ortho[0]["momentum"], ortho[0]["weight_decay"]) == (0.3, 0.6, 0.0)
    filters = {id(p) for p in model.parameters() if p.ndim == 4}
    assert {id(p) for p in ortho[0]["params"]} == filters and filters
    rest = [g for g in opt.param_groups if not g["orthogonal"]]
    assert [(g["lr"], g["momentum"]) for g in rest] == [(0.5, 0.85), (0.5 * 64, 0.85)]  # others, norm biases
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for _ in model.parameters())
    with pytest.raises(ConfigError, match="has none"):
        _optimizer(build_model(ModelSpec("mlp:16", 10, (1, 8, 8))), cfg)


def test_linear_schedule_reaches_zero_on_every_group(digits):
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet8", 10, (1, 8, 8)))
    cfg = TrainConfig(epochs=2, batch_size=600, optimizer="muon", lr=0.2, momentum=0.85, scheduler="linear",
                      muon_lr=0.1, seed=0)
    h = fit(model, digits, cfg)
    assert [r["lr"] for r in h] == pytest.approx([0.2, 0.2 * (1 - 3 / 6)])  # 3 steps an epoch, 6 in all


def test_fit_with_muon_learns_and_resumes_bit_for_bit(digits, tmp_path, dies_in_epoch):
    cfg = TrainConfig(epochs=3, batch_size=128, optimizer="muon", lr=0.05, momentum=0.85, scheduler="linear",
                      label_smoothing=0.2, seed=0)

    def model():
        torch.manual_seed(0)
        return build_model(ModelSpec("resnet8", 10, (1, 8, 8)))

    full = model()
    h = fit(full, digits, cfg)
    assert h[-1]["test_accuracy"] > 0.8  # 10 classes: chance is 0.1
    dies_in_epoch(3)
    with pytest.raises(KeyboardInterrupt):
        fit(model(), digits, cfg, state_path=tmp_path / "s.pt")
    dies_in_epoch(None)
    again = model()
    fit(again, digits, cfg, state_path=tmp_path / "s.pt", resume=True)
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), again.parameters()))
    sgd = model()
    fit(sgd, digits, TrainConfig(**{**cfg.__dict__, "optimizer": "sgd"}))
    assert not all(torch.equal(p, q) for p, q in zip(full.parameters(), sgd.parameters()))


@pytest.mark.parametrize("kw,msg", [({"muon_lr": 0.0}, "muon lr"), ({"muon_momentum": 1.0}, "muon momentum"),
                                    ({"optimizer": "lion"}, "unknown optimizer 'lion'; choose one of:")])
def test_bad_muon_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw)
