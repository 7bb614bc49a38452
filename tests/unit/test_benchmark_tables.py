"""The benchmark scripts' statistics: mean ± sd and the paired per-seed comparison, which counts a lower
perplexity as better, and the causal-LM methods table built from them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import mean_sd, paired
from lm_methods import format_table


def test_mean_sd_scales_fractions_to_percent_by_default() -> None:
    assert mean_sd([0.85, 0.87]) == "86.00 ± 1.41"
    assert mean_sd([30.0, 32.0], 1.0) == "31.00 ± 1.41"
    assert mean_sd([0.5]) == "50.00 ± 0.00"


def test_paired_counts_the_better_side() -> None:
    assert paired([0.86, 0.85, 0.84], [0.85, 0.85, 0.85]) == "+0.00 ± 1.00 (1/3 ahead)"
    # perplexity: lower is better, so two of three seeds are better although the mean difference is positive
    assert paired([29.0, 28.0, 35.0], [30.0, 29.0, 30.0], 1.0, True) == "+1.00 ± 3.46 (2/3 lower)"
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0])


def test_lm_methods_table_pairs_each_method_with_forward_kl_by_seed() -> None:
    def run(ppl: float, rouge: float) -> dict[str, float]:
        return {"perplexity": ppl, "rouge_l": rouge, "train_seconds": 600.0}

    result = {
        "args": {"seeds": [1, 2]},
        "teacher": {"perplexity": 10.0, "rouge_l": 20.0},
        "before": {"perplexity": 100.0, "rouge_l": 1.0},
        "runs": {
            "sft": {"1": run(40.0, 10.0)},  # only seed 1 finished: paired over that seed alone
            "forward_kl": {"1": run(30.0, 16.0), "2": run(32.0, 18.0)},
            "reverse_kl": {},  # no finished run: no row
            "atkd": {"1": run(29.0, 17.0), "2": run(31.0, 19.0)},
        },
    }
    lines = format_table(result).splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert "reverse KL" not in rows
    assert rows["forward KL"].startswith(
        "| forward KL | 2 | 31.00 ± 1.41 (3.10x) | 17.00 ± 1.41 (85.0%) | - | - |"
    )
    assert "| -1.00 ± 0.00 (2/2 lower) | +1.00 ± 0.00 (2/2 ahead) | 10 min |" in rows["ATKD (forward)"]
    assert "| SFT (no teacher) | 1 | 40.00 ± 0.00 (4.00x) |" in rows["SFT (no teacher)"]
    assert "+10.00 ± 0.00 (0/1 lower)" in rows["SFT (no teacher)"]
