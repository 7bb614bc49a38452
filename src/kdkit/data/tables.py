"""Read one data file (csv, tsv, jsonl, json, parquet) into a DataFrame, with one-line errors.

Delimited text is read as strings (``keep_default_na=False``: a text "NA" or "null" stays text);
labels are converted later by ``task_data``. JSON and parquet keep their own value types.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd

from kdkit.errors import KdkitError, did_you_mean

FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")
FORMAT_BY_EXTENSION = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def read_table(
    path: Path, format: str = "auto", header: bool = True, encoding: str = "utf-8"
) -> pd.DataFrame:
    """Read a table of examples; column names are always strings.

    Args:
        path: the file.
        format: ``auto`` (from the extension), ``csv``, ``tsv``, ``jsonl``, ``json`` or ``parquet``.
        header: csv/tsv only; ``False`` names the columns ``"0"``, ``"1"``, ... (e.g. GLUE CoLA).
        encoding: text encoding of csv/tsv/json(l); a UTF-8 byte-order mark is skipped.

    Returns:
        A DataFrame with one row per example (N rows, one column per field).
    """
    path = Path(path)
    if not path.is_file():
        raise KdkitError(f"data file '{path}' does not exist")
    fmt = _pick_format(path, format)
    enc = _encoding(encoding)
    try:
        if fmt in ("csv", "tsv"):
            frame = _read_delimited(path, fmt, header, enc)
        elif fmt == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = _read_json(path, fmt, enc)
    except KdkitError:
        raise
    except UnicodeDecodeError as err:
        raise KdkitError(
            f"data file '{path}' is not valid {encoding} text (byte {err.start}); "
            f"set data.encoding, e.g. latin-1"
        ) from None
    except pd.errors.EmptyDataError:
        raise KdkitError(f"data file '{path}' is empty") from None
    except pd.errors.ParserError as err:
        raise KdkitError(f"data file '{path}' is not valid {fmt}: {_one_line(err)}") from None
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise KdkitError(f"data file '{path}' could not be read as {fmt}: {_one_line(err)}") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _pick_format(path: Path, format: str) -> str:
    if format == "auto":
        fmt = FORMAT_BY_EXTENSION.get(path.suffix.lower())
        if fmt is None:
            raise KdkitError(
                f"data file '{path}': cannot tell the format from the extension '{path.suffix}'; "
                f"set data.format to one of {', '.join(FORMATS)}"
            )
        return fmt
    if format not in FORMATS:
        raise KdkitError(
            f"unknown data format '{format}'{did_you_mean(format, FORMATS)}; "
            f"use auto or one of {', '.join(FORMATS)}"
        )
    return format


def _encoding(encoding: str) -> str:
    # utf-8-sig reads plain UTF-8 too, and drops the BOM that starts e.g. GLUE MRPC's header
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


def _read_delimited(path: Path, fmt: str, header: bool, encoding: str) -> pd.DataFrame:
    options: dict[str, Any] = {}
    if fmt == "tsv":
        # GLUE tsv files are not quoted: a lone '"' (MRPC) is text, not the start of a field
        options = {"sep": "\t", "quoting": csv.QUOTE_NONE}
    frame = pd.read_csv(
        path,
        header=0 if header else None,
        dtype=str,
        keep_default_na=False,
        encoding=encoding,
        **options,
    )
    return frame


def _read_json(path: Path, fmt: str, encoding: str) -> pd.DataFrame:
    text = path.read_text(encoding=encoding)
    if fmt == "json" and text.lstrip().startswith(("[", "{")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data": one object per line, i.e. jsonl
                raise KdkitError(
                    f"data file '{path}' is not valid json at line {err.lineno}: {err.msg}"
                ) from None
        else:
            return _records_frame(path, value)
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise KdkitError(f"data file '{path}' is not valid jsonl at line {lineno}: {err.msg}") from None
        if not isinstance(record, dict):
            raise KdkitError(
                f"data file '{path}' line {lineno}: expected a JSON object per line, got {type(record).__name__}"
            )
        records.append(record)
    if not records:
        raise KdkitError(f"data file '{path}' is empty (no records)")
    return pd.DataFrame.from_records(records)


def _records_frame(path: Path, value: Any) -> pd.DataFrame:
    """A JSON list of records, or an object of equal-length columns."""
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return pd.DataFrame.from_records(value)
    columns = value.values() if isinstance(value, dict) else []
    if columns and all(isinstance(v, list) for v in columns) and len({len(v) for v in columns}) == 1:
        return pd.DataFrame(value)
    raise KdkitError(
        f"data file '{path}': expected a JSON list of records (objects) or an object of equal-length columns"
    )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
