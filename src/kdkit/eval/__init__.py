"""Metrics, batched prediction, evaluation of saved models and latency."""

from kdkit.eval.evaluate import evaluate_saved, latency_per_example
from kdkit.eval.metrics import agreement, compute_metrics, default_metrics

__all__ = ["agreement", "compute_metrics", "default_metrics", "evaluate_saved", "latency_per_example"]
