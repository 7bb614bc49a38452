from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdkit.errors import KdkitError
from kdkit.eval.lm import cut_at_eos, generate_tokens, generation_scores, left_pad, perplexity
from kdkit.eval.rouge import rouge_l


@pytest.fixture(scope="module")
def lm(tiny_lm: Path) -> Iterator[tuple[torch.nn.Module, object]]:
    # One thread: a 32-wide model gains nothing from more, and on a busy machine OpenMP threads that wait for
    # each other make each generate step ~50x slower (seconds instead of milliseconds per test).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    yield model, AutoTokenizer.from_pretrained(tiny_lm)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts(lm: tuple[torch.nn.Module, object]) -> list[list[int]]:
    _, tok = lm
    texts = ["question : what is one ?", "good", "the movie was a very boring film and so sad", "what is two"]
    return [tok(t)["input_ids"] for t in texts]  # starts with BOS; lengths differ (left padding matters)


def _greedy_reference(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by hand: argmax of a full forward pass, one token at a time, no padding, no cache."""
    ids = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def test_helpers() -> None:
    ids, mask = left_pad([[5, 6], [7]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    assert cut_at_eos([4, 5, 2, 6, 2], {2}) == [4, 5] and cut_at_eos([4, 5], {2}) == [4, 5]
    assert cut_at_eos([4, 9, 5], {2, 9}) == [4]


def test_batched_greedy_equals_one_at_a_time_and_reference(lm, prompts) -> None:
    model, _ = lm
    # eos outside the vocabulary: every generation runs the full length, so the comparison sees every token
    kw = {"pad_id": 0, "eos_id": 10_000, "max_new_tokens": 6, "desc": None}
    batched = generate_tokens(model, prompts, batch_size=3, **kw)  # batches mix lengths: left padding
    single = [generate_tokens(model, [p], batch_size=1, **kw)[0] for p in prompts]
    assert batched == single  # also: results come back in input order although prompts were sorted
    assert [len(g) for g in batched] == [6] * len(prompts)
    with torch.no_grad():
        assert batched == [_greedy_reference(model, p, 6) for p in prompts]


def test_eos_cut_mode_restored_and_rng_untouched(lm, prompts) -> None:
    model, _ = lm
    full = generate_tokens(model, prompts, pad_id=0, eos_id=10_000, max_new_tokens=6, desc=None)
    eos = full[2][2]  # make the third generated token of prompt 2 the EOS
    cut = generate_tokens(model, prompts, pad_id=0, eos_id=[10_001, eos], max_new_tokens=6, desc=None)
    for f, c in zip(full, cut, strict=True):
        assert c == cut_at_eos(f, {eos}) and eos not in c
    assert len(cut[2]) <= 2
    model.train()
    state = torch.get_rng_state()
    generate_tokens(model, prompts[:1], pad_id=0, eos_id=2, max_new_tokens=2, temperature=1.0, desc=None)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    model.eval()


def test_sampling_reproducible(lm, prompts) -> None:
    model, _ = lm
    kw = {"pad_id": 0, "eos_id": 10_000, "max_new_tokens": 8, "temperature": 1.5, "desc": None}
    a = generate_tokens(model, prompts, seed=3, **kw)
    assert a == generate_tokens(model, prompts, seed=3, **kw)
    others = [generate_tokens(model, prompts, seed=s, **kw) for s in (4, 5)]
    assert any(o != a for o in others)  # a random model at temperature 1.5: seeds do differ
    nucleus = generate_tokens(model, prompts, seed=3, **{**kw, "top_p": 1e-6})  # keeps only the argmax
    greedy = generate_tokens(model, prompts, **{**kw, "temperature": 0.0})
    assert nucleus == greedy


def test_generation_bad_input(lm) -> None:
    model, _ = lm
    with pytest.raises(KdkitError, match="prompt 1 is empty"):
        generate_tokens(model, [[1], []], pad_id=0, eos_id=2, max_new_tokens=2)
    with pytest.raises(KdkitError, match="max_new_tokens >= 1"):
        generate_tokens(model, [[1]], pad_id=0, eos_id=2, max_new_tokens=0)
    assert generate_tokens(model, [], pad_id=0, eos_id=2, max_new_tokens=2) == []


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int, left: bool, width: int) -> dict:
    """rows of (input_ids, labels) padded to ``width`` on the left or right (labels -100 on padding)."""
    ids, mask, labels = [], [], []
    for x, y in rows:
        pad = width - len(x)
        side = (
            (lambda seq, fill, n=pad: [fill] * n + seq)
            if left
            else (lambda seq, fill, n=pad: seq + [fill] * n)
        )
        ids.append(side(x, pad_id))
        mask.append(side([1] * len(x), 0))
        labels.append(side(y, -100))
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    return {"student": inputs, "teacher": inputs, "labels": torch.tensor(labels)}


def test_perplexity_matches_cross_entropy_and_ignores_padding(lm, prompts) -> None:
    model, tok = lm
    vocab = len(tok)  # < the 64 embedding rows: the padded rows are left out
    # labels = input_ids with the "prompt" (first 2 tokens) masked, as the LM collator makes them
    rows = [(p, [-100, -100, *p[2:]]) for p in prompts]
    nll, n = 0.0, 0
    with torch.no_grad():
        for x, y in rows:  # reference: one unpadded sequence at a time, summed cross-entropy
            logits = model(torch.tensor([x])).logits[0, :-1, :vocab]
            nll += float(F.cross_entropy(logits, torch.tensor(y[1:]), ignore_index=-100, reduction="sum"))
            n += sum(t != -100 for t in y[1:])
    acc = Accelerator(cpu=True)
    longest = max(len(p) for p in prompts)
    for left in (False, True):
        for width in (longest, longest + 3):
            loader = [_batch(rows[:2], 0, left, width), _batch(rows[2:], 0, left, width)]
            got = perplexity(model, loader, acc, vocab_size=vocab)
            assert got["tokens"] == n
            # fp32 matmuls of different padded shapes differ in the last bits (thread count, kernels)
            assert got["nll"] == pytest.approx(nll / n, rel=1e-4)
            # perplexity is exp(nll): an nll off by 1e-4 relative (~4e-4 absolute here) moves it by ~4e-4
            assert got["perplexity"] == pytest.approx(math.exp(got["nll"]), rel=1e-12)
            assert got["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-3)
    full = perplexity(model, loader, acc, side="teacher")  # all 64 rows: a different distribution
    assert full["nll"] > got["nll"]  # the padded rows take probability mass
    with pytest.raises(KdkitError, match="no labelled tokens"):
        perplexity(model, [_batch([(prompts[0], [-100] * len(prompts[0]))], 0, False, 8)], acc)


def test_generation_scores(lm, prompts) -> None:
    model, tok = lm
    refs = [["answer : one"], ["good good"], ["the film"], ["two", "what is two"]]
    out = generation_scores(model, tok, prompts, refs, max_new_tokens=5, batch_size=2, desc=None)
    assert len(out["generations"]) == 4 and all(g == g.strip() for g in out["generations"])
    expected = 100 * sum(rouge_l(g, r) for g, r in zip(out["generations"], refs, strict=True)) / 4
    assert out["rouge_l"] == pytest.approx(expected)
    tokens = generate_tokens(model, prompts, pad_id=0, eos_id=2, max_new_tokens=5, desc=None)
    assert out["generations"] == [tok.decode(t, skip_special_tokens=True).strip() for t in tokens]
    with pytest.raises(KdkitError, match="one each"):
        generation_scores(model, tok, prompts, refs[:2], max_new_tokens=2, batch_size=2)


def test_causal_lm_metric_names() -> None:
    from kdkit.eval.metrics import (
        check_metrics,
        compute_metrics,
        default_best_metric,
        default_metrics,
        greater_is_better,
    )

    assert default_metrics("causal_lm", 0) == ["perplexity", "bits_per_byte", "bits_per_char", "rouge_l"]
    assert default_best_metric("causal_lm") == "perplexity"
    assert not greater_is_better("perplexity") and greater_is_better("rouge_l")
    check_metrics("causal_lm", ["perplexity", "rouge_l"])
    with pytest.raises(KdkitError, match="did you mean 'rouge_l'"):
        check_metrics("causal_lm", ["rougel"])
    with pytest.raises(KdkitError, match=r"kdkit\.eval\.lm"):
        compute_metrics("causal_lm", [1], [1], ["perplexity"])  # type: ignore[arg-type]


def test_bits_per_byte_is_the_nll_over_the_scored_text(lm) -> None:
    """bits per byte = (sum of the scored tokens' NLL) / ln 2 / (UTF-8 bytes of the responses), the EOS's
    NLL included; a response cut by max_length counts the bytes of its kept tokens."""
    from kdkit.data.lm import LMCollator, LMDataset, LMSplit, encode_lm

    model, tok = lm
    responses = ["answer : one one .", "answer : très bien", "a plot"]
    split = LMSplit(["question : what is one ?"] * 3, responses, [[r] for r in responses])
    encoded = encode_lm(split, tok, max_length=64)
    assert [s[0] for s in encoded.text_sizes] == [len(r.encode()) for r in responses]
    assert encoded.text_sizes[1][0] == encoded.text_sizes[1][1] + 1  # "è" is 2 bytes, 1 character
    batch = LMCollator(tok.pad_token_id)([LMDataset(encoded)[i] for i in range(3)])
    out = perplexity(model, [batch], Accelerator(cpu=True))
    with torch.no_grad():
        logits = model(**batch["student"]).logits[:, :-1].float()
    nll = F.cross_entropy(logits.transpose(1, 2), batch["labels"][:, 1:], ignore_index=-100, reduction="sum")
    total = sum(len(r.encode()) for r in responses)
    # the formula, exactly: the NLL sum that perplexity reports, in bits, over the responses' bytes
    assert out["bits_per_byte"] == pytest.approx(out["nll"] * out["tokens"] / math.log(2) / total, rel=1e-12)
    # and that NLL sum is the scored tokens' (a separate forward: float32 kernels may differ in the 5th digit)
    assert out["nll"] * out["tokens"] == pytest.approx(float(nll), rel=1e-4)
    assert out["bits_per_char"] > out["bits_per_byte"]  # fewer characters than bytes
    cut = encode_lm(split, tok, max_length=8)  # the prompt keeps 6 tokens: responses cut to 2 tokens
    kept = [ids[n:] for ids, n in zip(cut.input_ids, cut.prompt_lengths, strict=True)]
    assert cut.text_sizes[0][0] == len(tok.decode(kept[0], skip_special_tokens=True).encode())
