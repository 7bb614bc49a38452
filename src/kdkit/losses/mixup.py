"""Mixup in embedding space for text (MixKD: Liang et al., "MixKD: Towards Efficient Distillation of
Large-scale Language Models", ICLR 2021, arXiv 2011.00593, Section 3; mixup: Zhang et al., ICLR 2018).

Text is discrete, so a pair (i, j) is interpolated after the word-embedding lookup: each model mixes its
own word embeddings, ``e~ = lam * e_i + (1 - lam) * e_j`` position by position (both sequences padded to
the batch's length), and adds position and segment embeddings as usual. Targets mix the same way:
``y~ = lam * y_i + (1 - lam) * y_j`` (one-hot class vectors or regression values). Pure tensor math.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def sample_mixup(batch_size: int, alpha: float, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """``lam`` (B,) float32 ~ Beta(alpha, alpha), one per pair, and ``perm`` (B,) int64: pair i is
    (i, perm[i]) for a random permutation of the batch (as in mixup's in-batch shuffle)."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=batch_size).astype(np.float32))
    perm = torch.from_numpy(rng.permutation(batch_size).astype(np.int64))
    return lam, perm


def mix_embeddings(embeddings: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    """(B, T, D) word embeddings -> (B, T, D) ``lam_i * e_i + (1 - lam_i) * e_perm(i)``."""
    w = lam.to(embeddings.dtype).view(-1, 1, 1)
    return w * embeddings + (1 - w) * embeddings[perm]


def mix_attention_mask(mask: Tensor, perm: Tensor) -> Tensor:
    """(B, T) 0/1 mask -> the union of the pair's masks (a position counts if either example has it)."""
    return torch.maximum(mask, mask[perm])


def mix_segments(token_type_ids: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    """Segment ids are discrete: take those of the pair member with the larger weight (``lam >= 0.5``:
    example i). A choice: the paper does not say (its tasks are mostly single sentences)."""
    keep = (lam >= 0.5).to(token_type_ids.device).view(-1, 1)
    return torch.where(keep, token_type_ids, token_type_ids[perm])


def mix_targets(labels: Tensor, lam: Tensor, perm: Tensor, num_classes: int | None) -> Tensor:
    """Class ids (B,) -> (B, C) mixed one-hot targets (rows on the simplex); regression values (B,) ->
    (B,) mixed values (``num_classes=None``)."""
    lam = lam.to(labels.device)
    if num_classes is None:
        y = labels.float()
        return lam * y + (1 - lam) * y[perm]
    one_hot = F.one_hot(labels, num_classes).float()
    w = lam.view(-1, 1)
    return w * one_hot + (1 - w) * one_hot[perm]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over the batch of ``-sum_c y~_c log softmax(s)_c`` for (B, C) logits and (B, C) soft targets."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
