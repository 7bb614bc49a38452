"""Shared fixtures: tiny BERT models built from configs (seconds, not minutes) and tiny datasets."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from kdkit.assets import asset_path

# local copies of public datasets (GLUE, dolly, ...): $KDKIT_DATA_ROOT, else the shared/data folder beside the
# checkout; tests that read them set KDKIT_DATA_ROOT to it (the recipes' data.local copies are found there)
SHARED_DATA = Path(
    os.environ.get("KDKIT_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data"
)

POS = ["good", "great", "lovely", "fine", "happy", "superb", "nice", "brilliant"]
NEG = ["bad", "awful", "poor", "sad", "horrible", "boring", "ugly", "terrible"]
FILL = ["the", "movie", "was", "a", "plot", "really", "very", "film", "and", "so"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test caches fine-tuned teachers in its own KDKIT_HOME; no hub access."""
    monkeypatch.setenv("KDKIT_HOME", str(tmp_path_factory.mktemp("kdkit_home")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("KDKIT_DATA_ROOT", raising=False)  # a test that reads SHARED_DATA sets it itself
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE at import time, before this fixture: without this, a test that
    # names a hub id waits on network retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def tiny_bert(path: Path, layers: int, hidden: int = 32, num_labels: int = 2, seed: int = 0) -> Path:
    """Save a tiny BERT sequence classifier (MiniLM's uncased vocab) at ``path``."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=num_labels,
        id2label={i: n for i, n in enumerate(["negative", "positive", "neutral"][:num_labels])},
        label2id={n: i for i, n in enumerate(["negative", "positive", "neutral"][:num_labels])},
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(asset_path("minilm-l6")).save_pretrained(path)
    return path


def bert_classifier(
    num_labels: int = 3, layers: int = 2, seed: int = 0, vocab: int = 50
) -> BertForSequenceClassification:
    """A tiny dropout-free BERT sequence classifier built from a config (method tests)."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer, 32-wide BERT classifier with a 'trained' head (saved as ForSequenceClassification)."""
    return tiny_bert(tmp_path_factory.mktemp("tiny_teacher"), layers=4)


def sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 else "negative"
        words = [rng.choice(POS if label == "positive" else NEG), *rng.sample(FILL, 4)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 96-row binary sentiment csv (text,label) with string labels."""
    path = tmp_path_factory.mktemp("data") / "train.csv"
    lines = ["text,label"] + [f"{t},{y}" for t, y in sentiment_rows(96)]
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_config(teacher: Path, data: Path, out: Path, **extra: object) -> dict:
    """A complete run config for the tiny teacher and data; ``extra`` replaces top-level sections."""
    config = {
        "task": "classification",
        "output_dir": str(out),
        # a random tiny teacher: not worth distilling, on purpose (tests/unit/teacher/test_check.py)
        "teacher": {"model": str(teacher), "max_length": 16, "check": False},
        "student": {"layers": [0, 3], "max_length": 16},
        "data": {"train": str(data), "label_names": ["negative", "positive"], "split": {"validation": 0.25}},
        "method": {"name": "kd"},
        "train": {
            "max_steps": 6,
            "batch_size": 8,
            "lr": 1e-3,
            "log_every": 1,
            "eval_every": 3,
            "save_every": 2,
        },
        "eval": {"batch_size": 32, "splits": ["validation"]},
    }
    config.update(extra)
    return config


# --- causal LM fixtures ----------------------------------------------------------------------------------

LM_WORDS = [
    *POS,
    *NEG,
    *FILL,
    "question",
    "answer",
    "is",
    "what",
    "one",
    "two",
    "three",
    "four",
    "five",
    "user",
    "assistant",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def tiny_lm_tokenizer(path: Path) -> Path:
    """A word-level tokenizer (one id per word, whitespace split) with bos/eos/pad/unk and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(LM_WORDS)) + [":", "?", "."])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


def tiny_llama(path: Path, layers: int = 4, hidden: int = 32, vocab_pad: int = 64, seed: int = 0) -> Path:
    """Save a tiny random Llama causal LM with the tiny word tokenizer at ``path``.

    The embedding matrix is padded to a multiple of ``vocab_pad`` rows (as real checkpoints often are).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tiny_lm_tokenizer(path)
    n = len(AutoTokenizer.from_pretrained(path))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=-(-n // vocab_pad) * vocab_pad,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def char_tokenizer(path: Path) -> Path:
    """A character-level tokenizer (another tokenizer than ``tiny_lm_tokenizer``'s: one token per character,
    so its spans against the word-level one are many to one) with bos/eos/pad/unk and the same chat template."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = list(string.ascii_lowercase + string.digits + " :?.,!'")
    vocab = {c: i for i, c in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


def tiny_char_llama(path: Path, layers: int = 2, hidden: int = 32, seed: int = 1) -> Path:
    """A tiny random Llama on ``char_tokenizer``: a student with another tokenizer than ``tiny_lm``'s."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    char_tokenizer(path)
    n = len(AutoTokenizer.from_pretrained(path))
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=n,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer, 32-wide random Llama with a word-level tokenizer (vocab padded to 64)."""
    return tiny_llama(tmp_path_factory.mktemp("tiny_lm"))


def qa_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Tiny instruction data in the tiny LM's vocabulary: {"prompt", "output"} records."""
    rng = random.Random(seed)
    numbers = ["one", "two", "three", "four", "five"]
    rows = []
    for _ in range(n):
        a = rng.choice(numbers)
        words = rng.sample(FILL, 3)
        rows.append(
            {"prompt": f"question : what is {a} {' '.join(words)} ?", "output": f"answer : {a} {a} ."}
        )
    return rows


@pytest.fixture(scope="session")
def tiny_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-row prompt/output jsonl in the tiny LM's vocabulary."""
    import json

    path = tmp_path_factory.mktemp("lm_data") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_rows(64)))
    return path


@pytest.fixture(scope="session")
def method_run(
    tiny_teacher: Path,
    tiny_csv: Path,
    tiny_lm: Path,
    tiny_jsonl: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """``get(name)``: the uninterrupted run ``name`` of ``tests.method_runs.RUNS`` (through the CLI, in this
    process), made once per session: the reference of the same-results and kill-and-resume tests."""
    import contextlib
    import sys

    import yaml

    from kdkit.cli import main
    from tests.method_runs import cli_args, run_config

    assets = {
        "tiny_teacher": tiny_teacher,
        "tiny_csv": tiny_csv,
        "tiny_lm": tiny_lm,
        "tiny_jsonl": tiny_jsonl,
    }
    home = tmp_path_factory.mktemp("method-runs-home")
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            root = tmp_path_factory.mktemp(f"reference-{name}")
            cfg = root / "c.yaml"
            cfg.write_text(yaml.safe_dump(run_config(name, assets, root / "run")))
            with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(sys.stderr):
                mp.setenv("KDKIT_HOME", str(home))
                assert main(cli_args(name, cfg)) == 0, name
            runs[name] = root / "run"
        return runs[name]

    return get
