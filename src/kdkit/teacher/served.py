"""A served teacher as the teacher source of a causal-LM run (``teacher.server: http://host:port``).

The run sends each micro-batch's token ids and labels to `kdkit teacher serve` and gets back, for every
scored token, the teacher's top-``cache.top_k`` log-probabilities at the method's temperature and the
target's: the rows a teacher cache holds, read into the same ``TopKTeacher`` (``cache.tail`` applies), so
every divergence and ATKD train exactly as from the cache. On-policy samples are scored too: the request
is made from the batch after the student's generations replaced its responses.

Prefetch: ``stream`` wraps the loop's batches and keeps requests for the next ``prefetch`` batches in
flight (a thread pool) while the student trains on the current one. A batch whose tokens changed after it
was drawn (on-policy generations) is detected by its content and requested again.

Before training the client refuses a server whose teacher or tokenizer fingerprint differs from the run's
(``teacher.model`` and the student's tokenizer). An unreachable server is retried for
``teacher.server_retry_seconds``; then training stops with one line naming the server and the last
checkpoint (``kdkit.train.loop``), and ``--resume`` continues once the server is back.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from accelerate import Accelerator

from kdkit.data.lm_encode import shift_labels
from kdkit.errors import KdkitError
from kdkit.fingerprint import model_fingerprint, tokenizer_fingerprint
from kdkit.losses.topk import TopKTeacher
from kdkit.methods.base import Batch
from kdkit.models.causal_lm import LMOutputs
from kdkit.teacher.client import TeacherClient
from kdkit.teacher.vllm_client import VLLMClient
from kdkit.teacher.wire import TopKResponse

TOKEN_ENV = "KDKIT_TEACHER_TOKEN"


def _key(batch: Batch) -> str:
    """What a request depends on: the student-side token ids, attention mask and labels."""
    h = hashlib.sha256()
    for t in (batch["student"]["input_ids"], batch["student"]["attention_mask"], batch["labels"]):
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ServedTeacher:
    """Teacher outputs from `kdkit teacher serve` (module docstring)."""

    def __init__(
        self, client: TeacherClient, k: int, temperature: float, tail: str, prefetch: int = 2
    ) -> None:
        self.client = client
        self.k = k
        self.temperature = temperature
        self.tail = tail
        self.prefetch = prefetch
        self._pool = ThreadPoolExecutor(max_workers=max(1, prefetch), thread_name_prefix="kdkit-teacher")
        self._pending: OrderedDict[str, Future[TopKResponse]] = OrderedDict()

    @classmethod
    def connect(
        cls, url: str, teacher_name: str, tokenizer: Any, k: int, temperature: float, tail: str,
        retry_seconds: float, api: str = "kdkit", server_model: str | None = None,
    ) -> ServedTeacher:  # fmt: skip
        """A source on the server at ``url``, refused unless it serves ``teacher_name`` with ``tokenizer``
        (``api`` vllm: a vLLM server, ``kdkit.teacher.vllm_client``, checked by tokenizing a probe)."""
        token = os.environ.get(TOKEN_ENV) or None
        if api == "vllm":
            vllm = VLLMClient(url, server_model or teacher_name, token=token, retry_seconds=retry_seconds)
            if temperature != 1.0:
                raise KdkitError(
                    f"teacher.server_api vllm gives log-probabilities at temperature 1; set method.temperature: 1 "
                    f"(it is {temperature})"
                )
            vllm.check_tokenizer(tokenizer)
            return cls(vllm, k, temperature, tail)
        client = TeacherClient(url, token=token, retry_seconds=retry_seconds)
        info = client.check(model_fingerprint(teacher_name), tokenizer_fingerprint(tokenizer))
        if k > int(info["vocab_size"]):
            raise KdkitError(
                f"cache.top_k is {k}, more than the served teacher's {info['vocab_size']} tokens"
            )
        return cls(client, k, temperature, tail)

    def _request(self, batch: Batch) -> TopKResponse:
        student = batch["student"]
        return self.client.topk(
            student["input_ids"].cpu(), student["attention_mask"].cpu(), batch["labels"].cpu(), self.k,
            self.temperature,
        )  # fmt: skip

    def stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """The batches, with the next ``prefetch`` ones already requested."""
        ahead: list[Batch] = []
        for batch in batches:
            ahead.append(batch)
            self._pending.setdefault(_key(batch), self._pool.submit(self._request, batch))
            while len(self._pending) > 2 * (self.prefetch + 1):  # batches changed after they were drawn
                self._pending.popitem(last=False)[1].cancel()
            if len(ahead) > self.prefetch:
                yield ahead.pop(0)
        yield from ahead

    def outputs(self, batch: Batch, accelerator: Accelerator) -> LMOutputs:
        future = self._pending.pop(_key(batch), None)
        result = future.result() if future is not None else self._request(batch)
        _, mask = shift_labels(batch)
        if result.counts.tolist() != mask.sum(1).tolist():
            raise KdkitError(
                f"teacher server {self.client.url} scored {result.counts.tolist()} tokens per sequence, the "
                f"batch has {mask.sum(1).tolist()}; is it another kdkit version?"
            )
        device = accelerator.device
        top = TopKTeacher(
            result.indices.long().to(device), result.logprobs.to(device), result.target_logprobs.to(device),
            tail=self.tail,
        )  # fmt: skip
        return LMOutputs(None, None, None, topk=top)

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
