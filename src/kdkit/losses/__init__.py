"""Pure loss math (no I/O, no models): public API. Shapes are documented on each function."""

from kdkit.losses.atkd import atkd_loss, decoupled_kl
from kdkit.losses.chunked import chunked_atkd_loss, chunked_cross_entropy, chunked_token_loss
from kdkit.losses.divergences import (
    DIVERGENCES,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    token_divergence,
    tvd,
)
from kdkit.losses.kd import hidden_mse, kd_loss, kd_mse_loss, soft_kl
from kdkit.losses.relational import (
    aggregate_neighbours,
    query_alignment,
    relational_kl,
    retrieval_augmented,
    supcon_loss,
)
from kdkit.losses.uld import aligned_cross_tokenizer_loss, hybrid_terms, sorted_l1, uld_loss
from kdkit.losses.uld_cached import cached_hybrid_loss, cached_uld_loss

__all__ = [
    "DIVERGENCES",
    "aggregate_neighbours",
    "aligned_cross_tokenizer_loss",
    "atkd_loss",
    "cached_hybrid_loss",
    "cached_uld_loss",
    "chunked_atkd_loss",
    "chunked_cross_entropy",
    "chunked_token_loss",
    "decoupled_kl",
    "forward_kl",
    "generalized_jsd",
    "hidden_mse",
    "hybrid_terms",
    "kd_loss",
    "kd_mse_loss",
    "query_alignment",
    "relational_kl",
    "retrieval_augmented",
    "reverse_kl",
    "skew_kl",
    "soft_kl",
    "sorted_l1",
    "supcon_loss",
    "token_divergence",
    "tvd",
    "uld_loss",
]
