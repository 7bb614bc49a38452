"""A classification or regression task's splits: texts (and text pairs) with class ids or real targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kdkit.config import DataConfig
from kdkit.data.labels import class_ids, regression_targets
from kdkit.data.sources import SPLITS, RawSplit, read_splits
from kdkit.errors import KdkitError, did_you_mean

TASKS = ("classification", "regression")


@dataclass(eq=False)  # labels is an array: field-wise == would be ambiguous
class Split:
    """N examples of one split."""

    texts: list[str]  # N texts
    text_pairs: list[str] | None  # N second texts of a pair (MRPC, STS-B), else None
    labels: np.ndarray  # (N,) int64 class ids (classification) or float32 targets (regression)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.texts) or (
            self.text_pairs is not None and len(self.text_pairs) != len(self.texts)
        ):
            raise ValueError("texts, text_pairs and labels must have the same length")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Split:
        """The examples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return Split(
            texts=[self.texts[i] for i in idx],
            text_pairs=None if self.text_pairs is None else [self.text_pairs[i] for i in idx],
            labels=self.labels[idx],
        )


class SplitAccess:
    """``has`` / ``available`` / ``split`` over the ``train``, ``validation`` and ``test`` attributes
    (shared by the classification data and the causal-LM data)."""

    def has(self, name: str) -> bool:
        """True when the split ``name`` exists."""
        return name in SPLITS and getattr(self, name) is not None

    def available(self) -> list[str]:
        """The names of the splits that exist, in train/validation/test order."""
        return [name for name in SPLITS if self.has(name)]

    def split(self, name: str) -> Any:
        """The split called ``name`` (train, validation or test); ``KdkitError`` if there is none."""
        if name not in SPLITS:
            raise KdkitError(
                f"unknown split '{name}'{did_you_mean(name, SPLITS)}; use train, validation or test"
            )
        value = getattr(self, name)
        if value is None:
            fraction = "data.split.validation" if name == "validation" else "data.split.test"
            raise KdkitError(
                f"there is no {name} split: set data.{name} to a file (or, with data.dataset, a split name), "
                f"or {fraction} to a fraction of train to hold out"
            )
        return value


@dataclass(eq=False)
class TaskData(SplitAccess):
    """The splits of one task, in one label space."""

    task: str  # "classification" | "regression"
    train: Split
    validation: Split | None
    test: Split | None
    label_names: list[str] | None  # class names in id order; None for regression
    stats: dict[str, Any] = field(default_factory=dict)  # per split: source, rows read/dropped/kept, ...

    @property
    def num_labels(self) -> int:
        """Output size of the model head: C classes, or 1 for regression."""
        return len(self.label_names) if self.label_names is not None else 1


def load_task_data(data: DataConfig, task: str) -> TaskData:
    """Read, clean, label-encode, split and subsample the data of a classification/regression task.

    Rows with empty text are dropped and counted in ``stats``. Missing validation (and test, when
    ``data.split.test > 0``) splits are held out of train with a seeded permutation
    (``data.split.seed``); ``max_train_samples``/``max_eval_samples`` then take seeded random subsets.
    """
    if task not in TASKS:
        raise KdkitError(
            f"unknown task '{task}'{did_you_mean(task, TASKS)}; use classification or regression"
        )
    raws = read_splits(data, str(data.label))
    stats: dict[str, Any] = {}
    columns: dict[str, tuple[list[str], list[str] | None, pd.Series]] = {}
    for name, raw in raws.items():
        if raw.skipped:
            stats[name] = {"source": raw.source, "skipped": raw.skipped}
            continue
        columns[name] = _columns(raw, data, stats.setdefault(name, {"source": raw.source}))

    label_names: list[str] | None = None
    if task == "classification":
        given = data.label_names if data.label_names is not None else raws["train"].label_names
        labels, label_names = class_ids({n: (c[2], raws[n].source) for n, c in columns.items()}, given)
    else:
        labels = {n: regression_targets(c[2], raws[n].source) for n, c in columns.items()}
    splits: dict[str, Split | None] = {n: Split(c[0], c[1], labels[n]) for n, c in columns.items()}

    hold_out(splits, data, stats)
    subsample(splits, data, stats)
    for name, split in splits.items():
        if split is not None:
            stats[name]["rows"] = len(split)
            if label_names is not None:
                counts = np.bincount(split.labels, minlength=len(label_names))
                stats[name]["label_counts"] = dict(zip(label_names, counts.tolist(), strict=True))
    train = splits["train"]
    assert train is not None
    return TaskData(task, train, splits.get("validation"), splits.get("test"), label_names, stats)


def _columns(
    raw: RawSplit, data: DataConfig, stats: dict[str, Any]
) -> tuple[list[str], list[str] | None, pd.Series]:
    """(texts, text pairs or None, label values) of the rows whose text (and pair) is not empty."""
    frame = raw.frame
    wanted = {"text": str(data.text), "label": str(data.label)}
    if data.text_pair is not None:
        wanted["text_pair"] = str(data.text_pair)
    for key, column in wanted.items():
        if column not in frame.columns:
            existing = [str(c) for c in frame.columns]
            hint = ""
            if data.dataset is None and data.header:
                hint = (
                    "; if the file has no header row, set data.header: false (columns are then 0, 1, 2, ...)"
                )
            raise KdkitError(
                f"{raw.source}: no column '{column}' (data.{key}){did_you_mean(column, existing)}; "
                f"its columns: {', '.join(existing)}{hint}"
            )
    stats["rows_read"] = len(frame)
    if len(frame) == 0:
        raise KdkitError(f"{raw.source}: the file has no rows")
    texts = text_values(frame[wanted["text"]], raw.source, f"'{wanted['text']}' (data.text)")
    keep = np.array([bool(t.strip()) for t in texts])
    pairs = None
    if "text_pair" in wanted:
        pairs = text_values(
            frame[wanted["text_pair"]], raw.source, f"'{wanted['text_pair']}' (data.text_pair)"
        )
        keep &= np.array([bool(t.strip()) for t in pairs])
    stats["dropped_empty_text"] = int((~keep).sum())
    if not keep.any():
        raise KdkitError(
            f"{raw.source}: every row has an empty text in column '{wanted['text']}' (data.text)"
        )
    idx = np.flatnonzero(keep)
    labels = frame[wanted["label"]].iloc[idx].reset_index(drop=True)
    missing = np.flatnonzero([is_missing(v) for v in labels])
    if len(missing):
        raise KdkitError(
            f"{raw.source}: {len(missing)} rows have no label in column '{wanted['label']}' "
            f"(first: data row {idx[missing[0]] + 1}); fill or remove them"
        )
    texts = [texts[i] for i in idx]
    pairs = None if pairs is None else [pairs[i] for i in idx]
    return texts, pairs, labels


def text_values(values: pd.Series, source: str, column: str) -> list[str]:
    """The texts of a column; a missing value (null, NaN, blank) is an empty text (its row is dropped), and
    a value that is no text (a list or an object, e.g. in jsonl) is refused, naming the row."""
    out = []
    for row, value in enumerate(values.tolist(), start=1):
        if isinstance(value, (list, dict, tuple)) or (hasattr(value, "shape") and getattr(value, "ndim", 0)):
            raise KdkitError(
                f"{source}: row {row}, column {column} holds a {type(value).__name__}, not a text; "
                "give one string per row"
            )
        out.append("" if is_missing(value) else str(value))
    return out


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    return isinstance(value, str) and not value.strip()


def seeded_subset(split: Any, limit: int | None, seed: int | list[int]) -> Any:
    """``limit`` examples of ``split`` drawn with ``seed``, kept in their order; the split itself when it
    has no more than ``limit`` (any object with ``len()`` and ``subset(indices)``)."""
    if limit is None or limit >= len(split):
        return split
    rng = np.random.default_rng(seed)
    return split.subset(np.sort(rng.choice(len(split), size=limit, replace=False)))


def subsample(splits: dict[str, Any], data: DataConfig, stats: dict[str, Any]) -> None:
    """``max_train_samples`` / ``max_eval_samples``: seeded random subsets of each split, in place."""
    for salt, name in enumerate(SPLITS, start=1):
        limit = data.max_train_samples if name == "train" else data.max_eval_samples
        split = splits.get(name)
        if split is not None and limit is not None and limit < len(split):
            splits[name] = seeded_subset(split, limit, [data.split.seed, salt])
            stats[name]["sampled_from"] = len(split)


def hold_out(splits: dict[str, Split | None], data: DataConfig, stats: dict[str, Any]) -> None:
    """Split validation (and test) off train with a seeded permutation when they have no source."""
    fractions = {
        name: getattr(data.split, name)
        for name in ("validation", "test")
        if splits.get(name) is None and getattr(data.split, name) > 0
    }
    if not fractions:
        return
    train = splits["train"]
    assert train is not None
    n = len(train)
    sizes = {name: max(1, round(frac * n)) for name, frac in fractions.items()}
    if n - sum(sizes.values()) < 1:
        raise KdkitError(
            f"train has {n} rows: too few to hold out {' and '.join(sizes)} "
            f"(data.split); provide data.validation/data.test or more training rows"
        )
    order = np.random.default_rng(data.split.seed).permutation(n)
    start = 0
    for name, size in sizes.items():
        splits[name] = train.subset(np.sort(order[start : start + size]))
        stats[name] = {"source": f"split of train ({fractions[name]:g}, seed {data.split.seed})"}
        start += size
    splits["train"] = train.subset(np.sort(order[start:]))
    stats["train"]["held_out"] = start
