"""Building ReAugKD's knowledge base (Zhang et al., ACL 2023, Section 3).

1. One pass of the frozen teacher over the training set: its pooled embedding (CLS by default) and logits.
2. A linear projection head (no bias) from the teacher's width to the student's, trained with the supervised
   contrastive loss (Khosla et al. 2020, L_out; same label = positive) on those cached embeddings while the
   teacher stays frozen; its settings (epochs, batch, lr, temperature 0.07) are ours, the paper gives none.
3. Keys = L2-normalised projected embeddings; soft labels = softmax(teacher logits / label_temperature).

With several processes the teacher pass is split across them (``gather_for_metrics``) and every process
trains the same head from the same seed; only the main process writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdkit.losses.relational import supcon_loss
from kdkit.models.pooling import Pooling, pooled_embedding
from kdkit.retrieval.index import IndexSpec
from kdkit.retrieval.kb import KnowledgeBase


@dataclass
class KBSettings:
    """Everything that changes a KB's contents besides the teacher and the data (stored as provenance)."""

    dim: int  # student hidden size: the projection's output width
    pooling: Pooling = "cls"
    label_temperature: float = 1.0
    teacher_max_length: int = 128
    supcon_temperature: float = 0.07
    head_epochs: int = 5
    head_batch_size: int = 512
    head_lr: float = 1e-3
    seed: int = 42
    index: IndexSpec = field(default_factory=IndexSpec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def teacher_features(
    teacher: nn.Module, loader: DataLoader, accelerator: Accelerator, pooling: Pooling
) -> tuple[Tensor, Tensor]:
    """(pooled embeddings (N, D_t), logits (N, C)) of the teacher over ``loader`` (prepared), in data order."""
    teacher.eval()
    feats, logits = [], []
    for batch in tqdm(loader, desc="teacher embeddings", disable=not accelerator.is_local_main_process):
        inputs = batch["teacher"]
        with accelerator.autocast():
            out = teacher(**inputs, output_hidden_states=True)
        pooled = pooled_embedding(out.hidden_states[-1], inputs["attention_mask"], pooling)
        f, lg = accelerator.gather_for_metrics((pooled.float(), out.logits.float()))
        feats.append(f.cpu())
        logits.append(lg.cpu())
    return torch.cat(feats), torch.cat(logits)


def train_projection(features: Tensor, labels: Tensor, settings: KBSettings, show: bool = True) -> Tensor:
    """The projection head's weight (dim, D_t), trained with supcon on fixed teacher embeddings."""
    g = torch.Generator().manual_seed(settings.seed)
    head = nn.Linear(features.shape[1], settings.dim, bias=False)
    with torch.no_grad():  # nn.Linear's default init, from our generator
        bound = 1.0 / features.shape[1] ** 0.5
        head.weight.copy_(torch.rand(head.weight.shape, generator=g) * 2 * bound - bound)
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.head_lr)
    n, bs = features.shape[0], settings.head_batch_size
    steps = settings.head_epochs * max(1, -(-n // bs))
    bar = tqdm(total=steps, desc="projection head (supcon)", disable=not show)
    for _ in range(settings.head_epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, bs):
            idx = order[start : start + bs]
            if len(idx) < 2:
                continue
            loss = supcon_loss(head(features[idx]), labels[idx], settings.supcon_temperature)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(supcon=f"{loss.item():.4f}")
    bar.close()
    return head.weight.detach().clone()


def build_kb(
    teacher: nn.Module,
    loader: DataLoader,
    labels: Tensor,
    accelerator: Accelerator,
    settings: KBSettings,
    provenance: dict[str, Any],
    label_names: list[str] | None,
) -> KnowledgeBase:
    """The KB of the training examples in ``loader`` (their teacher side), with ``labels`` (N,) class ids."""
    feats, logits = teacher_features(teacher, loader, accelerator, settings.pooling)
    weight = train_projection(feats, labels, settings, show=accelerator.is_local_main_process)
    keys = F.normalize(feats @ weight.T, dim=-1)
    soft = torch.softmax(logits / settings.label_temperature, dim=-1)
    meta = {
        "provenance": provenance,
        "teacher_dim": feats.shape[1],
        "label_names": label_names,
        "index": asdict(settings.index),
        "teacher_pass_processes": accelerator.num_processes,  # the pass over train was split this many ways
    }
    return KnowledgeBase(keys.contiguous(), soft.contiguous(), weight, meta)


def train_neighbours(kb: KnowledgeBase, k: int, batch_size: int = 4096) -> Tensor:
    """(N, k) ids of each KB entry's top-k other entries: the KB candidates of the relational loss."""
    out = []
    for start in tqdm(range(0, len(kb), batch_size), desc="KB neighbours", leave=False):
        own = torch.arange(start, min(start + batch_size, len(kb)))
        out.append(kb.search(kb.keys[own], k, exclude=own)[1])
    return torch.cat(out)
