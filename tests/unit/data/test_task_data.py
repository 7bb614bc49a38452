from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.conftest import SHARED_DATA

from kdkit.config import DataConfig, SplitConfig
from kdkit.data import Split, TaskData, load_task_data, resolve_data_path
from kdkit.errors import KdkitError

GLUE = SHARED_DATA


def csv_file(path: Path, rows: dict[str, list[Any]]) -> str:
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def rows(n: int, labels: list[Any] | None = None) -> dict[str, list[Any]]:
    labels = labels or ["neg", "pos"]
    return {"text": [f"text {i}" for i in range(n)], "label": [labels[i % len(labels)] for i in range(n)]}


def load(tmp_path: Path, train: dict, task: str = "classification", **kw: Any) -> TaskData:
    return load_task_data(DataConfig(train=csv_file(tmp_path / "train.csv", train), **kw), task)


def test_string_labels_get_sorted_names(tmp_path: Path) -> None:
    data = load(tmp_path, rows(4, ["pos", "neg", "neutral"]), split=SplitConfig(validation=0))
    assert data.label_names == ["neg", "neutral", "pos"]
    assert data.num_labels == 3
    assert data.train.labels.dtype == np.int64
    assert data.train.labels.tolist() == [2, 0, 1, 2]
    assert data.validation is None
    assert data.stats["train"]["label_counts"] == {"neg": 1, "neutral": 1, "pos": 2}


def test_label_names_order_is_respected(tmp_path: Path) -> None:
    data = load(tmp_path, rows(4), label_names=["pos", "neg"], split=SplitConfig(validation=0))
    assert data.label_names == ["pos", "neg"]
    assert data.train.labels.tolist() == [1, 0, 1, 0]


def test_int_labels_index_label_names(tmp_path: Path) -> None:
    data = load(tmp_path, rows(4, [1, 0]), label_names=["neg", "pos"], split=SplitConfig(validation=0))
    assert data.train.labels.tolist() == [1, 0, 1, 0]
    with pytest.raises(KdkitError, match=r"label 2 is out of range"):
        load(tmp_path, rows(4, [2, 0]), label_names=["neg", "pos"])


def test_int_labels_without_names(tmp_path: Path) -> None:
    data = load(tmp_path, rows(4, [0, 2]), split=SplitConfig(validation=0))
    assert data.label_names == ["0", "1", "2"]
    assert data.train.labels.tolist() == [0, 2, 0, 2]


def test_label_outside_label_names_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        KdkitError, match=r"train\.csv: label 'neutral' is not one of the label names \(neg, pos\)"
    ):
        load(tmp_path, rows(4, ["neg", "pos", "neutral"]), label_names=["neg", "pos"])


def test_float_labels_in_classification_suggest_regression(tmp_path: Path) -> None:
    with pytest.raises(KdkitError, match=r"label 0.5 is not a class.*task: regression"):
        load(tmp_path, rows(4, [0.5, 1.0]))


def test_missing_column_lists_columns_and_suggests(tmp_path: Path) -> None:
    with pytest.raises(KdkitError) as err:
        load(tmp_path, rows(4), label="lable")
    message = str(err.value)
    assert "train.csv: no column 'lable' (data.label)" in message
    assert "did you mean 'label'" in message
    assert "its columns: text, label" in message


def test_text_pairs(tmp_path: Path) -> None:
    train = {"a": ["x one", "x two"], "b": ["y one", "y two"], "y": ["1", "0"]}
    data = load(tmp_path, train, text="a", text_pair="b", label="y", split=SplitConfig(validation=0))
    assert data.train.texts == ["x one", "x two"]
    assert data.train.text_pairs == ["y one", "y two"]


def test_regression_targets(tmp_path: Path) -> None:
    data = load(tmp_path, rows(3, [0.5, 4.75, 2]), task="regression", split=SplitConfig(validation=0))
    assert data.label_names is None and data.num_labels == 1
    assert data.train.labels.dtype == np.float32
    np.testing.assert_allclose(data.train.labels, [0.5, 4.75, 2.0])
    with pytest.raises(KdkitError, match=r"train\.csv: label 'high' \(data row 2\) is not a number"):
        load(tmp_path, rows(3, ["1.5", "high"]), task="regression")


def test_empty_text_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    train = {"text": ["a", "", "  ", "b", None], "label": ["x", "y", "y", "y", "x"]}
    data = load(tmp_path, train, split=SplitConfig(validation=0))
    assert data.train.texts == ["a", "b"]
    assert data.train.labels.tolist() == [0, 1]
    assert data.stats["train"]["rows_read"] == 5
    assert data.stats["train"]["dropped_empty_text"] == 3
    assert data.stats["train"]["rows"] == 2


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KdkitError, match="every row has an empty text"):
        load(tmp_path, {"text": ["", " "], "label": ["a", "b"]})
    with pytest.raises(KdkitError, match="has no rows"):
        load(tmp_path, {"text": [], "label": []})


def test_missing_label_value_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KdkitError, match=r"1 rows have no label .*data row 2"):
        load(tmp_path, {"text": ["a", "b"], "label": ["x", ""]})


def test_seeded_split_is_deterministic_disjoint_and_sized(tmp_path: Path) -> None:
    split = SplitConfig(validation=0.2, test=0.1, seed=7)
    first = load(tmp_path, rows(100), split=split)
    again = load(tmp_path, rows(100), split=split)
    other = load(tmp_path, rows(100), split=SplitConfig(validation=0.2, test=0.1, seed=8))
    assert (len(first.train), len(first.split("validation")), len(first.split("test"))) == (70, 20, 10)
    assert first.split("validation").texts == again.split("validation").texts
    assert first.split("validation").texts != other.split("validation").texts
    parts = [set(first.train.texts), set(first.split("validation").texts), set(first.split("test").texts)]
    assert set.union(*parts) == set(rows(100)["text"])
    assert sum(len(p) for p in parts) == 100  # disjoint
    assert first.stats["validation"]["source"] == "split of train (0.2, seed 7)"
    assert first.stats["train"]["rows_read"] == 100 and first.stats["train"]["held_out"] == 30


def test_validation_file_is_used_and_test_absent(tmp_path: Path) -> None:
    val = csv_file(tmp_path / "val.csv", rows(6))
    data = load(tmp_path, rows(10), validation=val)
    assert len(data.train) == 10 and len(data.split("validation")) == 6
    assert data.test is None
    with pytest.raises(KdkitError, match=r"no test split: set data\.test .*data\.split\.test"):
        data.split("test")
    with pytest.raises(KdkitError, match="did you mean 'validation'"):
        data.split("valid")


def test_max_samples_take_seeded_subsets(tmp_path: Path) -> None:
    val = csv_file(tmp_path / "val.csv", rows(50))
    data = load(tmp_path, rows(100), validation=val, max_train_samples=30, max_eval_samples=10)
    again = load(tmp_path, rows(100), validation=val, max_train_samples=30, max_eval_samples=10)
    assert len(data.train) == 30 and len(data.split("validation")) == 10
    assert data.train.texts == again.train.texts
    assert len(set(data.train.texts)) == 30
    assert data.stats["train"]["sampled_from"] == 100 and data.stats["train"]["rows"] == 30
    bigger = load(tmp_path, rows(10), max_train_samples=1000, split=SplitConfig(validation=0))
    assert len(bigger.train) == 10


def test_validation_label_must_be_in_train_space(tmp_path: Path) -> None:
    val = csv_file(tmp_path / "val.csv", rows(4, ["neg", "maybe"]))
    with pytest.raises(
        KdkitError, match=r"val\.csv: label 'maybe' is not in the train label space \(neg, pos\)"
    ):
        load(tmp_path, rows(4), validation=val)
    val = csv_file(tmp_path / "val.csv", rows(4, [0, 3]))
    with pytest.raises(KdkitError, match=r"val\.csv: label 3 is out of range"):
        load(tmp_path, rows(4, [0, 1]), validation=val)


def test_relative_paths_resolve_under_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "glue").mkdir()
    csv_file(tmp_path / "glue" / "train.csv", rows(4))
    data = load_task_data(DataConfig(root=str(tmp_path), train="glue/train.csv"), "classification")
    assert data.stats["train"]["source"] == str(tmp_path / "glue" / "train.csv")
    monkeypatch.setenv("KDKIT_DATA_ROOT", str(tmp_path / "glue"))
    assert resolve_data_path("train.csv", DataConfig()) == tmp_path / "glue" / "train.csv"
    monkeypatch.delenv("KDKIT_DATA_ROOT")
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("glue/train.csv", DataConfig()) == tmp_path / "glue" / "train.csv"
    assert resolve_data_path("/abs/x.csv", DataConfig(root=str(tmp_path))) == Path("/abs/x.csv")
    with pytest.raises(KdkitError, match=r"data file '.*missing\.csv' does not exist"):
        load_task_data(DataConfig(root=str(tmp_path), train="missing.csv"), "classification")


def test_no_training_data_is_an_error() -> None:
    with pytest.raises(KdkitError, match=r"no training data: set data\.train"):
        load_task_data(DataConfig(), "classification")


@pytest.mark.parametrize("fmt", ["tsv", "jsonl", "json", "parquet"])
def test_formats_give_the_same_task_data(tmp_path: Path, fmt: str) -> None:
    table = {"s1": ["a b", "NA", "c"], "s2": ["d", "e", "f g"], "y": [1, 0, 1]}
    frame = pd.DataFrame(table)
    path = tmp_path / f"train.{fmt}"
    if fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        records = frame.to_dict("records")
        text = json.dumps(records) if fmt == "json" else "\n".join(json.dumps(r) for r in records)
        path.write_text(text)
    kw = {"text": "s1", "text_pair": "s2", "label": "y", "split": SplitConfig(validation=0)}
    reference = load_task_data(
        DataConfig(train=csv_file(tmp_path / "ref.csv", table), **kw), "classification"
    )
    data = load_task_data(DataConfig(train=str(path), **kw), "classification")
    assert data.train.texts == reference.train.texts == ["a b", "NA", "c"]
    assert data.train.text_pairs == reference.train.text_pairs
    assert data.train.labels.tolist() == reference.train.labels.tolist() == [1, 0, 1]
    assert data.label_names == reference.label_names == ["0", "1"]


def test_split_subset() -> None:
    split = Split(["a", "b", "c"], ["x", "y", "z"], np.array([0, 1, 0]))
    part = split.subset([2, 0])
    assert (part.texts, part.text_pairs, part.labels.tolist(), len(part)) == (
        ["c", "a"],
        ["z", "x"],
        [0, 0],
        2,
    )


def test_hf_dataset_from_local_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "mydata"
    folder.mkdir()
    csv_file(folder / "train.csv", rows(8, ["pos", "neg"]))
    csv_file(folder / "validation.csv", rows(3, ["neg"]))
    data = load_task_data(DataConfig(dataset=str(folder)), "classification")
    assert (len(data.train), len(data.split("validation")), data.test) == (8, 3, None)
    assert data.label_names == ["neg", "pos"]
    assert data.split("validation").labels.tolist() == [0, 0, 0]
    assert data.stats["train"]["source"] == f"{folder}[train]"
    with pytest.raises(KdkitError, match=r"has no split 'dev'.*its splits: train, validation"):
        load_task_data(DataConfig(dataset=str(folder), validation="dev"), "classification")


def test_tweets_asset() -> None:
    config = DataConfig(train="tweets", encoding="latin-1", text="text", label="sentiment")
    try:
        data = load_task_data(config, "classification")
    except KdkitError as err:
        pytest.skip(f"tweets asset not installed: {err}")
    assert data.stats["train"]["rows_read"] == 38158
    assert len(data.train) + len(data.split("validation")) == 38158
    assert data.label_names == ["negative", "neutral", "positive"]


@pytest.mark.skipif(not GLUE.is_dir(), reason="the shared GLUE data folder ($KDKIT_DATA_ROOT) is absent")
def test_glue_dev_files() -> None:
    root = str(GLUE)
    none = SplitConfig(validation=0)
    sst2 = load_task_data(
        DataConfig(root=root, train="sst2/dev.tsv", text="sentence", split=none), "classification"
    )
    assert len(sst2.train) == 872 and sst2.label_names == ["0", "1"]
    mrpc = load_task_data(
        DataConfig(
            root=root,
            train="mrpc/dev.tsv",
            text="#1 String",
            text_pair="#2 String",
            label="Quality",
            split=none,
        ),
        "classification",
    )
    assert len(mrpc.train) == 408 and mrpc.train.text_pairs is not None
    assert any('"' in t for t in mrpc.train.texts + mrpc.train.text_pairs)
    stsb = load_task_data(
        DataConfig(
            root=root,
            train="stsb/dev.tsv",
            text="sentence1",
            text_pair="sentence2",
            label="score",
            split=none,
        ),
        "regression",
    )
    assert len(stsb.train) == 1500 and stsb.train.labels.min() >= 0.0 and stsb.train.labels.max() <= 5.0
    cola = load_task_data(
        DataConfig(root=root, train="cola/dev.tsv", header=False, text="3", label="1", split=none),
        "classification",
    )
    assert len(cola.train) == 1043 and cola.label_names == ["0", "1"]


def test_hf_class_label_names_and_withheld_test_labels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])}
    )
    folder = tmp_path / "glue_like"
    folder.mkdir()
    for split, labels in (("train", [1, 0, 1, 1]), ("test", [-1, -1])):
        texts = [f"{split} {i}" for i in range(len(labels))]
        ds = datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)
        ds.to_parquet(str(folder / f"{split}.parquet"))
    data = load_task_data(
        DataConfig(dataset=str(folder), split=SplitConfig(validation=0.25)), "classification"
    )
    assert data.label_names == ["no", "yes"]
    assert (len(data.train), len(data.split("validation"))) == (3, 1)
    assert data.test is None and data.stats["test"]["skipped"] == "labels withheld (all -1)"


def test_regression_targets_beyond_float32_are_named(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("text,label\na,1.5\nb,1e39\nc,2\n")
    with pytest.raises(KdkitError, match=r"label '1e39' \(data row 2\) is beyond the float32 range"):
        load_task_data(DataConfig(train=str(path), split=SplitConfig(validation=0)), "regression")
