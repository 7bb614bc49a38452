from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kdkit.errors import KdkitError
from kdkit.eval.generation_speed import _generate, greedy_tokens_per_second


def test_every_model_makes_exactly_the_asked_tokens_and_gets_a_speed(tiny_lm: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    # every token but one an end of sequence: generation must still run on to the asked length
    model.generation_config.eos_token_id = [i for i in range(model.config.vocab_size) if i != 7]
    assert _generate(model, [5, 6, 7], 9) == 9
    smaller = AutoModelForCausalLM.from_pretrained(tiny_lm, num_hidden_layers=1).eval()
    speeds = greedy_tokens_per_second({"big": model, "small": smaller}, [[5, 6], [7, 8, 9]], 5, rounds=2)
    assert set(speeds) == {"big", "small"} and all(v > 0 for v in speeds.values())


@pytest.mark.parametrize(("prompts", "new_tokens"), [([], 4), ([[]], 4), ([[1]], 0)])
def test_bad_settings_are_named(tiny_lm: Path, prompts: list[list[int]], new_tokens: int) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    with pytest.raises(KdkitError, match="generation speed needs"):
        greedy_tokens_per_second({"m": model}, prompts, new_tokens)
