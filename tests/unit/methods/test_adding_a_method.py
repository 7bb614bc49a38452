"""Adding a method, as README.md's "Adding a method" shows it: a classifier method is one class (in
``methods/<name>.py``) and a line registering it; a token-level causal-LM method is a per-token divergence
in ``losses/divergences.py``, one class, and a line registering it. Nothing else changes: the config, the
pipeline, the cached/chunked losses, checkpoints, the model card and `kdkit ls` pick it up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_config
from tests.method_runs import lm_run_config
from torch import Tensor
from transformers import AutoTokenizer

import kdkit
from kdkit.commands.cache import build_cache_for_config
from kdkit.config import METHOD_CONFIGS, MethodConfig
from kdkit.losses.divergences import DIVERGENCES, token_divergence
from kdkit.methods import METHODS, register
from kdkit.methods.base import CLASSIFIER_TASKS, Batch, LossOutput, Method, task_loss
from kdkit.methods.lm_base import DivergenceLoss, check_common

# --- a classifier method: methods/cosine_kd.py ------------------------------------------------------------


@dataclass
class CosineKDConfig(MethodConfig):
    """Cosine KD: the student's logits point where the teacher's do."""

    name: str = "cosine_kd"  # method name
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha goes to the cosine term


class CosineKD(Method):
    """alpha * CE(s, y) + (1 - alpha) * mean(1 - cos(s, t)) over the batch's logits."""

    name = "cosine_kd"
    paper = "An example method for kdkit's tests, 2026"
    Config = CosineKDConfig
    tasks = CLASSIFIER_TASKS
    config: CosineKDConfig

    def forward(self, student_out: Any, teacher_out: Any, batch: Batch) -> LossOutput:
        s, t = student_out.logits, teacher_out.logits.detach()
        distill = (1 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()
        loss = (
            self.config.alpha * task_loss(s, batch["labels"], self.task) + (1 - self.config.alpha) * distill
        )
        return LossOutput(loss, {"distill": distill.detach(), "loss": loss.detach()})


# --- a token-level method: a divergence in losses/divergences.py + methods/hellinger.py ---------------------


def hellinger_tokens(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Squared Hellinger distance per token: 1 - sum_j sqrt(p_j q_j)."""
    p = F.log_softmax(teacher_logits.float() / temperature, -1)
    q = F.log_softmax(student_logits.float() / temperature, -1)
    return 1 - torch.exp(0.5 * (p + q)).sum(-1)


@dataclass
class HellingerConfig(MethodConfig):
    """Token-level squared Hellinger distance."""

    name: str = "hellinger"  # method name
    temperature: float = 1.0  # softmax temperature of both models
    ce_weight: float = 0.0  # weight of an added cross-entropy on the ground-truth tokens
    chunk_size: int = 1024  # tokens per chunk of the memory-lean loss; 0: full logits

    def __post_init__(self) -> None:
        check_common(self)


class Hellinger(DivergenceLoss):
    name = "hellinger"
    paper = "An example method for kdkit's tests, 2026"
    Config = HellingerConfig
    divergence = "hellinger"


@pytest.fixture
def registries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registries (and the divergences) as they are, restored after the test."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHOD_CONFIGS, "_items", dict(METHOD_CONFIGS._items))
    monkeypatch.setitem(DIVERGENCES, "hellinger", hellinger_tokens)


def test_a_new_classifier_method_trains_through_the_pipeline(
    registries: None, tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    register(CosineKD)
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run", method={"name": "cosine_kd", "alpha": 0.3})
    result = kdkit.distill(config)
    assert result.metrics["method"] == "cosine_kd" and result.metrics["steps"] == 6
    assert "validation" in result.metrics["teacher"]  # the teacher was run live, as for kd
    assert "An example method for kdkit's tests" in (tmp_path / "run" / "README.md").read_text()
    assert "alpha: 0.3" in (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(
        kdkit.KdkitError, match="method 'cosine_kd' is for classifiers"
    ):  # declared, not guessed
        kdkit.distill({**config, "task": "causal_lm"})


def test_a_new_token_level_divergence_trains_chunked_full_and_cached(
    registries: None, tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path
) -> None:
    register(Hellinger)
    logits = torch.randn(2, 3, 11)
    assert torch.allclose(token_divergence("hellinger", logits, logits), torch.zeros(2, 3), atol=1e-6)
    config = lm_run_config(tiny_lm, tiny_jsonl, tmp_path / "live")
    config["method"] = {"name": "hellinger", "chunk_size": 16}
    config["train"].update(max_steps=3, eval_every=None, save_every=None)
    config["eval"]["rouge"] = False
    live = kdkit.distill(config)
    assert live.metrics["method"] == "hellinger" and live.metrics["validation"]["perplexity"] > 1.0
    live_ppl = live.metrics["validation"]["perplexity"]
    full = kdkit.distill(
        {**config, "output_dir": str(tmp_path / "full"), "method": {"name": "hellinger", "chunk_size": 0}}
    )
    assert full.metrics["validation"]["perplexity"] == pytest.approx(live_ppl, rel=1e-4)  # full logits

    vocab = len(AutoTokenizer.from_pretrained(tiny_lm))  # every logit cached: the same training
    config["cache"] = {"dir": str(tmp_path / "cache"), "top_k": vocab, "dtype": "float32"}
    build_cache_for_config(config)
    cached = kdkit.distill({**config, "output_dir": str(tmp_path / "cached")})
    assert cached.metrics["validation"]["perplexity"] == pytest.approx(live_ppl, rel=1e-4)
