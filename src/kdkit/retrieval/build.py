"""Building ReAugKD's knowledge base (Zhang et al., ACL 2023, Section 3).

1. One pass of the frozen teacher over the training set: its pooled embedding (CLS by default) and logits.
2. A linear projection head (no bias) from the teacher's width to the student's, trained with the supervised
   contrastive loss (Khosla et al. 2020, L_out; same label = positive) on those cached embeddings while the
   teacher stays frozen; its settings (epochs, batch, lr, temperature 0.07) are ours, the paper gives none.
3. Keys = L2-normalised projected embeddings; soft labels = softmax(teacher logits / label_temperature).

With several processes the teacher pass is split across them (``gather_for_metrics``) and every process
trains the same head from the same seed; only the main process writes.

The teacher pass, the expensive step, is resumable: with a ``partial`` dir its outputs are written in
chunks of batches (``shard-NNNNN.safetensors`` with a sha256 sidecar each, atomically, by
``kdkit.shards.write_shard``) beside ``building.json`` (what the pass depends on). A build killed at
any point and rerun with the same settings skips the chunks with a valid checksum; the KB it ends with is
identical to an uninterrupted build's. Chunks of another build (other teacher, data, settings, batch size
or process count) are discarded.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from kdkit.errors import note
from kdkit.io import atomic_write_json
from kdkit.losses.relational import supcon_loss
from kdkit.models.pooling import Pooling, pooled_embedding
from kdkit.retrieval.index import IndexSpec
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.shards import remove_shard_leftovers, shard_done, shard_path, write_shard

_CHUNKS = 32  # the teacher pass is saved in about this many chunks (a kill loses at most one)
BUILDING = "building.json"


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


def _done_chunks(partial: Path, spec: dict[str, Any], accelerator: Accelerator) -> int:
    """How many leading chunks of the teacher pass ``partial`` already holds (0 for a fresh build)."""
    if accelerator.is_main_process:
        building = partial / BUILDING
        try:
            same = json.loads(building.read_text()) == spec
        except (OSError, ValueError):
            same = False
        if not same:  # nothing there, or chunks of another build: start over
            shutil.rmtree(partial, ignore_errors=True)
            atomic_write_json(building, spec)
        remove_shard_leftovers(partial, [BUILDING])
    accelerator.wait_for_everyone()
    done = 0
    while done < spec["chunks"] and shard_done(partial, done):
        done += 1
    return done


@torch.no_grad()
def teacher_features(
    teacher: nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    pooling: Pooling,
    partial: Path | None = None,
    provenance: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """(pooled embeddings (N, D_t), logits (N, C)) of the teacher over ``loader`` (prepared), in data order.

    With ``partial``, each chunk of batches is saved there as it completes and the chunks a previous
    (interrupted) pass saved with the same ``provenance`` are read back instead of recomputed.
    """
    teacher.eval()
    n = len(loader)
    per_chunk = max(1, math.ceil(n / _CHUNKS))
    spec = {
        "provenance": provenance,
        "batches": n,
        "batches_per_chunk": per_chunk,
        "chunks": math.ceil(n / per_chunk),
        "processes": accelerator.num_processes,
    }
    spec = json.loads(json.dumps(spec))  # as building.json reads back (tuples -> lists)
    done = _done_chunks(partial, spec, accelerator) if partial is not None else 0
    feats, logits = [], []
    for i in range(done):  # done > 0 only with a partial dir
        chunk = load_file(shard_path(partial, i))  # type: ignore[arg-type]
        feats.append(chunk["features"])
        logits.append(chunk["logits"])
    if done:
        note(f"teacher embeddings: resuming after {done} of {spec['chunks']} saved chunks")
    pending: tuple[list[Tensor], list[Tensor]] = ([], [])
    show = accelerator.is_local_main_process
    bar = tqdm(total=n, initial=done * per_chunk, desc="teacher embeddings", disable=not show)
    for b, batch in enumerate(loader):  # the loader is walked whole: skipping it would break the gather
        if b < done * per_chunk:
            continue
        inputs = batch["teacher"]
        with accelerator.autocast():
            out = teacher(**inputs, output_hidden_states=True)
        pooled = pooled_embedding(out.hidden_states[-1], inputs["attention_mask"], pooling)
        f, lg = accelerator.gather_for_metrics((pooled.float(), out.logits.float()))
        pending[0].append(f.cpu())
        pending[1].append(lg.cpu())
        bar.update(1)
        if (b + 1) % per_chunk == 0 or b + 1 == n:
            chunk_f, chunk_l = torch.cat(pending[0]), torch.cat(pending[1])
            if partial is not None and accelerator.is_main_process:
                write_shard(partial, b // per_chunk, {"features": chunk_f, "logits": chunk_l})
            feats.append(chunk_f)
            logits.append(chunk_l)
            pending = ([], [])
    bar.close()
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
    partial: Path | None = None,
) -> KnowledgeBase:
    """The KB of the training examples in ``loader`` (their teacher side), with ``labels`` (N,) class ids;
    ``partial``: where the teacher pass is saved as it goes (a rerun resumes it)."""
    feats, logits = teacher_features(teacher, loader, accelerator, settings.pooling, partial, provenance)
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
