"""A client of the teacher server (`kdkit teacher serve`, ``kdkit.teacher.server``).

``TeacherClient(url).topk(input_ids, attention_mask, labels, k, temperature)`` returns the teacher's top-k
rows of the scored tokens (``kdkit.teacher.wire.TopKResponse``), the rows a teacher cache would hold.

Faults: a server that cannot be reached, or answers 5xx, is retried with exponential backoff (0.5 s
doubling to 30 s) for up to ``retry_seconds``; then the call stops with one line naming the server. A 4xx
answer (a bad request, a wrong token, a request over the server's limits) is not retried: it names what
the server said. ``check(model, tokenizer)`` refuses a server whose teacher or tokenizer fingerprint
differs from what the run expects.
"""

from __future__ import annotations

import time
from typing import Any

import requests
from torch import Tensor

from kdkit.errors import KdkitError
from kdkit.teacher.wire import CONTENT_TYPE, PayloadError, TopKRequest, TopKResponse


class ServerUnavailable(KdkitError):
    """The server could not be reached (or kept failing) for the whole retry window."""


class TeacherClient:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 300.0,
        retry_seconds: float = 300.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise KdkitError(
                f"teacher server '{url}' must be an http:// or https:// URL, e.g. http://127.0.0.1:8008"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request, retried with backoff on connection errors and 5xx (module docstring)."""
        start, delay, last = time.monotonic(), 0.5, ""
        while True:
            try:
                response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
            except requests.RequestException as err:
                last = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise KdkitError(
                            f"teacher server {self.url} refused {path} ({response.status_code}): "
                            f"{response.text.strip()[:300]}"
                        )
                    return response
                last = f"{response.status_code}: {response.text.strip()[:200]}"
            if time.monotonic() - start + delay > self.retry_seconds:
                raise ServerUnavailable(
                    f"teacher server {self.url} unreachable for {self.retry_seconds:g} s (last: {last})"
                )
            time.sleep(delay)
            delay = min(2 * delay, 30.0)

    def health(self) -> bool:
        """Whether the server answers /health now (one try, no retries)."""
        try:
            return self.session.get(self.url + "/health", timeout=5).ok
        except requests.RequestException:
            return False

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info").json()

    def check(self, model: str | None = None, tokenizer: str | None = None) -> dict[str, Any]:
        """The server's /info, after refusing a teacher or tokenizer other than the expected fingerprints."""
        info = self.info()
        for what, expected, key in (
            ("teacher", model, "model_fingerprint"),
            ("tokenizer", tokenizer, "tokenizer_fingerprint"),
        ):
            if expected is not None and info.get(key) != expected:
                raise KdkitError(
                    f"teacher server {self.url} serves another {what} ({info.get('model')}: fingerprint "
                    f"{str(info.get(key))[:12]} != {expected[:12]} expected); serve the run's teacher.model"
                )
        return info

    def topk(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, k: int, temperature: float = 1.0
    ) -> TopKResponse:
        body = TopKRequest(input_ids, attention_mask, labels, k, temperature).encode()
        response = self._call("POST", "/v1/topk", data=body, headers={"Content-Type": CONTENT_TYPE})
        result = TopKResponse.decode(response.content)
        if int(result.counts.numel()) != input_ids.shape[0]:
            raise PayloadError(
                f"teacher server {self.url} answered {result.counts.numel()} sequences for {input_ids.shape[0]}"
            )
        return result
