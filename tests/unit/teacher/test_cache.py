"""The teacher cache format on its own: shards written and read back row for row, the example-to-shard
mapping, and the one-line errors for a missing, partial, stale or mismatched cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdkit.errors import KdkitError
from kdkit.teacher.cache import TeacherCache, finalize, shard_done, shard_path, write_shard


def _lm_cache(root: Path, counts: list[int], shard_size: int, k: int = 3) -> list[dict[str, torch.Tensor]]:
    """Write a top-k cache with ``counts[i]`` tokens for example i; returns each example's rows."""
    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "indices": torch.randint(0, 50, (c, k), generator=g, dtype=torch.int32),
            "logprobs": -torch.rand(c, k, generator=g).half(),
            "target_logprobs": -torch.rand(c, generator=g),
        }
        for c in counts
    ]
    shards = range(0, len(counts), shard_size)
    for i, start in enumerate(shards):
        part = rows[start : start + shard_size]
        offsets = torch.tensor([0] + [r["indices"].shape[0] for r in part]).cumsum(0)
        tensors = {key: torch.cat([r[key] for r in part]) for key in part[0]}
        write_shard(root, i, {"offsets": offsets, **tensors})
        assert shard_done(root, i)
    meta = {"kind": "topk", "provenance": {"top_k": k}, "num_examples": len(counts), "shard_size": shard_size}
    finalize(root, meta, len(shards))
    return rows


def test_rows_come_back_per_example_across_shards(tmp_path: Path) -> None:
    counts = [3, 0, 5, 2, 4, 1, 2]
    rows = _lm_cache(tmp_path, counts, shard_size=3)
    cache = TeacherCache.load(tmp_path, tail="uniform")
    idx = torch.tensor([6, 2, 1, 3])  # across shards, an example without counted tokens included
    top = cache.topk(idx, [counts[i] for i in idx])
    assert top.tail == "uniform" and len(top) == sum(counts[i] for i in idx)
    torch.testing.assert_close(top.indices, torch.cat([rows[i]["indices"] for i in idx]).long())
    torch.testing.assert_close(top.logprobs, torch.cat([rows[i]["logprobs"] for i in idx]))
    torch.testing.assert_close(top.target_logprobs, torch.cat([rows[i]["target_logprobs"] for i in idx]))


def test_mismatches_are_named(tmp_path: Path) -> None:
    _lm_cache(tmp_path, [2, 2, 2], shard_size=2)
    cache = TeacherCache.load(tmp_path)
    with pytest.raises(KdkitError, match="example 1 has 2 cached tokens, the batch 3"):
        cache.topk(torch.tensor([1]), [3])
    with pytest.raises(KdkitError, match="covers 3 examples, the batch asks for example 7"):
        cache.topk(torch.tensor([7]), [2])
    with pytest.raises(KdkitError, match="top_k is 3 there, 8 here"):
        cache.check_matches({"top_k": 8})
    cache.check_matches({"top_k": 3})


def test_missing_partial_and_old_caches(tmp_path: Path) -> None:
    with pytest.raises(KdkitError, match="holds no complete teacher cache"):
        TeacherCache.load(tmp_path / "nothing")
    write_shard(tmp_path, 0, {"logits": torch.zeros(2, 2)})
    with pytest.raises(KdkitError, match=r"shard-00001\.safetensors is missing"):
        finalize(tmp_path, {"kind": "logits"}, 2)
    shard_path(tmp_path, 0).write_bytes(b"torn")  # a stale checksum: the shard is redone on resume
    assert not shard_done(tmp_path, 0)
    (tmp_path / "meta.json").write_text(json.dumps({"version": 0, "kind": "logits", "shards": {}}))
    with pytest.raises(KdkitError, match="format version 0"):
        TeacherCache.load(tmp_path)
