"""Config loading: types, unknown keys with hints, overrides, method resolution, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdkit.config import Config, apply_overrides, load_config, parse_override
from kdkit.errors import KdkitError


def test_defaults_and_method_resolution() -> None:
    config = load_config({})
    assert isinstance(config, Config)
    assert config.method.name == "kd" and config.method.alpha == 0.5 and config.method.temperature == 2.0
    assert config.train.lr == 5e-5


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"train": {"lrr": 1e-4}}, "'train.lrr' is unknown \\(did you mean 'lr'\\?\\)"),
        ({"taks": "classification"}, "did you mean 'task'"),
        ({"method": {"name": "kdd"}}, "unknown method 'kdd' \\(did you mean 'kd'\\?\\)"),
        (
            {"method": {"name": "kd", "temprature": 2}},
            "'method.temprature' is unknown \\(did you mean 'temperature'",
        ),
        ({"task": "clasification"}, "did you mean 'classification'"),
        ({"train": {"batch_size": "big"}}, "'train.batch_size' must be an integer"),
        ({"train": {"batch_size": 0}}, "'train.batch_size' must be > 0"),
        ({"train": {"lr": -1.0}}, "'train.lr' must be > 0"),
        ({"method": {"alpha": 2.0}}, "'method.alpha' must be in \\[0, 1\\]"),
        ({"student": {"layers": [0], "num_layers": 1}}, "either 'layers' or 'num_layers'"),
        ({"data": {"split": {"validation": 0.6, "test": 0.5}}}, "sum to < 1"),
        ({"eval": {"splits": ["dev"]}}, "unknown split 'dev'"),
        ({"train": {"load_best": "yes"}}, "must be true or false"),
        ({"train": {"mixed_precision": "fp8"}}, "must be one of no, fp16, bf16"),
        ({"teacher": "minilm-l6"}, "'teacher' must be a mapping"),
    ],
)
def test_errors_name_the_key(raw: dict, match: str) -> None:
    with pytest.raises(KdkitError, match=match):
        load_config(raw)


def test_overrides() -> None:
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("student.layers=[0,5]") == (["student", "layers"], [0, 5])
    assert parse_override("data.text_pair=null") == (["data", "text_pair"], None)
    raw = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=0.5", "method.name=kd", "data.split.seed=3"])
    assert raw == {"train": {"lr": 0.5}, "method": {"name": "kd"}, "data": {"split": {"seed": 3}}}
    with pytest.raises(KdkitError, match="key=value"):
        parse_override("train.lr")
    config = load_config({}, ["train.lr=3e-5", "method.alpha=0.1", "student.num_layers=2"])
    assert config.train.lr == 3e-5 and config.method.alpha == 0.1 and config.student.num_layers == 2


def test_yaml_string_number_is_accepted() -> None:
    # PyYAML reads 1e-4 (no dot) as a string; a float field takes it
    assert load_config({"train": {"lr": "1e-4"}}).train.lr == 1e-4


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    config = load_config(
        {"teacher": {"model": "minilm-l6", "finetune": {"max_steps": 5}}}, ["method.alpha=0.2"]
    )
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    again = load_config(path)
    assert again == config
    assert again.teacher.finetune is not None and again.teacher.finetune.max_steps == 5


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(KdkitError, match="not valid YAML at line"):
        load_config(path)
    with pytest.raises(KdkitError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(KdkitError, match="must hold a mapping"):
        load_config(path)


def test_bare_no_on_the_command_line_is_the_string_no() -> None:
    # YAML 1.1 reads `no` as false; mixed_precision's choices include the string "no"
    assert load_config({}, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_a_local_copy_is_used_only_under_a_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recipes name the real source; ``data.local`` switches to a copy found under the data root."""
    raw = {
        "data": {
            "dataset": "nyu-mll/glue",
            "subset": "sst2",
            "train": "train",
            "text": "sentence",
            "local": {"train": "sst2/train.tsv", "validation": "sst2/dev.tsv", "text": "txt"},
        }
    }
    monkeypatch.delenv("KDKIT_DATA_ROOT", raising=False)
    hub = load_config(raw).data
    assert (hub.dataset, hub.subset, hub.train, hub.text) == ("nyu-mll/glue", "sst2", "train", "sentence")
    monkeypatch.setenv("KDKIT_DATA_ROOT", str(tmp_path))
    assert load_config(raw).data.dataset == "nyu-mll/glue"  # a root without the copy: still the source
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("txt\tlabel\na\t0\n")
    local = load_config(raw).data
    assert (local.dataset, local.subset, local.train, local.validation) == (
        None,
        None,
        "sst2/train.tsv",
        "sst2/dev.tsv",
    )
    assert local.text == "txt" and local.local == {}
    monkeypatch.delenv("KDKIT_DATA_ROOT")
    assert load_config(raw, [f"data.root={tmp_path}"]).data.train == "sst2/train.tsv"
    with pytest.raises(KdkitError, match=r"'data.local.dataset' is not a key a local copy sets"):
        load_config({"data": {"local": {"dataset": "x"}}})
    with pytest.raises(KdkitError, match=r"'data.local.trian'.*did you mean 'train'"):
        load_config({"data": {"local": {"trian": "x"}}})
