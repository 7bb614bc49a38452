"""ReAugKD: retrieval-augmented knowledge distillation (Zhang et al., "ReAugKD: Retrieval-Augmented
Knowledge Distillation For Pre-trained Language Models", ACL 2023 short papers, pp. 1128-1136, Section 3).

The student gets a non-parametric memory: a knowledge base (KB) of the teacher's projected embeddings and
soft labels over the training set (``kdkit.retrieval``; built before training, or given by ``method.kb``).

Training loss for a batch (``kdkit.losses.kd_loss``, ``kdkit.losses.relational_kl``)::

    alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T)) + rel_weight * L_rel
        [+ align_weight * mean_i (1 - cos(z_S_i, z_T_i))]       (kdkit's option, off by default)
    L_rel = mean_i KL(P_TT(i) || P_ST(i)),  P_TT(i, j) = softmax_j(sim(z_T_i, z_T_j) / tau),
                                            P_ST(i, j) = softmax_j(sim(z_S_i, z_T_j) / tau)

over example i's candidates j: its top-``k`` KB neighbours (by teacher-teacher similarity, fixed once the
KB is built) plus the other examples of the batch, itself excluded and duplicates counted once. z_T are the
KB keys (the teacher is frozen and in eval mode, so they equal a live teacher pass), z_S the student's
pooled embedding (CLS of the last layer; ``pooling: mean`` for the masked mean), sim the cosine.

Inference (``kdkit.retrieval.predictor``): the student embedding queries the KB for ``retrieval_k``
neighbours, whose soft labels are averaged with weights softmax(sim / retrieval_tau), and the prediction is
``beta * retrieved + (1 - beta) * softmax(student logits)``.

``align_weight`` (kdkit's, not the paper's; 0 by default, which is the paper's loss) adds a term that pulls
each student query to the teacher's KB key of the same example (``kdkit.losses.query_alignment``): L_rel
matches the student's similarities over the candidates only, so a student can meet it while its queries
retrieve other neighbours from the whole KB than the teacher's queries would.

``beta: auto`` (kdkit's default) chooses beta, ``retrieval_k`` and ``retrieval_tau`` on the validation split
after training (``kdkit.retrieval.choose``: beta 0 is the student alone, so with retrieval the student is
never worse on validation), and keeps retrieval only when it beats the student alone on at least
``beta_confidence`` (0.95) of paired bootstrap resamples of that split, else the student alone; a number
fixes beta (0.5 is the paper's value) and uses the configured k and tau.

Choices (the short paper does not pin them; all configurable): T 2 and
alpha 0.5 as ``kd``, rel_weight 1, tau 0.1 for both similarity softmaxes, k 16 for both, CLS pooling, soft
labels at temperature 1, projection head trained 5 epochs (batch 512, Adam 1e-3, supcon temperature 0.07 as
Khosla et al.). Classification only: supervised-contrastive positives need classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdkit.config import MethodConfig
from kdkit.errors import KdkitError, note
from kdkit.fingerprint import split_fingerprint
from kdkit.losses import kd_loss, query_alignment, relational_kl
from kdkit.methods.base import (
    Batch,
    EvalEnv,
    LossContext,
    LossOutput,
    Method,
    MethodCommand,
    Predictor,
    PrepareEnv,
    Resources,
)
from kdkit.models.pooling import pooled_embedding
from kdkit.retrieval.build import teacher_features, train_neighbours
from kdkit.retrieval.choose import CONFIDENCE, choose_settings
from kdkit.retrieval.command import KB_COMMAND
from kdkit.retrieval.diagnose import retrieval_diagnostics
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.retrieval.predictor import (
    ReAugPredictor,
    RetrievalSettings,
    chosen_settings,
    evaluate_with_retrieval,
    student_pass,
)
from kdkit.retrieval.resolve import KB_DIR, kb_settings, resolve_kb


@dataclass
class ReAugKDConfig(MethodConfig):
    """ReAugKD (Zhang et al., ACL 2023): KD + relational loss over a teacher KB, retrieval at inference."""

    name: str = "reaugkd"  # method name
    alpha: float = 0.5  # weight of the hard-label loss in the KD term; 1 - alpha goes to the KL term
    temperature: float = 2.0  # KD softmax temperature T (KL term scaled by T^2)
    rel_weight: float = 1.0  # weight of the relational loss L_rel
    align_weight: float = 0.0  # kdkit's, not the paper's: weight of mean(1 - cos(student query, own KB key))
    tau: float = 0.1  # temperature of the similarity softmaxes P_TT and P_ST
    k: int = 16  # KB neighbours per example in L_rel's candidate set (the batch is added)
    beta: float | Literal["auto"] = "auto"  # inference: weight of the retrieved soft labels; auto: chosen
    beta_confidence: float = CONFIDENCE  # auto: retrieval must beat beta 0 on this share of paired resamples
    retrieval_k: int = 16  # inference: neighbours retrieved per query
    retrieval_tau: float = 0.1  # inference: neighbour weights softmax(sim / retrieval_tau)
    pooling: Literal["cls", "mean"] = "cls"  # embedding of an example: first token, or masked mean
    label_temperature: float = 1.0  # temperature of the teacher soft labels stored in the KB
    kb: str | None = None  # a KB dir from `kdkit kb build`; null: build (or reuse) <output_dir>/kb
    index: Literal["flat", "ivf", "hnsw"] = "flat"  # FAISS index: exact inner product, IVF or HNSW
    index_nlist: int | None = None  # ivf: lists; null: 4 sqrt(N)
    index_nprobe: int = 16  # ivf: lists visited per query
    index_hnsw_m: int = 32  # hnsw: links per node
    index_ef_search: int = 64  # hnsw: candidates per query
    supcon_temperature: float = 0.07  # projection head: supervised contrastive temperature
    head_epochs: int = 5  # projection head: epochs over the cached teacher embeddings
    head_batch_size: int = 512  # projection head: batch size (bigger batches, more positives)
    head_lr: float = 1.0e-3  # projection head: Adam learning rate
    head_seed: int = 42  # projection head: init and batch order (not train.seed: one KB serves many students)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise KdkitError(f"config key 'method.alpha' must be in [0, 1], got {self.alpha}")
        if self.beta != "auto" and not 0.0 <= self.beta <= 1.0:
            raise KdkitError(f"config key 'method.beta' must be in [0, 1] or auto, got {self.beta}")
        if not 0.0 <= self.beta_confidence <= 1.0:
            raise KdkitError(
                f"config key 'method.beta_confidence' must be in [0, 1] (0 keeps the grid's best), got "
                f"{self.beta_confidence}"
            )
        for key in (
            "temperature",
            "tau",
            "retrieval_tau",
            "label_temperature",
            "supcon_temperature",
            "head_lr",
        ):
            if getattr(self, key) <= 0:
                raise KdkitError(f"config key 'method.{key}' must be > 0, got {getattr(self, key)}")
        for key in ("k", "retrieval_k", "head_epochs", "head_batch_size", "index_nprobe", "index_hnsw_m"):
            if getattr(self, key) < 1:
                raise KdkitError(f"config key 'method.{key}' must be >= 1, got {getattr(self, key)}")
        for key in ("rel_weight", "align_weight"):
            if getattr(self, key) < 0:
                raise KdkitError(f"config key 'method.{key}' must be >= 0, got {getattr(self, key)}")


def _choose(config: ReAugKDConfig, kb: KnowledgeBase, env: EvalEnv) -> dict[str, Any]:
    """``beta: auto``: settings chosen on the validation split (``kdkit.retrieval.choose``); without one,
    the paper's beta 0.5 and the configured k and tau, said so (a trained student is never lost to this)."""
    if env.held_out is None:
        note("method.beta: auto found no validation split to choose on; using beta 0.5 (the paper's)")
        return {
            "beta": 0.5,
            "k": config.retrieval_k,
            "tau": config.retrieval_tau,
            "chosen_on": None,
            "description": f"beta 0.5 (the paper's), k {config.retrieval_k}, tau {config.retrieval_tau:g}: "
            "not chosen, the run had no validation split",
        }
    logits, emb, labels, _ = student_pass(
        env.student, env.held_out, env.accelerator, config.pooling, "choose retrieval settings"
    )
    choice = choose_settings(logits, emb, labels, kb, env.task, env.select_metric, config.beta_confidence)
    note(f"retrieval settings: {choice.describe()}")
    return choice.as_dict()


def _diagnostics(kb: KnowledgeBase, env: EvalEnv, settings: RetrievalSettings) -> dict[str, Any]:
    """``kdkit.retrieval.diagnose`` on each held-out eval split (not ``train``: its examples are in the KB)
    at the inference settings, in accuracy: why retrieval helps or hurts, stored in metrics.json."""
    assert env.teacher is not None
    out = {}
    for split, loader in env.loaders.items():
        if split == "train":
            continue
        t_feats, t_logits = teacher_features(env.teacher, loader, env.accelerator, settings.pooling)
        s_logits, s_emb, labels, _ = student_pass(env.student, loader, env.accelerator, settings.pooling)
        out[split] = retrieval_diagnostics(
            kb, t_feats, t_logits, s_emb, s_logits, labels, settings.k, settings.tau, env.task, "accuracy"
        )
    return out


def candidates(idx: Tensor, neighbours: Tensor) -> tuple[Tensor, Tensor]:
    """Example i's candidate ids (its KB neighbours, then the batch) and which count: (B, k + B) each.

    The example itself is excluded; a neighbour that is also in the batch counts once (in the batch part).
    """
    b = idx.shape[0]
    nbrs = neighbours[idx]  # (B, k)
    ids = torch.cat([nbrs, idx.view(1, b).expand(b, b)], dim=1)  # (B, k + B)
    in_batch = (nbrs.unsqueeze(-1) == idx.view(1, 1, b)).any(-1)  # (B, k)
    not_self = ~torch.eye(b, dtype=torch.bool, device=idx.device)
    mask = torch.cat([(nbrs >= 0) & ~in_batch, not_self], dim=1)
    return ids.clamp(min=0), mask


class ReAugKD(Method):
    """ReAugKD: KD + relational loss over the teacher's KB, retrieval at inference (module docstring)."""

    name = "reaugkd"
    paper = (
        'Zhang et al., "ReAugKD: Retrieval-Augmented Knowledge Distillation For Pre-trained Language Models", '
        "ACL 2023"
    )
    Config = ReAugKDConfig
    tasks = frozenset({"classification"})
    # the knowledge base lives beside the student (a `kdkit kb build` may have put it there first)
    run_files = (KB_DIR,)
    several_teachers = False  # the knowledge base is built from the one teacher
    config: ReAugKDConfig

    @classmethod
    def check(cls, config: MethodConfig, task: str) -> None:
        if task == "causal_lm":
            raise KdkitError("method 'reaugkd' is for classifiers; for causal_lm use forward_kl, atkd etc.")
        if task == "regression":
            raise KdkitError(
                "method 'reaugkd' needs classes (supervised-contrastive positives, soft labels); "
                "for regression use kd or mixkd"
            )

    @classmethod
    def prepare(cls, config: MethodConfig, env: PrepareEnv) -> Resources:
        """Before training: the KB (given, reused or built in the run dir) and each entry's KB neighbours."""
        assert isinstance(config, ReAugKDConfig)
        dim = env.student.config.hidden_size
        settings = kb_settings(config, dim, env.config.teacher.max_length)
        kb = resolve_kb(
            config.kb,
            env.output_dir,
            env.teacher,
            env.teacher_name,
            env.train_set,
            env.collate,
            env.accelerator,
            settings,
            env.label_names,
            env.config.eval.batch_size,
        )
        return {"kb": kb, "neighbours": train_neighbours(kb, config.k)}

    @classmethod
    def extra_metrics(cls, config: MethodConfig, env: EvalEnv) -> dict[str, Any]:
        """``retrieval``: the eval splits again, predicted with retrieval from the KB (on ``train`` each
        example's own KB entry is excluded, so the split must be the one the KB was built from)."""
        assert isinstance(config, ReAugKDConfig)
        if env.resources is not None:
            kb = env.resources["kb"]
        elif (env.run_dir / KB_DIR / "meta.json").is_file():
            kb = KnowledgeBase.load(env.run_dir / KB_DIR)
        else:
            return {}
        if "train" in env.loaders:
            train = env.data.split("train")
            if (
                split_fingerprint(train.texts, train.text_pairs, train.labels)
                != kb.meta["provenance"]["data"]
            ):
                raise KdkitError(
                    "split 'train' differs from the data the knowledge base was built from, so each "
                    "example's own KB entry cannot be excluded; evaluate with the run's own config"
                )
        chosen = None
        if config.beta == "auto":
            chosen = chosen_settings(env.run_dir) if env.resources is None else None  # `kdkit eval`: stored
            chosen = chosen or _choose(config, kb, env)
        settings = RetrievalSettings.of_method(config, chosen)
        metrics = evaluate_with_retrieval(
            env.student, kb, env.loaders, env.accelerator, settings, env.task, env.metric_names
        )
        found: dict[str, Any] = {"retrieval": metrics}
        if chosen:
            found["inference_settings"] = chosen
        if env.teacher is not None:
            found["retrieval_diagnostics"] = _diagnostics(kb, env, settings)
        return found

    def save_files(self, out_dir: Path) -> None:
        """The KB beside the student (already there unless it was given as ``method.kb`` elsewhere)."""
        if not (out_dir / KB_DIR / "meta.json").is_file():
            self.kb.save(out_dir / KB_DIR)

    @classmethod
    def predictor(cls, config: MethodConfig, run_dir: Path, settings: Mapping[str, Any]) -> Predictor | None:
        """The student with retrieval from the run's KB, at the run's settings (``beta``, ``k``, ``tau``
        override them)."""
        assert isinstance(config, ReAugKDConfig)
        unknown = sorted(set(settings) - {"beta", "k", "tau"})
        if unknown:
            raise KdkitError(f"unknown inference setting(s) {unknown} for method 'reaugkd'; use beta, k, tau")
        return ReAugPredictor.from_pretrained(run_dir, **settings)

    @classmethod
    def describe_artifacts(cls, config: MethodConfig) -> list[str]:
        """A given KB (``method.kb``) must load (version, checksums); whether it matches is checked at run time."""
        assert isinstance(config, ReAugKDConfig)
        if not config.kb:
            return []
        found = KnowledgeBase.load(config.kb)
        return [
            f"knowledge base: {config.kb} ({len(found)} entries, dim {found.dim}, {found.meta['index']['kind']})"
        ]

    @classmethod
    def commands(cls) -> tuple[MethodCommand, ...]:
        return (KB_COMMAND,)

    def __init__(self, config: ReAugKDConfig, ctx: LossContext) -> None:
        super().__init__(config, ctx)
        if "kb" not in ctx.resources:
            raise KdkitError(
                "method 'reaugkd' needs its knowledge base: build the loss through kdkit.distill"
            )
        kb = ctx.resources["kb"]
        if kb.dim != ctx.student_config.hidden_size:
            raise KdkitError(
                f"knowledge base keys have {kb.dim} dims, the student's hidden size is "
                f"{ctx.student_config.hidden_size}; rebuild the KB for this student"
            )
        if kb.soft_labels.shape[1] != ctx.num_labels:
            raise KdkitError(
                f"knowledge base has {kb.soft_labels.shape[1]} classes, the task {ctx.num_labels}; rebuild it"
            )
        # Plain tensors, not buffers: no gradient, not checkpointed, not broadcast by DDP every step.
        self.kb = kb
        self.keys: Tensor = kb.keys.detach()  # (N, D)
        self.neighbours: Tensor = ctx.resources["neighbours"]  # (N, k)

    def student_forward(self, student: nn.Module, batch: Batch) -> Any:
        return student(**batch["student"], output_hidden_states=True)

    def teacher_forward(self, teacher: nn.Module, batch: Batch) -> Any:
        return teacher(**batch["teacher"])

    def forward(self, student_out: Any, teacher_out: Any, batch: Batch) -> LossOutput:
        c = self.config
        s, t = student_out.logits, teacher_out.logits.detach()
        labels = batch.get("labels")
        loss = kd_loss(s, t, labels, temperature=c.temperature, alpha=c.alpha)
        kd = kd_loss(s, t, None, temperature=c.temperature)
        device = s.device
        if self.keys.device != device:
            self.keys, self.neighbours = self.keys.to(device), self.neighbours.to(device)
        idx = batch["idx"].to(device)
        z_s = pooled_embedding(
            student_out.hidden_states[-1], batch["student"]["attention_mask"], c.pooling
        )  # (B, D)
        ids, mask = candidates(idx, self.neighbours)
        rel = relational_kl(z_s, self.keys[idx], self.keys[ids], mask, c.tau)
        extra = c.rel_weight * rel
        parts = {"kd": kd.detach(), "rel": rel.detach()}
        if c.align_weight:
            align = query_alignment(z_s, self.keys[idx])
            extra = extra + c.align_weight * align
            parts["align"] = align.detach()
        loss, distill = loss + extra, kd + extra
        parts |= {"distill": distill.detach(), "loss": loss.detach()}
        return LossOutput(loss, parts)
