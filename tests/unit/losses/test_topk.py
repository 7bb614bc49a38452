"""Top-k (cached) teacher losses: k = V equals the dense loss for every divergence and ATKD (values and
gradients, hidden-state and logits inputs, both tails); smaller k gives the coarse-grained divergence (a
lower bound); the rebuilt teacher is a distribution with the stored entries exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdkit.losses.atkd import _hard_split, atkd_loss, decoupled_kl
from kdkit.losses.divergences import DIVERGENCES, token_divergence
from kdkit.losses.topk import TopKTeacher, dense_teacher, topk_atkd_loss, topk_of_logits, topk_token_loss

CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.3}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.2, "reverse": True}),
    ("tvd", {}),
]
V = 17


def make(seed: int = 0, b: int = 3, t: int = 5, d: int = 6) -> dict:
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(b, t, d, generator=g)
    ws = torch.randn(V + 3, d, generator=g)  # padded head: 3 rows beyond the vocabulary
    t_logits = 2.0 * torch.randn(b, t, V, generator=g)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True
    targets = torch.randint(0, V, (b, t), generator=g).masked_fill(~mask, -100)
    return {"hs": hs, "ws": ws, "t_logits": t_logits, "mask": mask, "targets": targets}


def cached(
    t_logits: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor, k: int, temp: float
) -> TopKTeacher:
    rows = t_logits[mask]  # (n, V): counted tokens, row-major like the losses' order
    ids, lp = topk_of_logits(rows, k, temp)
    full = F.log_softmax(rows / temp, dim=-1)
    return TopKTeacher(ids, lp, full.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1))


def dense_loss(x: dict, name: str, kw: dict, temp: float) -> torch.Tensor:
    s = (x["hs"] @ x["ws"][:V].T)[x["mask"]]
    return token_divergence(name, s, x["t_logits"][x["mask"]], temperature=temp, **kw).mean()


@pytest.mark.parametrize("tail", ["student", "uniform"])
@pytest.mark.parametrize(("name", "kw"), CASES)
def test_k_equal_v_is_the_dense_loss(name: str, kw: dict, tail: str) -> None:
    x, temp = make(), 1.5
    teacher = cached(x["t_logits"], x["mask"], x["targets"], V, temp)
    hs = x["hs"].clone().requires_grad_(True)
    loss, ce = topk_token_loss(
        hs, x["ws"], teacher, x["mask"], divergence=name, vocab_size=V, temperature=temp, tail=tail,
        chunk_size=4, targets=x["targets"].clamp(min=0), **kw,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, hs)
    ref_hs = x["hs"].clone().requires_grad_(True)
    ref = dense_loss({**x, "hs": ref_hs}, name, kw, temp)
    (ref_grad,) = torch.autograd.grad(ref, ref_hs)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
    s = (x["hs"] @ x["ws"][:V].T)[x["mask"]]
    torch.testing.assert_close(ce, F.cross_entropy(s, x["targets"].clamp(min=0)[x["mask"]]))


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_logits_input_equals_hidden_input(name: str, kw: dict) -> None:
    x = make(1)
    teacher = cached(x["t_logits"], x["mask"], x["targets"], 5, 1.0)
    logits = x["hs"] @ x["ws"].T  # (B, T, V + 3): the padded columns are cut to vocab_size
    a, _ = topk_token_loss(x["hs"], x["ws"], teacher, x["mask"], divergence=name, vocab_size=V, **kw)
    b, _ = topk_token_loss(
        logits, None, teacher, x["mask"], divergence=name, vocab_size=V, chunk_size=2, **kw
    )
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_student_tail_is_the_coarse_grained_divergence(name: str, kw: dict) -> None:
    """tail='student' == the divergence between (top-k, one tail class) distributions, <= the dense one."""
    x, k = make(2), 4
    teacher = cached(x["t_logits"], x["mask"], x["targets"], k, 1.0)
    loss, _ = topk_token_loss(x["hs"], x["ws"], teacher, x["mask"], divergence=name, vocab_size=V, **kw)
    s = (x["hs"] @ x["ws"][:V].T)[x["mask"]]
    lq = F.log_softmax(s, -1)
    lq_top = lq.gather(-1, teacher.indices)
    lq_tail = torch.log1p(-lq_top.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-7))
    lp_tail = torch.log1p(-teacher.logprobs.exp().sum(-1, keepdim=True))
    merged = token_divergence(
        name, torch.cat([lq_top, lq_tail], -1), torch.cat([teacher.logprobs, lp_tail], -1), **kw
    ).mean()
    torch.testing.assert_close(loss, merged, atol=1e-5, rtol=1e-4)
    assert float(loss) <= float(dense_loss(x, name, kw, 1.0)) + 1e-6


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_atkd_k_equal_v_is_the_dense_atkd(reverse: bool, scope: str) -> None:
    x, temp = make(3), 2.0
    targets = x["targets"]
    teacher = cached(x["t_logits"], x["mask"], targets, V, temp)
    hs = x["hs"].clone().requires_grad_(True)
    loss, ce = topk_atkd_loss(
        hs, x["ws"], teacher, targets, x["mask"], vocab_size=V, reverse=reverse, temperature=temp, scope=scope,
        chunk_size=3,
    )  # fmt: skip
    ref_hs = x["hs"].clone().requires_grad_(True)
    ref = atkd_loss(
        ref_hs @ x["ws"][:V].T,
        x["t_logits"],
        targets,
        x["mask"],
        reverse=reverse,
        temperature=temp,
        scope=scope,
    )
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        torch.autograd.grad(loss, hs)[0], torch.autograd.grad(ref, ref_hs)[0], atol=1e-5, rtol=1e-4
    )
    assert torch.isfinite(ce)


def rebuilt_reference(
    x: dict,
    teacher: TopKTeacher,
    temp: float,
    hs: torch.Tensor,
    name: str | None = None,
    kw: dict | None = None,
    reverse: bool = False,
    hard_ratio: float = 0.5,
) -> torch.Tensor:
    """The plain reference of the merged fast path: the (n, V) teacher rebuilt by ``dense_teacher`` with the
    student's detached tail, then the dense divergence (``name``) or the dense decoupled KL (ATKD, with the
    split on the stored target log-probability)."""
    s = (hs @ x["ws"][:V].T)[x["mask"]]  # (n, V)
    lq = F.log_softmax(s / temp, -1)
    if name is not None:
        t = dense_teacher(teacher.indices, teacher.logprobs, V, "student", lq)
        return token_divergence(name, s, temp * t, temperature=temp, **(kw or {})).mean()
    g = x["targets"][x["mask"]]
    t = dense_teacher(teacher.indices, teacher.logprobs, V, "student", lq, g, teacher.target_logprobs)
    tkd, dkd, _ = decoupled_kl(s, temp * t, g, temperature=temp, reverse=reverse)
    unc = -torch.expm1(teacher.target_logprobs.float())
    hard, n_hard = _hard_split(
        unc, x["mask"].shape, x["mask"].reshape(-1).nonzero().squeeze(1), "batch", hard_ratio
    )
    easy = dkd.masked_fill(hard, 0.0).sum() / max(len(g) - n_hard, 1)
    return 0.2 * easy + 0.8 * (tkd + dkd).masked_fill(~hard, 0.0).sum() / max(n_hard, 1)


@pytest.mark.parametrize("temp", [1.0, 1.5])
@pytest.mark.parametrize(("name", "kw"), CASES)
def test_merged_classes_equal_the_rebuilt_teacher(name: str, kw: dict, temp: float) -> None:
    """k < V, tail='student': the (top-k, tail) computation gives the rebuilt teacher's values and gradients,
    with fp16 cached log-probabilities, and the CE of the full logits."""
    x, k = make(5), 6
    full = cached(x["t_logits"], x["mask"], x["targets"], k, temp)
    teacher = TopKTeacher(full.indices, full.logprobs.half())
    hs = x["hs"].clone().requires_grad_(True)
    targets = x["targets"].clamp(min=0)
    loss, ce = topk_token_loss(
        hs, x["ws"], teacher, x["mask"], divergence=name, vocab_size=V, temperature=temp, chunk_size=4,
        targets=targets, **kw,
    )  # fmt: skip
    ref_hs = x["hs"].clone().requires_grad_(True)
    ref = rebuilt_reference(x, teacher, temp, ref_hs, name, kw)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    grad, ref_grad = torch.autograd.grad(loss, hs)[0], torch.autograd.grad(ref, ref_hs)[0]
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
    s = (x["hs"] @ x["ws"][:V].T)[x["mask"]]
    torch.testing.assert_close(ce, F.cross_entropy(s, targets[x["mask"]]))


@pytest.mark.parametrize("hard_ratio", [0.5, 1.0])
@pytest.mark.parametrize("temp", [1.0, 2.0])
@pytest.mark.parametrize("reverse", [False, True])
def test_atkd_merged_classes_equal_the_rebuilt_teacher(reverse: bool, temp: float, hard_ratio: float) -> None:
    """ATKD with k < V: targets inside and outside the cached top-k, fp16 log-probs, a row whose stored
    mass exceeds 1 (renormalised as the rebuild does); values and gradients equal the rebuilt teacher's,
    the CE that of the full logits. hard_ratio 1 puts TKD on every token, the confident ones included."""
    x, k = make(6, b=4, t=6), 4
    x["t_logits"][0, 0, 2] = 40.0  # a (near) one-hot teacher row: p_g ~ 1 must stay finite
    x["targets"][0, 0] = 2
    full = cached(x["t_logits"], x["mask"], x["targets"], k, temp)
    inside = (full.indices == x["targets"][x["mask"]].unsqueeze(-1)).any(-1)
    assert inside.any() and (~inside).any()  # both cases are exercised
    lp = full.logprobs.clone()
    lp[1] += 0.3  # stored mass above 1
    teacher = TopKTeacher(full.indices, lp.half(), full.target_logprobs)
    hs = x["hs"].clone().requires_grad_(True)
    loss, ce = topk_atkd_loss(
        hs, x["ws"], teacher, x["targets"], x["mask"], vocab_size=V, reverse=reverse, temperature=temp,
        chunk_size=5, hard_ratio=hard_ratio,
    )  # fmt: skip
    ref_hs = x["hs"].clone().requires_grad_(True)
    ref = rebuilt_reference(x, teacher, temp, ref_hs, reverse=reverse, hard_ratio=hard_ratio)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    grad, ref_grad = torch.autograd.grad(loss, hs)[0], torch.autograd.grad(ref, ref_hs)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
    s = (x["hs"] @ x["ws"][:V].T)[x["mask"]]
    torch.testing.assert_close(ce, F.cross_entropy(s, x["targets"][x["mask"]]))


def test_dense_teacher_is_a_distribution_with_exact_stored_entries() -> None:
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(6, V, generator=g)
    ids, lp = topk_of_logits(logits, 3)
    targets = torch.randint(0, V, (6,), generator=g)
    t_lp = F.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    lq = F.log_softmax(torch.randn(6, V, generator=g), -1)
    for tail in ("student", "uniform"):
        out = dense_teacher(ids, lp.half(), V, tail, lq, targets, t_lp)
        torch.testing.assert_close(out.exp().sum(-1), torch.ones(6), atol=2e-3, rtol=0)
        torch.testing.assert_close(out.gather(-1, ids), lp.half().float())
        torch.testing.assert_close(out.gather(-1, targets[:, None]).squeeze(-1), t_lp, atol=1e-3, rtol=0)
    flat = dense_teacher(ids, lp, V, "uniform")
    tail_mask = torch.ones_like(flat, dtype=torch.bool).scatter(-1, ids, False)
    tail_vals = flat.masked_select(tail_mask).view(6, V - 3)
    assert torch.allclose(tail_vals, tail_vals[:, :1].expand_as(tail_vals))


def test_mismatched_cache_is_refused() -> None:
    x = make()
    teacher = cached(x["t_logits"], x["mask"], x["targets"], 3, 1.0)
    short = TopKTeacher(teacher.indices[:-1], teacher.logprobs[:-1])
    with pytest.raises(ValueError, match="does not match this batch"):
        topk_token_loss(x["hs"], x["ws"], short, x["mask"], divergence="forward_kl", vocab_size=V)
    with pytest.raises(ValueError, match="tail"):
        topk_token_loss(x["hs"], x["ws"], teacher, x["mask"], divergence="forward_kl", vocab_size=V, tail="x")
    no_target = TopKTeacher(teacher.indices, teacher.logprobs)
    with pytest.raises(ValueError, match="target log-probabilities"):
        topk_atkd_loss(x["hs"], x["ws"], no_target, x["targets"], x["mask"], vocab_size=V)


def test_every_divergence_is_covered() -> None:
    assert {name for name, _ in CASES} == set(DIVERGENCES)
