"""The knowledge base a ReAugKD run uses: given (``method.kb``), already in the run dir, or built now.

Every run's KB ends up in ``<output_dir>/kb`` beside the student, so the run dir alone serves retrieval
(``kdkit predict``, ``kdkit eval``, ``ReAugPredictor.from_pretrained``). A KB is reused only when its
provenance (teacher and data fingerprints, settings) matches this run's; a stale one is refused.

Interrupted builds: the KB dir appears complete or not at all (written to a temp dir, then renamed). While
it is built, the teacher pass is saved in checksummed chunks under ``<kb>/.partial/``, so a build killed at
any point (`kdkit kb build`, or a ReAugKD `distill` building its KB) resumes the pass when rerun, and ends
with the same KB as an uninterrupted build; the temp dirs of a killed write are removed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from kdkit.config import MethodConfig, resolve_method
from kdkit.errors import KdkitError, note
from kdkit.fingerprint import model_fingerprint, split_fingerprint
from kdkit.io import remove_leftovers
from kdkit.retrieval.build import KBSettings, build_kb
from kdkit.retrieval.index import IndexSpec
from kdkit.retrieval.kb import KnowledgeBase

KB_DIR = "kb"
PARTIAL = ".partial"  # inside the KB dir being built: the saved chunks of the teacher pass


def kb_settings(method: MethodConfig, dim: int, teacher_max_length: int) -> KBSettings:
    """The KB settings of a ``reaugkd`` method config (its defaults for any other method), for a student of
    width ``dim``."""
    m: Any = method if method.name == "reaugkd" else resolve_method("reaugkd")
    index = IndexSpec(m.index, m.index_nlist, m.index_nprobe, m.index_hnsw_m, m.index_ef_search)
    return KBSettings(
        dim=dim,
        pooling=m.pooling,
        label_temperature=m.label_temperature,
        teacher_max_length=teacher_max_length,
        supcon_temperature=m.supcon_temperature,
        head_epochs=m.head_epochs,
        head_batch_size=m.head_batch_size,
        head_lr=m.head_lr,
        seed=m.head_seed,
        index=index,
    )


def provenance(teacher_name: str, train_split: Any, settings: KBSettings) -> dict[str, Any]:
    return {
        "teacher": model_fingerprint(teacher_name),
        "data": split_fingerprint(train_split.texts, train_split.text_pairs, train_split.labels),
        "settings": settings.to_dict(),
    }


def resolve_kb(
    given: str | None,
    output_dir: Path,
    teacher: nn.Module | None,
    teacher_name: str,
    train_set: Any,
    collate: Any,
    accelerator: Accelerator,
    settings: KBSettings,
    label_names: list[str] | None,
    batch_size: int = 64,
) -> KnowledgeBase:
    """Load ``given`` (copied into the run dir) or ``<output_dir>/kb`` if it matches, else build it there."""
    target = output_dir / KB_DIR
    prov = provenance(teacher_name, train_set.split, settings)
    source = Path(given) if given else target
    if (source / "meta.json").is_file():
        kb = KnowledgeBase.load(source)
        kb.check_matches(prov, source)
        if source.resolve() != target.resolve() and accelerator.is_main_process:
            kb.save(target)
        note(f"using the knowledge base {source} ({len(kb)} entries)")
        accelerator.wait_for_everyone()
        return kb
    if given:
        raise KdkitError(
            f"method.kb: no knowledge base at {given} (meta.json missing); build it with `kdkit kb build`"
        )
    if teacher is None:  # training from a teacher cache: the teacher is not loaded
        raise KdkitError(
            "ReAugKD with cache.dir needs a built knowledge base: run `kdkit kb build --config FILE` and set "
            "method.kb to it"
        )
    return build_and_save(
        teacher, train_set, collate, accelerator, settings, prov, label_names, target, batch_size
    )


def build_and_save(
    teacher: nn.Module,
    train_set: Any,
    collate: Any,
    accelerator: Accelerator,
    settings: KBSettings,
    prov: dict[str, Any],
    label_names: list[str] | None,
    target: Path,
    batch_size: int,
) -> KnowledgeBase:
    """Build the KB of ``train_set`` (a DistillDataset with a teacher side) and write it to ``target``
    (main process; the teacher pass is split across processes). The pass is saved as it goes in
    ``target/.partial`` and resumed from there; writing the KB replaces the whole dir, chunks included."""
    if accelerator.is_main_process:  # what a killed KB write left beside the target
        remove_leftovers(target.parent, [target.name])
    teacher.to(accelerator.device)
    loader = accelerator.prepare_data_loader(
        torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=False, collate_fn=collate)
    )
    labels = torch.as_tensor(train_set.split.labels)
    kb = build_kb(teacher, loader, labels, accelerator, settings, prov, label_names, target / PARTIAL)
    if accelerator.is_main_process:
        kb.save(target)
        note(f"knowledge base: {len(kb)} entries written to {target}")
    accelerator.wait_for_everyone()
    return kb
