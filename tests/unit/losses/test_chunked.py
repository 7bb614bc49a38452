"""Chunked token losses: equal to the public functions on full logits (values and gradients), in any chunking;
padded heads, masks, empty batches, bf16, and recomputation of the chunk logits in backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdkit.losses import chunked
from kdkit.losses.atkd import atkd_loss
from kdkit.losses.chunked import chunked_atkd_loss, chunked_token_loss
from kdkit.losses.divergences import DIVERGENCES, forward_kl, generalized_jsd, reverse_kl, skew_kl, tvd

PUBLIC = {
    "forward_kl": forward_kl,
    "generalized_jsd": generalized_jsd,
    "reverse_kl": reverse_kl,
    "skew_kl": skew_kl,
    "tvd": tvd,
}
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {}),
    ("generalized_jsd", {"beta": 0.1}),
    ("generalized_jsd", {"beta": 0.9}),
    ("skew_kl", {}),
    ("skew_kl", {"alpha": 0.3, "reverse": True}),
    ("skew_kl", {"alpha": 0.0, "reverse": False}),
    ("tvd", {}),
]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def make(seed: int = 0, b: int = 3, t: int = 6, ds: int = 5, dt: int = 7, vs: int = 13, vt: int = 11) -> dict:
    """Student/teacher hidden states and padded heads (V_s != V_t), a mask with gaps, targets."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=g) > 0.3
    mask[0, 0] = True
    targets = torch.randint(0, min(vs, vt), (b, t), generator=g).masked_fill(~mask, -100)
    return {
        "student_hidden": torch.randn(b, t, ds, generator=g).requires_grad_(),
        "student_weight": torch.randn(vs, ds, generator=g).requires_grad_(),
        "student_bias": torch.randn(vs, generator=g).requires_grad_(),
        "teacher_hidden": 2 * torch.randn(b, t, dt, generator=g),
        "teacher_weight": torch.randn(vt, dt, generator=g),
        "teacher_bias": torch.randn(vt, generator=g),
        "mask": mask,
        "targets": targets,
    }


def full_logits(x: dict, vocab: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    v = vocab or min(x["student_weight"].shape[0], x["teacher_weight"].shape[0])
    s = F.linear(x["student_hidden"], x["student_weight"][:v], x["student_bias"][:v])
    t = F.linear(x["teacher_hidden"], x["teacher_weight"][:v], x["teacher_bias"][:v])
    return s, t


def ref_ce(s_logits: torch.Tensor, x: dict) -> torch.Tensor:
    return F.cross_entropy(s_logits[x["mask"]], x["targets"][x["mask"]])


def student_grads(loss: torch.Tensor, x: dict) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, [x["student_hidden"], x["student_weight"], x["student_bias"]])


def assert_same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, **TOL)


# ---------------------------------------------------------------- token divergences


# Chunk sizes 1, 7 (does not divide n), n and > n, each with one of the temperatures (fewer, faster tests).
@pytest.mark.parametrize(("chunk", "temperature"), [(1, 1.0), (7, 2.0), ("n", 2.0), ("n+5", 1.0)])
@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_token_loss_equals_public_function(name: str, kwargs: dict, temperature: float, chunk) -> None:
    x = make()
    n = int(x["mask"].sum())
    size = {"n": n, "n+5": n + 5}.get(chunk, chunk)
    loss, ce = chunked_token_loss(**x, divergence=name, temperature=temperature, chunk_size=size, **kwargs)
    s, t = full_logits(x)
    ref = PUBLIC[name](s, t, x["mask"], temperature=temperature, **kwargs)
    ref_c = ref_ce(s, x)
    torch.testing.assert_close(loss, ref, **TOL)
    torch.testing.assert_close(ce, ref_c, **TOL)
    # 0.7 * CE: both outputs' gradients flow, each with its own weight.
    assert_same(student_grads(loss + 0.7 * ce, x), student_grads(ref + 0.7 * ref_c, x))


def test_every_divergence_is_covered() -> None:
    assert {name for name, _ in CASES} == set(DIVERGENCES)


def test_no_targets_gives_no_ce_and_2d_inputs_agree_with_3d() -> None:
    x = make(1)
    loss3, ce = chunked_token_loss(**{**x, "targets": None}, divergence="reverse_kl", chunk_size=4)
    assert ce is None
    flat = {k: (v.reshape(-1, v.shape[-1]) if "hidden" in k else v) for k, v in x.items()}
    flat["mask"], flat["targets"] = x["mask"].reshape(-1), x["targets"].reshape(-1)
    loss2, ce2 = chunked_token_loss(**flat, divergence="reverse_kl", chunk_size=4)
    torch.testing.assert_close(loss2, loss3, **TOL)
    s, _ = full_logits(x)
    torch.testing.assert_close(ce2, ref_ce(s, x), **TOL)


def test_no_mask_counts_every_token() -> None:
    x = make(2)
    loss, _ = chunked_token_loss(**{**x, "mask": None, "targets": None}, divergence="tvd", chunk_size=5)
    s, t = full_logits(x)
    torch.testing.assert_close(loss, tvd(s, t), **TOL)


def test_padded_vocab_rows_are_ignored() -> None:
    x = make(3, vs=16, vt=12)  # the default vocabulary is the smaller head's: 12
    loss, _ = chunked_token_loss(**x, divergence="forward_kl", chunk_size=4)
    torch.testing.assert_close(loss, forward_kl(*full_logits(x, 12), x["mask"]), **TOL)
    with torch.no_grad():  # change only padding rows, of both heads (the teacher's grows to 15)
        x["student_weight"][12:] += 100.0
        x["student_bias"][12:] -= 50.0
        x["teacher_weight"] = torch.cat([x["teacher_weight"], torch.full((3, 7), 1e3)])
        x["teacher_bias"] = torch.cat([x["teacher_bias"], torch.full((3,), 1e3)])
    again, _ = chunked_token_loss(**x, divergence="forward_kl", chunk_size=4, vocab_size=12)
    assert again.item() == loss.item()
    g_w, g_b = torch.autograd.grad(again, [x["student_weight"], x["student_bias"]])
    assert g_w[12:].abs().sum() == 0 and g_b[12:].abs().sum() == 0 and g_w[:12].abs().sum() > 0
    small, _ = chunked_token_loss(**{**x, "targets": None}, divergence="forward_kl", vocab_size=9)
    torch.testing.assert_close(small, forward_kl(*full_logits(x, 9), x["mask"]), **TOL)


def test_masked_positions_get_zero_gradient_and_change_nothing() -> None:
    x = make(4)
    loss, ce = chunked_token_loss(**x, divergence="generalized_jsd", chunk_size=3)
    g_h = torch.autograd.grad(loss + ce, x["student_hidden"])[0]
    assert g_h[~x["mask"]].abs().sum() == 0 and g_h[x["mask"]].abs().sum() > 0
    with torch.no_grad():  # garbage at uncounted positions (even NaN) is never read
        x["student_hidden"][~x["mask"]] = float("nan")
        x["teacher_hidden"][~x["mask"]] = float("inf")
    again, ce2 = chunked_token_loss(**x, divergence="generalized_jsd", chunk_size=3)
    torch.testing.assert_close(again, loss, atol=0, rtol=0)
    torch.testing.assert_close(ce2, ce, atol=0, rtol=0)


def test_teacher_gets_no_gradient() -> None:
    x = make(5)
    for key in ("teacher_hidden", "teacher_weight", "teacher_bias"):
        x[key].requires_grad_()
    loss, _ = chunked_token_loss(**x, divergence="forward_kl", chunk_size=4)
    loss.backward()
    assert all(x[k].grad is None for k in ("teacher_hidden", "teacher_weight", "teacher_bias"))
    assert x["student_hidden"].grad is not None


def test_fully_masked_batch_is_a_connected_zero() -> None:
    x = make(6)
    x["mask"] = torch.zeros_like(x["mask"])
    x["targets"] = torch.full_like(x["targets"], -100)
    loss, ce = chunked_token_loss(**x, divergence="reverse_kl")
    atkd, atkd_ce = chunked_atkd_loss(**x)
    for value in (loss, ce, atkd, atkd_ce):
        assert value.item() == 0.0 and value.grad_fn is not None
        grads = torch.autograd.grad(value, [x["student_hidden"], x["student_weight"]], retain_graph=True)
        assert all(torch.isfinite(g).all() and g.abs().sum() == 0 for g in grads)


def test_bf16_inputs_compute_in_fp32_even_under_autocast() -> None:
    x = make(7)
    low = {
        k: (v.detach().bfloat16().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in x.items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, ce = chunked_token_loss(**low, divergence="skew_kl", chunk_size=4)
    # Reference: the same bf16 values, cast to fp32 exactly, through the public function.
    up = {
        k: (v.detach().float().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
        for k, v in low.items()
    }
    s, t = full_logits(up)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, skew_kl(s, t, up["mask"]), **TOL)
    torch.testing.assert_close(ce, ref_ce(s, up), **TOL)
    grads = student_grads(loss + ce, low)
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- ATKD


@pytest.mark.parametrize("chunk", [1, 7, 100])
@pytest.mark.parametrize("scope", ["batch", "sequence"])
@pytest.mark.parametrize("reverse", [False, True])
def test_atkd_equals_atkd_loss(reverse: bool, scope: str, chunk: int) -> None:
    x = make(8, t=9)
    opts = {"hard_ratio": 0.4, "easy_weight": 0.3, "reverse": reverse, "temperature": 2.0, "scope": scope}
    loss, ce = chunked_atkd_loss(**x, chunk_size=chunk, **opts)
    s, t = full_logits(x)
    ref = atkd_loss(s, t, x["targets"].clamp(min=0), x["mask"], **opts)
    ref_c = ref_ce(s, x)
    torch.testing.assert_close(loss, ref, **TOL)
    torch.testing.assert_close(ce, ref_c, **TOL)
    assert_same(student_grads(loss + 0.7 * ce, x), student_grads(ref + 0.7 * ref_c, x))


@pytest.mark.parametrize("scope", ["batch", "sequence"])
def test_atkd_ties_split_like_atkd_loss(scope: str) -> None:
    # Zero teacher hidden rows give logits equal to the bias, bit for bit: exactly tied UnC across chunks.
    x = make(9, t=8)
    x["teacher_hidden"][:, ::2] = 0.0
    x["targets"] = x["targets"].clamp(min=0)
    x["targets"][:, ::2] = 3
    loss, _ = chunked_atkd_loss(**x, chunk_size=3, scope=scope, hard_ratio=0.5, easy_weight=0.1)
    s, t = full_logits(x)
    ref = atkd_loss(s, t, x["targets"], x["mask"], scope=scope, hard_ratio=0.5, easy_weight=0.1)
    torch.testing.assert_close(loss, ref, **TOL)


# ---------------------------------------------------------------- memory: recomputation, nothing (·, V) saved


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_cross_entropy_equals_full_logit_cross_entropy(chunk: int) -> None:
    """Values and gradients of F.cross_entropy on the counted rows of the (padded-head-cut) logits."""
    x = make(12)
    vocab = 11  # the student head has 13 rows: the last two are never read
    s, _ = full_logits(x, vocab)
    ref = ref_ce(s, x)
    ce = chunked.chunked_cross_entropy(
        x["student_hidden"], x["student_weight"], x["targets"], x["mask"], vocab_size=vocab, chunk_size=chunk,
        bias=x["student_bias"],
    )  # fmt: skip
    torch.testing.assert_close(ce, ref, **TOL)
    assert_same(student_grads(ce, x), student_grads(ref, x))
    flat = chunked.chunked_cross_entropy(
        x["student_hidden"][x["mask"]], x["student_weight"], x["targets"][x["mask"]], None, vocab_size=vocab,
        bias=x["student_bias"],
    )  # fmt: skip
    torch.testing.assert_close(flat, ref, **TOL)


def test_cross_entropy_of_nothing_is_a_connected_zero_and_bad_targets_are_refused() -> None:
    x = make(13)
    args = (x["student_hidden"], x["student_weight"])
    none = torch.zeros_like(x["mask"])
    ce = chunked.chunked_cross_entropy(*args, torch.full_like(x["targets"], -100), none)
    assert ce.item() == 0.0 and ce.grad_fn is not None
    with pytest.raises(ValueError, match=r"token ids in \[0, 13\)"):
        chunked.chunked_cross_entropy(*args, x["targets"].masked_fill(x["mask"], 13), x["mask"])
    with pytest.raises(ValueError, match="vocab_size must be"):
        chunked.chunked_cross_entropy(*args, x["targets"], x["mask"], vocab_size=14)


def counting_logits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = chunked._chunk_logits

    def counted(hidden, weight, bias):
        calls.append(hidden.shape[0])
        return real(hidden, weight, bias)

    monkeypatch.setattr(chunked, "_chunk_logits", counted)
    return calls


def test_backward_recomputes_each_chunk_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting_logits(monkeypatch)
    x = make(10)
    n = int(x["mask"].sum())
    chunks = math.ceil(n / 4)
    loss, ce = chunked_token_loss(**x, divergence="forward_kl", chunk_size=4)
    assert len(calls) == 2 * chunks  # student + teacher per chunk
    (loss + ce).backward()
    # both again in backward, per chunk but the last (it keeps its graph: its backward runs first)
    last = n - 4 * (chunks - 1)
    assert len(calls) == 4 * chunks - 2 and sum(calls) == 4 * n - 2 * last
    calls.clear()
    loss, _ = chunked_atkd_loss(**x, chunk_size=4)
    assert len(calls) == 3 * chunks  # the teacher's UnC pass, then student + teacher
    loss.backward()
    assert len(calls) == 5 * chunks - 2
    calls.clear()
    chunked_token_loss(**x, divergence="forward_kl", chunk_size=n)[0].backward()  # one chunk: no recompute
    assert len(calls) == 2
    calls.clear()
    with torch.no_grad():  # evaluation: no graph, nothing to recompute
        chunked_token_loss(**x, divergence="tvd", chunk_size=4)
    assert len(calls) == 2 * chunks


def test_graph_saves_no_logit_sized_tensor() -> None:
    x = make(11, vs=64, vt=64)
    vocab = 64
    saved: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_token_loss(**x, divergence="forward_kl", chunk_size=2)
        chunked_atkd_loss(**x, chunk_size=2)
        chunked.chunked_cross_entropy(
            x["student_hidden"], x["student_weight"], x["targets"], x["mask"], chunk_size=2
        )
    # only the last chunk's (c <= 2, V) intermediates are saved, never the batch's; (D, V) is a head's W.T
    heads = (x["student_weight"].shape[1], x["teacher_weight"].shape[1])
    rows = [s[0] for s in saved if len(s) == 2 and s[-1] == vocab and s[0] not in heads]
    assert rows and max(rows) <= 2
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # the dense path does save them
        forward_kl(*full_logits(x), x["mask"])
    assert any(len(s) == 2 and s[-1] == vocab and s[0] > 1 for s in saved)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("change", "options", "match"),
    [
        ({}, {"divergence": "forward_k"}, "unknown divergence"),
        ({}, {"divergence": "generalized_jsd", "beta": 1.5}, "beta"),
        ({}, {"divergence": "skew_kl", "alhpa": 0.1}, "alhpa"),
        ({}, {"divergence": "tvd", "temperature": 0.0}, "temperature"),
        ({"student_weight": torch.zeros(5, 13)}, {"divergence": "tvd"}, "transpose"),
        ({"student_bias": torch.zeros(3)}, {"divergence": "tvd"}, "student_bias"),
        ({"teacher_hidden": torch.zeros(3, 5, 7)}, {"divergence": "tvd"}, "different tokens"),
        ({"mask": torch.ones(3, 6)}, {"divergence": "tvd"}, "mask must be bool"),
        ({}, {"divergence": "tvd", "vocab_size": 12}, r"\[1, 11\]"),
        ({}, {"divergence": "tvd", "chunk_size": 0}, "chunk_size"),
        ({"targets": torch.full((3, 6), 11)}, {"divergence": "tvd"}, r"\[0, 11\)"),
        ({"targets": torch.zeros(3, 6)}, {"divergence": "tvd"}, "integer"),
    ],
)
def test_token_loss_rejects_bad_input(change: dict, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunked_token_loss(**{**make(), **change}, **options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"hard_ratio": 2.0}, "hard_ratio"),
        ({"easy_weight": -1.0}, "easy_weight"),
        ({"scope": "doc"}, "scope"),
    ],
)
def test_atkd_rejects_bad_options(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chunked_atkd_loss(**make(), **options)
    flat = {**make(), "mask": None, "targets": torch.zeros(18, dtype=torch.long)}
    flat["student_hidden"], flat["teacher_hidden"] = torch.zeros(18, 5), torch.zeros(18, 7)
    with pytest.raises(ValueError, match="sequence"):
        chunked_atkd_loss(**flat, scope="sequence")
