"""Several teachers (``teachers:`` beside ``teacher``): one teacher source made of one source per teacher.

Each teacher is live, read from its own `kdkit cache` dir, or served (``kdkit.teacher.source``,
``kdkit.teacher.served``), with a weight ``w_t`` (normalised to sum to 1). Two rules combine them
(``teacher.combine``):

- ``losses`` (default): the weighted sum of the method's loss against each teacher,
  ``L = sum_t w_t L(student, teacher_t)``. Each term is exactly the single-teacher loss, so it works from
  every source, top-k caches and servers included, for every method that can read them. For forward KL
  it has the gradient of the KL to the mixture (``sum_t w_t KL(p_t || q) = KL(p_mix || q) + const``);
  for the other divergences it is its own objective (the student is pulled towards each teacher).
- ``mixture``: the method's loss against the weighted mixture of the teachers' distributions at the
  method's temperature (``kdkit.losses.ensemble``): the classic ensemble soft target. It needs every
  teacher's full distribution: live teachers, or classifier caches (which hold all the logits); top-k
  caches and servers keep only each teacher's k most likely tokens, whose mixture is not known exactly,
  and are refused under it.

The student runs once per micro-batch whatever the number of teachers; ``losses`` calls the method's loss
once per teacher on the same student outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator

from kdkit.losses.ensemble import normalised
from kdkit.methods.base import Batch, LossOutput
from kdkit.teacher.source import TeacherSource

COMBINE = ("losses", "mixture")


@dataclass
class EnsembleOutputs:
    """The teachers' outputs for one batch under ``combine: losses``: one per teacher, with its weight."""

    outputs: list[Any]
    weights: list[float]  # normalised: they sum to 1


def combine_losses(results: list[LossOutput], weights: list[float]) -> LossOutput:
    """``sum_t w_t L_t`` and the same weighted sum of every logged part (a part one result lacks counts 0)."""
    loss = sum(w * r.loss for w, r in zip(weights, results, strict=True))
    keys = dict.fromkeys(k for r in results for k in r.parts)
    parts = {
        k: sum(w * r.parts[k] for w, r in zip(weights, results, strict=True) if k in r.parts) for k in keys
    }
    assert not isinstance(loss, int)
    return LossOutput(loss, parts)  # type: ignore[arg-type]


class EnsembleTeacher:
    """The teacher source of a run with several teachers (module docstring)."""

    def __init__(
        self,
        sources: list[TeacherSource],
        weights: list[float],
        combine: str,
        mix: Callable[[list[Any], list[float]], Any] | None = None,
    ) -> None:
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        if combine == "mixture" and mix is None:
            raise ValueError("combine='mixture' needs the family's mixing function")
        self.sources = sources
        self.weights = normalised(weights)
        self.combine = combine
        self.mix = mix

    def stream(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for source in self.sources:  # each served teacher keeps its own requests in flight
            batches = source.stream(batches)
        return batches

    def outputs(self, batch: Batch, accelerator: Accelerator) -> Any:
        outs = [source.outputs(batch, accelerator) for source in self.sources]
        if self.combine == "mixture":
            assert self.mix is not None
            return self.mix(outs, self.weights)
        return EnsembleOutputs(outs, self.weights)

    def close(self) -> None:
        for source in self.sources:
            source.close()
