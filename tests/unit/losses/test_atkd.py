"""ATKD and the decoupled KL: plain-loop references, identities, the hard/easy split and edge cases."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from kdkit.losses.atkd import atkd_loss, decoupled_kl
from kdkit.losses.divergences import forward_kl, reverse_kl


def _softmax(row: list[float], temp: float = 1.0) -> list[float]:
    m = max(row)
    e = [math.exp((v - m) / temp) for v in row]
    return [v / sum(e) for v in e]


def _kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b, strict=True) if x > 0)


def reference_parts(
    s_row, t_row, g: int, temp: float = 1.0, reverse: bool = False
) -> tuple[float, float, float]:
    """(TKD, DKD, UnC) of one token from explicit probabilities."""
    p, q = _softmax(t_row, temp), _softmax(s_row, temp)
    p_hat = [p[j] / (1 - p[g]) for j in range(len(p)) if j != g]
    q_hat = [q[j] / (1 - q[g]) for j in range(len(q)) if j != g]
    pb, qb = [p[g], 1 - p[g]], [q[g], 1 - q[g]]
    if reverse:
        return _kl(qb, pb), _kl(q_hat, p_hat), 1 - p[g]
    return _kl(pb, qb), _kl(p_hat, q_hat), 1 - p[g]


def reference_atkd(s, t, y, mask, hard_ratio, easy_weight, reverse=False, temp=1.0, scope="batch") -> float:
    """ATKD with loops: a stable sort by -UnC, round-half-up k per split scope, group means."""
    b, length = mask.shape
    parts = {}
    for i in range(b):
        for j in range(length):
            if mask[i, j]:
                parts[(i, j)] = reference_parts(
                    s[i, j].tolist(), t[i, j].tolist(), int(y[i, j]), temp, reverse
                )
    scopes = (
        [[key for key in parts if key[0] == i] for i in range(b)] if scope == "sequence" else [list(parts)]
    )
    hard = set()
    for keys in scopes:
        ranked = sorted(keys, key=lambda key: -parts[key][2])  # stable: ties keep position order
        hard.update(ranked[: math.floor(Fraction(str(hard_ratio)) * len(keys) + Fraction(1, 2))])
    easy = [key for key in parts if key not in hard]
    easy_mean = sum(parts[k][1] for k in easy) / len(easy) if easy else 0.0
    hard_mean = sum(parts[k][0] + parts[k][1] for k in hard) / len(hard) if hard else 0.0
    return easy_weight * easy_mean + (1 - easy_weight) * hard_mean


def _data(seed: int = 0, b: int = 3, length: int = 5, v: int = 6):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, length, v, generator=g) * 2
    t = torch.randn(b, length, v, generator=g) * 3
    y = torch.randint(0, v, (b, length), generator=g)
    mask = torch.rand(b, length, generator=g) > 0.25
    mask[:, 0] = True
    return s, t, y, mask


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_decoupled_parts_match_reference(reverse: bool, temp: float) -> None:
    s, t, y, _ = _data()
    tkd, dkd, unc = decoupled_kl(s, t, y, temperature=temp, reverse=reverse)
    assert tkd.shape == dkd.shape == unc.shape == y.shape
    for i in range(3):
        for j in range(5):
            ref = reference_parts(s[i, j].tolist(), t[i, j].tolist(), int(y[i, j]), temp, reverse)
            got = (tkd[i, j].item(), dkd[i, j].item(), unc[i, j].item())
            assert got == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_kl_identities() -> None:
    s, t, y, _ = _data(1)
    tkd, dkd, unc = decoupled_kl(s, t, y)
    assert (tkd + unc * dkd).mean().item() == pytest.approx(forward_kl(s, t).item(), rel=1e-5)
    tkd_r, dkd_r, _ = decoupled_kl(s, t, y, reverse=True)
    one_minus_q_g = 1 - torch.softmax(s, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    assert (tkd_r + one_minus_q_g * dkd_r).mean().item() == pytest.approx(reverse_kl(s, t).item(), rel=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("scope", ["batch", "sequence"])
@pytest.mark.parametrize("hard_ratio,easy_weight", [(0.5, 0.2), (0.3, 0.5), (1.0, 0.2), (0.0, 0.7)])
def test_matches_reference(reverse: bool, scope: str, hard_ratio: float, easy_weight: float) -> None:
    s, t, y, mask = _data(2)
    got = atkd_loss(s, t, y, mask, hard_ratio, easy_weight, reverse=reverse, temperature=1.5, scope=scope)
    ref = reference_atkd(s, t, y, mask, hard_ratio, easy_weight, reverse, 1.5, scope)
    assert got.item() == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_all_hard_without_easy_weight_is_mean_tkd_plus_dkd_and_unc_weighting_gives_kl() -> None:
    s, t, y, mask = _data(3)
    tkd, dkd, unc = decoupled_kl(s, t, y)
    all_hard = atkd_loss(s, t, y, mask, hard_ratio=1.0, easy_weight=0.0)
    assert all_hard.item() == pytest.approx((tkd + dkd)[mask].mean().item(), rel=1e-5)
    # with DKD weighted by UnC, the same all-hard composition is the forward KL
    assert (tkd + unc * dkd)[mask].mean().item() == pytest.approx(forward_kl(s, t, mask).item(), rel=1e-5)


@pytest.mark.parametrize("hard_ratio", [0.0, 1.0])
@pytest.mark.parametrize("reverse", [False, True])
def test_empty_groups_are_finite(hard_ratio: float, reverse: bool) -> None:
    s, t, y, mask = _data(4)
    s.requires_grad_(True)
    loss = atkd_loss(s, t, y, mask, hard_ratio=hard_ratio, reverse=reverse)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    _, dkd, _ = decoupled_kl(s.detach(), t, y, reverse=reverse)
    if hard_ratio == 0.0:  # all easy: only the easy term remains
        assert loss.item() == pytest.approx(0.2 * dkd[mask].mean().item(), rel=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_zero_for_identical_logits(reverse: bool) -> None:
    s, _, y, mask = _data(5)
    assert atkd_loss(s, s.clone(), y, mask, reverse=reverse).item() == pytest.approx(0.0, abs=1e-6)
    tkd, dkd, _ = decoupled_kl(s, s.clone(), y, reverse=reverse)
    assert tkd.abs().max().item() < 1e-6 and dkd.abs().max().item() < 1e-6


def test_invariant_to_a_constant_per_token() -> None:
    s, t, y, mask = _data(6)
    shift_s, shift_t = torch.randn(3, 5, 1) * 50, torch.randn(3, 5, 1) * 50
    for reverse in (False, True):
        base = atkd_loss(s, t, y, mask, reverse=reverse).item()
        assert atkd_loss(s + shift_s, t + shift_t, y, mask, reverse=reverse).item() == pytest.approx(
            base, abs=1e-4
        )


@pytest.mark.parametrize("scope", ["batch", "sequence"])
@pytest.mark.parametrize("reverse", [False, True])
def test_masked_positions_change_nothing(scope: str, reverse: bool) -> None:
    s, t, y, mask = _data(7)
    s1 = s.clone().requires_grad_(True)
    loss1 = atkd_loss(s1, t, y, mask, reverse=reverse, scope=scope)
    loss1.backward()
    s2, t2, y2 = s.clone(), t.clone(), y.clone()
    s2[~mask] = 1e30
    t2[~mask] = -1e30  # would have the largest UnC, and so be "hard", if it were counted
    t2[~mask, 0] = 1e30
    y2[~mask] = -100  # ignore-index ids are allowed at uncounted positions
    s2.requires_grad_(True)
    loss2 = atkd_loss(s2, t2, y2, mask, reverse=reverse, scope=scope)
    loss2.backward()
    assert loss2.item() == loss1.item()
    assert torch.equal(s2.grad, s1.grad)
    assert torch.all(s2.grad[~mask] == 0)


def test_fully_masked_batch_is_a_connected_zero() -> None:
    s, t, y, _ = _data(8)
    s.requires_grad_(True)
    for scope in ("batch", "sequence"):
        loss = atkd_loss(s, t, y, torch.zeros(3, 5, dtype=torch.bool), scope=scope)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
        assert torch.all(s.grad == 0)


@pytest.mark.parametrize("reverse", [False, True])
def test_extreme_logits_and_one_hot_teachers_are_finite(reverse: bool) -> None:
    big = 1e4
    t = torch.full((2, 3, 5), -big)
    y = torch.tensor([[0, 1, 2], [3, 4, 0]])
    t.scatter_(-1, y.unsqueeze(-1), big)  # one-hot teachers: p_g = 1, UnC = 0
    t[1, 2] = torch.tensor([-big, big, -big, big, 0.0])  # p_g = 0 for this one
    s = torch.tensor([[-big, big, 0.0, -big, big]]).expand(2, 3, 5).clone().requires_grad_(True)
    for temp in (1.0, 0.5):
        for hard_ratio in (0.0, 0.5, 1.0):
            loss = atkd_loss(s, t, y, hard_ratio=hard_ratio, reverse=reverse, temperature=temp)
            (grad,) = torch.autograd.grad(loss, s)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()
        parts = decoupled_kl(s, t, y, temperature=temp, reverse=reverse)
        assert all(torch.isfinite(x).all() for x in parts)
        assert torch.isfinite(torch.autograd.grad(sum(x.sum() for x in parts[:2]), s)[0]).all()


def test_3d_and_2d_inputs_agree() -> None:
    s, t, y, mask = _data(9)
    for reverse in (False, True):
        full = atkd_loss(s, t, y, mask, reverse=reverse).item()
        flat = atkd_loss(s.reshape(-1, 6), t.reshape(-1, 6), y.reshape(-1), mask.reshape(-1), reverse=reverse)
        assert flat.item() == pytest.approx(full, rel=1e-6)
    parts3 = decoupled_kl(s, t, y)
    parts2 = decoupled_kl(s.reshape(-1, 6), t.reshape(-1, 6), y.reshape(-1))
    for a, b in zip(parts3, parts2, strict=True):
        assert torch.allclose(a.reshape(-1), b)


def _rows_with_unc(uncs: list[float], v: int = 4) -> torch.Tensor:
    """Teacher logits over v classes whose target (id 0) has probability 1 - unc, rest uniform."""
    rows = []
    for u in uncs:
        rest = u / (v - 1)
        rows.append([math.log(1 - u)] + [math.log(rest)] * (v - 1))
    return torch.tensor(rows)


def test_sequence_scope_only_moves_the_split() -> None:
    # Sequence 0 is uncertain everywhere, sequence 1 confident everywhere: the batch split makes all of
    # sequence 0 hard; the per-sequence split makes the top half of each sequence hard.
    t = torch.stack(
        [_rows_with_unc([0.9, 0.6, 0.8, 0.7]), _rows_with_unc([0.1, 0.3, 0.05, 0.2])]
    )  # (2, 4, 4)
    s = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(2, 4, dtype=torch.long)
    tkd, dkd, unc = decoupled_kl(s, t, y)
    assert torch.allclose(unc, torch.tensor([[0.9, 0.6, 0.8, 0.7], [0.1, 0.3, 0.05, 0.2]]), atol=1e-6)

    def compose(hard: torch.Tensor, w: float = 0.2) -> float:
        return (w * dkd[~hard].mean() + (1 - w) * (tkd + dkd)[hard].mean()).item()

    batch_hard = torch.tensor([[True, True, True, True], [False, False, False, False]])
    seq_hard = torch.tensor([[True, False, True, False], [False, True, False, True]])
    assert atkd_loss(s, t, y, scope="batch").item() == pytest.approx(compose(batch_hard), rel=1e-5)
    assert atkd_loss(s, t, y, scope="sequence").item() == pytest.approx(compose(seq_hard), rel=1e-5)
    # with one sequence the two scopes coincide
    assert atkd_loss(s[:1], t[:1], y[:1], scope="sequence").item() == pytest.approx(
        atkd_loss(s[:1], t[:1], y[:1]).item()
    )


def test_tie_rule_keeps_position_order_and_rounds_half_up() -> None:
    # Three counted tokens with equal UnC and hard_ratio 0.5: k = round-half-up(1.5) = 2, and the two
    # earliest tokens are the hard ones.
    t = _rows_with_unc([0.5, 0.5, 0.5])
    s = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(3, dtype=torch.long)
    tkd, dkd, _ = decoupled_kl(s, t, y)
    want = 0.2 * dkd[2] + 0.8 * (tkd + dkd)[:2].mean()
    assert atkd_loss(s, t, y).item() == pytest.approx(want.item(), rel=1e-5)
    # 0.3 * 5 = 1.5 (not 1.4999...): 2 hard tokens out of 5
    t5, s5 = _rows_with_unc([0.5] * 5), torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    tkd5, dkd5, _ = decoupled_kl(s5, t5, torch.zeros(5, dtype=torch.long))
    want5 = 0.2 * dkd5[2:].mean() + 0.8 * (tkd5 + dkd5)[:2].mean()
    assert atkd_loss(s5, t5, torch.zeros(5, dtype=torch.long), hard_ratio=0.3).item() == pytest.approx(
        want5.item(), rel=1e-5
    )


def test_rejects_bad_arguments() -> None:
    s, t, y, mask = _data()
    with pytest.raises(ValueError, match="leading shape"):
        atkd_loss(s, t, y[:, :3], mask)
    with pytest.raises(ValueError, match="integer"):
        atkd_loss(s, t, y.float(), mask)
    bad = y.clone()
    bad[0, 0] = 6  # counted (mask[:, 0] is True) and out of range
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        atkd_loss(s, t, bad, mask)
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        decoupled_kl(s, t, bad)
    with pytest.raises(ValueError, match="hard_ratio"):
        atkd_loss(s, t, y, hard_ratio=1.5)
    with pytest.raises(ValueError, match="easy_weight"):
        atkd_loss(s, t, y, easy_weight=-0.1)
    with pytest.raises(ValueError, match="scope"):
        atkd_loss(s, t, y, scope="token")
    with pytest.raises(ValueError, match="sequence"):
        atkd_loss(s[0], t[0], y[0], scope="sequence")
    with pytest.raises(ValueError, match="temperature"):
        atkd_loss(s, t, y, temperature=-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        atkd_loss(s, t[..., :5], y)
