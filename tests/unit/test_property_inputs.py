"""Property-based tests (hypothesis): random configs, overrides and malformed data files never end in an
unhandled exception. The config loader and the readers either succeed or raise ``KdkitError`` (one line,
printed by the CLI with exit code 2)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdkit.config import Config, DataConfig, load_config, read_yaml
from kdkit.data import load_task_data
from kdkit.data.lm import load_lm_data
from kdkit.data.tables import read_table
from kdkit.errors import KdkitError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

# keys that the loader knows (so that random configs reach deep validation), mixed with random ones
KEYS = [
    *("task", "output_dir", "teacher", "student", "data", "method", "train", "eval", "generation", "cache"),
    *("model", "layers", "num_layers", "init", "max_length", "config_overrides", "finetune", "tokenizer"),
    *("train", "validation", "text", "label", "label_names", "split", "format", "header", "encoding"),
    *("name", "temperature", "alpha", "lr", "batch_size", "epochs", "max_steps", "seed", "warmup_ratio"),
    *("splits", "metrics", "top_k", "dtype", "on_policy", "top_p", "save_every", "keep_checkpoints"),
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["kd", "mixkd", "reaugkd", "forward_kl", "atkd", "classification", "causal_lm", "no"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=20,
)
configs = st.dictionaries(keys, values, max_size=8)


def _loads_or_refuses(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except KdkitError as err:
        assert "\n" not in str(err).strip(), "errors are one line"
        return None


@SETTINGS
@given(configs)
def test_random_configs_load_or_give_a_clear_error(raw: dict[str, Any]) -> None:
    config = _loads_or_refuses(load_config, raw)
    assert config is None or isinstance(config, Config)


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=4))
def test_random_overrides_load_or_give_a_clear_error(overrides: list[str]) -> None:
    config = _loads_or_refuses(load_config, {}, overrides)
    assert config is None or isinstance(config, Config)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([*KEYS, "train.lr", "method.name"]), values), max_size=3))
def test_overrides_of_known_keys_load_or_give_a_clear_error(pairs: list[tuple[str, Any]]) -> None:
    overrides = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in pairs]
    _loads_or_refuses(load_config, {"method": {"name": "kd"}}, overrides)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_yaml_files_read_or_give_a_clear_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(data)
        raw = _loads_or_refuses(read_yaml, path)
        assert raw is None or isinstance(raw, dict)
        if raw is not None:
            _loads_or_refuses(load_config, raw)


# files that look like data (valid csv/json shapes with random cells) and files that are plain garbage
cells = st.one_of(st.text(max_size=10), st.integers(-5, 5), st.floats(allow_nan=True), st.none())
rows = st.lists(st.fixed_dictionaries({"text": cells, "label": cells}), min_size=0, max_size=12)


def _encode(fmt: str, records: list[dict[str, Any]]) -> bytes:
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(["text", "label"])]
        lines += [sep.join("" if v is None else str(v) for v in r.values()) for r in records]
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    if fmt == "json":
        return json.dumps(records).encode("utf-8", "surrogatepass")
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8", "surrogatepass")


@SETTINGS
@given(st.sampled_from(["csv", "tsv", "jsonl", "json", "parquet"]), st.binary(max_size=300))
def test_garbage_data_files_read_or_give_a_clear_error(fmt: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train.{fmt}"
        path.write_bytes(data)
        _loads_or_refuses(read_table, path)


@SETTINGS
@given(
    st.sampled_from(["csv", "tsv", "jsonl", "json"]),
    rows,
    st.sampled_from(["classification", "regression"]),
    st.one_of(st.none(), st.lists(st.text(max_size=5), max_size=3)),
)
def test_malformed_task_data_loads_or_gives_a_clear_error(
    fmt: str, records: list[dict[str, Any]], task: str, label_names: list[str] | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train.{fmt}"
        path.write_bytes(_encode(fmt, records))
        names = label_names if task == "classification" else None
        data = DataConfig(train=str(path), label_names=names)
        loaded = _loads_or_refuses(load_task_data, data, task)
        if loaded is not None:  # what loads is consistent
            assert len(loaded.train) > 0
            assert loaded.num_labels >= 1


lm_rows = st.lists(
    st.fixed_dictionaries({"prompt": cells, "output": st.one_of(cells, st.lists(cells, max_size=2))}),
    max_size=10,
)


@SETTINGS
@given(st.sampled_from(["jsonl", "json"]), lm_rows, st.sampled_from([None, "Q: {prompt}\nA: ", "{missing}"]))
def test_malformed_causal_lm_data_loads_or_gives_a_clear_error(
    fmt: str, records: list[dict[str, Any]], template: str | None
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train.{fmt}"
        path.write_bytes(_encode(fmt, records))
        data = DataConfig(train=str(path), prompt_template=template)
        loaded = _loads_or_refuses(load_lm_data, data)
        if loaded is not None:
            assert len(loaded.train.prompts) > 0


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    with pytest.raises(KdkitError, match="must be a finite number"):
        load_config({}, [f"train.lr={value}"])


def test_huge_class_ids_are_refused_not_allocated(tmp_path: Path) -> None:
    """Found by the properties above: a float label 1e300 (or a user id) became a head of 1e300 classes."""
    path = tmp_path / "train.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"t{i}", "label": [0, 1, 10**9][i % 3]}) + "\n" for i in range(9))
    )
    with pytest.raises(KdkitError, match=r"label ids go up to 1000000000 but train has 3 distinct labels"):
        load_task_data(DataConfig(train=str(path)), "classification")
