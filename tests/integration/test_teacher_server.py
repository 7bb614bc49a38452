"""`kdkit teacher serve` as a real process on 127.0.0.1 and its client: the cache's rows over HTTP,
batching across clients, 4xx answers, fingerprints, a shared token, and a server killed with SIGKILL
(the client retries, gives up in one line, and carries on once the server is back)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import torch

from kdkit.errors import KdkitError
from kdkit.fingerprint import model_fingerprint
from kdkit.teacher.client import ServerUnavailable, TeacherClient
from kdkit.teacher.server import load_scorer
from kdkit.teacher.wire import IGNORE

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: Path, port: int, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kdkit.cli", "teacher", "serve", "--model", str(model), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--device", "cpu", *extra], env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = TeacherClient(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while not client.health():
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)
    return proc


def _batch(
    vocab: int, b: int = 2, t: int = 9, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :4] = IGNORE
    return ids, mask, labels


@pytest.fixture(scope="module")
def server(tiny_lm: Path):
    port = _free_port()
    proc = _start(tiny_lm, port, "--batch-wait-ms", "300", "--max-request-tokens", "200")
    yield port, proc
    proc.kill()
    proc.wait()


def test_the_server_answers_the_rows_a_cache_holds(server, tiny_lm: Path) -> None:
    port, _ = server
    client = TeacherClient(f"http://127.0.0.1:{port}")
    scorer = load_scorer(str(tiny_lm), device="cpu")
    info = client.check(model_fingerprint(str(tiny_lm)), scorer.info["tokenizer_fingerprint"])
    assert info["vocab_size"] == scorer.vocab
    ids, mask, labels = _batch(scorer.vocab)
    got = client.topk(ids, mask, labels, k=6, temperature=2.0)
    from kdkit.teacher.wire import TopKRequest

    want = scorer.score([TopKRequest(ids, mask, labels, 6, 2.0)])[0]
    assert got.counts.tolist() == want.counts.tolist() == [5, 5]
    assert torch.equal(got.indices, want.indices) and torch.equal(got.logprobs, want.logprobs)
    assert torch.equal(got.target_logprobs, want.target_logprobs)


def test_requests_of_several_clients_share_forward_passes(server, tiny_lm: Path) -> None:
    port, _ = server
    client = TeacherClient(f"http://127.0.0.1:{port}")
    vocab = client.info()["vocab_size"]
    before = client.info()["passes"]
    results: list = [None] * 4

    def ask(i: int) -> None:
        results[i] = TeacherClient(f"http://127.0.0.1:{port}").topk(*_batch(vocab, seed=i), k=4)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None and r.counts.tolist() == [5, 5] for r in results)
    assert client.info()["passes"] - before < 4  # batched across clients (300 ms window)


def test_bad_requests_get_a_4xx_named_in_one_line(server) -> None:
    port, _ = server
    url = f"http://127.0.0.1:{port}"
    r = requests.post(url + "/v1/topk", data=b"garbage")
    assert r.status_code == 400 and "safetensors" in r.text
    client = TeacherClient(url)
    vocab = client.info()["vocab_size"]
    with pytest.raises(KdkitError, match=r"413.*over the limit of 200"):
        client.topk(*_batch(vocab, b=30, t=9), k=4)  # 270 tokens
    with pytest.raises(KdkitError, match=r"400.*vocabulary"):
        client.topk(*_batch(vocab), k=vocab + 1)
    with pytest.raises(KdkitError, match="serves another teacher"):
        client.check(model="0" * 64)


def test_a_shared_token_is_required_when_set(tiny_lm: Path) -> None:
    port = _free_port()
    proc = _start(tiny_lm, port, env={"KDKIT_TEACHER_TOKEN": "s3cret"})
    try:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(KdkitError, match="401"):
            TeacherClient(url).info()
        with pytest.raises(KdkitError, match="401"):
            TeacherClient(url, token="wrong").info()
        assert TeacherClient(url, token="s3cret").info()["vocab_size"] > 0
    finally:
        proc.kill()
        proc.wait()


def test_exposing_the_server_without_a_token_is_refused(
    tiny_lm: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdkit.cli import main

    monkeypatch.delenv("KDKIT_TEACHER_TOKEN", raising=False)
    assert main(["teacher", "serve", "--model", str(tiny_lm), "--host", "0.0.0.0"]) == 2  # before loading
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KDKIT_TEACHER_TOKEN" in err


@pytest.mark.slow  # 25 s; training's own kill-and-resume test (test_served_teacher.py) runs by default
def test_a_killed_server_is_retried_then_named_and_a_restarted_one_serves(tiny_lm: Path) -> None:
    port = _free_port()
    proc = _start(tiny_lm, port)
    url = f"http://127.0.0.1:{port}"
    vocab = TeacherClient(url).info()["vocab_size"]
    batch = _batch(vocab)
    first = TeacherClient(url).topk(*batch, k=4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailable, match=rf"teacher server {url} unreachable for 2 s"):
        TeacherClient(url, retry_seconds=2).topk(*batch, k=4)
    assert 1.0 < time.monotonic() - t0 < 10
    restarted: list[subprocess.Popen] = []
    threading.Timer(1.0, lambda: restarted.append(_start(tiny_lm, port))).start()
    try:
        again = TeacherClient(url, retry_seconds=180).topk(*batch, k=4)  # retries until the server is back
        assert torch.equal(again.indices, first.indices) and torch.equal(again.logprobs, first.logprobs)
    finally:
        deadline = time.monotonic() + 120
        while not restarted and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in restarted:
            p.kill()
            p.wait()
