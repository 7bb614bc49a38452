"""`kdkit cache`: run the teacher once over a config's training set and write its outputs in shards.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdkit.config import Config, load_config
from kdkit.errors import KdkitError
from kdkit.fingerprint import ids_fingerprint, model_fingerprint, tokenizer_fingerprint
from kdkit.io import atomic_write_json, file_digest
from kdkit.teacher.cache import (
    META,
    TeacherCache,
    finalize,
    read_meta,
    remove_temp_files,
    shard_done,
    write_shard,
)

BUILDING = "building.json"  # the settings of a build in progress: a resumed build must match them
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
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
        "temperature": float(config.method.temperature),
    }


def check_cacheable(config: Config, loss_fn: nn.Module | None = None) -> None:
    """Refuse, in one line, the set-ups whose teacher outputs cannot be computed ahead of training."""
    if config.task == "causal_lm":
        if config.generation.on_policy > 0:
            raise KdkitError(
                "cache.dir cannot serve generation.on_policy > 0: the student's own generations change every "
                "step; set cache.dir: null (live teacher) or generation.on_policy: 0"
            )
        return
    if loss_fn is not None and (
        getattr(loss_fn, "needs_hidden_states", False) or getattr(loss_fn, "needs_live_teacher", False)
    ):
        raise KdkitError(
            f"method '{config.method.name}' needs the live teacher (hidden states or mixed inputs), not "
            "cached logits; set cache.dir: null, or for kd set method.hidden_weight: 0"
        )


def open_cache(config: Config, expected: dict[str, Any]) -> TeacherCache:
    """The run's cache (``config.cache.dir``), checked against this run's provenance."""
    assert config.cache.dir is not None
    cache = TeacherCache.load(config.cache.dir, tail=config.cache.tail)
    cache.check_matches(expected)
    return cache


@dataclass
class _Job:
    """One cache build: a dataset, a collator and the teacher's per-example outputs for a batch."""

    dataset: Any
    collate: Any
    outputs: Any  # callable(batch) -> list of per-example dicts of tensors
    pack: Any  # callable(list of per-example dicts) -> the shard's tensors
    meta: dict[str, Any]


def build_cache_for_config(
    config: str | Path | dict[str, Any] | Config,
    overrides: list[str] | None = None,
    output: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """`kdkit cache`: build (or finish) the teacher cache of ``config`` in ``output`` or ``cache.dir``."""
    from kdkit.train.run import make_accelerator

    config = load_config(config, overrides)
    root = Path(output or config.cache.dir or "")
    if not (output or config.cache.dir):
        raise KdkitError("set cache.dir (or pass --output DIR): where the teacher cache goes")
    check_cacheable(config)
    accelerator = make_accelerator(config)
    meta = read_meta(root) if (root / META).is_file() else None  # every process: a bad one stops them all
    accelerator.wait_for_everyone()
    if meta is not None and accelerator.is_main_process:
        _reopen_if_damaged(root, meta, accelerator)
    accelerator.wait_for_everyone()
    if (root / META).is_file():
        accelerator.print(f"teacher cache {root} is complete; delete it to rebuild")
        return root, TeacherCache.load(root).meta
    job = (
        _lm_job(config, accelerator, root)
        if config.task == "causal_lm"
        else _classifier_job(config, accelerator)
    )
    _check_resume(root, job.meta, accelerator)
    _run(job, root, config.cache, accelerator)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finalize(root, job.meta, math.ceil(len(job.dataset) / config.cache.shard_size))
        (root / BUILDING).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return root, TeacherCache.load(root).meta


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
    accelerator.print(f"teacher cache {root}: {', '.join(damaged)} missing or corrupt; rebuilding")
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
        accelerator.print(f"resuming the teacher cache in {root}")
    elif accelerator.is_main_process:
        if root.exists() and any(p.name.startswith("shard-") for p in root.iterdir()):
            raise KdkitError(
                f"{root} holds shards of an unknown build; delete it or choose another cache.dir"
            )
        atomic_write_json(building, meta)
    accelerator.wait_for_everyone()


def _run(job: _Job, root: Path, cache_cfg: Any, accelerator: Accelerator) -> None:
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
        write_shard(root, i, job.pack(rows), {"process": str(accelerator.process_index)})
    bar.close()


def _to(inputs: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def _classifier_job(config: Config, accelerator: Accelerator) -> _Job:
    from kdkit.data import Collator, DistillDataset, encode, load_task_data
    from kdkit.models import freeze, load_tokenizer
    from kdkit.train.run import load_teacher
    from kdkit.train.teacher import resolve_teacher

    data = load_task_data(config.data, config.task)
    name = resolve_teacher(config, accelerator)  # fine-tunes (or reuses) it when teacher.finetune is set
    tokenizer = load_tokenizer(config.teacher.tokenizer or name)
    split = data.split("train")
    encoded = encode(split, tokenizer, config.teacher.max_length)
    teacher = freeze(load_teacher(name, config, data.label_names)).to(accelerator.device)

    def outputs(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        logits = teacher(**_to(batch["student"], accelerator.device)).logits.float().cpu()
        return [{"logits": row} for row in logits]

    def pack(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        return {"logits": torch.stack([r["logits"] for r in rows])}

    meta = {"kind": "logits", "provenance": classifier_provenance(name, tokenizer, encoded)}
    meta.update(num_examples=len(encoded), shard_size=config.cache.shard_size, num_labels=data.num_labels)
    collate = Collator(tokenizer.pad_token_id, None, config.task == "regression")
    return _Job(DistillDataset(split, encoded, None), collate, outputs, pack, meta)


def _lm_job(config: Config, accelerator: Accelerator, root: Path) -> _Job:
    from kdkit.data.lm import LMCollator, LMDataset, encode_lm, load_lm_data
    from kdkit.methods.lm_base import lm_forward, shift
    from kdkit.models import freeze, load_causal_lm, load_tokenizer
    from kdkit.train.lm_sources import GENERATIONS, teacher_generations
    from kdkit.train.run_lm import lm_tokenizer

    if not config.teacher.model:
        raise KdkitError("teacher.model is not set; name a hub id, a local dir or an asset (`kdkit ls`)")
    if not hasattr(config.method, "temperature"):
        raise KdkitError(
            f"method '{config.method.name}' is not a causal-LM method; use forward_kl, atkd, ..."
        )
    name = config.teacher.model
    tokenizer = lm_tokenizer(load_tokenizer(config.teacher.tokenizer or name))
    teacher = freeze(load_causal_lm(name)).to(accelerator.device)
    split = load_lm_data(config.data).split("train")
    max_length = config.student.max_length  # the length training tokenizes to
    if config.generation.source == "teacher":  # generated once, kept in the cache dir for training
        split = teacher_generations(
            teacher, tokenizer, split, config.generation, max_length=max_length,
            chat_template=config.data.chat_template, out_dir=root, accelerator=accelerator,
        )  # fmt: skip
    encoded = encode_lm(split, tokenizer, max_length, config.data.chat_template)
    vocab, k, temp = len(tokenizer), config.cache.top_k, float(config.method.temperature)
    if k > vocab:
        raise KdkitError(f"cache.top_k is {k}, more than the vocabulary's {vocab} tokens; lower it")
    dtype = _DTYPES[config.cache.dtype]

    def outputs(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        out = lm_forward(teacher, _to(batch["student"], accelerator.device), chunked=True)
        targets, mask = shift(batch)
        mask, targets = mask.to(accelerator.device), targets.to(accelerator.device)
        ids, lp, tgt = _topk_rows(out, mask, targets, vocab, k, temp)
        counts = mask.sum(1).tolist()
        return [
            {"indices": a, "logprobs": b.to(dtype), "target_logprobs": c}
            for a, b, c in zip(ids.split(counts), lp.split(counts), tgt.split(counts), strict=True)
        ]

    def pack(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        counts = torch.tensor([0] + [r["indices"].shape[0] for r in rows])
        return {
            "offsets": counts.cumsum(0),
            **{key: torch.cat([r[key] for r in rows]) for key in ("indices", "logprobs", "target_logprobs")},
        }

    meta = {"kind": "topk", "provenance": lm_provenance(config, name, tokenizer, encoded)}
    meta.update(num_examples=len(encoded), shard_size=config.cache.shard_size, vocab_size=vocab)
    if config.generation.source == "teacher":
        meta["generations"] = GENERATIONS
    return _Job(LMDataset(encoded), LMCollator(tokenizer.pad_token_id), outputs, pack, meta)


def _topk_rows(
    out: Any, mask: Tensor, targets: Tensor, vocab: int, k: int, temperature: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k ids (n, k) int32, their log-probs (n, k) float32 and the targets' log-probs (n,) of the
    counted tokens (row-major), on the CPU; the LM head runs on ``_ROWS`` tokens at a time."""
    rows = (out.hidden if out.hidden is not None else out.logits)[:, :-1][mask]  # (n, D) or (n, V')
    g = targets[mask]
    ids, values, target = [], [], []
    for start in range(0, rows.shape[0], _ROWS):
        part = rows[start : start + _ROWS].float()
        if out.hidden is not None:
            part = F.linear(part, out.weight.float(), None if out.bias is None else out.bias.float())
        lp = F.log_softmax(part[:, :vocab] / temperature, dim=-1)  # (c, V)
        top = lp.topk(k, dim=-1)
        ids.append(top.indices.int().cpu())
        values.append(top.values.cpu())
        target.append(lp.gather(-1, g[start : start + _ROWS, None]).squeeze(-1).cpu())
    if not ids:
        return torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k), torch.zeros(0)
    return torch.cat(ids), torch.cat(values), torch.cat(target)
