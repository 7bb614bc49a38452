"""Where a run's teacher outputs come from: one teacher (live, cached or served), or several of them
(``teachers:`` beside ``teacher``, combined by ``teacher.combine``: ``kdkit.teacher.ensemble``).

Each extra teacher is set up exactly as the run's own teacher would be if it were alone: the run's config
with that teacher's model, cache dir or server in place of ``teacher``'s, through the same family calls
(checks, loading or not loading its weights, its cache's provenance, its server's fingerprint). Every
teacher must tokenize as the run's teacher does: one batch of token ids feeds them all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

from accelerate import Accelerator

from kdkit.config import Config, TeacherEntry
from kdkit.errors import KdkitError, note
from kdkit.family import Family, Job, Student, Teacher
from kdkit.fingerprint import model_fingerprint, tokenizer_fingerprint
from kdkit.teacher.ensemble import EnsembleTeacher
from kdkit.teacher.served import ServedTeacher
from kdkit.teacher.source import CachedTeacher, LiveTeacher, TeacherSource


def entry_config(config: Config, entry: TeacherEntry) -> Config:
    """The run's config as if ``entry`` were its only teacher (never fine-tuned: it is used as it is)."""
    teacher = replace(
        config.teacher, model=entry.model, tokenizer=None, finetune=None, server=entry.server,
        server_api=entry.server_api, server_model=entry.server_model, weight=entry.weight,
    )  # fmt: skip
    return replace(config, teacher=teacher, cache=replace(config.cache, dir=entry.cache), teachers=[])


def check_teachers(config: Config, family: Family, job: Job) -> None:
    """Refuse, before anything is loaded, several teachers where the run cannot combine them."""
    if not config.teachers or not job.teaches or job.which != "student":
        return
    if not job.method.several_teachers:
        raise KdkitError(
            f"method '{job.method.name}' takes one teacher (its resources are built from it); remove `teachers`"
        )
    for i, entry in enumerate(config.teachers):
        sub = entry_config(config, entry)
        try:
            family.check(sub, family.job(sub, job.kind, job.which))
        except KdkitError as err:
            raise KdkitError(f"teachers[{i}] ({entry.model}): {err}") from None
    if config.teacher.combine == "mixture":
        if job.method.needs_hidden_states(config.method):
            raise KdkitError(
                "teacher.combine: mixture mixes the teachers' distributions, not their hidden states; set "
                "method.hidden_weight: 0 or teacher.combine: losses"
            )
        topk = config.task == "causal_lm" and (
            job.cached or job.served or any(e.cache or e.server for e in config.teachers)
        )
        if topk:
            raise KdkitError(
                "teacher.combine: mixture needs every teacher's full distribution, and a causal-LM cache or server "
                "keeps only each teacher's top-k; use live teachers, or teacher.combine: losses (exact from top-k)"
            )


def check_other_teachers(
    config: Config, family: Family, job: Job, data: Any, accelerator: Accelerator
) -> None:
    """Each extra teacher passes the same check as the run's teacher (``teacher.check``), before training."""
    if not job.teaches or job.which != "student":
        return
    for i, entry in enumerate(config.teachers):
        try:
            line = family.check_teacher(
                entry_config(config, entry), job.train, data, entry.model, accelerator
            )
        except KdkitError as err:
            raise KdkitError(f"teachers[{i}] ({entry.model}): {err}") from None
        if line:
            note(f"teachers[{i}] ({entry.model}): {line}")


def teachers_fingerprint(config: Config) -> dict[str, str] | None:
    """What the extra teachers are, how they are weighted and combined (recorded, checked by --resume)."""
    if not config.teachers:
        return None
    parts = [config.teacher.weight, config.teacher.combine] + [
        [model_fingerprint(e.model), e.weight, e.cache, e.server] for e in config.teachers
    ]
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
    names = ", ".join(e.model for e in config.teachers)
    return {"what": f"the other teachers ({names}), their weights and teacher.combine", "fingerprint": digest}


def teacher_source(
    family: Family,
    config: Config,
    job: Job,
    data: Any,
    teacher: Teacher | None,
    student: Student,
    run_data: Any,
    method: Any,
    accelerator: Accelerator,
) -> TeacherSource | None:
    """Where the loop gets the teacher's outputs: one teacher's source, all the teachers' combined, or
    nowhere (fine-tuning)."""
    if teacher is None:
        return None
    source = _single_source(family, config, job, data, teacher, run_data, method, accelerator)
    if not config.teachers or job.which != "student":
        return source
    sources: list[TeacherSource] = [source]
    for i, entry in enumerate(config.teachers):
        sub = entry_config(config, entry)
        sub_job = family.job(sub, job.kind, job.which)
        other = family.load_teacher(sub, entry.model, student, sub_job, accelerator, data)
        _check_same_tokens(i, entry, teacher, other)
        sources.append(_single_source(family, sub, sub_job, data, other, run_data, method, accelerator))
    weights = [config.teacher.weight] + [e.weight for e in config.teachers]
    return EnsembleTeacher(
        sources, weights, config.teacher.combine, lambda outs, w: family.mix_teachers(config, outs, w)
    )


def _check_same_tokens(i: int, entry: TeacherEntry, teacher: Teacher, other: Teacher) -> None:
    same = (
        other.same_tokenizer
        and teacher.same_tokenizer
        and (tokenizer_fingerprint(other.tokenizer) == tokenizer_fingerprint(teacher.tokenizer))
    )
    if not same:
        raise KdkitError(
            f"teachers[{i}] ({entry.model}) tokenizes differently from teacher.model ({teacher.name}); several "
            "teachers must share one tokenizer (distil from another tokenizer with a single teacher)"
        )
    if teacher.vocab is not None and other.vocab is not None and other.vocab != teacher.vocab:
        raise KdkitError(
            f"teachers[{i}] ({entry.model}) compares {other.vocab} tokens, teacher.model {teacher.vocab}"
        )


def _single_source(
    family: Family,
    config: Config,
    job: Job,
    data: Any,
    teacher: Teacher,
    run_data: Any,
    method: Any,
    accelerator: Accelerator,
) -> TeacherSource:
    """One teacher's outputs: its cache, its server, or the live model."""
    if job.cached:
        return CachedTeacher(family.open_cache(config, data, teacher, run_data), family.read_cache)
    if job.served:
        assert config.teacher.server is not None
        return ServedTeacher.connect(
            config.teacher.server, teacher.name, teacher.tokenizer, config.cache.top_k,
            float(getattr(config.method, "temperature", 1.0)), config.cache.tail, config.teacher.server_retry_seconds,
            config.teacher.server_api, config.teacher.server_model,
        )  # fmt: skip
    assert teacher.model is not None
    return LiveTeacher(teacher.model, method, accelerator)
