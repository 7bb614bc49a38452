"""ULD and the hybrid cross-tokenizer loss against plain reference implementations and identities."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.losses.divergences import token_divergence
from kdkit.losses.uld import aligned_cross_tokenizer_loss, hybrid_terms, sorted_l1, span_log_factors, uld_loss


def _sorted_l1_reference(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    rows = []
    for a, b in zip(p.tolist(), q.tolist(), strict=True):
        a, b = sorted(a, reverse=True), sorted(b, reverse=True)
        width = max(len(a), len(b))
        a, b = a + [0.0] * (width - len(a)), b + [0.0] * (width - len(b))
        rows.append(sum(abs(x - y) for x, y in zip(a, b, strict=True)))
    return torch.tensor(rows, dtype=torch.float64)


def _probs(rows: int, vocab: int, seed: int, sharp: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.softmax(sharp * torch.randn(rows, vocab, generator=g, dtype=torch.float64), dim=-1)


def test_sorted_l1_equals_the_reference_and_its_identities() -> None:
    p, q = _probs(5, 11, 0), _probs(5, 7, 1)
    torch.testing.assert_close(sorted_l1(p, q), _sorted_l1_reference(p, q))
    torch.testing.assert_close(sorted_l1(q, p), _sorted_l1_reference(q, p))  # the wider side on either one
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(sorted_l1(p[:, perm], q), sorted_l1(p, q))  # blind to which token is which
    torch.testing.assert_close(sorted_l1(p, p[:, perm]), torch.zeros(5, dtype=torch.float64))
    padded = torch.cat([q, torch.zeros(5, 4, dtype=torch.float64)], dim=-1)  # extra impossible tokens
    torch.testing.assert_close(sorted_l1(p, padded), sorted_l1(p, q))
    torch.testing.assert_close(sorted_l1(p, q, top_k=11), sorted_l1(p, q))  # k >= V: exact


@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_k_sorted_l1_is_a_bound_within_twice_the_smaller_rest(k: int) -> None:
    p, q = _probs(8, 40, 4, sharp=1.0), _probs(8, 30, 5, sharp=1.0)
    exact, approx = sorted_l1(p, q), sorted_l1(p, q, top_k=k)
    rest_p = p.sum(-1) - p.topk(k).values.sum(-1)
    rest_q = q.sum(-1) - q.topk(k).values.sum(-1)
    assert bool((approx <= exact + 1e-12).all())
    assert bool((exact - approx <= 2 * torch.minimum(rest_p, rest_q) + 1e-12).all())


def test_uld_loss_is_the_masked_mean_with_temperature_and_gradient() -> None:
    g = torch.Generator().manual_seed(7)
    s = torch.randn(2, 4, 9, generator=g, requires_grad=True)
    t = torch.randn(2, 4, 13, generator=g)
    mask = torch.tensor([[True, True, False, True], [False, True, True, False]])
    loss = uld_loss(s, t, mask, temperature=2.0)
    ps, pt = F.softmax(s[mask].double() / 2.0, -1), F.softmax(t[mask].double() / 2.0, -1)
    assert float(loss.detach()) == pytest.approx(float(_sorted_l1_reference(ps, pt).mean()), rel=1e-5)
    loss.backward()
    assert s.grad is not None and bool(s.grad[~mask].eq(0).all()) and s.grad[mask].abs().sum() > 0
    nothing = uld_loss(s, t, torch.zeros_like(mask))
    assert float(nothing.detach()) == 0.0 and nothing.requires_grad
    with pytest.raises(ValueError, match="different positions"):
        uld_loss(s, t[:, :3])


def test_hybrid_terms_split_matched_and_unmatched() -> None:
    p, q = _probs(3, 8, 8), _probs(3, 10, 9)
    matched = (torch.tensor([0, 2, 5]), torch.tensor([1, 2, 9]))
    m, u = hybrid_terms(p, q, matched, divergence="forward_kl")
    ps = p[:, matched[0]] / p[:, matched[0]].sum(-1, keepdim=True)
    qs = q[:, matched[1]] / q[:, matched[1]].sum(-1, keepdim=True)
    kl = (qs * (qs.log() - ps.log())).sum(-1)  # KL(teacher || student) on the shared part
    torch.testing.assert_close(m.double(), kl, rtol=1e-5, atol=1e-6)
    keep_p = torch.ones(8, dtype=torch.bool).index_fill(0, matched[0], False)
    keep_q = torch.ones(10, dtype=torch.bool).index_fill(0, matched[1], False)
    torch.testing.assert_close(u, _sorted_l1_reference(p[:, keep_p], q[:, keep_q]))
    same = q[:, [1, 3, 2, 4, 5, 6, 7, 8, 0, 9]][:, :8]  # student sees the teacher's matched tokens at its ids
    m2, _ = hybrid_terms(F.softmax(same, -1), q, (torch.arange(8), torch.tensor([1, 3, 2, 4, 5, 6, 7, 8])))
    assert bool((m2 >= -1e-9).all())


def _spans(student_spans, teacher_spans, ts: int, tt: int, last: bool = False):
    """Per side (groups, first), each (B, T), from per-example spans of shifted positions (span ids run over
    the batch in order, the same on both sides; ``first`` marks each span's base: its first position, or its
    last with ``last``); and the number of spans."""
    maps = {}
    for side, spans, width in (("s", student_spans, ts), ("t", teacher_spans, tt)):
        groups = torch.full((len(spans), width), -1, dtype=torch.long)
        first = torch.zeros(len(spans), width, dtype=torch.bool)
        g = 0
        for row, example in enumerate(spans):
            for a, z in example:
                groups[row, a:z] = g
                first[row, z - 1 if last else a] = True
                g += 1
        maps[side] = (groups, first)
    return maps, sum(len(x) for x in student_spans)


def _aligned_reference(
    s_logits, t_logits, s_targets, t_targets, s_spans, t_spans, temperature, matched=None, w=None, last=False
):
    """GOLD's merge and ULD per span, with a loop: the span's first distribution times the probabilities of
    its other actual tokens (GOLD's "observed"); with ``last``, its last distribution times the
    probabilities of its earlier tokens (GOLD's "bayesian")."""
    total, n = 0.0, 0
    s_logits, t_logits = s_logits.detach(), t_logits.detach()
    for row in range(len(s_spans)):
        for (sa, sz), (ta, tz) in zip(s_spans[row], t_spans[row], strict=True):
            ps = F.softmax(s_logits[row].double() / temperature, -1)
            pt = F.softmax(t_logits[row].double() / temperature, -1)
            if last:
                p = ps[sz - 1] * math.prod(float(ps[j, s_targets[row, j]]) for j in range(sa, sz - 1))
                q = pt[tz - 1] * math.prod(float(pt[j, t_targets[row, j]]) for j in range(ta, tz - 1))
            else:
                p = ps[sa] * math.prod(float(ps[j, s_targets[row, j]]) for j in range(sa + 1, sz))
                q = pt[ta] * math.prod(float(pt[j, t_targets[row, j]]) for j in range(ta + 1, tz))
            if matched is None:
                total += float(_sorted_l1_reference(p[None], q[None])[0])
            else:
                m, u = hybrid_terms(p[None], q[None], matched)
                total += w[0] * float(m[0]) + w[1] * float(u[0])
            n += 1
    return total / max(n, 1)


# spans of shifted positions: one-to-one, one-to-two, two-to-one, three-to-one; a position outside any span
S_SPANS = [[(0, 1), (1, 2), (2, 4), (4, 5)], [(1, 4), (4, 5)]]
T_SPANS = [[(0, 1), (1, 3), (3, 4), (4, 5)], [(0, 1), (1, 3)]]
B, TS, TT, D, VS, VT = 2, 6, 7, 5, 9, 12


def _pair(seed: int) -> tuple[torch.Tensor, ...]:
    """A seeded tiny pair: student hidden states and head (both requiring grad), teacher hidden states and
    head, both sides' targets (vocabularies 9 and 12), and the generator, for further draws."""
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(B, TS, D, generator=g, requires_grad=True)
    ws = torch.randn(VS, D, generator=g, requires_grad=True)
    ht, wt = torch.randn(B, TT, D, generator=g), torch.randn(VT, D, generator=g)
    s_targets = torch.randint(0, VS, (B, TS), generator=g)
    t_targets = torch.randint(0, VT, (B, TT), generator=g)
    return hs, ws, ht, wt, s_targets, t_targets, g


@pytest.mark.parametrize("chunk", [1, 2, 100])
@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("last", [False, True], ids=["merge-first", "merge-last"])
def test_aligned_loss_equals_the_plain_reference(chunk: int, hybrid: bool, last: bool) -> None:
    hs, ws, ht, wt, s_targets, t_targets, _ = _pair(11)
    s_spans, t_spans = S_SPANS, T_SPANS
    maps, n = _spans(s_spans, t_spans, TS, TT, last)
    matched = (torch.tensor([0, 3, 4]), torch.tensor([2, 3, 11])) if hybrid else None
    w = (0.3, 0.7)
    loss, parts = aligned_cross_tokenizer_loss(
        hs, ws, ht, wt, student_targets=s_targets, teacher_targets=t_targets,
        student_groups=maps["s"][0], teacher_groups=maps["t"][0], student_first=maps["s"][1],
        teacher_first=maps["t"][1], num_groups=n, temperature=1.5, chunk_size=chunk, matched=matched,
        matched_weight=w[0] if hybrid else None, unmatched_weight=w[1] if hybrid else None,
    )  # fmt: skip
    ref = _aligned_reference(
        hs @ ws.T, ht @ wt.T, s_targets, t_targets, s_spans, t_spans, 1.5, matched, w, last
    )
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
    assert ("matched" in parts) == hybrid
    loss.backward()
    grad_chunked = hs.grad.clone()
    hs.grad = None
    dense, _ = aligned_cross_tokenizer_loss(
        hs, ws, ht, wt, student_targets=s_targets, teacher_targets=t_targets,
        student_groups=maps["s"][0], teacher_groups=maps["t"][0], student_first=maps["s"][1],
        teacher_first=maps["t"][1], num_groups=n, temperature=1.5, chunk_size=10_000, matched=matched,
        matched_weight=w[0] if hybrid else None, unmatched_weight=w[1] if hybrid else None,
    )  # fmt: skip
    dense.backward()
    torch.testing.assert_close(grad_chunked, hs.grad)
    assert grad_chunked[0, 3 if not last else 2].abs().sum() > 0  # the span's other token: the merge factor


def test_one_to_one_spans_are_plain_uld_and_log_factors_are_zero() -> None:
    g = torch.Generator().manual_seed(2)
    hs, ws = torch.randn(1, 4, 3, generator=g), torch.randn(6, 3, generator=g)
    ht, wt = torch.randn(1, 4, 3, generator=g), torch.randn(8, 3, generator=g)
    groups = torch.arange(4).reshape(1, 4)
    first = torch.ones(1, 4, dtype=torch.bool)
    targets = torch.zeros(1, 4, dtype=torch.long)
    factors = span_log_factors(hs, ws, targets, groups, first, 4)
    assert factors.abs().sum() == 0
    loss, _ = aligned_cross_tokenizer_loss(
        hs, ws, ht, wt, student_targets=targets, teacher_targets=targets, student_groups=groups,
        teacher_groups=groups, student_first=first, teacher_first=first, num_groups=4,
    )  # fmt: skip
    assert float(loss.detach()) == pytest.approx(float(uld_loss(hs @ ws.T, ht @ wt.T)), rel=1e-5)
    assert token_divergence  # used by the hybrid


def test_bad_arguments_are_value_errors() -> None:
    p = _probs(2, 3, 0)
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        sorted_l1(p, p, top_k=0)
    with pytest.raises(ValueError, match="unknown divergence"):
        hybrid_terms(p, p, (torch.tensor([0]), torch.tensor([0])), divergence="kl")


@pytest.mark.parametrize("top_k", [None, 2])
def test_cached_uld_equals_the_live_top_k_loss(top_k: int | None) -> None:
    """From the teacher's top-k log-probabilities at each span's first position and its span factors, the
    cached loss is the live loss with top_k = k (or the smaller top_k); gradients too."""
    from kdkit.losses.uld_cached import cached_uld_loss

    hs, ws, ht, wt, s_targets, t_targets, g = _pair(5)
    s_spans, t_spans, k = S_SPANS, T_SPANS, 4
    maps, n = _spans(s_spans, t_spans, TS, TT)
    kw = dict(
        student_targets=s_targets, student_groups=maps["s"][0], student_first=maps["s"][1], num_groups=n
    )
    live, _ = aligned_cross_tokenizer_loss(
        hs, ws, ht, wt, teacher_targets=t_targets, teacher_groups=maps["t"][0], teacher_first=maps["t"][1],
        temperature=1.5, top_k=top_k or k, chunk_size=3, **kw,
    )  # fmt: skip
    live.backward()
    live_grad, hs.grad = hs.grad.clone(), None
    # the cache's content: the teacher's top-k at each span's first position, its factors from its targets
    t_lp = F.log_softmax((ht @ wt.T) / 1.5, -1)  # (B, Tt, Vt)
    first_rows = [t_lp[row, a] for row, spans in enumerate(t_spans) for a, _ in spans]
    top = torch.stack(first_rows).topk(k, dim=-1)
    shuffled = top.values[:, torch.randperm(k, generator=g)]  # the cache keeps any order
    factors = torch.tensor([
        sum(float(t_lp[row, j, t_targets[row, j]]) for j in range(a + 1, z))
        for row, spans in enumerate(t_spans) for a, z in spans
    ])  # fmt: skip
    cached, parts = cached_uld_loss(
        hs, ws, teacher_logprobs=shuffled, teacher_log_factors=factors, temperature=1.5, top_k=top_k,
        chunk_size=3, **kw,
    )  # fmt: skip
    assert float(cached.detach()) == pytest.approx(float(live.detach()), rel=1e-5)
    assert float(parts["uld"]) == pytest.approx(float(cached.detach()))
    cached.backward()
    torch.testing.assert_close(hs.grad, live_grad)
    with pytest.raises(ValueError, match="span rows"):
        cached_uld_loss(hs, ws, teacher_logprobs=shuffled[:1], teacher_log_factors=factors, **kw)


@pytest.mark.parametrize("top_k", [None, 3, 7, 20])
@pytest.mark.parametrize(("vs", "vt"), [(9, 14), (14, 9)], ids=["teacher-wider", "student-wider"])
def test_sorted_l1_with_the_gradient_made_in_forward_equals_autograd_through_sort(
    top_k: int | None, vs: int, vt: int
) -> None:
    """``_SortedL1`` (the sorts' gradient kept as int8 signs) against autograd through ``sort``/``topk``:
    the same values and the same gradients for the student's probabilities and its span factor."""
    from kdkit.losses.uld import _SortedL1, _teacher_head

    g = torch.Generator().manual_seed(3)
    p_raw = F.softmax(torch.randn(5, vs, generator=g, dtype=torch.float64), -1).requires_grad_(True)
    log_f = (-torch.rand(5, generator=g, dtype=torch.float64)).requires_grad_(True)
    q = F.softmax(torch.randn(5, vt, generator=g, dtype=torch.float64), -1) * 0.7
    ref = sorted_l1(p_raw * log_f.exp().unsqueeze(-1), q, top_k)
    w = torch.rand(5, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad((ref * w).sum(), [p_raw, log_f])
    head, rest = _teacher_head(q, top_k, max(vs, vt), vs)
    out = _SortedL1.apply(p_raw, log_f, head, rest)
    torch.testing.assert_close(out, ref)
    for got, want in zip(torch.autograd.grad((out * w).sum(), [p_raw, log_f]), ref_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("divergence", ["forward_kl", "generalized_jsd"])
def test_cached_hybrid_is_the_live_hybrid_with_every_token_and_a_lower_bound_with_fewer(
    divergence: str,
) -> None:
    """From a cache that holds every teacher token (k = Vt) the cached hybrid equals the live one, values and
    gradients; with fewer (k < Vt) each of its terms is a lower bound of the live term (coarse-graining)."""
    from kdkit.losses.uld_cached import cached_hybrid_loss

    hs, ws, ht, wt, s_targets, t_targets, _ = _pair(8)
    s_spans, t_spans = S_SPANS, T_SPANS
    maps, n = _spans(s_spans, t_spans, TS, TT)
    matched = (torch.tensor([0, 3, 4, 7]), torch.tensor([2, 3, 11, 5]))
    kw = dict(
        student_targets=s_targets, student_groups=maps["s"][0], student_first=maps["s"][1], num_groups=n
    )
    w = {"matched_weight": 0.3, "unmatched_weight": 0.7}
    live, live_parts = aligned_cross_tokenizer_loss(
        hs, ws, ht, wt, teacher_targets=t_targets, teacher_groups=maps["t"][0], teacher_first=maps["t"][1],
        temperature=1.5, matched=matched, divergence=divergence, chunk_size=3, **w, **kw,
    )  # fmt: skip
    (live_grad,) = torch.autograd.grad(live, hs)
    t_lp = F.log_softmax((ht @ wt.T) / 1.5, -1)
    first_rows = torch.stack([t_lp[row, a] for row, spans in enumerate(t_spans) for a, _ in spans])  # (G, Vt)
    factors = torch.tensor([
        sum(float(t_lp[row, j, t_targets[row, j]]) for j in range(a + 1, z))
        for row, spans in enumerate(t_spans) for a, z in spans
    ])  # fmt: skip
    to_student = torch.full((VT,), -1, dtype=torch.long).index_copy(0, matched[1], matched[0])
    mass = first_rows.exp()[:, matched[1]].sum(-1)
    for k in (VT, 5):
        top = first_rows.topk(k, dim=-1)
        cached, parts = cached_hybrid_loss(
            hs, ws, teacher_ids=top.indices, teacher_logprobs=top.values, teacher_matched_mass=mass,
            teacher_log_factors=factors, teacher_to_student=to_student, student_matched=matched[0],
            divergence=divergence, temperature=1.5, chunk_size=3, **w, **kw,
        )  # fmt: skip
        if k == VT:
            assert float(cached.detach()) == pytest.approx(float(live.detach()), rel=1e-5)
            for key in ("uld", "matched"):
                assert float(parts[key]) == pytest.approx(float(live_parts[key]), rel=1e-5, abs=1e-7)
            (grad,) = torch.autograd.grad(cached, hs)
            torch.testing.assert_close(grad, live_grad, rtol=1e-4, atol=1e-6)
        else:
            for key in ("uld", "matched"):
                assert float(parts[key]) <= float(live_parts[key]) + 1e-6
