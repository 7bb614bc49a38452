"""The teacher output cache (`kdkit cache`, cache.dir) end to end on tiny models: training from the cache
never loads the teacher and, with every logit kept, equals live distillation; an interrupted build
resumes; corrupt shards and stale caches are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kdkit.commands.cache import build_cache_for_config
from kdkit.errors import KdkitError
from kdkit.teacher import TeacherCache
from kdkit.teacher import build as cache_build
from kdkit.train.run import distill
from tests.conftest import tiny_config
from tests.integration.test_cli_tiny import kdkit, write_config
from tests.integration.test_lm_tiny import lm_config


def _no_teacher(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("the teacher's weights were loaded while training from the cache")


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def _assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.parametrize("method", ["forward_kl", "atkd"])
def test_lm_cache_with_every_logit_equals_live_distillation(
    tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    cache_dir = tmp_path / "cache"
    config = lm_config(
        tiny_lm, tiny_jsonl, tmp_path / "live", eval={"splits": ["validation"], "rouge": False}
    )
    config["method"] = {"name": method, "chunk_size": 16, "temperature": 2.0}
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tiny_lm))
    config["cache"] = {"dir": str(cache_dir), "top_k": vocab, "dtype": "float32", "shard_size": 20}
    _, meta = build_cache_for_config(config)
    assert meta["kind"] == "topk" and meta["num_examples"] == 48 and len(meta["shards"]) == 3

    live = distill({**config, "cache": {}}, overwrite=True)
    monkeypatch.setattr("kdkit.family.causal_lm.load_causal_lm", _no_teacher)
    cached = distill({**config, "output_dir": str(tmp_path / "cached")}, overwrite=True)
    _assert_same_weights(live.output_dir, cached.output_dir, atol=1e-5)
    assert cached.metrics["validation"]["perplexity"] == pytest.approx(
        live.metrics["validation"]["perplexity"], rel=1e-4
    )
    assert "teacher" not in cached.metrics  # no teacher loaded, so no teacher metrics


def test_lm_top_k_cache_trains_and_reads_16_bit(tiny_lm: Path, tiny_jsonl: Path, tmp_path: Path) -> None:
    config = lm_config(tiny_lm, tiny_jsonl, tmp_path / "run", eval={"splits": ["validation"], "rouge": False})
    config["cache"] = {"dir": str(tmp_path / "cache"), "top_k": 4, "tail": "uniform"}
    build_cache_for_config(config)
    shard = load_file(tmp_path / "cache" / "shard-00000.safetensors")
    assert shard["logprobs"].dtype == torch.float16 and shard["indices"].shape[1] == 4
    assert shard["offsets"][-1] == shard["indices"].shape[0] == shard["target_logprobs"].shape[0]
    result = distill(config, overwrite=True)
    assert result.metrics["validation"]["perplexity"] > 1.0

    # a cache built at another temperature (or k, data, teacher...) is refused, naming the field
    config["method"]["temperature"] = 3.0
    with pytest.raises(KdkitError, match=r"temperature is 1\.0 there, 3\.0 here"):
        distill(config, overwrite=True)


def test_classifier_cache_equals_live_and_never_loads_the_teacher(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "live", cache={"dir": str(tmp_path / "c")})
    proc = kdkit("cache", "--config", str(write_config(tmp_path / "c.yaml", config)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == {"cache": str(tmp_path / "c"), "kind": "logits", "examples": 72, "shards": 1}
    proc = kdkit("validate", "--config", str(tmp_path / "c.yaml"))
    assert proc.returncode == 0 and f"teacher cache: {tmp_path / 'c'} (72 examples, logits)" in proc.stdout

    live = distill({**config, "cache": {}}, overwrite=True)
    monkeypatch.setattr("kdkit.family.classifier.load_teacher_classifier", _no_teacher)
    cached = distill({**config, "output_dir": str(tmp_path / "cached")}, overwrite=True)
    _assert_same_weights(live.output_dir, cached.output_dir, atol=1e-6)
    assert cached.metrics["validation"]["accuracy"] == live.metrics["validation"]["accuracy"]


def test_interrupted_build_resumes_and_corruption_is_named(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run", cache={"dir": str(root), "shard_size": 16})
    reference = tmp_path / "reference"
    build_cache_for_config(config, output=str(reference))

    written: list[int] = []
    real = cache_build.write_shard

    def crash_on_third(r: Path, i: int, tensors: dict, metadata: dict | None = None) -> None:
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while computing shard 2
        written.append(i)
        real(r, i, tensors, metadata)

    monkeypatch.setattr(cache_build, "write_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_cache_for_config(config)
    assert not (root / "meta.json").exists() and written == [0, 1]
    written.clear()
    monkeypatch.setattr(cache_build, "write_shard", real)
    _, meta = build_cache_for_config(config)  # resumes: shards 2..4 only
    ref_meta = json.loads((reference / "meta.json").read_text())
    assert meta["shards"] == ref_meta["shards"]  # byte-identical to an uninterrupted build

    shard = root / "shard-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(KdkitError, match=r"shard-00003\.safetensors is corrupt"):
        TeacherCache.load(root)
    proc = kdkit("distill", "--config", str(write_config(tmp_path / "c.yaml", config)))
    assert proc.returncode == 2 and "corrupt" in proc.stderr and "Traceback" not in proc.stderr


def test_methods_that_need_the_live_teacher_are_refused(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run", cache={"dir": str(tmp_path / "c")})
    build_cache_for_config(config)
    for method in ({"name": "mixkd"}, {"name": "kd", "hidden_weight": 1.0}):
        with pytest.raises(KdkitError, match="needs the live teacher"):
            distill({**config, "method": method}, overwrite=True)
    with pytest.raises(KdkitError, match="does not match this run: data"):
        distill({**config, "data": {**config["data"], "max_train_samples": 40}}, overwrite=True)


def test_a_missing_cache_stops_the_run_before_the_teacher_is_fine_tuned(
    tiny_teacher: Path, tiny_csv: Path, tmp_path: Path
) -> None:
    from kdkit.config import load_config
    from kdkit.teacher.finetuned import teacher_cache_dir

    config = tiny_config(tiny_teacher, tiny_csv, tmp_path / "run", cache={"dir": str(tmp_path / "c")})
    config["teacher"]["finetune"] = {"max_steps": 2, "batch_size": 8, "lr": 1e-3}
    with pytest.raises(KdkitError, match=r"holds no complete teacher cache .* `kdkit cache --config FILE`"):
        distill(config)
    assert not teacher_cache_dir(load_config(config)).exists()  # no teacher fine-tuned, no output dir made
    assert not (tmp_path / "run").exists()
