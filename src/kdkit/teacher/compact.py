"""The compact format of a causal-LM teacher cache (``cache.format: compact``): each example's top-k rows
coded into one compressed record, about a third of the plain format's bytes at k = 64.

What a record holds, for the n counted tokens of an example (every stream a plain byte array; the streams
are concatenated in this order and compressed together with LZMA2, raw, no container header):

1. **ids**, as gaps between sorted *codes*: each token id is first mapped to a code, its rank in the
   shard's table of the ``RANKED`` most frequent top-k ids (stored in the shard, ``rank_table``), the other
   ids following in id order; each row's codes are sorted and stored as differences from the previous
   one (the first from 0), byte plane by byte plane (``planes`` bytes per id: 2 for V <= 65,536, 3 above).
   Frequent tokens get small codes, so the gaps are small and compress well (~64 instead of ~73 bytes per
   token at V = 49,152 in the measured caches).
2. **log-probabilities**, in the same order, as ``q = round(-log p / step)`` (``step`` 1/16 nat by
   default) in two byte planes: the low byte, then the high byte (zero for p above e^-16, so it costs
   almost nothing once compressed). A uniform step matters for reverse KL: its error on an entry is
   ``q_i * delta_i``, large where a broad student puts mass on a token the teacher finds unlikely.
3. **target position**, one byte per row: the index (in the sorted order) of the entry whose value equals
   the target token's log-probability, or 255 when the target is outside the top-k.
4. **target log-probability**, kept far finer than the other values because ATKD leans on it: its
   easy/hard split ranks tokens by ``1 - p_g`` (two tokens that round to one value can change sides, and
   one swap at the boundary moves a batch's loss by ~1e-3), and its non-target distribution is divided by
   ``1 - p_g``, which a 1/32-nat error in ``log p_g`` would change by half when ``p_g`` is 0.95. For a
   target inside the top-k, whose entry already holds ``log p_g`` to ``step / 2``, two byte planes hold
   the residual: ``round((-log p_g / step - q + 1/2) * 65535)``, so the target is known to
   ``step / 131070`` (5e-7 nat at the default step; float16 was 2.4e-4 nat at ``p_g`` = 1/2); a target
   outside the top-k is stored whole, float32, in a stream of its own after the residuals (rows in order).
   (Records of format version 2 hold float16 targets instead: ``Codec(target="float16")`` reads them.)
5. **tail mass**, two byte planes per row: ``round(-log m * 768)`` of the row's tail mass ``m = 1 - sum p``
   (summed in float64, floored at 1e-30 as the losses do). The reader shifts the row's other entries
   (not the target's) so that their mass makes the row's total exactly ``1 - m``: the tail mass, which a
   broad student's reverse KL weighs by its own whole tail mass, is kept to 1/1,536 of its value however
   small it is, instead of drifting by the rounding of 64 values.
6. **matched mass** (span caches of a teacher with another tokenizer only): float16 per row.

The reader (``decode_example``) returns the plain format's tensors: ids, log-probabilities (float32, within
``step / 2`` of the stored ones before the tail-mass shift), target log-probabilities and the matched mass.
``benchmarks/compact_cache.py`` measures the bytes per token and the losses' error against the plain
cache on real batches (docs/benchmarks.md).
"""

from __future__ import annotations

import lzma
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kdkit.losses.topk import TAIL_FLOOR as _FLOOR  # the losses' smallest tail mass

RANKED = 4096  # ids per shard with a frequency-ranked code
STEP = 1 / 16  # nats per log-probability level
_MASS_SCALE = 768  # levels per nat of the stored -log(tail mass): 1/1,536 nat at most off
_OUTSIDE = 255  # target position: not among the top-k
_RESIDUAL = 65535  # levels of a target's residual over its entry's step
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}]  # a record is < 1 MiB


@dataclass(frozen=True)
class Codec:
    """How a cache's records are coded: vocabulary size, k, the log-probability step and how targets are
    kept (``"residual"``: as written now; ``"float16"``: records of format version 2)."""

    vocab: int
    k: int
    step: float = STEP
    target: str = "residual"

    def __post_init__(self) -> None:
        if self.target not in ("residual", "float16"):
            raise ValueError(f"Codec.target must be 'residual' or 'float16', got {self.target!r}")

    @property
    def planes(self) -> int:
        """Bytes per code gap: enough for any code below ``vocab``."""
        return max(1, math.ceil(math.log2(max(self.vocab, 2)) / 8))

    def meta(self) -> dict[str, float | int | str]:
        return {
            "format": "compact",
            "codec_step": self.step,
            "codec_ranked": RANKED,
            "codec_target": self.target,
        }

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """The level of each ``x = -log p >= 0``: ``round(x / step)``, uint16."""
        return np.clip(np.rint(x / self.step), 0, 65535).astype(np.uint16)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return q.astype(np.float32) * np.float32(self.step)


class Codes:
    """Token id <-> code for one shard: the ranked ids first (codes 0..R-1), the others in id order."""

    def __init__(self, table: np.ndarray, vocab: int) -> None:
        table = np.asarray(table, dtype=np.int64)
        rest = np.setdiff1d(np.arange(vocab, dtype=np.int64), table, assume_unique=True)
        self.to_id = np.concatenate([table, rest])  # code -> id
        self.to_code = np.empty(vocab, dtype=np.int64)
        self.to_code[self.to_id] = np.arange(vocab, dtype=np.int64)


def rank_table(indices: np.ndarray, vocab: int) -> np.ndarray:
    """The ``RANKED`` (or fewer) ids that occur most often in ``indices`` (ties: smaller id first), int32."""
    counts = np.bincount(np.asarray(indices, dtype=np.int64).ravel(), minlength=vocab)
    order = np.argsort(-counts, kind="stable")
    return order[: min(RANKED, int((counts > 0).sum()))].astype(np.int32)


def encode_example(
    ids: np.ndarray,
    logprobs: np.ndarray,
    targets: np.ndarray,
    matched: np.ndarray | None,
    codes: Codes,
    codec: Codec,
    stored_targets: np.ndarray | None = None,
) -> bytes:
    """One example's record. ``ids`` (n, k) token ids, ``logprobs`` (n, k) their log-probabilities,
    ``targets`` (n,) the targets' log-probabilities, ``matched`` (n,) or None; ``stored_targets``: the
    targets rounded as ``logprobs`` were (what finds the target's entry), default ``targets``."""
    code = codes.to_code[ids.astype(np.int64)]
    order = np.argsort(code, axis=1, kind="stable")
    code = np.take_along_axis(code, order, 1)
    lp = np.take_along_axis(logprobs, order, 1)
    gaps = np.diff(code, axis=1, prepend=0).astype(np.uint32)
    lp32 = lp.astype(np.float32)
    q = codec.quantize(np.maximum(-lp32, 0.0))
    rounded = (targets if stored_targets is None else stored_targets).astype(np.float32)
    same = lp32 == rounded[:, None]  # (n, k): the target's entry, if any
    inside = same.any(1)
    position = np.where(inside, same.argmax(1), _OUTSIDE).astype(np.uint8)
    mass = _log_tail_mass(lp32)
    q, target = _target_streams(targets, q, position, codec)
    streams = [
        *_to_planes(gaps, codec.planes),
        *_to_planes(q, 2),
        position.tobytes(),
        *target,
        *_to_planes(mass, 2),
    ]
    if matched is not None:
        streams.append(np.asarray(matched).astype(np.float16).tobytes())
    return lzma.compress(b"".join(streams), format=lzma.FORMAT_RAW, filters=_FILTERS)


def _target_streams(
    targets: np.ndarray, q: np.ndarray, position: np.ndarray, codec: Codec
) -> tuple[np.ndarray, list[bytes]]:
    """The levels ``q`` (n, k) to store, each target's entry (where ``position`` (n,) finds one) at the
    target's own level, and the streams of the targets' log-probabilities (n,): residuals over those levels,
    float32 for the targets outside the top-k (see the module docstring, stream 4)."""
    if codec.target == "float16":
        return q, [targets.astype(np.float16).tobytes()]
    inside = position != _OUTSIDE
    rows = np.nonzero(inside)[0]
    x = -targets[rows].astype(np.float64) / codec.step  # (m,) in levels
    # the entry takes the target's own level (its stored value may round to a neighbouring one), so the
    # residual is in [0, 1]; the reader puts the target there in its place anyway
    q = q.copy()
    q[rows, position[rows]] = np.clip(np.rint(x), 0, 65535).astype(np.uint16)
    frac = x - q[rows, position[rows]] + 0.5
    residual = np.zeros(len(targets), dtype=np.uint16)
    residual[rows] = np.rint(np.clip(frac, 0.0, 1.0) * _RESIDUAL).astype(np.uint16)
    return q, [*_to_planes(residual, 2), targets[~inside].astype(np.float32).tobytes()]


def _to_planes(x: np.ndarray, planes: int) -> list[bytes]:
    """Unsigned integers as ``planes`` byte arrays, least significant byte first (each compresses alone)."""
    x = x.astype(np.uint32)
    return [((x >> (8 * p)) & 0xFF).astype(np.uint8).tobytes() for p in range(planes)]


def _log_tail_mass(lp: np.ndarray) -> np.ndarray:
    """(n,) uint16: ``round(-log m * _MASS_SCALE)`` of each row's tail mass ``m = 1 - sum(exp(lp))``,
    summed in float64 and floored at ``_FLOOR`` (as the losses do)."""
    tail = 1.0 - np.exp(lp.astype(np.float64)).sum(1)
    return np.rint(-np.log(np.maximum(tail, _FLOOR)) * _MASS_SCALE).astype(np.uint16)


def _renormalise(lp: np.ndarray, keep: np.ndarray, log_tail: np.ndarray) -> np.ndarray:
    """Shift each row's entries except ``keep`` (n, k) bool (the target's exact entry) so that the row's
    mass is ``1 - exp(log_tail)``; rows where that is impossible stay as they are. float64 -> float32."""
    lp64 = lp.astype(np.float64)
    fixed = np.where(keep, np.exp(lp64), 0.0).sum(1)
    others = np.where(keep, -np.inf, lp64)
    top = np.maximum(others.max(1, keepdims=True), -1e300)
    current = top[:, 0] + np.log(np.exp(others - top).sum(1))  # log of the other entries' mass
    # at the floor (stored top-k mass >= 1, fp16 rounding): a total just above 1, which the losses floor too
    total = np.where(log_tail <= np.log(_FLOOR) + 1.0 / _MASS_SCALE, 1.0 + 1e-6, 1.0 - np.exp(log_tail))
    want = total - fixed
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where((want > 0) & np.isfinite(current), np.log(np.maximum(want, 1e-300)) - current, 0.0)
    return np.where(keep, lp64, lp64 + shift[:, None]).astype(np.float32)


def decode_example(
    record: bytes, n: int, codes: Codes, codec: Codec, matched: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The plain tensors of a record of ``n`` rows: ids (n, k) int64, log-probabilities (n, k) float32,
    target log-probabilities (n,) float32, and the matched mass (n,) float32 when ``matched``."""
    k = codec.k
    raw = memoryview(lzma.decompress(record, format=lzma.FORMAT_RAW, filters=_FILTERS))
    at = 0

    def take(count: int, dtype: type = np.uint8) -> np.ndarray:
        nonlocal at
        size = count * np.dtype(dtype).itemsize
        out = np.frombuffer(raw[at : at + size], dtype=dtype)
        at += size
        return out

    def from_planes(count: int, planes: int) -> np.ndarray:  # _to_planes' inverse, int64
        out = np.zeros(count, dtype=np.int64)
        for plane in range(planes):
            out |= take(count).astype(np.int64) << (8 * plane)
        return out

    ids = codes.to_id[np.cumsum(from_planes(n * k, codec.planes).reshape(n, k), axis=1)]
    lp = -codec.dequantize(from_planes(n * k, 2).reshape(n, k))
    position = take(n).astype(np.int64)
    rows = np.nonzero(position != _OUTSIDE)[0]
    if codec.target == "float16":
        target = take(n, np.float16).astype(np.float32)
    else:
        residual = from_planes(n, 2)[rows].astype(np.float64) / _RESIDUAL - 0.5
        target = np.empty(n, dtype=np.float32)
        target[position == _OUTSIDE] = take(n - len(rows), np.float32)
        target[rows] = (lp[rows, position[rows]].astype(np.float64) - residual * codec.step).astype(
            np.float32
        )
    log_tail = -from_planes(n, 2).astype(np.float64) / _MASS_SCALE
    lp[rows, position[rows]] = target[rows]  # the target's entry takes its finer value
    keep = np.zeros((n, k), dtype=bool)
    keep[rows, position[rows]] = True
    lp = _renormalise(lp, keep, log_tail)
    mass = torch.from_numpy(take(n, np.float16).astype(np.float32)) if matched else None
    return torch.from_numpy(ids), torch.from_numpy(lp), torch.from_numpy(target), mass


def encode_shard(tensors: dict[str, Tensor], codec: Codec) -> dict[str, Tensor]:
    """A plain top-k shard's tensors (``kdkit.teacher.build.pack_topk``) in the compact format:
    ``offsets`` (rows per example, as before), ``rank_table``, and the records (``records`` uint8,
    ``record_offsets``)."""
    offsets = tensors["offsets"]
    ids = tensors["indices"].numpy()
    lp = tensors["logprobs"].float().numpy()
    target = tensors["target_logprobs"].float().numpy()
    stored = tensors["target_logprobs"].to(tensors["logprobs"].dtype).float().numpy()  # as the top-k were
    matched = tensors["matched_mass"].numpy() if "matched_mass" in tensors else None
    if ids.size and (int(ids.max()) >= codec.vocab or int(ids.min()) < 0):
        raise ValueError(f"token ids up to {int(ids.max())} in a cache of vocabulary size {codec.vocab}")
    table = rank_table(ids, codec.vocab)
    codes = Codes(table, codec.vocab)
    records, sizes = [], [0]
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True):
        record = encode_example(
            ids[a:b],
            lp[a:b],
            target[a:b],
            None if matched is None else matched[a:b],
            codes,
            codec,
            stored[a:b],
        )
        records.append(record)
        sizes.append(len(record))
    out = {
        "offsets": offsets,
        "rank_table": torch.from_numpy(table),
        "records": torch.frombuffer(bytearray(b"".join(records)), dtype=torch.uint8)
        if sum(sizes)
        else torch.zeros(0, dtype=torch.uint8),
        "record_offsets": torch.tensor(sizes).cumsum(0),
    }
    if matched is not None:
        out["has_matched_mass"] = torch.ones(1, dtype=torch.uint8)
    return out
