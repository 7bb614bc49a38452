"""Causal-LM data: prompt/response pairs (instruction tuning) or plain text, read and split.

A record becomes a prompt (the model's input, not trained on) and a response (trained on), as in
MiniLLM (Gu et al., 2024, "MiniLLM: Knowledge Distillation of Large Language Models", §3) and GKD
(Agarwal et al., 2024): the prompt comes from ``data.prompt`` or is built with ``data.prompt_template``;
the response from ``data.response``, which may hold a list of reference answers (Super-NaturalInstructions):
the first is trained on, all are kept for ROUGE-L. ``data.response: null`` reads plain text from
``data.text`` (language modelling: every token is trained).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from kdkit.assets import ASSETS, is_asset
from kdkit.config import DataConfig
from kdkit.data.sources import read_splits, resolve_data_path
from kdkit.data.tables import FORMAT_BY_EXTENSION, read_table
from kdkit.data.task_data import SplitAccess, hold_out, is_missing, subsample, text_values
from kdkit.errors import KdkitError, did_you_mean

# `{name}` placeholders only: a template is user text, so never str.format (no attribute/index access)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


@dataclass
class LMSplit:
    """N causal-LM examples of one split."""

    prompts: list[str]  # N prompts (before any chat template); "" for plain text
    responses: list[str]  # N trained responses; plain text: the whole text
    references: list[list[str]]  # N lists of reference answers (for ROUGE-L); at load, [0] is the response
    plain: bool = False  # plain text: no prompt, every token is trained

    def __post_init__(self) -> None:
        if not len(self.prompts) == len(self.responses) == len(self.references):
            raise ValueError("prompts, responses and references must have the same length")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LMSplit:
        """The examples at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1).tolist()
        return LMSplit(
            prompts=[self.prompts[i] for i in idx],
            responses=[self.responses[i] for i in idx],
            references=[list(self.references[i]) for i in idx],
            plain=self.plain,
        )


def with_responses(split: LMSplit, responses: list[str]) -> LMSplit:
    """``split`` with its responses replaced (e.g. by teacher generations); prompts and references kept."""
    if split.plain:
        raise KdkitError("plain-text data has no prompts to respond to; set data.response to a field")
    if len(responses) != len(split):
        raise KdkitError(f"got {len(responses)} responses for a split of {len(split)} prompts")
    return LMSplit(list(split.prompts), list(responses), [list(r) for r in split.references])


@dataclass(eq=False)
class LMData(SplitAccess):
    """The splits of a causal-LM task."""

    train: LMSplit
    validation: LMSplit | None
    test: LMSplit | None
    stats: dict[str, Any] = field(default_factory=dict)  # per split: source, rows read/dropped/kept, ...


def load_lm_data(data: DataConfig) -> LMData:
    """Read, map fields, split and subsample the data of a causal-LM task.

    Rows with a missing or empty response (plain text: empty text) are dropped and counted in ``stats``.
    Missing validation (and test, when ``data.split.test > 0``) splits are held out of train with a
    seeded permutation (``data.split.seed``); ``max_train_samples``/``max_eval_samples`` then take seeded
    random subsets, exactly as for classification.
    """
    raws = read_splits(data, str(data.response if data.response is not None else data.text))
    stats: dict[str, Any] = {}
    splits: dict[str, LMSplit | None] = {}
    for name, raw in raws.items():
        stats[name] = {"source": raw.source}
        if raw.skipped:
            stats[name]["skipped"] = raw.skipped
            continue
        splits[name] = lm_split(raw.frame, raw.source, data, stats[name])
    hold_out(splits, data, stats)  # type: ignore[arg-type]  # needs only len() and subset()
    subsample(splits, data, stats)  # same draws as the classification path
    for name, split in splits.items():
        if split is not None:
            stats[name]["rows"] = len(split)
    train = splits["train"]
    assert train is not None
    return LMData(train, splits.get("validation"), splits.get("test"), stats)


def load_lm_file(path: str, data: DataConfig) -> LMSplit:
    """One extra evaluation file (``eval.datasets``), resolved like ``data.train`` and mapped the same way.

    The format comes from the file's extension (a training ``data.format`` may not fit it), falling back
    to ``data.format`` for an unknown extension.
    """
    resolved = resolve_data_path(path, data)
    fmt = "auto" if resolved.suffix.lower() in FORMAT_BY_EXTENSION else data.format
    encoding = ASSETS[path].encoding if is_asset(path, "dataset") else data.encoding
    frame = read_table(resolved, fmt, header=data.header, encoding=encoding)
    return lm_split(frame, str(resolved), data, {})


def lm_split(frame: pd.DataFrame, source: str, data: DataConfig, stats: dict[str, Any]) -> LMSplit:
    """Map a table's records to an ``LMSplit`` with ``data``'s fields; count and drop empty responses.

    ``stats`` receives ``rows_read`` and ``dropped_empty_response``. ``source`` names the file in errors.
    """
    stats["rows_read"] = len(frame)
    if len(frame) == 0:
        raise KdkitError(f"{source}: the file has no rows")
    plain = data.response is None
    what = "text" if plain else "response"
    column = str(data.text) if plain else str(data.response)
    _require(frame, source, column, f"data.{what}")
    references = [_references(v) for v in frame[column].tolist()]
    if plain:
        prompts = [""] * len(frame)
    elif data.prompt_template is not None:
        prompts = fill_template(data.prompt_template, frame, source)
    else:
        _require(frame, source, str(data.prompt), "data.prompt")
        prompts = text_values(frame[str(data.prompt)], source, f"'{data.prompt}' (data.prompt)")
    keep = [i for i, refs in enumerate(references) if refs]
    stats["dropped_empty_response"] = len(frame) - len(keep)
    if not keep:
        raise KdkitError(f"{source}: every row has an empty {what} in field '{column}' (data.{what})")
    return LMSplit(
        prompts=[prompts[i] for i in keep],
        responses=[references[i][0] for i in keep],
        references=[references[i] for i in keep],
        plain=plain,
    )


def fill_template(template: str, frame: pd.DataFrame, source: str = "data") -> list[str]:
    """One prompt per row: each ``{field}`` in ``template`` replaced by that row's value (missing -> "").

    Only ``{name}`` placeholders are substituted (a regex, not ``str.format``): other braces stay as text.
    An unknown field is a ``KdkitError`` listing the fields the data has.
    """
    fields = list(dict.fromkeys(_PLACEHOLDER.findall(template)))
    existing = [str(c) for c in frame.columns]
    for name in fields:
        if name not in existing:
            raise KdkitError(
                f"{source}: data.prompt_template uses field '{name}' that the data does not have"
                f"{did_you_mean(name, existing)}; its fields: {', '.join(existing)}"
            )
    values = {name: ["" if is_missing(v) else str(v) for v in frame[name].tolist()] for name in fields}

    def fill(i: int) -> str:  # one pass over the template: a value holding "{x}" is not filled again
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)][i], template)

    return [fill(i) for i in range(len(frame))]


def _references(value: Any) -> list[str]:
    """The non-empty reference answers in a response value: a string, or a list of them (S-NI)."""
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    return [str(v) for v in items if not is_missing(v)]


def _require(frame: pd.DataFrame, source: str, column: str, key: str) -> None:
    if column not in frame.columns:
        existing = [str(c) for c in frame.columns]
        raise KdkitError(
            f"{source}: no field '{column}' ({key}){did_you_mean(column, existing)}; "
            f"its fields: {', '.join(existing)}"
        )
