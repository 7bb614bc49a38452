"""`kdkit predict`: labels and probabilities of a saved classifier for texts (ReAugKD runs: with retrieval
from the run's knowledge base, unless ``--no-retrieval``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kdkit.errors import KdkitError


def read_inputs(args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    if args.text:
        return list(args.text), None
    from kdkit.data.tables import read_table

    path = Path(args.input)
    if not path.is_file():
        raise KdkitError(f"--input: no file {path}")
    frame = read_table(path)
    columns = [args.text_column] + ([args.text_pair_column] if args.text_pair_column else [])
    for col in columns:
        if col not in frame.columns:
            raise KdkitError(
                f"--input {path}: no column '{col}'; columns: {', '.join(map(str, frame.columns))}"
            )
    texts = frame[args.text_column].astype(str).tolist()
    pairs = frame[args.text_pair_column].astype(str).tolist() if args.text_pair_column else None
    return texts, pairs


def predict_command(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per text: ``{"text", "label", "probs"}`` (and ``"retrieval": bool``)."""
    from kdkit.retrieval.predictor import ReAugPredictor
    from kdkit.retrieval.predictor import saved_max_length as _max_length
    from kdkit.retrieval.resolve import KB_DIR

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        raise KdkitError(f"--model {model_dir}: no saved model (config.json missing)")
    if args.batch_size < 1:
        raise KdkitError(f"--batch-size must be >= 1, got {args.batch_size}")
    texts, pairs = read_inputs(args)
    has_kb = (model_dir / KB_DIR / "meta.json").is_file()
    if has_kb:
        predictor = ReAugPredictor.from_pretrained(model_dir, beta=args.beta, k=args.k)
    else:
        if args.beta is not None or args.k is not None:
            raise KdkitError(f"--beta/--k need a ReAugKD run dir; {model_dir} has no {KB_DIR}/")
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        predictor = ReAugPredictor(model, tokenizer, None, max_length=_max_length(model_dir))
    retrieval = has_kb and not args.no_retrieval
    probs = predictor.predict_proba(texts, pairs, batch_size=args.batch_size, retrieval=retrieval)
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
