from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kdkit.data import read_table
from kdkit.errors import KdkitError

ROWS = {
    "text": ["a good movie", "NA", 'it\'s "fine"', "null"],
    "label": ["pos", "neg", "pos", "neg"],
}


def write(path: Path, fmt: str, rows: dict[str, list]) -> Path:
    frame = pd.DataFrame(rows)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        lines = ["\t".join(rows)] + ["\t".join(str(v) for v in r) for r in zip(*rows.values(), strict=True)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_every_format_reads_the_same_table(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path / f"train.{fmt}", fmt, ROWS)
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label"]
    assert frame.to_dict("list") == ROWS  # "NA" and "null" stay text; quotes kept


def test_explicit_format_overrides_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "data.dat", "tsv", ROWS)
    assert read_table(path, format="tsv").to_dict("list") == ROWS


def test_json_extension_holding_jsonl_and_columns(tmp_path: Path) -> None:
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    assert read_table(lines).to_dict("list") == {"text": ["a", "b"], "label": [1, 0]}
    columns = tmp_path / "cols.json"
    columns.write_text('{"text": ["a", "b"], "label": [1, 0]}')
    assert read_table(columns).to_dict("list") == {"text": ["a", "b"], "label": [1, 0]}


def test_headerless_tsv_names_columns_by_number(tmp_path: Path) -> None:
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tThe rope stretched over.\n")
    frame = read_table(path, header=False)
    assert list(frame.columns) == ["0", "1", "2", "3"]
    assert frame["3"].tolist() == ["The sailors rode the breeze.", "The rope stretched over."]
    assert frame["1"].tolist() == ["1", "0"]
    assert frame["2"].tolist() == ["", "*"]


def test_bom_is_skipped_and_unbalanced_quotes_are_text(tmp_path: Path) -> None:
    path = tmp_path / "mrpc.tsv"
    text = '\ufeffQuality\t#1 String\t#2 String\n1\tHe said " no .\tShe said " yes " .\n0\t"quoted\tplain\n'
    path.write_bytes(text.encode("utf-8"))
    frame = read_table(path)
    assert list(frame.columns) == ["Quality", "#1 String", "#2 String"]
    assert frame["#1 String"].tolist() == ['He said " no .', '"quoted']
    assert frame["#2 String"].tolist() == ['She said " yes " .', "plain"]


def test_latin1_file(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    assert read_table(path, encoding="latin-1")["text"].tolist() == ["caf\xe9"]
    with pytest.raises(KdkitError, match=r"not valid utf-8 text.*latin-1"):
        read_table(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KdkitError, match=r"data file '.*nope\.csv' does not exist"):
        read_table(tmp_path / "nope.csv")


def test_unknown_format_and_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "x.csv", "csv", ROWS)
    with pytest.raises(KdkitError, match=r"unknown data format 'jsonlines'.*did you mean 'jsonl'"):
        read_table(path, format="jsonlines")
    other = tmp_path / "x.xml"
    other.write_text("<a/>")
    with pytest.raises(KdkitError, match=r"cannot tell the format.*'\.xml'.*data\.format"):
        read_table(other)


def test_malformed_files_name_file_and_line(tmp_path: Path) -> None:
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("text\tlabel\na\t1\nb\t0\textra\n")
    with pytest.raises(KdkitError, match=r"bad\.tsv' is not valid tsv: .*line 3"):
        read_table(tsv)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(KdkitError, match=r"bad\.jsonl' is not valid jsonl at line 2"):
        read_table(jsonl)
    parquet = tmp_path / "bad.parquet"
    parquet.write_text("not parquet")
    with pytest.raises(KdkitError, match=r"bad\.parquet' could not be read as parquet"):
        read_table(parquet)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(KdkitError, match="is empty"):
        read_table(empty)
