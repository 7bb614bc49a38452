"""Labels: class names -> ids (classification) and text -> float32 targets (regression)."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from kdkit.errors import KdkitError, did_you_mean

_INT = re.compile(r"[+-]?\d+")


def class_ids(
    splits: dict[str, tuple[pd.Series, str]], label_names: list[str] | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Map each split's labels to int64 class ids in one label space, fixed by train.

    Args:
        splits: split name -> (label values, source for messages); must hold "train".
        label_names: the class order when given; int labels then index it, string labels must be in it.
            When None: string labels -> sorted unique train values; int labels -> "0".."max of train".

    Returns:
        (split name -> ids of shape (N,), int64; the class names in id order)
    """
    train_values, train_source = splits["train"]
    train_unique = list(pd.unique(train_values))
    if label_names is not None:
        names = [str(n) for n in label_names]
        if len(set(names)) != len(names):
            raise KdkitError(f"data.label_names has duplicates: {names}")
        # names when the train labels are names (or not all int-like); ids 0..C-1 otherwise
        by_name = all(_key(v) in names for v in train_unique) or any(
            _as_int(v, train_source) is None for v in train_unique
        )
        known = f"one of the label names ({', '.join(names)})"
    else:
        ints = [_as_int(v, train_source) for v in train_unique]
        by_name = any(i is None for i in ints)
        if by_name:
            names = sorted({_key(v) for v in train_unique})
        else:
            _check_non_negative(ints, train_source)
            _check_dense(ints, train_source)
            names = [str(i) for i in range(max(ints) + 1)]
        known = f"in the train label space ({_short(names)}); set data.label_names to name every class"
    out = {}
    for split, (values, source) in splits.items():
        mapping = {v: _class_id(v, names, by_name, source, known) for v in pd.unique(values)}
        out[split] = np.asarray(values.map(mapping), dtype=np.int64)
    return out, names


def regression_targets(values: pd.Series, source: str) -> np.ndarray:
    """Real-valued targets, shape (N,), float32; a non-numeric value is an error naming it."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero(~np.isfinite(np.asarray(numbers, dtype=np.float64)))
    if len(bad):
        value = values.iloc[bad[0]]
        raise KdkitError(
            f"{source}: label {value!r} (data row {bad[0] + 1}) is not a number; "
            f"regression needs real-valued targets (for classes set task: classification)"
        )
    targets = np.asarray(numbers, dtype=np.float64)
    huge = np.flatnonzero(np.abs(targets) > np.finfo(np.float32).max)
    if len(huge):  # would become inf as a float32 target
        raise KdkitError(
            f"{source}: label {values.iloc[huge[0]]!r} (data row {huge[0] + 1}) is beyond the float32 range; "
            "rescale the regression targets"
        )
    return targets.astype(np.float32)


def _class_id(value: Any, names: list[str], by_name: bool, source: str, known: str) -> int:
    if by_name:
        key = _key(value)
        if key not in names:
            raise KdkitError(f"{source}: label '{key}' is not {known}{did_you_mean(key, names)}")
        return names.index(key)
    index = _as_int(value, source)
    if index is None:
        raise KdkitError(f"{source}: label '{value}' is not a class id (an int) nor {known}")
    if not 0 <= index < len(names):
        raise KdkitError(
            f"{source}: label {index} is out of range: it is not {known} (ids 0..{len(names) - 1})"
        )
    return index


def _as_int(value: Any, source: str) -> int | None:
    """An int-like label as int; None for a string label; a fractional number is an error."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if _INT.fullmatch(text):
            return int(text)
        try:
            value = float(text)
        except ValueError:
            return None
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise KdkitError(
            f"{source}: label {value!r} is not a class; for real-valued targets set task: regression"
        )
    return None


def _key(value: Any) -> str:
    """The name a label value is compared by: "1" for 1, 1.0 and " 1"; the stripped text otherwise."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return str(int(text)) if _INT.fullmatch(text) else text


def _check_non_negative(ints: list[int | None], source: str) -> None:
    low = min(i for i in ints if i is not None)
    if low < 0:
        raise KdkitError(
            f"{source}: label {low} is negative; class ids must be 0..C-1 (or set data.label_names)"
        )


def _check_dense(ints: list[int | None], source: str) -> None:
    """Class ids 0..max: a max far above the number of distinct ids is not a class id (e.g. a year, a
    score, a user id), and would make a head of that many classes."""
    distinct = {i for i in ints if i is not None}
    size = max(distinct) + 1
    if size > 1000 and size > 2 * len(distinct):
        raise KdkitError(
            f"{source}: label ids go up to {size - 1} but train has {len(distinct)} distinct labels; class "
            "ids must be 0..C-1: set data.label_names, or task: regression for real-valued targets"
        )


def _short(names: list[str], limit: int = 10) -> str:
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", ... ({len(names)})"
