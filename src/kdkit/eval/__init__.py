"""Metrics, batched prediction and latency; causal-LM generation, perplexity and ROUGE-L. (Evaluating a
saved run is `kdkit eval`: ``kdkit.commands.evaluate``.)"""

from kdkit.eval.bootstrap import paired_win_rate
from kdkit.eval.evaluate import latency_per_example
from kdkit.eval.lm import generate_tokens, generation_scores, perplexity
from kdkit.eval.metrics import agreement, compute_metrics, default_metrics
from kdkit.eval.predict import ClassifierPredictor
from kdkit.eval.rouge import mean_rouge_l, rouge_l

__all__ = [
    "ClassifierPredictor",
    "agreement",
    "compute_metrics",
    "default_metrics",
    "generate_tokens",
    "generation_scores",
    "latency_per_example",
    "mean_rouge_l",
    "paired_win_rate",
    "perplexity",
    "rouge_l",
]
