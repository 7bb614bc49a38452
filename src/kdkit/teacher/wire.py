"""The binary payloads of the teacher server (`kdkit teacher serve`) and its client.

Both directions are one safetensors blob (a JSON header of names, dtypes and shapes, then the raw
little-endian tensors; no pickle, nothing executed on load), with string metadata:

Request (``POST /v1/topk``, ``Content-Type: application/x-kdkit-topk``):

    input_ids       (B, T) int32   token ids in the teacher's tokenizer (right-padded)
    attention_mask  (B, T) uint8   1 on real tokens
    labels          (B, T) int32   the token each position is (-100: not scored); position t + 1's label
                                   is the target of position t, as in training (``shift_labels``)
    metadata        k (top-k size), temperature

Response, for the scored positions of each sequence in row-major order (exactly a teacher cache's rows,
``kdkit.teacher.cache``):

    counts           (B,) int64     scored positions per sequence
    indices          (n, k) int32   the teacher's top-k token ids
    logprobs         (n, k) float16 their log-probabilities at the temperature (logits minus the log-normaliser)
    target_logprobs  (n,) float32   each target token's log-probability
    metadata         model, tokenizer (fingerprints), k, temperature

At k = 64 a scored token costs 64 x (4 + 2) + 4 = 388 bytes, against 98 KB for fp16 logits over a
49,152-token vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from kdkit.errors import KdkitError

CONTENT_TYPE = "application/x-kdkit-topk"
IGNORE = -100


class PayloadError(KdkitError):
    """A request or response that is not a well-formed payload (the server answers 400)."""


@dataclass
class TopKRequest:
    input_ids: Tensor  # (B, T) int
    attention_mask: Tensor  # (B, T)
    labels: Tensor  # (B, T) int, IGNORE where not scored
    k: int
    temperature: float = 1.0

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())

    def encode(self) -> bytes:
        tensors = {
            "input_ids": self.input_ids.to(torch.int32).contiguous(),
            "attention_mask": self.attention_mask.to(torch.uint8).contiguous(),
            "labels": self.labels.to(torch.int32).contiguous(),
        }
        return save(tensors, metadata={"k": str(self.k), "temperature": repr(float(self.temperature))})

    @classmethod
    def decode(cls, body: bytes) -> TopKRequest:
        tensors, meta = _load(body, "request")
        for name in ("input_ids", "attention_mask", "labels"):
            if name not in tensors:
                raise PayloadError(f"request has no '{name}' tensor")
        ids, mask, labels = tensors["input_ids"], tensors["attention_mask"], tensors["labels"]
        if ids.dim() != 2 or mask.shape != ids.shape or labels.shape != ids.shape:
            raise PayloadError(
                f"request tensors must all be (batch, length): input_ids {tuple(ids.shape)}, attention_mask "
                f"{tuple(mask.shape)}, labels {tuple(labels.shape)}"
            )
        if ids.dtype != torch.int32 or labels.dtype != torch.int32 or mask.dtype != torch.uint8:
            raise PayloadError("request dtypes must be input_ids int32, attention_mask uint8, labels int32")
        try:
            k, temperature = int(meta["k"]), float(meta["temperature"])
        except (KeyError, ValueError):
            raise PayloadError("request metadata needs an integer 'k' and a float 'temperature'") from None
        if k < 1 or not temperature > 0:
            raise PayloadError(
                f"request asks for k={k}, temperature={temperature}: need k >= 1, temperature > 0"
            )
        return cls(ids.long(), mask.long(), labels.long(), k, temperature)


@dataclass
class TopKResponse:
    counts: Tensor  # (B,) int64
    indices: Tensor  # (n, k) int32
    logprobs: Tensor  # (n, k) float16
    target_logprobs: Tensor  # (n,) float32
    meta: dict[str, str]

    def encode(self) -> bytes:
        tensors = {
            "counts": self.counts.to(torch.int64).contiguous(),
            "indices": self.indices.to(torch.int32).contiguous(),
            "logprobs": self.logprobs.to(torch.float16).contiguous(),
            "target_logprobs": self.target_logprobs.to(torch.float32).contiguous(),
        }
        return save(tensors, metadata=self.meta)

    @classmethod
    def decode(cls, body: bytes) -> TopKResponse:
        tensors, meta = _load(body, "response")
        missing = {"counts", "indices", "logprobs", "target_logprobs"} - set(tensors)
        if missing:
            raise PayloadError(f"teacher server response lacks {sorted(missing)}")
        n = int(tensors["counts"].sum())
        if tensors["indices"].shape[0] != n or tensors["target_logprobs"].shape[0] != n:
            raise PayloadError(
                f"teacher server response holds {tensors['indices'].shape[0]} rows, counts say {n}"
            )
        return cls(
            tensors["counts"], tensors["indices"], tensors["logprobs"], tensors["target_logprobs"], meta
        )


def _load(body: bytes, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not body:
        raise PayloadError(f"empty {what} body; send a safetensors payload ({CONTENT_TYPE})")
    try:
        tensors = load(body)
        meta = _metadata(body)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise PayloadError(f"{what} is not a safetensors payload ({str(err).splitlines()[0]})") from None
    return tensors, meta


def _metadata(body: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (``load`` returns the tensors only)."""
    size = int.from_bytes(body[:8], "little")
    if size > len(body) - 8:
        raise ValueError("header larger than the payload")
    header = json.loads(body[8 : 8 + size])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}
