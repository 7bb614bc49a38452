"""The teacher output cache on disk: shards of teacher outputs over a training set, read memory-mapped.

Layout of a cache dir (``kdkit cache`` writes it, ``cache.dir`` points training at it)::

    shard-00000.safetensors   examples [0, S), S = shard_size; written atomically (temp file + rename)
    shard-00000.sha256        its checksum, written after it: a shard with a valid checksum is done
    ...
    meta.json                 version, kind, settings, fingerprints, example count, every shard's sha256;
                              written last, so its presence marks a complete cache
    teacher_generations.jsonl causal_lm with generation.source: teacher: the responses the cache covers

Shard tensors:

- ``kind: logits`` (classifiers): ``logits`` (n, C) float32, the teacher's full logits (any temperature
  can be applied later);
- ``kind: topk`` (causal LMs), for the counted (response) tokens of each example, in order:
  ``offsets`` (n + 1,) int64 (example i's rows are ``offsets[i]:offsets[i+1]``), ``indices`` (rows, k)
  int32 token ids, ``logprobs`` (rows, k) in ``dtype`` (16-bit by default): log-probabilities at the
  recorded temperature, i.e. the logits minus the log-normaliser, so the dropped tail mass is
  ``1 - sum(exp(logprobs))``; ``target_logprobs`` (rows,) float32: the target token's log-probability.
  A span cache of a teacher with another tokenizer (``kdkit.family.cross_cache``) also has
  ``matched_mass`` (rows,) float32: the teacher's probability of the tokens that the student's vocabulary
  shares (the hybrid's split).

A build interrupted at any point (even killed with SIGKILL) resumes: shards with a valid checksum are
kept, temp files of the writes it was killed in are removed. Loading checks the version, every shard's
checksum (a truncated or corrupt shard is named; rerunning ``kdkit cache`` rebuilds just that shard), and
(``check_matches``) that teacher, tokenizer, data and settings are those of the run; a mismatch is refused
naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from kdkit.errors import KdkitError
from kdkit.io import atomic_write_json, file_digest
from kdkit.losses.topk import TopKTeacher
from kdkit.shards import remove_shard_leftovers, shard_done, shard_path, sum_path, write_shard
from kdkit.teacher.compact import Codec, Codes, decode_example

__all__ = [
    "META",
    "TeacherCache",
    "finalize",
    "is_complete",
    "read_meta",
    "remove_temp_files",
    "require_complete",
    "shard_done",
    "shard_path",
    "write_shard",
]

CACHE_VERSION = 1  # the plain format
COMPACT_VERSION = 3  # the compact format (``kdkit.teacher.compact``): older kdkit versions refuse it by this
READS = (CACHE_VERSION, 2, COMPACT_VERSION)  # 2: the compact format with float16 targets
META = "meta.json"


def remove_temp_files(root: Path) -> None:
    """Delete the temp files that writes killed mid-way left in ``root`` (``.shard-*``, ``.meta.json.*``,
    ...): atomic writes create the final names only by renaming, so these are never complete files."""
    remove_shard_leftovers(root, [META, "building.json"])


def read_meta(root: Path) -> dict[str, Any]:
    """meta.json of a cache dir; a damaged one is named in a one-line error."""
    try:
        meta = json.loads((root / META).read_text())
    except (OSError, ValueError) as err:
        raise KdkitError(
            f"teacher cache {root}: {META} is unreadable ({str(err).splitlines()[0]}); delete the cache dir "
            "and rebuild it with `kdkit cache`"
        ) from None
    if not isinstance(meta, dict):
        raise KdkitError(
            f"teacher cache {root}: {META} is not a JSON object; delete the cache dir and rebuild it"
        )
    return meta


def finalize(root: Path, meta: dict[str, Any], num_shards: int) -> None:
    """Write meta.json (the completeness marker) with every shard's checksum."""
    shards = {}
    for i in range(num_shards):
        path = shard_path(root, i)
        if not sum_path(path).is_file():
            raise KdkitError(
                f"teacher cache {root}: shard {path.name} is missing; rerun `kdkit cache` to finish it"
            )
        shards[path.name] = sum_path(path).read_text().strip()
    version = COMPACT_VERSION if meta.get("format") == "compact" else CACHE_VERSION
    atomic_write_json(root / META, {**meta, "version": version, "shards": shards})


def is_complete(root: Path) -> bool:
    """Whether `kdkit cache` has finished the cache dir ``root`` (its meta.json is written last)."""
    return (Path(root) / META).is_file()


def require_complete(root: Path) -> None:
    """Refuse, in one line, a cache dir that `kdkit cache` has not finished (no meta.json yet)."""
    if not is_complete(root):
        raise KdkitError(
            f"cache.dir '{root}' holds no complete teacher cache ({META} missing); build or finish it "
            "with `kdkit cache --config FILE`"
        )


@dataclass
class TeacherCache:
    """A complete cache, opened for reading: ``outputs(batch)`` gives the teacher outputs of a batch."""

    root: Path
    meta: dict[str, Any]
    tail: str = "student"  # causal_lm: how the losses spread the dropped mass (kdkit.losses.topk)
    _handles: list[Any] = field(default_factory=list, repr=False)
    _offsets: list[Tensor] = field(default_factory=list, repr=False)
    _logits: Tensor | None = field(default=None, repr=False)
    _compact: list[tuple[Codes, Tensor, Tensor]] = field(default_factory=list, repr=False)
    _codec: Codec | None = field(default=None, repr=False)

    @classmethod
    def load(cls, root: str | Path, tail: str = "student", verify: bool = True) -> TeacherCache:
        root = Path(root)
        require_complete(root)
        meta = read_meta(root)
        if meta.get("version") not in READS:
            raise KdkitError(
                f"teacher cache {root} has format version {meta.get('version')}, this kdkit reads "
                f"{', '.join(map(str, READS))}; rebuild it with `kdkit cache`"
            )
        cache = cls(root, meta, tail)
        for name, digest in meta["shards"].items():
            path = root / name
            if not path.is_file():
                raise KdkitError(
                    f"teacher cache {root}: shard {name} is missing; rerun `kdkit cache` to rebuild it"
                )
            if verify and file_digest(path) != digest:
                raise KdkitError(
                    f"teacher cache {root}: shard {name} is corrupt (checksum mismatch); rerun `kdkit cache` "
                    "with the same config to rebuild that shard"
                )
            cache._handles.append(safe_open(str(path), framework="pt"))  # memory-mapped reads
        if meta["kind"] == "logits":
            cache._logits = torch.cat([h.get_tensor("logits") for h in cache._handles])  # (N, C): small
        else:
            cache._offsets = [h.get_tensor("offsets") for h in cache._handles]
        if meta.get("format") == "compact":
            vocab = int(meta["provenance"]["vocab_size"])
            top_k, step = int(meta["provenance"]["top_k"]), float(meta["codec_step"])
            cache._codec = Codec(vocab, top_k, step, str(meta.get("codec_target", "float16")))  # v2: float16
            cache._compact = [
                (
                    Codes(h.get_tensor("rank_table").numpy(), vocab),
                    h.get_tensor("record_offsets"),
                    h.get_tensor("records"),
                )
                for h in cache._handles
            ]
        return cache

    def __len__(self) -> int:
        return int(self.meta["num_examples"])

    def check_matches(self, expected: dict[str, Any]) -> None:
        """Refuse a cache built for another teacher, tokenizer, data or setting, naming the field."""
        for key, value in expected.items():
            have = self.meta.get("provenance", {}).get(key)
            if have != value:
                raise KdkitError(
                    f"teacher cache {self.root} does not match this run: {key} is {have!r} there, {value!r} "
                    "here; rebuild it with `kdkit cache --config FILE` (or point cache.dir elsewhere)"
                )

    def _check_ids(self, idx: Tensor) -> None:
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise KdkitError(
                f"teacher cache {self.root} covers {len(self)} examples, the batch asks for example "
                f"{int(idx.max())}; the training set changed: rebuild the cache"
            )

    def logits(self, idx: Tensor) -> Tensor:
        """(B, C) float32 teacher logits of examples ``idx`` (classifier caches)."""
        self._check_ids(idx)
        assert self._logits is not None
        return self._logits[idx.cpu()]

    def topk(self, idx: Tensor, counts: list[int]) -> TopKTeacher:
        """The top-k teacher of examples ``idx`` (causal-LM caches), their rows concatenated in order;
        ``counts`` are the counted tokens each example has in the batch (must match the cache)."""
        self._check_ids(idx)
        size = int(self.meta["shard_size"])
        parts: dict[str, list[Tensor]] = {"indices": [], "logprobs": [], "target_logprobs": []}
        keys = set(self._handles[0].keys()) if self._handles else set()
        if "matched_mass" in keys or "has_matched_mass" in keys:
            parts["matched_mass"] = []
        for i, count in zip(idx.tolist(), counts, strict=True):
            shard, row = divmod(i, size)
            off = self._offsets[shard]
            a, b = int(off[row]), int(off[row + 1])
            if b - a != count:
                raise KdkitError(
                    f"teacher cache {self.root}: example {i} has {b - a} cached tokens, the batch {count}; "
                    "the data or tokenization changed: rebuild the cache"
                )
            if self._compact:
                for name, rows in zip(parts, self._decode(shard, row, b - a), strict=False):
                    parts[name].append(rows)
                continue
            for name, rows in parts.items():
                rows.append(self._handles[shard].get_slice(name)[a:b])
        return TopKTeacher(
            torch.cat(parts["indices"]).long(),
            torch.cat(parts["logprobs"]),
            torch.cat(parts["target_logprobs"]),
            tail=self.tail,
            matched_mass=torch.cat(parts["matched_mass"]) if "matched_mass" in parts else None,
        )

    def _decode(self, shard: int, row: int, n: int) -> tuple[Tensor, ...]:
        """Example ``row`` of compact shard ``shard``: ids, log-probs, target log-probs (, matched mass)."""
        codes, offsets, records = self._compact[shard]
        a, b = int(offsets[row]), int(offsets[row + 1])
        assert self._codec is not None
        has_mass = "has_matched_mass" in self._handles[shard].keys()  # noqa: SIM118 (safetensors handle)
        ids, lp, target, mass = decode_example(
            records[a:b].numpy().tobytes(), n, codes, self._codec, has_mass
        )
        return (ids, lp, target) if mass is None else (ids, lp, target, mass)
