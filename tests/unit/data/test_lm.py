from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import CHAT_TEMPLATE, SHARED_DATA, qa_rows, tiny_lm_tokenizer
from torch.utils.data import DataLoader

from kdkit.config import DataConfig, SplitConfig
from kdkit.data.lm import (
    IGNORE,
    LMCollator,
    LMData,
    LMDataset,
    LMSplit,
    encode_lm,
    encode_prompts,
    fit_lengths,
    format_prompt,
    join_response,
    left_pad,
    load_lm_data,
    load_lm_file,
    with_responses,
)
from kdkit.errors import KdkitError

BOS, EOS, PAD = 1, 2, 0


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm_tokenizer(tmp_path_factory.mktemp("lm_tok")))


def jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def split_of(rows: list[dict[str, str]]) -> LMSplit:
    return LMSplit([r["prompt"] for r in rows], [r["output"] for r in rows], [[r["output"]] for r in rows])


def words(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --- encoding -----------------------------------------------------------------------------------------


def test_prompt_is_masked_response_and_eos_trained(tok: Any) -> None:
    rows = qa_rows(5)
    enc = encode_lm(split_of(rows), tok, max_length=64)
    assert len(enc) == 5 and enc.num_truncated == 0
    for i, row in enumerate(rows):
        prompt, response = [BOS, *words(tok, row["prompt"])], words(tok, row["output"])
        assert enc.input_ids[i] == prompt + response + [EOS]
        assert enc.labels[i] == [IGNORE] * len(prompt) + response + [EOS]
        assert enc.prompt_lengths[i] == len(prompt) and enc.prompt_ids(i) == prompt


def test_train_on_prompt_labels_every_token_and_cuts_the_same(tok: Any) -> None:
    rows = qa_rows(5)
    masked = encode_lm(split_of(rows), tok, max_length=64)
    enc = encode_lm(split_of(rows), tok, max_length=64, train_on_prompt=True)
    assert enc.input_ids == masked.input_ids and enc.prompt_lengths == masked.prompt_lengths
    assert all(labels == ids for labels, ids in zip(enc.labels, enc.input_ids, strict=True))
    long = LMSplit(["what is one ?"], ["two " * 20], [["x"]])  # cut: same tokens, prompt labelled
    cut, plain = (encode_lm(long, tok, 12, train_on_prompt=t) for t in (True, False))
    assert cut.input_ids == plain.input_ids and cut.labels[0] == cut.input_ids[0]
    assert cut.num_truncated == plain.num_truncated == 1


def test_response_is_cut_from_its_end_and_counted(tok: Any) -> None:
    split = LMSplit(["what is one ?", "one"], ["two " * 20, "two"], [["x"], ["y"]])
    enc = encode_lm(split, tok, max_length=12)
    assert enc.num_truncated == 1
    prompt = [BOS, *words(tok, "what is one ?")]  # 5 tokens: the response gets the other 7
    assert enc.input_ids[0] == prompt + words(tok, "two") * 7  # EOS dropped: the text goes on
    assert enc.labels[0] == [IGNORE] * 5 + words(tok, "two") * 7
    assert enc.input_ids[1][-1] == EOS


def test_long_prompt_is_cut_from_the_left_keeping_bos(tok: Any) -> None:
    prompt = " ".join(["one", "two", "three", "four", "five"] * 4)  # 20 words
    enc = encode_lm(LMSplit([prompt], ["good " * 10], [["x"]]), tok, max_length=16)
    ids = words(tok, prompt)
    # the response keeps max_length // 4 = 4 tokens; the prompt the other 12: BOS + its last 11 words
    assert enc.input_ids[0] == [BOS, *ids[-11:], *words(tok, "good") * 4]
    assert enc.labels[0][:12] == [IGNORE] * 12 and enc.num_truncated == 1
    # a response shorter than max_length // 4 is kept whole, with its EOS
    enc = encode_lm(LMSplit([prompt], ["good"], [["x"]]), tok, max_length=16)
    assert enc.input_ids[0] == [BOS, *ids[-13:], words(tok, "good")[0], EOS]


@pytest.mark.parametrize("max_length", [2, 3, 5, 8, 13])
def test_fit_lengths_rule(max_length: int) -> None:
    for p in range(0, 15):
        for r in range(1, 15):
            prompt, response = list(range(100, 100 + p)), list(range(r))
            new_p, new_r, cut = fit_lengths(prompt, response, max_length, head=1)
            assert cut == (p + r > max_length)
            if not cut:
                assert (new_p, new_r) == (prompt, response)
                continue
            assert len(new_p) + len(new_r) == max_length
            assert new_r == response[: len(new_r)]  # a prefix of the response
            assert len(new_r) >= min(r, max(1, max_length // 4))  # the response keeps its floor
            if len(new_p) < p:  # the prompt is cut only when the response would get less than its floor
                assert max_length - p < min(r, max(1, max_length // 4))
                assert new_p[1:] == prompt[len(prompt) - len(new_p) + 1 :] and new_p[:1] == prompt[:1]


def test_chat_template_wraps_the_prompt_as_a_user_turn(tok: Any) -> None:
    text = format_prompt("what is one ?", tok, chat_template=True)
    assert text == "<|im_start|> user what is one ? <|im_end|> <|im_start|> assistant "
    assert format_prompt("what is one ?", tok, chat_template=False) == "what is one ?"
    enc = encode_lm(LMSplit(["what is one ?"], ["one"], [["one"]]), tok, 32, chat_template=True)
    start, assistant = tok.convert_tokens_to_ids(["<|im_start|>", "assistant"])
    assert enc.input_ids[0][:2] == [BOS, start] and enc.input_ids[0][-3:] == [
        assistant,
        *words(tok, "one"),
        EOS,
    ]
    assert enc.labels[0].count(IGNORE) == len(enc.input_ids[0]) - 2


def test_no_double_bos_when_the_chat_template_writes_it(tok: Any) -> None:
    bos_tok = copy.deepcopy(tok)
    bos_tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    assert format_prompt("one", bos_tok, True).startswith("<s>")
    enc = encode_lm(LMSplit(["one"], ["two"], [["two"]]), bos_tok, 32, chat_template=True)
    assert enc.input_ids[0][0] == BOS and enc.input_ids[0][1] != BOS
    assert encode_prompts(["one"], bos_tok, 32, chat_template=True) == [enc.prompt_ids(0)]


def test_chat_template_missing_is_an_error(tok: Any) -> None:
    plain_tok = copy.deepcopy(tok)
    plain_tok.chat_template = None
    with pytest.raises(KdkitError, match=r"has no chat template; set data.chat_template: false"):
        format_prompt("one", plain_tok, chat_template=True)


def test_trailing_special_tokens_of_the_tokenizer_are_dropped(tok: Any) -> None:
    from tokenizers import processors

    eos_tok = copy.deepcopy(tok)
    eos_tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)]
    )
    assert eos_tok("one")["input_ids"] == [BOS, *words(tok, "one"), EOS]
    enc = encode_lm(LMSplit(["one"], ["two"], [["two"]]), eos_tok, 32)
    assert enc.input_ids[0] == [BOS, *words(tok, "one"), *words(tok, "two"), EOS]


def test_tokenizer_without_eos_is_an_error(tok: Any) -> None:
    no_eos = copy.deepcopy(tok)
    no_eos.eos_token = None
    with pytest.raises(KdkitError, match=r"has no EOS token"):
        encode_lm(LMSplit(["one"], ["two"], [["two"]]), no_eos, 32)


def test_plain_text_trains_every_token(tok: Any) -> None:
    split = LMSplit(["", ""], ["good movie", "bad " * 30], [["good movie"], ["bad"]], plain=True)
    enc = encode_lm(split, tok, max_length=8)
    assert enc.input_ids[0] == [BOS, *words(tok, "good movie"), EOS]
    assert enc.labels == enc.input_ids and enc.prompt_lengths == [0, 0]
    assert enc.input_ids[1] == [BOS, *words(tok, "bad") * 7] and enc.num_truncated == 1
    with pytest.raises(KdkitError, match=r"chat_template needs prompts"):
        encode_lm(split, tok, 8, chat_template=True)


def test_encode_prompts_matches_training_prompts_and_cuts_left(tok: Any) -> None:
    rows = qa_rows(4)
    enc = encode_lm(split_of(rows), tok, 64)
    prompts = [r["prompt"] for r in rows]
    assert encode_prompts(prompts, tok, 64) == [enc.prompt_ids(i) for i in range(4)]
    short = encode_prompts(prompts, tok, 4)
    assert all(ids == [BOS, *words(tok, p)[-3:]] for ids, p in zip(short, prompts, strict=True))


def test_many_rows_are_batched_in_chunks(tok: Any) -> None:
    rows = qa_rows(2100)  # > 2 tokenizer chunks
    enc = encode_lm(split_of(rows), tok, 64)
    assert len(enc) == 2100 and enc.input_ids[2099][-1] == EOS
    assert enc.input_ids[2099] == encode_lm(split_of(rows[2099:]), tok, 64).input_ids[0]


# --- generated responses ------------------------------------------------------------------------------


def test_join_response_strips_after_eos_and_keeps_it() -> None:
    ids, labels = join_response([BOS, 10, 11], [20, 21, EOS, PAD, PAD], EOS, 32)
    assert ids == [BOS, 10, 11, 20, 21, EOS]
    assert labels == [IGNORE] * 3 + [20, 21, EOS]
    ids, labels = join_response([BOS, 10], torch.tensor([20, 21, 22]), EOS, 32)  # unfinished: no EOS added
    assert ids == [BOS, 10, 20, 21, 22] and labels == [IGNORE, IGNORE, 20, 21, 22]
    ids, labels = join_response([BOS, 10], [EOS, 20], EOS, 32)  # empty but complete response
    assert ids == [BOS, 10, EOS] and labels == [IGNORE, IGNORE, EOS]


def test_join_response_truncates_like_encode_lm() -> None:
    prompt = [BOS, *range(10, 20)]  # 11 tokens
    ids, labels = join_response(prompt, [*range(30, 40), EOS], EOS, max_length=8, bos_id=BOS)
    assert ids == [BOS, 15, 16, 17, 18, 19, 30, 31]  # response floor 8 // 4 = 2, BOS kept
    assert labels == [IGNORE] * 6 + [30, 31]
    ids, _ = join_response(prompt, [30, 31], EOS, max_length=8)  # no bos_id: a plain left cut
    assert ids == [14, 15, 16, 17, 18, 19, 30, 31]


def test_with_responses_keeps_prompts_and_references() -> None:
    split = LMSplit(["p1", "p2"], ["r1", "r2"], [["r1", "r1b"], ["r2"]])
    new = with_responses(split, ["g1", "g2"])
    assert new.prompts == split.prompts and new.responses == ["g1", "g2"]
    assert new.references == split.references and split.responses == ["r1", "r2"]
    with pytest.raises(KdkitError, match=r"got 1 responses for a split of 2 prompts"):
        with_responses(split, ["g1"])


# --- batching -----------------------------------------------------------------------------------------


def test_collator_pads_right_and_masks_labels(tok: Any) -> None:
    enc = encode_lm(split_of(qa_rows(5)), tok, 64)
    enc.input_ids[1] = enc.input_ids[1][:5]  # uneven lengths
    enc.labels[1] = enc.labels[1][:5]
    loader = DataLoader(LMDataset(enc), batch_size=5, collate_fn=LMCollator(PAD))
    batch = next(iter(loader))
    lengths = [len(ids) for ids in enc.input_ids]
    ids, mask, labels = batch["student"]["input_ids"], batch["student"]["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape == (5, max(lengths))
    assert batch["teacher"] is batch["student"] and batch["idx"].tolist() == [0, 1, 2, 3, 4]
    assert mask.sum(dim=1).tolist() == lengths
    for b, n in enumerate(lengths):
        assert ids[b, :n].tolist() == enc.input_ids[b] and (ids[b, n:] == PAD).all()
        assert labels[b, :n].tolist() == enc.labels[b] and (labels[b, n:] == IGNORE).all()
    assert batch["prompt_ids"] == [enc.prompt_ids(i) for i in range(5)]


def test_collator_takes_regenerated_examples() -> None:
    ids, labels = join_response([BOS, 10], [20, EOS, PAD], EOS, 32)
    batch = LMCollator(PAD)(
        [
            {"input_ids": ids, "labels": labels, "prompt_ids": [BOS, 10]},
            {"input_ids": [BOS], "labels": [IGNORE], "prompt_ids": [BOS]},
        ]
    )
    assert "idx" not in batch and batch["prompt_ids"] == [[BOS, 10], [BOS]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 20, EOS], [IGNORE] * 4]
    assert batch["student"]["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    with pytest.raises(KdkitError, match=r"example 0 of the batch has 2 input_ids but 1 labels"):
        LMCollator(PAD)([{"input_ids": [1, 2], "labels": [1], "prompt_ids": []}])


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], PAD)
    assert ids.tolist() == [[5, 6, 7], [PAD, PAD, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(KdkitError, match="empty"):
        left_pad([], PAD)


# --- reading ------------------------------------------------------------------------------------------


def test_load_splits_drops_empty_responses_and_subsamples(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"prompt": f"p{i}", "output": f"r{i}"} for i in range(40)]
    rows[3]["output"] = "  "
    del rows[7]["output"]
    data = load_lm_data(
        DataConfig(
            train=jsonl(tmp_path / "t.jsonl", rows), split=SplitConfig(validation=0.25), max_eval_samples=4
        )
    )
    assert isinstance(data, LMData) and data.available() == ["train", "validation"]
    assert data.stats["train"]["dropped_empty_response"] == 2 and data.stats["train"]["held_out"] == 10
    assert len(data.train) == 28 and len(data.validation or []) == 4
    assert data.stats["validation"]["sampled_from"] == 10
    kept = set(data.train.prompts) | set(data.split("validation").prompts)
    assert "p3" not in kept and "p7" not in kept
    assert all(r == f"r{p[1:]}" for p, r in zip(data.train.prompts, data.train.responses, strict=True))
    with pytest.raises(KdkitError, match=r"there is no test split"):
        data.split("test")
    with pytest.raises(KdkitError, match=r"every row has an empty response in field 'output'"):
        load_lm_data(DataConfig(train=jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "output": ""}])))


def test_prompt_template_on_gsm8k_rows(tmp_path: Path) -> None:
    rows = [{"question": "1 + 1 ?", "answer": "2\n#### 2"}, {"question": "{answer}", "answer": "x"}]
    template = "Question: {question}\nAnswer {0} {question.__class__}: "
    split = load_lm_file(
        jsonl(tmp_path / "g.jsonl", rows), DataConfig(prompt_template=template, response="answer")
    )
    # only {name} is filled, once: braces in the template or in the values stay text
    assert split.prompts == [
        "Question: 1 + 1 ?\nAnswer {0} {question.__class__}: ",
        "Question: {answer}\nAnswer {0} {question.__class__}: ",
    ]
    assert split.responses == ["2\n#### 2", "x"]


def test_unknown_fields_list_what_exists(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(KdkitError) as err:
        load_lm_file(path, DataConfig(prompt_template="Q: {questoin}", response="answer"))
    assert "uses field 'questoin'" in str(err.value) and "did you mean 'question'" in str(err.value)
    assert "its fields: question, answer" in str(err.value)
    with pytest.raises(KdkitError, match=r"no field 'prompt' \(data.prompt\); its fields: question, answer"):
        load_lm_file(path, DataConfig(response="answer"))
    with pytest.raises(KdkitError, match=r"no field 'output' \(data.response\)"):
        load_lm_data(DataConfig(train=path))


def test_list_responses_are_references(tmp_path: Path) -> None:
    rows = [
        {"prompt": "p0", "output": ["first", "second"]},
        {"prompt": "p1", "output": []},
        {"prompt": "p2", "output": "only"},
    ]
    jsonl(tmp_path / "lm.jsonl", rows)
    split = load_lm_file("lm.jsonl", DataConfig(root=str(tmp_path)))  # relative: under data.root
    assert split.prompts == ["p0", "p2"]
    assert split.responses == ["first", "only"] and split.references == [["first", "second"], ["only"]]


def test_plain_text_reads_the_text_field(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "t.jsonl", [{"text": "good"}, {"text": ""}, {"text": "bad"}])
    split = load_lm_file(path, DataConfig(response=None))
    assert split.plain and split.prompts == ["", ""] and split.responses == ["good", "bad"]
    with pytest.raises(KdkitError, match="plain-text data has no prompts"):
        with_responses(split, ["x", "y"])


@pytest.mark.skipif(not (SHARED_DATA / "dolly").is_dir(), reason="shared data (dolly) not present")
def test_dolly_file(tok: Any) -> None:
    data = load_lm_data(DataConfig(train=str(SHARED_DATA / "dolly" / "valid.jsonl")))
    assert (
        len(data.train) + len(data.split("validation")) == 500 - data.stats["train"]["dropped_empty_response"]
    )
    assert all(p.endswith("### Response:\n") for p in data.train.prompts)
    enc = encode_lm(data.train, tok, max_length=256)
    assert enc.num_truncated > 0 and max(len(ids) for ids in enc.input_ids) == 256
    assert all(
        lab[: enc.prompt_lengths[i]] == [IGNORE] * enc.prompt_lengths[i] for i, lab in enumerate(enc.labels)
    )
    sinst = SHARED_DATA / "sinst" / "valid.jsonl"
    if sinst.is_file():
        split = load_lm_file(str(sinst), DataConfig())
        assert max(len(r) for r in split.references) > 1
        assert all(r[0] == s for r, s in zip(split.references, split.responses, strict=True))
