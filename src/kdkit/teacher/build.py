"""Building a teacher cache: run the teacher once over a training set and write its outputs in shards.

What to run and how to pack it comes from the task's family (``kdkit.family``: a ``CacheJob``); this module
owns the build itself: shards, resume, damage repair and the final meta.json.

The training set is tokenized exactly as `kdkit distill` tokenizes it, so a cached example lines up with
the batch that asks for it (the data fingerprint covers the token ids, hence data, tokenizer, templates
and max length at once). Shards are independent units of work: with several processes (`accelerate
launch`) process r builds shards r, r + P, r + 2P, ...; an interrupted build (even killed with SIGKILL)
redoes only the shards without a valid checksum, after deleting the temp files it was writing. The main
process writes meta.json once every shard is done. Rerun on a complete cache with a damaged shard, the
build turns it back into a build in progress and redoes only that shard.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from kdkit.config import CacheConfig, Config
from kdkit.errors import KdkitError, note
from kdkit.fingerprint import ids_fingerprint, model_fingerprint, tokenizer_fingerprint
from kdkit.io import atomic_write_json, check_free_space, file_digest
from kdkit.methods.base import Batch
from kdkit.models.causal_lm import LMOutputs
from kdkit.teacher.cache import (
    META,
    TeacherCache,
    finalize,
    read_meta,
    remove_temp_files,
    shard_done,
    write_shard,
)
from kdkit.teacher.compact import Codec, encode_shard

BUILDING = "building.json"  # the settings of a build in progress: a resumed build must match them
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_ROWS = 1024  # counted tokens per LM-head matmul while building (bounds memory like the chunked losses)


def classifier_provenance(teacher_name: str, tokenizer: Any, encoded: Any) -> dict[str, Any]:
    """What a classifier cache depends on: the teacher, its tokenizer and the token ids it saw."""
    return {
        "kind": "logits",
        "teacher": model_fingerprint(teacher_name),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": ids_fingerprint(encoded.input_ids, encoded.token_type_ids),
        "num_examples": len(encoded),
    }


def lm_provenance(config: Config, teacher_name: str, tokenizer: Any, encoded: Any) -> dict[str, Any]:
    """What a causal-LM cache depends on: teacher, tokenizer, token ids and labels, k, storage, temperature."""
    return {
        "kind": "topk",
        "teacher": model_fingerprint(teacher_name),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": ids_fingerprint(encoded.input_ids, encoded.labels),
        "num_examples": len(encoded),
        "vocab_size": len(tokenizer),
        "top_k": config.cache.top_k,
        "dtype": config.cache.dtype,
        "temperature": float(getattr(config.method, "temperature", 1.0)),  # token-level methods have one
    }


def open_cache(config: Config, expected: dict[str, Any]) -> TeacherCache:
    """The run's cache (``config.cache.dir``), checked against this run's provenance."""
    assert config.cache.dir is not None
    cache = TeacherCache.load(config.cache.dir, tail=config.cache.tail)
    cache.check_matches(expected)
    return cache


@dataclass
class CacheJob:
    """One cache build: a dataset, its collator, the teacher's per-example outputs for a batch, how a
    shard's rows are packed, and the meta.json fields (kind, provenance, counts)."""

    dataset: Dataset
    collate: Callable[[list[dict[str, Any]]], Batch]
    outputs: Callable[[Batch], list[dict[str, Tensor]]]
    pack: Callable[[list[dict[str, Tensor]]], dict[str, Tensor]]
    meta: dict[str, Any]


def build_cache(
    root: Path, make_job: Callable[[], CacheJob], cache_cfg: CacheConfig, accelerator: Accelerator
) -> dict[str, Any]:
    """Build (or finish, or repair) the cache in ``root``; returns its meta. ``make_job`` (which loads the
    data and the teacher) is called only when there is work to do."""
    meta = read_meta(root) if (root / META).is_file() else None  # every process: a bad one stops them all
    accelerator.wait_for_everyone()
    if meta is not None and accelerator.is_main_process:
        _reopen_if_damaged(root, meta, accelerator)
    accelerator.wait_for_everyone()
    if (root / META).is_file():
        note(f"teacher cache {root} is complete; delete it to rebuild")
        return TeacherCache.load(root).meta
    job = make_job()
    if cache_cfg.format == "compact":
        if job.meta.get("kind") != "topk":
            raise KdkitError(
                "cache.format: compact codes causal-LM top-k caches; a classifier's cache holds a few logits "
                "per example: set cache.format: plain"
            )
        job = replace(job, meta={**job.meta, **_codec(job).meta()})
    _check_resume(root, job.meta, accelerator)
    _run(job, root, cache_cfg, accelerator)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finalize(root, job.meta, math.ceil(len(job.dataset) / cache_cfg.shard_size))
        (root / BUILDING).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return TeacherCache.load(root).meta


def _reopen_if_damaged(root: Path, meta: dict[str, Any], accelerator: Accelerator) -> None:
    """A complete cache whose shards fail their checksum (or are gone) becomes a build in progress again
    (meta.json -> building.json), so that this build redoes those shards only."""
    damaged = [
        name
        for name, digest in meta.get("shards", {}).items()
        if not (root / name).is_file() or file_digest(root / name) != digest
    ]
    if not damaged:
        return
    note(f"teacher cache {root}: {', '.join(damaged)} missing or corrupt; rebuilding")
    atomic_write_json(root / BUILDING, {k: v for k, v in meta.items() if k not in ("version", "shards")})
    (root / META).unlink()


def _check_resume(root: Path, meta: dict[str, Any], accelerator: Accelerator) -> None:
    building = root / BUILDING
    if accelerator.is_main_process:  # what a killed build was writing: temp shards and checksums
        remove_temp_files(root)
    if building.is_file():
        before = json.loads(building.read_text())
        if before != meta:
            changed = sorted(k for k in {**before, **meta} if before.get(k) != meta.get(k))
            raise KdkitError(
                f"{root} holds a partial teacher cache built with other settings ({', '.join(changed)}); "
                "delete it or choose another cache.dir"
            )
        note(f"resuming the teacher cache in {root}")
    elif accelerator.is_main_process:
        if root.exists() and any(p.name.startswith("shard-") for p in root.iterdir()):
            raise KdkitError(
                f"{root} holds shards of an unknown build; delete it or choose another cache.dir"
            )
        atomic_write_json(building, meta)
    accelerator.wait_for_everyone()


def _run(job: CacheJob, root: Path, cache_cfg: CacheConfig, accelerator: Accelerator) -> None:
    n, size = len(job.dataset), cache_cfg.shard_size
    shards = range(accelerator.process_index, math.ceil(n / size), accelerator.num_processes)
    todo = [i for i in shards if not shard_done(root, i)]
    total = sum(min(n, (i + 1) * size) - i * size for i in todo)
    bar = tqdm(total=total, desc="teacher cache", unit="ex", disable=not accelerator.is_local_main_process)
    for i in todo:
        rows: list[dict[str, Tensor]] = []
        ids = list(range(i * size, min(n, (i + 1) * size)))
        for start in range(0, len(ids), cache_cfg.batch_size):
            batch = job.collate([job.dataset[j] for j in ids[start : start + cache_cfg.batch_size]])
            with torch.no_grad(), accelerator.autocast():
                rows.extend(job.outputs(batch))
            bar.update(len(ids[start : start + cache_cfg.batch_size]))
        tensors = job.pack(rows)
        if job.meta.get("format") == "compact":
            tensors = encode_shard(tensors, _codec(job))
        check_free_space(root, sum(t.numel() * t.element_size() for t in tensors.values()), f"shard {i}")
        write_shard(root, i, tensors, {"process": str(accelerator.process_index)})
    bar.close()


def compact_copy(src: Path, dst: Path) -> dict[str, Any]:
    """Write the complete plain causal-LM cache ``src`` again in the compact format in ``dst`` (a new or
    empty dir; a copy interrupted mid-way is redone from its first missing shard); returns its meta."""
    meta = TeacherCache.load(src).meta
    if meta.get("kind") != "topk" or meta.get("format") == "compact":
        raise KdkitError(f"{src} is not a plain causal-LM teacher cache; nothing to compact")
    if (dst / META).is_file():
        note(f"teacher cache {dst} is complete; delete it to rebuild")
        return TeacherCache.load(dst).meta
    prov = meta["provenance"]
    codec = Codec(int(prov["vocab_size"]), int(prov["top_k"]))
    new = {k: v for k, v in meta.items() if k not in ("version", "shards")} | codec.meta()
    dst.mkdir(parents=True, exist_ok=True)
    remove_temp_files(dst)  # what a killed copy was writing
    for i, name in enumerate(tqdm(sorted(meta["shards"]), desc="compact cache", unit="shard")):
        if not shard_done(dst, i):
            write_shard(dst, i, encode_shard(load_file(str(src / name)), codec), {"process": "0"})
    generations = src / "teacher_generations.jsonl"
    if generations.is_file():
        shutil.copyfile(generations, dst / generations.name)
    finalize(dst, new, len(meta["shards"]))
    return TeacherCache.load(dst).meta


def _codec(job: CacheJob) -> Codec:
    prov = job.meta["provenance"]
    return Codec(int(prov["vocab_size"]), int(prov["top_k"]))


def to_device(inputs: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def topk_rows(
    out: LMOutputs,
    mask: Tensor,
    targets: Tensor,
    vocab: int,
    k: int,
    temperature: float,
    mass_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Top-k ids (n, k) int32, their log-probs (n, k) float32 and the targets' log-probs (n,) of the
    counted tokens (row-major), on the CPU; the LM head runs on ``_ROWS`` tokens at a time."""
    rows = (out.hidden if out.hidden is not None else out.logits)[:, :-1][mask]  # (n, D) or (n, V')
    g = targets[mask]
    ids, values, target, mass = [], [], [], []
    for start in range(0, rows.shape[0], _ROWS):
        part = rows[start : start + _ROWS].float()
        if out.hidden is not None:
            part = F.linear(part, out.weight.float(), None if out.bias is None else out.bias.float())
        lp = F.log_softmax(part[:, :vocab] / temperature, dim=-1)  # (c, V)
        top = lp.topk(k, dim=-1)
        ids.append(top.indices.int().cpu())
        values.append(top.values.cpu())
        target.append(lp.gather(-1, g[start : start + _ROWS, None]).squeeze(-1).cpu())
        if mass_ids is not None:  # the probability of a sub-vocabulary (the tokens another tokenizer shares)
            mass.append(lp.index_select(-1, mass_ids).exp().sum(-1).cpu())
    matched = None if mass_ids is None else torch.cat(mass) if mass else torch.zeros(0)
    if not ids:
        return torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k), torch.zeros(0), matched
    return torch.cat(ids), torch.cat(values), torch.cat(target), matched


def topk_examples(
    out: LMOutputs,
    mask: Tensor,
    targets: Tensor,
    vocab: int,
    k: int,
    temperature: float,
    dtype: torch.dtype,
    mass_ids: Tensor | None = None,
) -> list[dict[str, Tensor]]:
    """``topk_rows`` split per example (row b of ``mask`` (B, T-1)): a causal-LM cache's per-example rows,
    log-probabilities stored in ``dtype``; with ``mass_ids``, also ``matched_mass`` (rows,) float32."""
    ids, lp, tgt, mass = topk_rows(out, mask, targets, vocab, k, temperature, mass_ids)
    counts = mask.sum(1).tolist()
    rows = [
        {"indices": a, "logprobs": b.to(dtype), "target_logprobs": c}
        for a, b, c in zip(ids.split(counts), lp.split(counts), tgt.split(counts), strict=True)
    ]
    if mass is not None:
        for row, m in zip(rows, mass.split(counts), strict=True):
            row["matched_mass"] = m
    return rows


def pack_topk(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """A shard's tensors from per-example top-k rows: ``offsets`` (n + 1,) and the rows concatenated."""
    counts = torch.tensor([0] + [r["indices"].shape[0] for r in rows])
    keys = [key for key in ("indices", "logprobs", "target_logprobs", "matched_mass") if key in rows[0]]
    return {"offsets": counts.cumsum(0), **{key: torch.cat([r[key] for r in rows]) for key in keys}}
