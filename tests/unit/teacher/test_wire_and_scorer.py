"""The teacher server's payloads (round trip, malformed input refused) and its scorer, against the rows a
teacher cache computes for the same sequences."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdkit.data.lm_encode import shift_labels
from kdkit.models.causal_lm import lm_forward
from kdkit.teacher.build import topk_examples
from kdkit.teacher.server import TopKScorer, _groups, check_bind, load_scorer
from kdkit.teacher.wire import IGNORE, PayloadError, TopKRequest, TopKResponse


def _request(b: int = 2, t: int = 7, k: int = 5, vocab: int = 40, seed: int = 0) -> TopKRequest:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t - 2 :] = 0  # the first sequence is right-padded
    labels = ids.clone()
    labels[:, :3] = IGNORE  # the prompt is not scored
    labels[mask == 0] = IGNORE
    return TopKRequest(ids, mask, labels, k, 1.5)


def test_request_and_response_round_trip() -> None:
    req = _request()
    back = TopKRequest.decode(req.encode())
    assert torch.equal(back.input_ids, req.input_ids) and torch.equal(back.labels, req.labels)
    assert torch.equal(back.attention_mask, req.attention_mask) and (back.k, back.temperature) == (5, 1.5)
    resp = TopKResponse(
        torch.tensor([2, 1]), torch.arange(15, dtype=torch.int32).view(3, 5), -torch.rand(3, 5).half(),
        -torch.rand(3), {"model": "m"},
    )  # fmt: skip
    again = TopKResponse.decode(resp.encode())
    assert torch.equal(again.indices, resp.indices) and torch.equal(again.logprobs, resp.logprobs)
    assert torch.equal(again.target_logprobs, resp.target_logprobs) and again.meta == {"model": "m"}
    assert len(resp.encode()) < 3 * (5 * 6 + 4) + 400  # raw tensors plus a small header: no JSON floats


@pytest.mark.parametrize(
    "body, says",
    [
        (b"", "empty request"),
        (b"\x05\x00\x00\x00\x00\x00\x00\x00{}", "not a safetensors payload"),
        (b"not a payload at all", "not a safetensors payload"),
    ],
)
def test_malformed_requests_are_refused_in_one_line(body: bytes, says: str) -> None:
    with pytest.raises(PayloadError, match=says):
        TopKRequest.decode(body)


def test_requests_with_wrong_shapes_or_settings_are_refused() -> None:
    from safetensors.torch import save

    req = _request()
    bad_k = TopKRequest(req.input_ids, req.attention_mask, req.labels, 0, 1.0).encode()
    with pytest.raises(PayloadError, match="k=0"):
        TopKRequest.decode(bad_k)
    short = save(
        {
            "input_ids": req.input_ids.int(),
            "attention_mask": req.attention_mask[:, :3].to(torch.uint8),
            "labels": req.labels.int(),
        },
        metadata={"k": "5", "temperature": "1.0"},
    )
    with pytest.raises(PayloadError, match=r"\(batch, length\)"):
        TopKRequest.decode(short)


@pytest.fixture(scope="module")
def scorer(tiny_lm: Path) -> TopKScorer:
    return load_scorer(str(tiny_lm), device="cpu")


def _reference(scorer: TopKScorer, req: TopKRequest) -> list[dict[str, torch.Tensor]]:
    """The rows `kdkit cache` computes for these sequences (the same functions, one sequence at a time)."""
    rows = []
    for i in range(req.input_ids.shape[0]):
        keep = int(req.attention_mask[i].sum())
        ids, mask = req.input_ids[i : i + 1, :keep], req.attention_mask[i : i + 1, :keep]
        targets, scored = shift_labels({"labels": req.labels[i : i + 1, :keep]})
        with torch.no_grad():
            out = lm_forward(scorer.model, {"input_ids": ids, "attention_mask": mask}, chunked=True)
        rows += topk_examples(out, scored, targets, scorer.vocab, req.k, req.temperature, torch.float16)
    return rows


def test_scorer_gives_the_cache_rows_also_when_requests_share_a_pass(scorer: TopKScorer) -> None:
    a, b = _request(vocab=scorer.vocab, seed=1), _request(b=3, t=11, vocab=scorer.vocab, seed=2)
    together = scorer.score([a, b])  # one padded forward pass
    for req, resp in zip([a, b], together, strict=True):
        ref = _reference(scorer, req)
        assert resp.counts.tolist() == [r["indices"].shape[0] for r in ref]
        ref_lp = torch.cat([r["logprobs"] for r in ref]).float()
        assert torch.allclose(resp.logprobs.float(), ref_lp, atol=2e-3)
        assert torch.allclose(resp.target_logprobs, torch.cat([r["target_logprobs"] for r in ref]), atol=1e-4)
        same = torch.cat([r["indices"] for r in ref]) == resp.indices
        assert same.float().mean() > 0.97  # ids differ only where two log-probs tie within rounding
        assert resp.meta["tokenizer"] == scorer.info["tokenizer_fingerprint"]


def test_scorer_refuses_what_the_teacher_cannot_score(scorer: TopKScorer) -> None:
    req = _request(vocab=scorer.vocab)
    with pytest.raises(PayloadError, match="vocabulary"):
        scorer.check(TopKRequest(req.input_ids, req.attention_mask, req.labels, scorer.vocab + 1))
    with pytest.raises(PayloadError, match=r"input_ids must be in"):
        scorer.check(TopKRequest(req.input_ids + 1000, req.attention_mask, req.labels, 4))
    labels = req.labels.clone()
    labels[0, -1] = 5  # a scored position on padding
    with pytest.raises(PayloadError, match="padded position"):
        scorer.check(TopKRequest(req.input_ids, req.attention_mask, labels, 4))


def test_requests_group_by_settings_and_length_within_the_token_budget() -> None:
    reqs = [(_request(k=5), i) for i in range(3)] + [(_request(k=7), 9), (_request(k=5, t=8), 8)]
    groups = _groups(reqs, max_tokens=2 * 7 * 2)  # two requests of 2 x 7 tokens fit a pass
    assert [[tag for _, tag in g] for g in groups] == [[0, 1], [2], [9], [8]]


def test_an_answer_does_not_depend_on_the_requests_sharing_its_pass(scorer: TopKScorer) -> None:
    a, b = _request(vocab=scorer.vocab, seed=3), _request(b=3, vocab=scorer.vocab, seed=4)
    alone, together = scorer.score([a])[0], scorer.score([b, a])[1]
    assert torch.equal(alone.indices, together.indices) and torch.equal(alone.logprobs, together.logprobs)
    assert torch.equal(alone.target_logprobs, together.target_logprobs)


def test_binding_beyond_this_machine_needs_a_token() -> None:
    check_bind("127.0.0.1", None)
    check_bind("localhost", None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(Exception, match="KDKIT_TEACHER_TOKEN"):
        check_bind("0.0.0.0", None)
