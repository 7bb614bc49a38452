"""kd_loss identities and a plain reference implementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.losses import hidden_mse, kd_loss, kd_mse_loss, soft_kl


def reference_kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float, alpha: float) -> float:
    """Hinton KD written with plain loops over examples and classes."""
    total = 0.0
    n, c = s.shape
    for i in range(n):
        zs = [math.exp(s[i, j].item() / temp) for j in range(c)]
        zt = [math.exp(t[i, j].item() / temp) for j in range(c)]
        q = [v / sum(zs) for v in zs]
        p = [v / sum(zt) for v in zt]
        kl = sum(p[j] * math.log(p[j] / q[j]) for j in range(c))
        ce = -math.log(math.exp(s[i, y[i]].item()) / sum(math.exp(s[i, j].item()) for j in range(c)))
        total += alpha * ce + (1 - alpha) * temp**2 * kl
    return total / n


@pytest.mark.parametrize("temp,alpha", [(1.0, 0.5), (2.0, 0.3), (4.0, 0.0), (0.5, 1.0)])
def test_matches_reference(temp: float, alpha: float) -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g) * 2
    y = torch.randint(0, 4, (5,), generator=g)
    got = kd_loss(s, t, y, temperature=temp, alpha=alpha).item()
    assert got == pytest.approx(reference_kd(s, t, y, temp, alpha), rel=1e-5, abs=1e-6)


def test_alpha_one_is_plain_cross_entropy() -> None:
    s, t = torch.randn(8, 3), torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    assert torch.allclose(kd_loss(s, t, y, temperature=3.0, alpha=1.0), F.cross_entropy(s, y))


def test_zero_kl_when_logits_equal() -> None:
    s = torch.randn(6, 5)
    assert kd_loss(s, s.clone(), None, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)
    y = torch.randint(0, 5, (6,))
    assert torch.allclose(kd_loss(s, s.clone(), y, alpha=0.4), 0.4 * F.cross_entropy(s, y))


def test_temperature_squared_factor() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    for temp in (1.0, 2.0, 5.0):
        expected = temp**2 * soft_kl(s, t, temp).mean()
        assert torch.allclose(kd_loss(s, t, None, temperature=temp), expected)
    # why T^2 (Hinton et al., Sec. 2): the soft gradients scale as 1/T^2, the factor keeps them comparable
    grads = []
    for temp in (5.0, 20.0):
        x = s.clone().requires_grad_(True)
        kd_loss(x, t, None, temperature=temp).backward()
        grads.append(x.grad.abs().mean().item())
    assert 0.5 < grads[0] / grads[1] < 2.0


def test_kl_is_non_negative_and_per_example() -> None:
    s, t = torch.randn(10, 7), torch.randn(10, 7)
    kl = soft_kl(s, t, 1.5)
    assert kl.shape == (10,)
    assert (kl >= -1e-7).all()


def test_gradient_only_to_student() -> None:
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4)
    kd_loss(s, t, torch.tensor([0, 1, 2])).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), alpha=1.5)
    with pytest.raises(ValueError, match="shapes"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="temperature"):
        soft_kl(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)


def test_mse_variant_classification_and_regression() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.randint(0, 3, (4,))
    expected = 0.5 * F.cross_entropy(s, y) + 0.5 * ((s - t) ** 2).mean()
    assert torch.allclose(kd_mse_loss(s, t, y, alpha=0.5), expected)
    sr, tr, yr = torch.randn(4, 1), torch.randn(4, 1), torch.randn(4)
    expected = 0.25 * ((sr.squeeze(1) - yr) ** 2).mean() + 0.75 * ((sr - tr) ** 2).mean()
    assert torch.allclose(kd_mse_loss(sr, tr, yr, alpha=0.25, regression=True), expected)
    assert kd_mse_loss(sr, sr.clone(), None).item() == 0.0


def test_hidden_mse_counts_only_real_tokens() -> None:
    s = torch.zeros(1, 3, 2)
    t = torch.zeros(1, 3, 2)
    t[0, 2] = 100.0  # a padding position: must not count
    mask = torch.tensor([[1, 1, 0]])
    assert hidden_mse([s], [t], mask).item() == 0.0
    assert hidden_mse([s], [t], None).item() > 0
