"""ROUGE-L (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", Sec. 3.1), sentence level.

Matches Google's ``rouge_score`` (``RougeScorer(["rougeL"], use_stemmer=True)``) to the last bit, which is
what MiniLLM (Gu et al. 2024, microsoft/LMOps ``minillm/rouge_metric.py``) and the causal-LM KD papers that
reuse its evaluation (ATKD, DistiLLM) report: lowercase, every run of characters outside ``[a-z0-9]`` is a
separator, tokens longer than 3 characters are Porter-stemmed (NLTK's ``PorterStemmer``), F-measure with
beta = 1, the best over the references, and x100 averaged over examples. No run-time dependency except NLTK
when stemming, imported on first use.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from kdkit.errors import KdkitError

_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


@lru_cache(maxsize=1)
def _porter() -> Callable[[str], str]:
    try:  # nltk: heavy, and only ROUGE-L with stemming needs it
        from nltk.stem import porter
    except ImportError as err:  # nltk comes with rouge-score; kdkit itself does not need it otherwise
        raise KdkitError(
            "ROUGE-L with stemming needs nltk, which is not installed; `pip install nltk` or pass use_stemmer=False"
        ) from err
    # rouge_score builds PorterStemmer() with its default mode (NLTK_EXTENSIONS); so do we, to match it.
    return lru_cache(maxsize=65536)(porter.PorterStemmer().stem)


def rouge_tokens(text: str, use_stemmer: bool = True) -> list[str]:
    """``rouge_score``'s default tokenisation of ``text``: lowercase, ``[a-z0-9]+`` runs, stems of long words.

    Non-ASCII letters are separators (as in ``rouge_score``), so text without ASCII letters or digits has no
    tokens.
    """
    tokens = _NON_ALPHANUM.split(text.lower())
    if use_stemmer:
        stem = _porter()
        tokens = [stem(t) if len(t) > 3 else t for t in tokens]  # rouge_score stems only words of 4+ chars
    return [t for t in tokens if _VALID_TOKEN.match(t)]


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of token lists ``a`` and ``b``.

    Bit-parallel (Hyyrö 2004, "Bit-parallel LCS-length computation revisited", after Allison & Dix 1986):
    one pass over ``a`` with Python ints as bit vectors over ``b``, O(len(a) * len(b) / word size) instead
    of the O(len(a) * len(b)) table, which matters for long generations against long references.
    """
    if not a or not b:
        return 0
    match: dict[str, int] = {}  # token -> bit i set where b[i] == token
    for i, token in enumerate(b):
        match[token] = match.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full  # zero bits of v mark the columns where the LCS grew
    for token in a:
        u = v & match.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - v.bit_count()


def _f_measure(reference: list[str], prediction: list[str]) -> float:
    if not reference or not prediction:
        return 0.0
    lcs = lcs_length(reference, prediction)
    precision = lcs / len(prediction)
    recall = lcs / len(reference)
    # Same expression and operation order as rouge_score.scoring.fmeasure, so the floats are identical.
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_l(prediction: str, references: list[str], use_stemmer: bool = True) -> float:
    """ROUGE-L F-measure of ``prediction`` against the best of ``references``, in [0, 1].

    Equals ``max(RougeScorer(["rougeL"], use_stemmer=use_stemmer).score(r, prediction)["rougeL"].fmeasure
    for r in references)``. An empty prediction or reference (no tokens) scores 0.
    """
    if isinstance(references, str) or not references:
        raise KdkitError(
            f"rouge_l needs a non-empty list of reference strings, got {type(references).__name__} "
            f"{references!r:.60}; wrap a single reference in a list"
        )
    pred = rouge_tokens(prediction, use_stemmer)
    return max(_f_measure(rouge_tokens(r, use_stemmer), pred) for r in references)


def mean_rouge_l(predictions: list[str], references: list[list[str]], use_stemmer: bool = True) -> float:
    """Mean of :func:`rouge_l` over examples, x100 (as MiniLLM and the papers after it report it)."""
    if len(predictions) != len(references):
        raise KdkitError(
            f"mean_rouge_l got {len(predictions)} predictions and {len(references)} reference lists; "
            "give one list of references per prediction"
        )
    if not predictions:
        raise KdkitError("mean_rouge_l got no predictions; evaluate at least one example")
    return (
        100.0
        * sum(rouge_l(p, r, use_stemmer) for p, r in zip(predictions, references, strict=True))
        / len(predictions)
    )
