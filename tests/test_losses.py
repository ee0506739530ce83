import math

import pytest
import torch
import torch.nn.functional as F

from kdexport.distill.losses import kd_loss, soft_kl
from kdexport.errors import UnknownNameError


def test_kd_hand_computed_value():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    T, beta = 2.0, 0.25
    # by hand: p_t = softmax([0, .5]), p_s = softmax([.5, 0])
    pt = [math.exp(0) / (math.exp(0) + math.exp(0.5)), math.exp(0.5) / (math.exp(0) + math.exp(0.5))]
    ps = [pt[1], pt[0]]
    kl = sum(a * math.log(a / b) for a, b in zip(pt, ps))
    ce = -math.log(math.exp(1) / (math.exp(1) + 1))
    out = kd_loss(s, t, y, temperature=T, soft_weight=beta, scale_t2=True)
    assert out["kd"].item() == pytest.approx(kl * T * T, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx((1 - beta) * ce + beta * kl * T * T, rel=1e-5)


def test_kd_term_zero_when_logits_match():
    logits = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    out = kd_loss(logits, logits.clone(), y, temperature=5.0, soft_weight=0.7)
    assert out["kd"].abs().item() < 1e-6
    assert out["loss"].item() == pytest.approx(0.3 * F.cross_entropy(logits, y).item(), rel=1e-5)


def test_t2_scaling_multiplies_soft_term_by_t_squared():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    for T in (1.0, 3.0, 10.0):
        on = kd_loss(s, t, y, temperature=T, soft_weight=1.0, scale_t2=True)
        off = kd_loss(s, t, y, temperature=T, soft_weight=1.0, scale_t2=False)
        assert on["loss"].item() == pytest.approx(off["loss"].item() * T * T, rel=1e-5)
        assert off["loss"].item() == pytest.approx(soft_kl(s, t, T).item(), rel=1e-6)


def test_beta_zero_is_plain_ce_and_no_teacher_is_plain_ce():
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = F.cross_entropy(s, y).item()
    assert kd_loss(s, t, y, soft_weight=0.0)["loss"].item() == pytest.approx(ce)
    assert kd_loss(s, None, y, soft_weight=0.9)["loss"].item() == pytest.approx(ce)


def test_kd_gradient_pulls_student_towards_teacher():
    s = torch.zeros(1, 3, requires_grad=True)
    t = torch.tensor([[3.0, 0.0, 0.0]])
    kd_loss(s, t, torch.tensor([1]), temperature=2.0, soft_weight=1.0)["loss"].backward()
    assert s.grad[0, 0] < 0  # descending increases the teacher's favourite class


def test_mse_soft_loss_and_unknown_soft_loss():
    s, t, y = torch.randn(3, 4), torch.randn(3, 4), torch.randint(0, 4, (3,))
    out = kd_loss(s, t, y, temperature=2.0, soft_weight=1.0, scale_t2=False, soft_loss="mse")
    assert out["loss"].item() == pytest.approx(F.mse_loss(s / 2, t / 2).item(), rel=1e-6)
    with pytest.raises(UnknownNameError, match="kl, mse"):
        kd_loss(s, t, y, soft_loss="nope")
