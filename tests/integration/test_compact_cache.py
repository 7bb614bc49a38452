"""The compact cache format in real runs on tiny models: `kdkit cache` with cache.format: compact writes a
smaller cache that trains as the plain one does (the same steps, weights within the rounding), converting
a plain cache gives the same shards, a plain cache still reads, and a classifier's cache is refused."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdkit.commands.cache import build_cache_for_config
from kdkit.errors import KdkitError
from kdkit.teacher import build
from kdkit.teacher.build import compact_copy
from kdkit.teacher.cache import COMPACT_VERSION, META, TeacherCache
from kdkit.teacher.compact import Codec
from kdkit.train.run import distill
from kdkit.validate import validate
from tests.conftest import tiny_config
from tests.integration.test_cli_tiny import kdkit, write_config
from tests.integration.test_lm_tiny import lm_config

pytestmark = pytest.mark.integration


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("shard-*.safetensors"))


def test_a_compact_cache_trains_as_the_plain_one(
    tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = lm_config(
        tiny_lm, tiny_jsonl, tmp_path / "plain-run", eval={"splits": ["validation"], "rouge": False}
    )
    config["method"] = {"name": "atkd", "chunk_size": 16}
    config["train"] = {**config["train"], "save_every": None}
    config["cache"] = {"dir": str(tmp_path / "plain"), "top_k": 8, "shard_size": 20}
    build_cache_for_config(config)
    compact = {**config, "output_dir": str(tmp_path / "compact-run")}
    compact["cache"] = {**config["cache"], "dir": str(tmp_path / "compact"), "format": "compact"}
    build_cache_for_config(compact)
    meta = json.loads((tmp_path / "compact" / META).read_text())
    assert meta["format"] == "compact" and meta["version"] == COMPACT_VERSION and len(meta["shards"]) == 3
    assert _size(tmp_path / "compact") < _size(tmp_path / "plain") / 1.5

    copied = compact_copy(tmp_path / "plain", tmp_path / "copied")  # a plain cache converted afterwards
    assert copied["shards"] == meta["shards"]  # byte for byte the shards `kdkit cache` wrote
    cfg = write_config(tmp_path / "c.yaml", config)
    proc = kdkit(
        "cache",
        "--config",
        str(cfg),
        "--compact-from",
        str(tmp_path / "plain"),
        "--output",
        str(tmp_path / "cli"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["format"] == "compact"
    again = kdkit(
        "cache",
        "--config",
        str(cfg),
        "--compact-from",
        str(tmp_path / "compact"),
        "--output",
        str(tmp_path / "x"),
    )
    assert again.returncode != 0 and "not a plain causal-LM teacher cache" in again.stderr
    assert "Traceback" not in again.stderr

    a, b = distill(config), distill(compact)
    first = [json.loads((r.output_dir / "logs" / "train.jsonl").read_text().splitlines()[0]) for r in (a, b)]
    assert first[0]["step"] == first[1]["step"] == 1
    # the same batch; the random tiny teacher is near-uniform, so its losses are ~1e-4 nats and the format's
    # rounding (~1e-5 nats here) is a visible share: the 1e-3 bound on real teachers is in test_compact.py
    # and benchmarks/compact_cache.py
    assert first[1]["train/distill"] == pytest.approx(first[0]["train/distill"], rel=5e-2)
    wa, wb = load_file(a.output_dir / "model.safetensors"), load_file(b.output_dir / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-2  # Adam's early steps ~ lr * sign(g)
    assert b.metrics["validation"]["perplexity"] == pytest.approx(
        a.metrics["validation"]["perplexity"], rel=1e-2
    )
    assert any("compact format" in line for line in validate(compact))
    assert any("plain format" in line for line in validate(config))

    plain, small = TeacherCache.load(tmp_path / "plain"), TeacherCache.load(tmp_path / "compact")
    idx = torch.tensor([0, 21, 45])
    counts = [
        int(h.get_tensor("offsets").diff()[i % 20])
        for i, h in zip([0, 21, 45], [plain._handles[j] for j in (0, 1, 2)], strict=True)
    ]
    x, y = plain.topk(idx, counts), small.topk(idx, counts)
    assert torch.equal(x.indices.sort(1).values, y.indices.sort(1).values)
    torch.testing.assert_close(x.target_logprobs, y.target_logprobs, atol=1e-6, rtol=0)

    # a compact cache of format version 2 (float16 targets, no codec_target in its meta) still reads
    monkeypatch.setattr(build, "Codec", functools.partial(Codec, target="float16"))
    old = compact_copy(tmp_path / "plain", tmp_path / "v2")
    meta_file = tmp_path / "v2" / META
    meta_file.write_text(json.dumps({**{k: v for k, v in old.items() if k != "codec_target"}, "version": 2}))
    z = TeacherCache.load(tmp_path / "v2").topk(idx, counts)
    assert torch.equal(z.target_logprobs, x.target_logprobs.half().float())
    assert torch.equal(z.indices.sort(1).values, y.indices.sort(1).values)


def test_compact_is_for_causal_lm_caches(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    config["cache"] = {"dir": str(tmp_path / "cache"), "format": "compact"}
    with pytest.raises(KdkitError, match=r"cache\.format: plain"):
        build_cache_for_config(config)
