"""Where the rows of each split come from: files (or a named dataset asset) or a Hugging Face dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdkit.assets import ASSETS, asset_path, is_asset
from kdkit.config import DataConfig, data_root
from kdkit.data.tables import read_table
from kdkit.errors import KdkitError, did_you_mean

SPLITS = ("train", "validation", "test")


@dataclass
class RawSplit:
    """One split as read, before column mapping and label encoding."""

    frame: pd.DataFrame
    source: str  # file path, or "<dataset>[<split>]", used in error messages and stats
    label_names: list[str] | None = None  # class names from a datasets ClassLabel feature
    skipped: str | None = None  # why this split is not used (it is then treated as absent)


def resolve_data_path(value: str, data: DataConfig) -> Path:
    """A named dataset asset -> its file; an absolute path as is; a relative path under the data root.

    The data root is ``data.root``, else ``$KDKIT_DATA_ROOT``, else the current directory.
    """
    if is_asset(value, "dataset"):
        return asset_path(value, "dataset")
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    root = data_root(data)
    return (root / path) if root is not None else Path.cwd() / path


def read_splits(data: DataConfig, label_column: str) -> dict[str, RawSplit]:
    """Read the splits that have a source; ``train`` is required, absent splits are left out."""
    if data.dataset:
        return _read_hf_splits(data, label_column)
    if not data.train:
        raise KdkitError(
            "no training data: set data.train to a file (csv, tsv, jsonl, json, parquet) "
            "or the dataset asset 'tweets', or set data.dataset to a Hugging Face dataset"
        )
    out: dict[str, RawSplit] = {}
    for name in SPLITS:
        value = getattr(data, name)
        if value:
            path = resolve_data_path(value, data)
            encoding = ASSETS[value].encoding if is_asset(value, "dataset") else data.encoding
            frame = read_table(path, data.format, header=data.header, encoding=encoding)
            out[name] = RawSplit(frame, str(path))
    return out


def _read_hf_splits(data: DataConfig, label_column: str) -> dict[str, RawSplit]:
    """``datasets.load_dataset(data.dataset, data.subset)``; data.train/validation/test name its splits."""
    import datasets  # late import: slow, and only needed for this source

    name = str(data.dataset)
    local = resolve_data_path(name, data)
    target = str(local) if local.exists() else name  # a local directory of files, else a hub name
    try:
        loaded = datasets.load_dataset(target, data.subset)
    except Exception as err:  # datasets raises many types (FileNotFoundError, ValueError, hub errors)
        subset = f" (subset '{data.subset}')" if data.subset else ""
        message = " ".join(str(err).split())[:300]
        raise KdkitError(f"could not load dataset '{name}'{subset}: {message}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise KdkitError(f"dataset '{name}' did not load as a set of named splits")
    available = list(loaded.keys())
    out: dict[str, RawSplit] = {}
    for split in SPLITS:
        explicit = getattr(data, split)
        key = explicit or split
        if key not in loaded:
            if explicit or split == "train":
                raise KdkitError(
                    f"dataset '{name}' has no split '{key}'{did_you_mean(key, available)}; "
                    f"its splits: {', '.join(available)} (set data.{split})"
                )
            continue
        ds = loaded[key]
        feature = ds.features.get(label_column)
        names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        frame = ds.to_pandas()
        out[split] = RawSplit(frame, f"{name}[{key}]", names)
        if split != "train" and not explicit and names is not None and _hidden_labels(frame, label_column):
            # e.g. GLUE test splits: every label is -1 (withheld), so the split cannot be scored
            out[split].skipped = "labels withheld (all -1)"
    return out


def _hidden_labels(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and len(frame) > 0 and bool((frame[column] == -1).all())
