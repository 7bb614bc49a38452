"""The compact cache format: a record decodes to the same top-k ids, log-probabilities within the stated
step, the top-k mass kept, targets to 5e-7 nat (their order kept, which ATKD's split needs); the
losses from decoded rows stay within 1e-3 of the plain rows' for every divergence and ATKD; a 262k
vocabulary takes three bytes per code gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdkit.losses.topk import TopKTeacher, topk_atkd_loss, topk_token_loss
from kdkit.teacher.compact import Codec, Codes, decode_example, encode_shard, rank_table

K = 64


def _rows(vocab: int, n: int = 300, seed: int = 0, peaked: float = 4.0) -> dict[str, torch.Tensor]:
    """Plain-format rows of two examples: top-K of a Zipf-like teacher (frequent ids recur across rows)."""
    g = torch.Generator().manual_seed(seed)
    base = -torch.log(torch.arange(1, vocab + 1, dtype=torch.float32)) * 1.1  # Zipf prior over ids
    logits = base + peaked * torch.randn(n, vocab, generator=g)
    lp = F.log_softmax(logits, -1)
    top = lp.topk(K, -1)
    targets = torch.where(
        torch.rand(n, generator=g) < 0.8, top.indices[:, 3], torch.randint(0, vocab, (n,), generator=g)
    )
    return {
        "offsets": torch.tensor([0, n // 3, n]),
        "indices": top.indices.int(),
        "logprobs": top.values.half(),
        "target_logprobs": lp.gather(-1, targets[:, None]).squeeze(-1),
        "matched_mass": torch.rand(n, generator=g),
        "_lp": lp,  # the full distribution (not part of the format)
        "_targets": targets,
    }


def _decode(enc: dict[str, torch.Tensor], codec: Codec) -> list[tuple]:
    codes = Codes(enc["rank_table"].numpy(), codec.vocab)
    records, ro, off = enc["records"].numpy().tobytes(), enc["record_offsets"], enc["offsets"]
    return [
        decode_example(records[int(ro[e]) : int(ro[e + 1])], int(off[e + 1] - off[e]), codes, codec, True)
        for e in range(len(off) - 1)
    ]


@pytest.mark.parametrize("vocab", [4000, 70000])
def test_records_decode_to_the_same_rows_within_the_step(vocab: int) -> None:
    rows = _rows(vocab, n=120 if vocab > 65536 else 300)
    plain = {k: v for k, v in rows.items() if not k.startswith("_")}
    codec = Codec(vocab, K)
    assert codec.planes == (3 if vocab > 65536 else 2)
    enc = encode_shard(plain, codec)
    got = _decode(enc, codec)
    ids = torch.cat([g[0] for g in got])
    lp = torch.cat([g[1] for g in got])
    target = torch.cat([g[2] for g in got])
    mass = torch.cat([g[3] for g in got])
    want_ids = plain["indices"].long()
    assert torch.equal(ids.sort(1).values, want_ids.sort(1).values)  # the same ids in every row
    by_id = lambda i, v: torch.gather(v, 1, i.argsort(1))  # noqa: E731 (values in id order)
    want_lp = plain["logprobs"].float()
    err = (by_id(ids, lp) - by_id(want_ids, want_lp)).abs()
    fine = by_id(want_ids, want_lp) > -13.9  # the fine levels: error <= step / 2 plus the mass correction
    assert err[fine].max() <= codec.step / 2 + codec.step / 2 + 1e-4
    assert err.max() <= 0.5 + codec.step  # the coarse tail levels are 1 nat apart
    top_mass = lambda v: v.exp().sum(1)  # noqa: E731
    torch.testing.assert_close(top_mass(lp), top_mass(want_lp), rtol=2e-3, atol=1e-5)
    inside = (want_ids == rows["_targets"][:, None]).any(1)
    assert 0 < int(inside.sum()) < len(inside)
    want_target = plain["target_logprobs"]
    found = torch.zeros_like(inside)  # the rows whose target's entry the encoder finds (fp16 top-k values)
    found[:] = (plain["logprobs"].float() == want_target.half().float()[:, None]).any(1)
    assert bool(found[inside].all())
    assert (target - want_target)[found].abs().max() <= codec.step / 65535 / 2 + 1e-6  # the residual code
    assert torch.equal(target[~found], want_target[~found])  # float32, whole
    torch.testing.assert_close(mass, plain["matched_mass"].half().float())
    plain_size = sum(v.numel() * v.element_size() for v in plain.values())
    assert enc["records"].numel() < plain_size / 2  # (the shard's rank table is fixed-size, amortised)


def _near_ties(n: int = 2000) -> dict[str, torch.Tensor]:
    """Rows whose targets' log-probabilities lie 5e-5 nat apart around log(1/2), all inside the top-k."""
    rows = {k: v for k, v in _rows(500, n=n, seed=3).items() if not k.startswith("_")}
    target = -0.7 + 5e-5 * torch.randperm(n, generator=torch.Generator().manual_seed(4)).float()
    rows["logprobs"][:, 0] = target.half()  # the target's entry, as the plain cache rounds it
    rows["target_logprobs"] = target
    return rows


@pytest.mark.parametrize("kind", ["residual", "float16"])
def test_the_targets_order_survives_where_atkd_splits(kind: str) -> None:
    """ATKD ranks tokens by the teacher's p_g: targets that differ by 5e-5 nat keep their order with the
    residual code (5e-7 nat); float16 (the version 2 records, still read) merges them (ulp 4.9e-4 nat)."""
    rows = _near_ties()
    codec = Codec(500, K, target=kind)
    target = torch.cat([g[2] for g in _decode(encode_shard(rows, codec), codec)])
    same_order = torch.equal(target.argsort(stable=True), rows["target_logprobs"].argsort(stable=True))
    assert same_order == (kind == "residual")


def test_a_codec_refuses_an_unknown_target_code() -> None:
    with pytest.raises(ValueError, match=r"Codec\.target"):
        Codec(500, K, target="bf16")


def test_frequent_ids_get_the_small_codes() -> None:
    ids = np.array([[5, 9, 2], [5, 9, 7], [5, 1, 9]])
    table = rank_table(ids, 12)
    assert table.tolist()[:2] == [5, 9]
    codes = Codes(table, 12)
    assert codes.to_code[5] == 0 and codes.to_code[9] == 1
    assert sorted(codes.to_code.tolist()) == list(range(12)) and codes.to_id[codes.to_code[7]] == 7


CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.5}),
    ("tvd", {}),
    ("skew_kl", {"alpha": 0.1}),
]


@pytest.mark.parametrize("close", [False, True])
def test_losses_from_decoded_rows_are_within_1e_3(close: bool) -> None:
    """The student far from the teacher (as at initialisation) or about as close to it as a trained student
    (forward KL ~0.7 nats). The rounding of log p to 1/16 nat biases a divergence by about step^2 / 12 =
    3e-4 nats for a close student, so the relative bound holds down to a few tenths of a nat."""
    vocab, n = 3000, 256
    rows = _rows(vocab, n=n, seed=1)
    plain = {k: v for k, v in rows.items() if not k.startswith("_")}
    codec = Codec(vocab, K)
    got = _decode(encode_shard(plain, codec), codec)
    g = torch.Generator().manual_seed(2)
    student = rows["_lp"] + (1.5 if close else 3.0) * torch.randn(n, vocab, generator=g)
    mask = torch.ones(n, dtype=torch.bool)
    targets = rows["_targets"]
    before = TopKTeacher(plain["indices"].long(), plain["logprobs"], plain["target_logprobs"])
    after = TopKTeacher(
        torch.cat([x[0] for x in got]), torch.cat([x[1] for x in got]), torch.cat([x[2] for x in got])
    )
    for name, kw in CASES:
        a, _ = topk_token_loss(student, None, before, mask, divergence=name, vocab_size=vocab, **kw)
        b, _ = topk_token_loss(student, None, after, mask, divergence=name, vocab_size=vocab, **kw)
        assert abs(b.item() / a.item() - 1) < 1e-3, name
    for reverse in (False, True):
        a, _ = topk_atkd_loss(student, None, before, targets, mask, vocab_size=vocab, reverse=reverse)
        b, _ = topk_atkd_loss(student, None, after, targets, mask, vocab_size=vocab, reverse=reverse)
        assert abs(b.item() / a.item() - 1) < 1e-3, f"atkd {reverse}"


def test_ids_outside_the_vocabulary_are_refused() -> None:
    rows = {k: v for k, v in _rows(100, n=4).items() if not k.startswith("_")}
    with pytest.raises(ValueError, match="vocabulary size 50"):
        encode_shard(rows, Codec(50, K))
