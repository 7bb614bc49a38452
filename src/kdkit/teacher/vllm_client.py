"""A vLLM server as the teacher (``teacher.server_api: vllm``): top-k rows from its OpenAI-compatible
completions endpoint with ``prompt_logprobs``.

**Status: tested against responses in vLLM's documented format (built in the tests from a real model's
log-probabilities), not yet run against a live vLLM server.**

Request, one per batch (``POST {url}/v1/completions``, JSON)::

    {"model": <teacher.model or server_model>, "prompt": [[token ids of sequence 1], ...],
     "max_tokens": 1, "temperature": 0, "prompt_logprobs": k}

Fields read from the response: ``choices[i].index`` (which prompt) and ``choices[i].prompt_logprobs``:
one entry per prompt token, ``null`` for the first, else an object ``{"<token id>": {"logprob": float,
"rank": int, "decoded_token": str}}`` holding the top-k tokens (ranks 1..k) and the prompt token itself
(added with its rank when it is not in the top k). Entry t + 1 is the teacher's distribution at position t,
so kdkit's row for a scored position t takes the entries of rank <= k as the top-k and the prompt token's
log-probability as the target's: exactly what a teacher cache stores (docs/cache.md).

Limits of the endpoint: vLLM returns raw log-probabilities (temperature 1), so a method temperature other
than 1 is refused; the server must allow ``k`` log-probabilities (``vllm serve ... --max-logprobs 64``);
vLLM has no fingerprints, so the tokenizer is checked by tokenizing a probe text (``POST /tokenize``) and
comparing with the student's tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdkit.errors import KdkitError
from kdkit.teacher.client import TeacherClient
from kdkit.teacher.wire import IGNORE, TopKResponse

PROBE = "kdkit checks the tokenizer: 12 numbers, naïve café, <tags> and    spaces."


def rows_from_prompt_logprobs(
    entries: list[dict[str, Any] | None], ids: list[int], labels: list[int], k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(indices (n, k) int32, logprobs (n, k) float16, target_logprobs (n,) float32) of the scored
    positions of one sequence (``labels[t + 1] != -100``) from vLLM's ``prompt_logprobs``."""
    if len(entries) != len(ids):
        raise KdkitError(f"vLLM answered {len(entries)} prompt_logprobs for a prompt of {len(ids)} tokens")
    out_ids, out_lp, out_target = [], [], []
    for t in range(len(ids) - 1):
        if labels[t + 1] == IGNORE:
            continue
        entry = entries[t + 1]
        if not entry:
            raise KdkitError(f"vLLM answered no prompt_logprobs at position {t + 1}")
        ranked = sorted(((int(v["rank"]), int(tok), float(v["logprob"])) for tok, v in entry.items()))
        top = [(tok, lp) for rank, tok, lp in ranked if rank <= k][:k]
        if len(top) < k:
            raise KdkitError(
                f"vLLM answered {len(top)} log-probabilities per token, the run needs cache.top_k={k}; "
                f"start vLLM with --max-logprobs {k} or lower cache.top_k"
            )
        target = entry.get(str(labels[t + 1]))
        if target is None:
            raise KdkitError(f"vLLM's prompt_logprobs lack the prompt token at position {t + 1}")
        out_ids.append([tok for tok, _ in top])
        out_lp.append([lp for _, lp in top])
        out_target.append(float(target["logprob"]))
    n = len(out_ids)
    return (
        torch.tensor(out_ids, dtype=torch.int32).view(n, k),
        torch.tensor(out_lp, dtype=torch.float32).view(n, k).half(),
        torch.tensor(out_target, dtype=torch.float32),
    )


class VLLMClient(TeacherClient):
    """``topk`` like ``TeacherClient``'s, from a vLLM server (module docstring); retries as it does."""

    def __init__(self, url: str, model: str, token: str | None = None, retry_seconds: float = 300.0) -> None:
        super().__init__(url, token=token, retry_seconds=retry_seconds)
        self.model = model

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Refuse a vLLM server whose tokenizer splits a probe text otherwise than the student's."""
        found = self._call(
            "POST", "/tokenize", json={"model": self.model, "prompt": PROBE, "add_special_tokens": False}
        )
        theirs = found.json().get("tokens")
        ours = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            raise KdkitError(
                f"vLLM server {self.url} tokenizes otherwise than the student's tokenizer ({len(theirs or [])} "
                f"vs {len(ours)} tokens for a probe text); serve a teacher with the student's tokenizer"
            )

    def topk(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, k: int, temperature: float = 1.0
    ) -> TopKResponse:
        if temperature != 1.0:
            raise KdkitError(
                f"a vLLM teacher gives log-probabilities at temperature 1 only; the method asks for {temperature}"
            )
        lengths = attention_mask.sum(1).tolist()
        prompts = [input_ids[b, : int(n)].tolist() for b, n in enumerate(lengths)]
        body = {
            "model": self.model,
            "prompt": prompts,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": k,
        }
        choices = sorted(
            self._call("POST", "/v1/completions", json=body).json()["choices"], key=lambda c: c["index"]
        )
        if len(choices) != len(prompts):
            raise KdkitError(f"vLLM answered {len(choices)} choices for {len(prompts)} prompts")
        parts = [
            rows_from_prompt_logprobs(c["prompt_logprobs"], p, labels[b, : len(p)].tolist(), k)
            for b, (c, p) in enumerate(zip(choices, prompts, strict=True))
        ]
        return TopKResponse(
            torch.tensor([p[0].shape[0] for p in parts], dtype=torch.int64),
            torch.cat([p[0] for p in parts]),
            torch.cat([p[1] for p in parts]),
            torch.cat([p[2] for p in parts]),
            {"api": "vllm", "model": self.model},
        )
