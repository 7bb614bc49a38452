"""`kdkit predict`: labels and probabilities of a saved classifier for texts; a run whose method serves
its own predictor (e.g. with retrieval from its knowledge base) is served by it, unless ``--no-retrieval``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.commands.runs import run_method
from kdkit.config import read_yaml
from kdkit.data.tables import read_table
from kdkit.data.task_data import text_values
from kdkit.errors import KdkitError
from kdkit.eval.predict import ClassifierPredictor
from kdkit.layout import CONFIG
from kdkit.methods.base import Predictor
from kdkit.models import load_tokenizer
from kdkit.models.load import load_trained_classifier


def read_inputs(
    texts: list[str] | None, path: str | None, text_column: str, pair_column: str | None
) -> tuple[list[str], list[str] | None]:
    """The texts given on the command line, or the columns of an input file."""
    if texts:
        return list(texts), None
    assert path is not None
    file = Path(path)
    if not file.is_file():
        raise KdkitError(f"--input: no file {file}")
    try:
        frame = read_table(file)
    except KdkitError as err:  # predict reads csv, tsv, jsonl, json or parquet by the file's extension
        raise KdkitError(
            str(err).replace("set data.format to one of", "name the file with one of the extensions of")
        ) from None
    if frame.empty:
        raise KdkitError(f"--input {file} has no rows: nothing to predict")
    columns = [text_column] + ([pair_column] if pair_column else [])
    for col in columns:
        if col not in frame.columns:
            raise KdkitError(
                f"--input {file}: no column '{col}'; columns: {', '.join(map(str, frame.columns))}"
            )
    texts = _column_texts(frame[text_column], file, text_column)
    pairs = _column_texts(frame[pair_column], file, pair_column) if pair_column else None
    return texts, pairs


def _column_texts(values: Any, file: Path, column: str) -> list[str]:
    """One prediction per row: every row needs a text (a null or a blank one, or a list, is refused)."""
    texts = text_values(values, f"--input {file}", f"'{column}'")
    blank = [i for i, t in enumerate(texts, start=1) if not t.strip()]
    if blank:
        raise KdkitError(
            f"--input {file}: row {blank[0]} has no text in column '{column}' ({len(blank)} such rows)"
        )
    return texts


def saved_max_length(run_dir: Path) -> int:
    """The student's max_length of a run dir (its config.yaml), else 128."""
    saved = run_dir / CONFIG
    if saved.is_file():
        student = read_yaml(saved).get("student") or {}
        if isinstance(student, dict) and student.get("max_length"):
            return int(student["max_length"])
    return 128


def load_predictor(model_dir: Path, settings: dict[str, Any]) -> tuple[Predictor, bool]:
    """The run's own predictor (from its method) or the plain classifier; and whether it is the method's.
    ``settings``: inference settings asked for on the command line (refused for a plain run)."""
    found = run_method(model_dir)
    predictor = found[0].predictor(found[1], model_dir, settings) if found is not None else None
    if predictor is not None:
        return predictor, True
    if settings:
        raise KdkitError(
            f"--{'/--'.join(sorted(settings))} need a run whose method serves them (a ReAugKD run dir with its "
            f"knowledge base); {model_dir} is not one"
        )
    model = load_trained_classifier(str(model_dir))
    tokenizer = load_tokenizer(str(model_dir), model.config)
    return ClassifierPredictor(model, tokenizer, saved_max_length(model_dir)), False


def predict(
    model_dir: str | Path,
    texts: list[str] | None = None,
    *,
    input_file: str | None = None,
    text_column: str = "text",
    pair_column: str | None = None,
    batch_size: int = 32,
    retrieval: bool = True,
    settings: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per text: ``{"text", "label", "probs", "retrieval"}``."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise KdkitError(f"--model {model_dir}: no saved model (config.json missing)")
    if batch_size < 1:
        raise KdkitError(f"--batch-size must be >= 1, got {batch_size}")
    texts, pairs = read_inputs(texts, input_file, text_column, pair_column)
    predictor, own = load_predictor(model_dir, settings or {})
    retrieval = own and retrieval
    probs = predictor.predict_proba(texts, pairs, batch_size=batch_size, retrieval=retrieval)
    id2label = predictor.model.config.id2label
    return [
        {
            "text": t,
            "label": id2label[int(p.argmax())],
            "probs": [round(float(x), 6) for x in p],
            "retrieval": retrieval,
        }
        for t, p in zip(texts, probs, strict=True)
    ]
