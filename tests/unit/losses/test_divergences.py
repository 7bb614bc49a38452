"""Token-level divergences: plain-loop references, identities, masking and numerical edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from kdkit.losses.divergences import (
    DIVERGENCES,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    token_divergence,
    tvd,
)

# (name, function, extra keyword arguments): every public loss with a few settings.
CASES = [
    ("forward_kl", forward_kl, {}),
    ("reverse_kl", reverse_kl, {}),
    ("generalized_jsd", generalized_jsd, {"beta": 0.5}),
    ("generalized_jsd", generalized_jsd, {"beta": 0.1}),
    ("generalized_jsd", generalized_jsd, {"beta": 0.9}),
    ("generalized_jsd", generalized_jsd, {"beta": 0.0}),
    ("generalized_jsd", generalized_jsd, {"beta": 1.0}),
    ("skew_kl", skew_kl, {"alpha": 0.1}),
    ("skew_kl", skew_kl, {"alpha": 0.3, "reverse": True}),
    ("tvd", tvd, {}),
]
IDS = [f"{name}-{kw}" for name, _, kw in CASES]


def _softmax(row: list[float], temp: float) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / temp) for v in row]
    return [v / sum(e) for v in e]


def _kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def reference(name: str, s_row: list[float], t_row: list[float], temp: float, **kw: float) -> float:
    """One token's divergence from explicit probability lists."""
    p, q = _softmax(t_row, temp), _softmax(s_row, temp)
    if name == "forward_kl":
        return _kl(p, q)
    if name == "reverse_kl":
        return _kl(q, p)
    if name == "generalized_jsd":
        b = kw["beta"]
        if b == 0.0:
            return _kl(p, q)
        if b == 1.0:
            return _kl(q, p)
        m = [b * x + (1 - b) * y for x, y in zip(p, q, strict=True)]
        return b * _kl(p, m) + (1 - b) * _kl(q, m)
    if name == "skew_kl":
        a = kw["alpha"]
        head, tail = (q, p) if kw.get("reverse", False) else (p, q)
        return _kl(head, [a * x + (1 - a) * y for x, y in zip(head, tail, strict=True)])
    assert name == "tvd"
    return 0.5 * sum(abs(x - y) for x, y in zip(p, q, strict=True))


def reference_mean(
    name: str, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, temp: float, **kw
) -> float:
    rows_s, rows_t = s.reshape(-1, s.shape[-1]).tolist(), t.reshape(-1, t.shape[-1]).tolist()
    vals = [
        reference(name, rs, rt, temp, **kw)
        for rs, rt, keep in zip(rows_s, rows_t, mask.reshape(-1).tolist(), strict=True)
        if keep
    ]
    return sum(vals) / max(len(vals), 1)


def _data(
    seed: int = 0, shape: tuple[int, ...] = (2, 4, 6)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*shape, generator=g) * 2
    t = torch.randn(*shape, generator=g) * 3
    mask = torch.rand(shape[:-1], generator=g) > 0.3
    mask.reshape(-1)[0] = True
    return s, t, mask


@pytest.mark.parametrize("name,fn,kw", CASES, ids=IDS)
@pytest.mark.parametrize("temp", [1.0, 2.5])
def test_matches_reference(name, fn, kw, temp: float) -> None:
    s, t, mask = _data()
    got = fn(s, t, mask, temperature=temp, **kw).item()
    assert got == pytest.approx(reference_mean(name, s, t, mask, temp, **kw), rel=1e-5, abs=1e-6)
    assert token_divergence(name, s[mask], t[mask], temperature=temp, **kw).mean().item() == pytest.approx(
        got
    )


@pytest.mark.parametrize("name,fn,kw", CASES, ids=IDS)
def test_zero_for_identical_logits(name, fn, kw) -> None:
    s, _, mask = _data()
    assert fn(s, s.clone(), mask, **kw).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name,fn,kw", CASES, ids=IDS)
def test_invariant_to_a_constant_per_token(name, fn, kw) -> None:
    s, t, mask = _data()
    shift_s, shift_t = torch.randn(2, 4, 1) * 50, torch.randn(2, 4, 1) * 50
    assert fn(s + shift_s, t + shift_t, mask, **kw).item() == pytest.approx(
        fn(s, t, mask, **kw).item(), abs=1e-4
    )


@pytest.mark.parametrize("name,fn,kw", CASES, ids=IDS)
@pytest.mark.parametrize("junk", [1e30, float("nan")])
def test_masked_positions_change_nothing(name, fn, kw, junk: float) -> None:
    s, t, mask = _data()
    s1 = s.clone().requires_grad_(True)
    loss1 = fn(s1, t, mask, **kw)
    loss1.backward()
    s2 = s.clone()
    s2[~mask] = junk
    s2[~mask, 0] = -junk  # huge of both signs
    t2 = t.clone()
    t2[~mask] = -junk
    s2.requires_grad_(True)
    loss2 = fn(s2, t2, mask, **kw)
    loss2.backward()
    assert loss2.item() == loss1.item()
    assert torch.equal(s2.grad, s1.grad)
    assert torch.all(s2.grad[~mask] == 0)


@pytest.mark.parametrize("name,fn,kw", CASES, ids=IDS)
def test_fully_masked_batch_is_a_connected_zero(name, fn, kw) -> None:
    s, t, _ = _data()
    s.requires_grad_(True)
    loss = fn(s, t, torch.zeros(2, 4, dtype=torch.bool), **kw)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.all(s.grad == 0)


@pytest.mark.parametrize("name,fn,kw", CASES, ids=IDS)
def test_extreme_logits_are_finite(name, fn, kw) -> None:
    s = torch.tensor(
        [[1e4, -1e4, 0.0, -1e4], [-1e4, -1e4, 1e4, 1e4], [0.0, 0.0, 0.0, 0.0]], requires_grad=True
    )
    t = torch.tensor([[-1e4, 1e4, -1e4, -1e4], [1e4, -1e4, -1e4, -1e4], [1e4, -1e4, -1e4, -1e4]])
    for temp in (1.0, 0.5, 4.0):
        loss = fn(s, t, temperature=temp, **kw)
        (grad,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name,fn,kw", CASES, ids=IDS)
def test_3d_and_2d_inputs_agree(name, fn, kw) -> None:
    s, t, mask = _data()
    full = fn(s, t, mask, **kw)
    flat = fn(s.reshape(-1, 6), t.reshape(-1, 6), mask.reshape(-1), **kw)
    assert flat.item() == pytest.approx(full.item(), rel=1e-6)
    assert fn(s, t, **kw).item() == pytest.approx(
        fn(s.reshape(-1, 6), t.reshape(-1, 6), **kw).item(), rel=1e-6
    )


def test_no_mask_counts_every_token() -> None:
    s, t, _ = _data()
    assert forward_kl(s, t).item() == pytest.approx(
        forward_kl(s, t, torch.ones(2, 4, dtype=torch.bool)).item()
    )


def test_jsd_endpoints_are_forward_and_reverse_kl() -> None:
    s, t, mask = _data(1)
    assert generalized_jsd(s, t, mask, beta=0.0).item() == pytest.approx(forward_kl(s, t, mask).item())
    assert generalized_jsd(s, t, mask, beta=1.0).item() == pytest.approx(reverse_kl(s, t, mask).item())


def test_jsd_is_symmetric_at_one_half() -> None:
    s, t, mask = _data(2)
    assert generalized_jsd(s, t, mask).item() == pytest.approx(generalized_jsd(t, s, mask).item(), rel=1e-6)
    # beta <-> 1 - beta swaps the roles in general
    a = generalized_jsd(s, t, mask, beta=0.2).item()
    assert a == pytest.approx(generalized_jsd(t, s, mask, beta=0.8).item(), rel=1e-5)


def test_jsd_is_bounded_by_its_entropy_bound() -> None:
    # JSD_beta <= H(beta) (binary entropy), reached for disjoint supports.
    s = torch.tensor([[50.0, -50.0]])
    t = torch.tensor([[-50.0, 50.0]])
    for b in (0.2, 0.5, 0.7):
        h = -(b * math.log(b) + (1 - b) * math.log(1 - b))
        assert generalized_jsd(s, t, beta=b).item() == pytest.approx(h, rel=1e-4)


@pytest.mark.parametrize("reverse", [False, True])
def test_skew_kl_alpha_zero_is_plain_kl(reverse: bool) -> None:
    s, t, mask = _data(3)
    plain = (reverse_kl if reverse else forward_kl)(s, t, mask).item()
    assert skew_kl(s, t, mask, alpha=0.0, reverse=reverse).item() == pytest.approx(plain, rel=1e-6)
    # skewing shrinks the divergence
    assert skew_kl(s, t, mask, alpha=0.5, reverse=reverse).item() < plain


def test_tvd_is_in_unit_interval() -> None:
    for seed in range(3):
        s, t, mask = _data(seed)
        for scale in (0.1, 1.0, 100.0):
            v = tvd(s * scale, t * scale, mask).item()
            assert 0.0 <= v <= 1.0
    assert tvd(torch.tensor([[30.0, -30.0]]), torch.tensor([[-30.0, 30.0]])).item() == pytest.approx(1.0)


def test_computes_in_float32_from_half_inputs() -> None:
    s, t, mask = _data()
    got = forward_kl(s.bfloat16(), t.bfloat16(), mask)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(forward_kl(s.bfloat16().float(), t.bfloat16().float(), mask).item())


def test_token_divergence_chunks_sum_to_the_mean() -> None:
    s, t, _ = _data(4, (10, 6))
    whole = generalized_jsd(s, t, beta=0.3)
    chunks = [
        token_divergence("generalized_jsd", s[i : i + 3], t[i : i + 3], beta=0.3) for i in range(0, 10, 3)
    ]
    assert torch.cat(chunks).shape == (10,)
    assert (torch.cat(chunks).sum() / 10).item() == pytest.approx(whole.item(), rel=1e-6)
    assert set(DIVERGENCES) == {"forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "tvd"}


def test_rejects_bad_arguments() -> None:
    s, t, mask = _data()
    with pytest.raises(ValueError, match="unknown divergence"):
        token_divergence("js", s, t)
    with pytest.raises(TypeError):
        token_divergence("forward_kl", s, t, beta=0.5)  # a misspelled/foreign key is not swallowed
    with pytest.raises(ValueError, match="shapes differ"):
        forward_kl(s, t[..., :5])
    with pytest.raises(ValueError, match=r"\(B, T, V\) or \(N, V\)"):
        forward_kl(s[0, 0], t[0, 0])
    with pytest.raises(ValueError, match="leading shape"):
        forward_kl(s, t, mask[:, :3])
    with pytest.raises(ValueError, match="boolean"):
        forward_kl(s, t, mask.float())
    with pytest.raises(ValueError, match="temperature"):
        tvd(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, t, beta=1.5)
    with pytest.raises(ValueError, match="alpha"):
        skew_kl(s, t, alpha=1.0)
