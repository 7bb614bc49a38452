"""ReAugKD inference (Zhang et al., ACL 2023, Section 3): the student embedding queries the knowledge
base, the neighbours' teacher soft labels are averaged with weights softmax(sim / tau), and the prediction
is ``beta * retrieved + (1 - beta) * softmax(student logits)``.

``ReAugPredictor.from_pretrained(run_dir)`` serves a ReAugKD run dir (student + ``kb/``); the student alone
still loads with ``transformers``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdkit.config import read_yaml, resolve_method
from kdkit.errors import KdkitError
from kdkit.eval.metrics import compute_metrics
from kdkit.losses.relational import retrieval_augmented
from kdkit.models.load import load_tokenizer, load_trained_classifier
from kdkit.models.pooling import Pooling, pooled_embedding
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.retrieval.resolve import KB_DIR


@dataclass
class RetrievalSettings:
    """Inference settings; a run's ``method`` section (``reaugkd``) supplies them, these are the defaults."""

    beta: float = 0.5
    k: int = 16
    tau: float = 0.1
    pooling: Pooling = "cls"

    @classmethod
    def of_method(cls, method: Any, chosen: dict[str, Any] | None = None) -> RetrievalSettings:
        """The inference settings of a ``reaugkd`` method config; with ``beta: auto``, the ``chosen`` ones
        (``kdkit.retrieval.choose``: beta, k, tau)."""
        if method.beta != "auto":
            return cls(method.beta, method.retrieval_k, method.retrieval_tau, method.pooling)
        if not chosen:
            raise KdkitError(
                "method.beta is auto but no settings were chosen yet (they are chosen on the validation split "
                "at the end of training); pass beta explicitly"
            )
        return cls(float(chosen["beta"]), int(chosen["k"]), float(chosen["tau"]), method.pooling)

    @classmethod
    def of_run(cls, run_dir: str | Path) -> RetrievalSettings:
        """The settings of a ReAugKD run dir (its config.yaml, and with ``beta: auto`` the settings chosen at
        the end of training, in metrics.json), the defaults for other runs."""
        saved = Path(run_dir) / "config.yaml"
        method = read_yaml(saved).get("method", {}) if saved.is_file() else {}
        if not isinstance(method, dict) or method.get("name") != "reaugkd":
            return cls()
        return cls.of_method(resolve_method(method), chosen_settings(run_dir))


def chosen_settings(run_dir: str | Path) -> dict[str, Any] | None:
    """The inference settings a finished run chose (metrics.json ``inference_settings``), if any."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KdkitError(f"{path} is not valid JSON; restore it or re-run the evaluation") from None
    chosen = found.get("inference_settings") if isinstance(found, dict) else None
    return chosen if isinstance(chosen, dict) else None


def combine(
    logits: Tensor,
    embeddings: Tensor,
    kb: KnowledgeBase,
    settings: RetrievalSettings,
    exclude: Tensor | None = None,
) -> Tensor:
    """(N, C) retrieval-augmented probabilities from the student's logits (N, C) and embeddings (N, D).

    ``exclude`` (N,): each query's own KB entry, skipped (evaluation on the training data). beta = 0 returns
    the student's softmax exactly, without searching.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    if settings.beta == 0:
        return probs
    retrieved = kb.retrieve(embeddings, settings.k, settings.tau, exclude).to(probs.device)
    return retrieval_augmented(probs, retrieved, settings.beta)


@torch.no_grad()
def student_pass(
    model: nn.Module, loader: DataLoader, accelerator: Accelerator, pooling: Pooling, desc: str | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(logits (N, C), embeddings (N, D), labels (N,), idx (N,)) of ``model`` over a prepared loader."""
    was_training = model.training
    model.eval()
    out_lists: list[list[Tensor]] = [[], [], [], []]
    bar = tqdm(loader, desc=desc, leave=False, disable=desc is None or not accelerator.is_local_main_process)
    for batch in bar:
        inputs = batch["student"]
        with accelerator.autocast():
            out = model(**inputs, output_hidden_states=True)
        emb = pooled_embedding(out.hidden_states[-1], inputs["attention_mask"], pooling)
        gathered = accelerator.gather_for_metrics(
            (out.logits.float(), emb.float(), batch["labels"], batch["idx"])
        )
        for acc, value in zip(out_lists, gathered, strict=True):
            acc.append(value.cpu())
    model.train(was_training)
    logits, emb, labels, idx = (torch.cat(x) for x in out_lists)
    return logits, emb, labels, idx


def evaluate_with_retrieval(
    model: nn.Module,
    kb: KnowledgeBase,
    loaders: dict[str, DataLoader],
    accelerator: Accelerator,
    settings: RetrievalSettings,
    task: str,
    metric_names: list[str],
) -> dict[str, dict[str, float]]:
    """Metrics per split of the retrieval-augmented predictions (on ``train``, each example's own KB
    entry is excluded: the KB holds the training set in order)."""
    results = {}
    for split, loader in loaders.items():
        logits, emb, labels, idx = student_pass(
            model, loader, accelerator, settings.pooling, f"retrieval {split}"
        )
        probs = combine(logits, emb, kb, settings, idx if split == "train" else None)
        results[split] = compute_metrics(task, probs.argmax(-1).numpy(), labels.numpy(), metric_names)
    return results


class ReAugPredictor:
    """Batched predictions of a ReAugKD student with retrieval from its knowledge base.

    Example::

        predictor = kdkit.ReAugPredictor.from_pretrained("runs/sst2-reaugkd")
        predictor.predict(["a gripping, funny film"])            # -> ["positive"]
        predictor.predict_proba(texts, retrieval=False)           # the student alone
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        kb: KnowledgeBase | None,
        settings: RetrievalSettings | None = None,
        max_length: int = 128,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.kb = kb
        self.settings = settings or RetrievalSettings()
        self.max_length = max_length
        self.device = torch.device(device)
        if kb is not None and kb.dim != model.config.hidden_size:
            raise KdkitError(f"knowledge base has {kb.dim} dims, the model {model.config.hidden_size}")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        beta: float | None = None,
        k: int | None = None,
        tau: float | None = None,
        device: str | torch.device = "cpu",
    ) -> ReAugPredictor:
        """Load a ReAugKD run dir: the student, its tokenizer, ``kb/`` and the run's inference settings."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise KdkitError(f"{path} holds no saved model (config.json missing); pass a finished run's dir")
        kb = KnowledgeBase.load(path / KB_DIR)
        settings = RetrievalSettings.of_run(path)
        if beta is not None:
            settings.beta = beta
        if k is not None:
            settings.k = k
        if tau is not None:
            settings.tau = tau
        if not 0.0 <= settings.beta <= 1.0:
            raise KdkitError(f"beta must be in [0, 1], got {settings.beta}")
        model = load_trained_classifier(str(path))
        tokenizer = load_tokenizer(str(path), model.config)
        max_length = saved_max_length(path)
        return cls(model, tokenizer, kb, settings, max_length, device)

    @torch.no_grad()
    def student_outputs(
        self, texts: list[str], text_pairs: list[str] | None = None, *, batch_size: int = 32
    ) -> tuple[Tensor, Tensor]:
        """The student's (logits (N, C), pooled embeddings (N, D)) for ``texts``, batched; the queries
        retrieval makes (``combine``), e.g. to choose settings on new labelled data
        (``kdkit.retrieval.choose``)."""
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise KdkitError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        logits, embs = [], []
        for start in range(0, len(texts), batch_size):
            chunk = slice(start, start + batch_size)
            enc = self.tokenizer(
                texts[chunk],
                None if text_pairs is None else text_pairs[chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            out = self.model(**enc, output_hidden_states=True)
            emb = pooled_embedding(out.hidden_states[-1], enc["attention_mask"], self.settings.pooling)
            logits.append(out.logits.float().cpu())
            embs.append(emb.float().cpu())
        if not logits:
            return torch.zeros(0, self.model.config.num_labels), torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(logits), torch.cat(embs)

    def predict_proba(
        self,
        texts: list[str],
        text_pairs: list[str] | None = None,
        *,
        batch_size: int = 32,
        retrieval: bool = True,
        exclude_ids: list[int] | None = None,
    ) -> np.ndarray:
        """(N, C) class probabilities; ``retrieval=False`` gives the student's softmax alone.

        ``exclude_ids``: each text's own KB entry (when predicting on the KB's training examples).
        """
        if retrieval and self.kb is None:
            raise KdkitError("this predictor has no knowledge base; pass retrieval=False")
        logits, emb = self.student_outputs(texts, text_pairs, batch_size=batch_size)
        if not retrieval or len(texts) == 0:
            return torch.softmax(logits, -1).numpy()
        assert self.kb is not None
        ex = None if exclude_ids is None else torch.as_tensor(exclude_ids)
        return combine(logits, emb, self.kb, self.settings, ex).numpy()

    def predict(self, texts: list[str], text_pairs: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Label names (the model's ``id2label``) of the most probable classes."""
        probs = self.predict_proba(texts, text_pairs, **kwargs)
        id2label = self.model.config.id2label
        return [id2label[int(i)] for i in probs.argmax(-1)]


def saved_max_length(path: Path) -> int:
    saved = path / "config.yaml"
    if saved.is_file():
        student = read_yaml(saved).get("student") or {}
        if isinstance(student, dict) and student.get("max_length"):
            return int(student["max_length"])
    return 128
