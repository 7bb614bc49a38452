"""Several teachers (`teachers:` beside `teacher`) in real runs on tiny models: a cached teacher listed
twice trains exactly as that teacher alone (any weights: both rules reduce to its own loss), as does a
live teacher mixed with itself; two different teachers (one live, one cached) train under `losses`;
what cannot be combined is refused in one line before training, and --resume refuses changed weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdkit.commands.cache import build_cache_for_config
from kdkit.errors import KdkitError
from kdkit.layout import MARKER
from kdkit.train.run import distill
from tests.conftest import tiny_char_llama, tiny_config, tiny_llama
from tests.integration.test_lm_tiny import lm_config

pytestmark = pytest.mark.integration


def _same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-4, msg=key)


def _config(teacher: Path, data: Path, out: Path) -> dict[str, Any]:
    config = lm_config(teacher, data, out, eval={"splits": ["validation"], "rouge": False})
    config["train"] = {**config["train"], "max_steps": 3, "save_every": None}
    return config


def test_one_teacher_listed_twice_trains_as_that_teacher(
    tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path
) -> None:
    config = _config(tiny_lm, tiny_jsonl, tmp_path / "single")
    config["cache"] = {"dir": str(tmp_path / "cache"), "top_k": 8}
    build_cache_for_config(config)
    single = distill(config)
    twice = {**config, "output_dir": str(tmp_path / "twice")}
    twice["teachers"] = [{"model": str(tiny_lm), "cache": str(tmp_path / "cache"), "weight": 3.0}]
    both = distill(twice)
    _same_weights(single.output_dir, both.output_dir, atol=1e-6)
    marker = json.loads((both.output_dir / MARKER).read_text())
    assert "teachers" in marker["inputs"]

    live = _config(tiny_lm, tiny_jsonl, tmp_path / "live")
    alone = distill(live)
    mixed = {
        **live,
        "output_dir": str(tmp_path / "mixed"),
        "teachers": [{"model": str(tiny_lm), "weight": 0.5}],
    }
    mixed["teacher"] = {**live["teacher"], "combine": "mixture"}
    _same_weights(alone.output_dir, distill(mixed).output_dir, atol=1e-5)

    with pytest.raises(KdkitError, match="different config"):  # another weight: another run
        distill({**twice, "teachers": [{**twice["teachers"][0], "weight": 1.0}]}, resume=True)


def test_two_different_teachers_live_and_cached(tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path) -> None:
    other = tiny_llama(tmp_path / "other", seed=5)
    cache_config = _config(other, tiny_jsonl, tmp_path / "unused")
    cache_config["cache"] = {"dir": str(tmp_path / "other-cache"), "top_k": 8}
    build_cache_for_config(cache_config)
    config = _config(tiny_lm, tiny_jsonl, tmp_path / "run")
    config["method"] = {"name": "atkd", "chunk_size": 16}
    config["cache"] = {"top_k": 8}
    config["teachers"] = [{"model": str(other), "cache": str(tmp_path / "other-cache"), "weight": 2.0}]
    result = distill(config)
    assert result.metrics["steps"] == 3 and result.metrics["validation"]["perplexity"] > 1.0
    alone = distill({**config, "teachers": [], "output_dir": str(tmp_path / "alone")})
    wa = load_file(result.output_dir / "model.safetensors")
    wb = load_file(alone.output_dir / "model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)  # the second teacher changed the training
    tiny_llama(other, seed=6)  # the same path, other weights: --resume refuses it
    with pytest.raises(KdkitError, match=r"the other teachers .* changed"):
        distill(config, resume=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": {"name": "reaugkd"}}, "takes one teacher"),
        ({"teacher": {"combine": "mixture"}}, "full distribution"),
        ({"teachers": [{"model": "x", "cache": "c", "server": "http://127.0.0.1:1"}]}, "cache or server"),
        ({"teachers": [{"model": "x", "weight": 0}]}, "weight"),
    ],
)
def test_what_cannot_be_combined_is_refused_before_training(
    tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    config = _config(tiny_lm, tiny_jsonl, tmp_path / "run")
    config["teachers"] = [{"model": str(tiny_lm), "cache": str(tmp_path / "cache")}]
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    if change.get("method", {}).get("name") == "reaugkd":
        config = tiny_config(tiny_lm, tiny_jsonl, tmp_path / "run", method={"name": "reaugkd"})
        config["teachers"] = [{"model": str(tiny_lm)}]
    with pytest.raises(KdkitError, match=message) as err:
        distill(config)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_teacher_with_another_tokenizer_is_refused(tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path) -> None:
    config = _config(tiny_lm, tiny_jsonl, tmp_path / "run")
    config["teachers"] = [{"model": str(tiny_char_llama(tmp_path / "char"))}]
    with pytest.raises(KdkitError, match=r"teachers\[0\].*tokeni"):
        distill(config)


def test_classifier_teachers_mixed(tiny_teacher: Path, tiny_csv: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_teacher, other)
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run")
    config["teacher"] = {**config["teacher"], "combine": "mixture"}
    config["teachers"] = [{"model": str(other), "weight": 2.0}]
    config["train"] = {**config["train"], "max_steps": 2, "save_every": None}
    mixed = distill(config)
    alone = distill({**config, "teachers": [], "output_dir": str(tmp_path / "alone")})
    _same_weights(mixed.output_dir, alone.output_dir, atol=1e-5)  # the same teacher twice: itself
