from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kdkit.assets import asset_path
from kdkit.data import Collator, DistillDataset, Encoded, Split, encode, same_tokenizer
from kdkit.errors import KdkitError


def _load_tokenizer(**kw: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    try:
        path = asset_path("minilm-l6")
    except KdkitError as err:
        pytest.skip(f"MiniLM-L6 asset not installed: {err}")
    return transformers.AutoTokenizer.from_pretrained(path, **kw)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return _load_tokenizer()


SINGLE = Split(["a short one", "a much longer sentence " * 10, "hi"], None, np.array([0, 1, 0]))
PAIRS = Split(
    ["the cat sat", "dogs bark"], ["a cat was sitting", "loud " * 40], np.array([0.5, 2.0], np.float32)
)


def test_single_texts(tokenizer: Any) -> None:
    enc = encode(SINGLE, tokenizer, max_length=16)
    assert len(enc) == 3 and enc.num_truncated == 1
    assert enc.input_ids[0] == tokenizer("a short one")["input_ids"]
    assert len(enc.input_ids[1]) == 16 and enc.input_ids[1][-1] == tokenizer.sep_token_id
    assert enc.token_type_ids is not None and all(set(t) == {0} for t in enc.token_type_ids)


def test_pairs_have_segment_ids_and_match_the_tokenizer(tokenizer: Any) -> None:
    enc = encode(PAIRS, tokenizer, max_length=24)
    reference = tokenizer(PAIRS.texts, PAIRS.text_pairs, truncation=True, max_length=24)
    assert enc.input_ids == reference["input_ids"]  # truncated examples too (longest_first)
    assert enc.token_type_ids == reference["token_type_ids"]
    assert 1 in enc.token_type_ids[0] and enc.token_type_ids[0][0] == 0
    assert enc.num_truncated == 1


def test_collator_pads_right_with_masks(tokenizer: Any) -> None:
    enc = encode(SINGLE, tokenizer, max_length=16)
    dataset = DistillDataset(SINGLE, enc, None)
    batch = Collator(tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    lengths = [len(ids) for ids in enc.input_ids]
    ids, mask = batch["student"]["input_ids"], batch["student"]["attention_mask"]
    assert ids.shape == mask.shape == batch["student"]["token_type_ids"].shape == (3, max(lengths))
    assert mask.sum(dim=1).tolist() == lengths
    for b, n in enumerate(lengths):
        assert ids[b, :n].tolist() == enc.input_ids[b]
        assert (ids[b, n:] == tokenizer.pad_token_id).all() and (mask[b, n:] == 0).all()
    assert batch["idx"].tolist() == [0, 1, 2]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 0]
    assert "teacher" not in batch


def test_shared_tokenizer_reuses_student_tensors(tokenizer: Any) -> None:
    enc = encode(PAIRS, tokenizer, max_length=32)
    dataset = DistillDataset(PAIRS, enc, enc)
    item = dataset[0]
    assert item["teacher"] is item["student"]
    batch = Collator(tokenizer.pad_token_id, None, regression=True)([dataset[0], dataset[1]])
    assert batch["teacher"] is batch["student"]
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [0.5, 2.0]


def test_teacher_with_its_own_encoding_gets_its_own_tensors(tokenizer: Any) -> None:
    student = encode(SINGLE, tokenizer, max_length=8)
    teacher = encode(SINGLE, tokenizer, max_length=32)
    loader = DataLoader(DistillDataset(SINGLE, student, teacher), batch_size=3, collate_fn=Collator(0, 7))
    batch = next(iter(loader))
    assert batch["student"]["input_ids"].shape[1] == 8
    assert batch["teacher"]["input_ids"].shape[1] == max(len(ids) for ids in teacher.input_ids) > 8
    assert batch["teacher"]["attention_mask"].sum(1).tolist() == [len(ids) for ids in teacher.input_ids]
    assert batch["teacher"]["input_ids"][0, -1].item() == 7  # the teacher's pad id
    with pytest.raises(KdkitError, match="teacher_pad_id"):
        Collator(0, None)([DistillDataset(SINGLE, student, teacher)[0]])


def test_encoding_without_token_type_ids() -> None:
    enc = Encoded([[5, 6, 7], [5]], None, 0)
    batch = Collator(0)(list(DistillDataset(Split(["a", "b"], None, np.array([1, 0])), enc)))
    assert set(batch["student"]) == {"input_ids", "attention_mask"}
    assert batch["student"]["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]


def test_dataset_checks_lengths() -> None:
    with pytest.raises(KdkitError, match="student encodings have 1 examples, the split has 2"):
        DistillDataset(Split(["a", "b"], None, np.array([1, 0])), Encoded([[1]], None, 0))


def test_same_tokenizer(tokenizer: Any) -> None:
    assert same_tokenizer(tokenizer, tokenizer)
    assert same_tokenizer(tokenizer, _load_tokenizer(model_max_length=64))
    cased = _load_tokenizer(do_lower_case=False)
    assert cased("Hello")["input_ids"] != tokenizer("Hello")["input_ids"]
    assert not same_tokenizer(tokenizer, cased)
