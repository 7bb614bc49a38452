"""`kdkit teacher serve`: a causal-LM teacher behind HTTP, so that it never enters training memory.

The server loads the teacher once and answers ``POST /v1/topk`` with, for every scored token, the
teacher's top-k token ids, their log-probabilities at the requested temperature and the target token's
log-probability: exactly the rows a teacher cache holds (``kdkit.teacher.build.topk_examples``, the same
code), in the binary payload of ``kdkit.teacher.wire``. From these the losses compute every divergence and
ATKD with the dropped mass as one tail class (docs/cache.md).

- ``GET /health``: ``{"status": "ok"}`` (no token needed).
- ``GET /info``: model and tokenizer fingerprints (the same as a cache's provenance), vocabulary size,
  limits. A client refuses a server whose fingerprints differ from what its run expects.
- Requests from several clients that arrive within ``batch_wait_ms`` of each other are scored in one
  forward pass, up to ``max_batch_tokens`` (batch x length), requests of one (k, temperature, length) at a
  time (none is padded further, so an answer does not depend on the other requests of its pass); the
  forward runs in a worker thread, so the server keeps accepting requests meanwhile.
- Bounds: a request over ``max_request_tokens`` tokens or ``max_body_bytes`` bytes gets 413; a malformed
  one 400 with a one-line reason; a missing or wrong token 401.
- It binds to 127.0.0.1 by default. Any other address needs a shared token (the environment variable
  named by ``--token-env``, default ``KDKIT_TEACHER_TOKEN``; never a command-line argument, which other
  users of the machine can read), sent by clients as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kdkit.data.lm_encode import shift_labels
from kdkit.errors import KdkitError
from kdkit.fingerprint import model_fingerprint, tokenizer_fingerprint
from kdkit.models.causal_lm import lm_forward, load_causal_lm, with_pad_token
from kdkit.models.load import load_tokenizer
from kdkit.teacher.build import topk_examples
from kdkit.teacher.wire import CONTENT_TYPE, IGNORE, PayloadError, TopKRequest, TopKResponse
from kdkit.version import __version__

OUTSIDE_LOGPROB = -100.0  # the target log-probability of a token outside the real vocabulary


@dataclass
class Limits:
    max_request_tokens: int = 65_536  # batch x length of one request
    max_batch_tokens: int = 65_536  # padded batch x length of one forward pass across clients
    max_body_bytes: int = 64 << 20
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for others


class TopKScorer:
    """The teacher and what it answers: ``score`` runs requests of one (k, temperature) in one pass."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, device: torch.device) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        self.vocab = len(tokenizer)
        self.info = {
            "model": name,
            "model_fingerprint": model_fingerprint(name),
            "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
            "vocab_size": self.vocab,
            "kdkit": __version__,
        }
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def check(self, req: TopKRequest) -> None:
        """400 material: ids outside the vocabulary, k above it, scored positions on padding."""
        if req.k > self.vocab:
            raise PayloadError(f"k={req.k} is more than the teacher's vocabulary of {self.vocab} tokens")
        ids, labels = req.input_ids, req.labels
        rows = self.model.get_input_embeddings().num_embeddings  # padded rows: a sampled id may land there
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= rows):
            raise PayloadError(f"input_ids must be in [0, {rows}); is the client's tokenizer the teacher's?")
        scored = labels != IGNORE
        if scored.any() and (int(labels[scored].min()) < 0 or int(labels[scored].max()) >= rows):
            raise PayloadError(f"labels must be -100 or in [0, {rows})")
        if (scored & (req.attention_mask == 0)).any():
            raise PayloadError("labels score a padded position (attention_mask 0); set those labels to -100")

    @torch.no_grad()
    def score(self, requests: list[TopKRequest]) -> list[TopKResponse]:
        """One forward pass over the requests, right-padded to the longest; one response per request."""
        k, temperature = requests[0].k, requests[0].temperature
        length = max(r.input_ids.shape[1] for r in requests)

        def pad(t: torch.Tensor, value: int) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value)

        ids = torch.cat([pad(r.input_ids, self.pad_id) for r in requests]).to(self.device)
        mask = torch.cat([pad(r.attention_mask, 0) for r in requests]).to(self.device)
        labels = torch.cat([pad(r.labels, IGNORE) for r in requests])
        targets, scored = shift_labels({"labels": labels})
        outside = targets >= self.vocab  # a sampled padded-row id: no probability in the real vocabulary
        out = lm_forward(self.model, {"input_ids": ids, "attention_mask": mask}, chunked=True)
        rows = topk_examples(
            out, scored.to(self.device), targets.masked_fill(outside, 0).to(self.device), self.vocab, k,
            temperature, torch.float16,
        )  # fmt: skip
        for row, out_i, scored_i in zip(rows, outside, scored, strict=True):
            row["target_logprobs"][out_i[scored_i]] = OUTSIDE_LOGPROB
        meta = {
            "model": self.info["model_fingerprint"],
            "tokenizer": self.info["tokenizer_fingerprint"],
            "k": str(k),
            "temperature": repr(temperature),
        }
        responses, start = [], 0
        for r in requests:
            mine = rows[start : start + r.input_ids.shape[0]]
            start += r.input_ids.shape[0]
            responses.append(
                TopKResponse(
                    torch.tensor([x["indices"].shape[0] for x in mine], dtype=torch.int64),
                    _cat([x["indices"] for x in mine], (0, k), torch.int32),
                    _cat([x["logprobs"] for x in mine], (0, k), torch.float16),
                    _cat([x["target_logprobs"] for x in mine], (0,), torch.float32),
                    meta,
                )
            )
        return responses


def _cat(parts: list[torch.Tensor], empty: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts).to(dtype) if parts else torch.zeros(empty, dtype=dtype)


class Batcher:
    """Gathers requests from all clients into forward passes (module docstring)."""

    def __init__(self, scorer: TopKScorer, limits: Limits) -> None:
        self.scorer = scorer
        self.limits = limits
        self.queue: asyncio.Queue[tuple[TopKRequest, asyncio.Future[TopKResponse]]] = asyncio.Queue()
        self.passes = 0  # forward passes run (for tests and /info)

    async def submit(self, req: TopKRequest) -> TopKResponse:
        future: asyncio.Future[TopKResponse] = asyncio.get_running_loop().create_future()
        await self.queue.put((req, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            tokens = batch[0][0].tokens
            deadline = loop.time() + self.limits.batch_wait_ms / 1000
            while tokens < self.limits.max_batch_tokens and (left := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                batch.append(item)
                tokens += item[0].tokens
            for group in _groups(batch, self.limits.max_batch_tokens):
                await self._score(group)

    async def _score(self, group: list[tuple[TopKRequest, asyncio.Future[TopKResponse]]]) -> None:
        try:
            results = await asyncio.to_thread(self.scorer.score, [req for req, _ in group])
        except Exception as err:  # the clients get a 500 naming it; the server keeps serving
            for _, future in group:
                if not future.done():
                    future.set_exception(err)
            return
        self.passes += 1
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():  # a client that went away
                future.set_result(result)


def _groups(batch: list, max_tokens: int) -> list[list]:
    """Requests of one (k, temperature, length) together, each group within ``max_tokens`` tokens.

    Only requests of the same length share a pass: no request is padded beyond what its client sent, so a
    sequence's answer does not depend on which other requests arrived with it (a resumed run gets the
    answers of an uninterrupted one)."""
    groups: list[list] = []
    by_key: dict[tuple[int, float, int], list] = {}
    for item in batch:
        by_key.setdefault((item[0].k, item[0].temperature, item[0].input_ids.shape[1]), []).append(item)
    for items in by_key.values():
        current: list = []
        for item in items:
            rows = sum(r.input_ids.shape[0] for r, _ in current) + item[0].input_ids.shape[0]
            length = item[0].input_ids.shape[1]
            if current and rows * length > max_tokens:
                groups.append(current)
                current = []
            current.append(item)
        groups.append(current)
    return groups


def create_app(scorer: TopKScorer, limits: Limits | None = None, token: str | None = None) -> Starlette:
    """The ASGI app (serve it with uvicorn: ``serve``)."""
    limits = limits or Limits()
    batcher = Batcher(scorer, limits)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def info(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("missing or wrong token (Authorization: Bearer ...)", status_code=401)
        return JSONResponse(
            {**scorer.info, "max_request_tokens": limits.max_request_tokens, "passes": batcher.passes}
        )

    async def topk(request: Request) -> Response:
        if not authorized(request):
            return PlainTextResponse("missing or wrong token (Authorization: Bearer ...)", status_code=401)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            return _too_large(
                f"request body of {declared} bytes is over the limit of {limits.max_body_bytes}"
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                return _too_large(f"request body is over the limit of {limits.max_body_bytes} bytes")
        try:
            req = TopKRequest.decode(bytes(body))
            if req.tokens > limits.max_request_tokens:
                return _too_large(
                    f"request of {req.tokens} tokens (batch x length) is over the limit of "
                    f"{limits.max_request_tokens}; send smaller batches"
                )
            scorer.check(req)
        except PayloadError as err:
            return PlainTextResponse(" ".join(str(err).split()), status_code=400)
        try:
            result = await batcher.submit(req)
        except Exception as err:
            return PlainTextResponse(f"teacher failed: {type(err).__name__}: {err}", status_code=500)
        return Response(result.encode(), media_type=CONTENT_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            worker.cancel()

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/info", info),
            Route("/v1/topk", topk, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app


def _too_large(message: str) -> Response:
    return PlainTextResponse(message, status_code=413)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the teacher beyond this machine without a shared token."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise KdkitError(
            f"--host {host} makes the teacher reachable from other machines; set a shared token in the "
            "environment variable named by --token-env (default KDKIT_TEACHER_TOKEN) first"
        )


def load_scorer(name: str, device: str = "auto", dtype: str = "float32") -> TopKScorer:
    """The teacher ``name`` (asset, local dir or hub id) and its tokenizer, ready to score."""
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise KdkitError(f"--dtype must be one of {', '.join(dtypes)}, got '{dtype}'")
    where = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model = load_causal_lm(name, dtype=dtypes[dtype])
    tokenizer = with_pad_token(load_tokenizer(name))
    return TopKScorer(model, tokenizer, name, where)


def serve(
    scorer: TopKScorer, host: str = "127.0.0.1", port: int = 8008, limits: Limits | None = None,
    token: str | None = None,
) -> None:  # fmt: skip
    """Serve until interrupted (uvicorn, one process; the batcher gathers clients' requests)."""
    import uvicorn

    check_bind(host, token)
    print(
        f"kdkit teacher server: {scorer.info['model']} (vocabulary {scorer.vocab}, {scorer.device}) on "
        f"http://{host}:{port}; Ctrl-C stops it",
        flush=True,
    )
    uvicorn.run(create_app(scorer, limits, token), host=host, port=port, log_level="warning")
