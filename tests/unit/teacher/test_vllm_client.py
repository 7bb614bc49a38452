"""The vLLM client: rows read from responses in vLLM's ``prompt_logprobs`` format equal the rows a teacher
cache holds. The responses are built here from the tiny model's own log-probabilities in the format of
vLLM's ``PromptLogprobs`` (``vllm/logprobs.py``: per prompt token, null first, then {token id: {logprob,
rank, decoded_token}} with the top k and the prompt token); the client has not run against a live vLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdkit.errors import KdkitError
from kdkit.teacher.server import TopKScorer, load_scorer
from kdkit.teacher.vllm_client import VLLMClient, rows_from_prompt_logprobs
from kdkit.teacher.wire import IGNORE, TopKRequest


@pytest.fixture(scope="module")
def scorer(tiny_lm: Path) -> TopKScorer:
    return load_scorer(str(tiny_lm), device="cpu")


def _vllm_choice(scorer: TopKScorer, ids: list[int], k: int, index: int) -> dict[str, Any]:
    """What vLLM answers for one prompt with prompt_logprobs=k (raw log-probabilities, temperature 1)."""
    with torch.no_grad():
        logits = scorer.model(input_ids=torch.tensor([ids])).logits[0, :, : scorer.vocab].float()
    lp = torch.log_softmax(logits, -1)
    entries: list[dict[str, Any] | None] = [None]
    for t in range(1, len(ids)):
        row = lp[t - 1]
        order = row.argsort(descending=True)
        rank = {int(tok): r + 1 for r, tok in enumerate(order.tolist())}
        chosen = [int(x) for x in order[:k]]
        if ids[t] not in chosen:
            chosen.append(ids[t])
        entries.append(
            {
                str(tok): {"logprob": float(row[tok]), "rank": rank[tok], "decoded_token": "x"}
                for tok in chosen
            }
        )
    return {"index": index, "text": "!", "prompt_logprobs": entries, "finish_reason": "length"}


class _Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def json(self) -> dict[str, Any]:
        return self.body


def test_vllm_rows_equal_the_cache_rows(scorer: TopKScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, scorer.vocab, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    labels = ids.clone()
    labels[:, :4] = IGNORE
    labels[mask == 0] = IGNORE
    sent: list[dict[str, Any]] = []

    def fake_call(self: VLLMClient, method: str, path: str, **kwargs: Any) -> _Answer:
        body = kwargs["json"]
        sent.append(body)
        choices = [_vllm_choice(scorer, p, body["prompt_logprobs"], i) for i, p in enumerate(body["prompt"])]
        return _Answer({"choices": choices[::-1]})  # any order: matched by index

    monkeypatch.setattr(VLLMClient, "_call", fake_call)
    got = VLLMClient("http://127.0.0.1:8000", "teacher").topk(ids, mask, labels, k=5)
    want = scorer.score([TopKRequest(ids, mask, labels, 5, 1.0)])[0]
    assert sent[0]["prompt"][1] == ids[1, :7].tolist() and sent[0]["max_tokens"] == 1
    assert got.counts.tolist() == want.counts.tolist() == [5, 3]
    assert torch.equal(got.indices, want.indices)
    assert torch.allclose(got.logprobs.float(), want.logprobs.float(), atol=2e-3)
    assert torch.allclose(got.target_logprobs, want.target_logprobs, atol=1e-4)


def test_too_few_logprobs_and_other_temperatures_are_refused(scorer: TopKScorer) -> None:
    ids = [3, 4, 5, 6]
    entries = _vllm_choice(scorer, ids, 3, 0)["prompt_logprobs"]
    with pytest.raises(KdkitError, match="--max-logprobs 8"):
        rows_from_prompt_logprobs(entries, ids, ids, k=8)
    with pytest.raises(KdkitError, match="temperature 1 only"):
        VLLMClient("http://127.0.0.1:8000", "t").topk(
            torch.tensor([ids]), torch.ones(1, 4), torch.tensor([ids]), 3, 2.0
        )
