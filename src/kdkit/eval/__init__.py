"""Metrics, batched prediction, evaluation of saved models and latency; causal-LM generation, perplexity
and ROUGE-L."""

from kdkit.eval.evaluate import evaluate_saved, latency_per_example
from kdkit.eval.lm import generate_tokens, generation_scores, perplexity
from kdkit.eval.metrics import agreement, compute_metrics, default_metrics
from kdkit.eval.rouge import mean_rouge_l, rouge_l

__all__ = [
    "agreement",
    "compute_metrics",
    "default_metrics",
    "evaluate_saved",
    "generate_tokens",
    "generation_scores",
    "latency_per_example",
    "mean_rouge_l",
    "perplexity",
    "rouge_l",
]
