"""One vector per example from an encoder's last hidden states (the embeddings that retrieval compares)."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

Pooling = Literal["cls", "mean"]


def pooled_embedding(hidden: Tensor, attention_mask: Tensor, pooling: Pooling = "cls") -> Tensor:
    """(B, T, D) hidden states -> (B, D): the first token's state (``cls``, BERT's [CLS]), or the mean over
    the real tokens (``mean``, padding excluded by ``attention_mask`` (B, T))."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
