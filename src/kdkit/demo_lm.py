"""`kdkit demo lm` (and `make demo-lm`): the causal-LM recipe for a 2-core CPU.

The packaged SmolLM2-135M-Instruct teacher (converted once from its GGUF and cached in KDKIT_HOME) is
distilled into a 20-layer student (the teacher's first 12 and last 8 layers) with token-level forward KL
from the teacher cache, on dolly dev (configs/dolly_smol20l_from_smol135m_forward_kl.yaml):

1. the teacher cache (top-64 log-probs) is built once in ``<output_dir>/teacher-cache`` (reused when there);
2. the teacher and the untrained student are evaluated on dolly valid;
3. the student trains from the cache (the teacher is not loaded);
4. the greedy generation speed of the teacher and the student is measured
   (``kdkit.eval.generation_speed``).

The table gives perplexity on response tokens, ROUGE-L of greedy answers on dolly valid (a subset on CPU),
and generation tokens/s. ``--quick`` runs every step a few examples long (a smoke test, not a student).
Data: the recipe's local copy of dolly under ``$KDKIT_DATA_ROOT`` (``data.local``) when it is there, else
``databricks/databricks-dolly-15k`` from the hub; the demo prints which.
The HTML report of the run and its teacher (``kdkit report``) goes to ``<output_dir>/report/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kdkit.commands.cache import build_cache_for_config
from kdkit.config import Config, data_root, load_config
from kdkit.data.lm import load_lm_data
from kdkit.data.lm_encode import encode_prompts
from kdkit.eval.generation_speed import greedy_tokens_per_second
from kdkit.eval.lm_evaluate import lm_metrics
from kdkit.io import atomic_write_json, atomic_write_text
from kdkit.models import build_lm_student, count_parameters, load_causal_lm, load_tokenizer, with_pad_token
from kdkit.report import write_report
from kdkit.runtime import make_accelerator
from kdkit.train.run import distill

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPE = "dolly_smol20l_from_smol135m_forward_kl.yaml"
RUN = "forward_kl"
QUICK = ["train.max_steps=4", "data.max_train_samples=32", "data.max_eval_samples=4", "eval.max_new_tokens=8"]
SPEED = {"prompts": 8, "new_tokens": 64, "rounds": 3}  # generation speed: 8 dolly valid prompts x 64 tokens
QUICK_SPEED = {"prompts": 2, "new_tokens": 8, "rounds": 1}


def recipe(output_dir: Path, overrides: list[str]) -> Config:
    extra = [
        f"cache.dir={output_dir / 'teacher-cache'}",
        f"output_dir={output_dir / RUN}",
        "eval.datasets={}",
    ]
    return load_config(CONFIGS / RECIPE, [*overrides, *extra])


def _source(config: Any) -> str:
    """Where the recipe reads dolly from: the local copy (data.local, under a data root) or the hub."""
    data = config.data
    if data.dataset:
        return f"{data.dataset} from the Hugging Face hub (set KDKIT_DATA_ROOT to a folder with a local copy)"
    root = data_root(data)
    return f"local copy {root / data.train if root else data.train} (validation {data.validation})"


def _before(config: Any) -> tuple[dict[str, float], dict[str, float], int, int]:
    """Teacher and untrained-student metrics on the validation split, and their parameter counts."""
    accelerator = make_accelerator(config)
    tokenizer = with_pad_token(load_tokenizer(config.teacher.model))
    split = load_lm_data(config.data).split("validation")
    teacher = load_causal_lm(config.teacher.model).eval()
    vocab = len(tokenizer)
    t = lm_metrics(teacher, tokenizer, split, config, accelerator, vocab_size=vocab)
    student, _ = build_lm_student(config.student, config.teacher.model)
    s = lm_metrics(student.eval(), tokenizer, split, config, accelerator, vocab_size=vocab)
    return t, s, count_parameters(teacher), count_parameters(student)


def generation_prompts(config: Config, n: int) -> list[list[int]]:
    """Token ids of the first ``n`` validation prompts, cut as for ROUGE-L (room left for the answer)."""
    tokenizer = load_tokenizer(config.teacher.model)
    split = load_lm_data(config.data).split("validation")
    prompt_len = config.student.max_length - config.eval.max_new_tokens
    return encode_prompts(split.prompts[:n], tokenizer, prompt_len, config.data.chat_template)


def _speeds(config: Config, student_dir: Path, speed: dict[str, int]) -> dict[str, float]:
    """Greedy tokens/s of the teacher and the trained student on the first dolly valid prompts."""
    prompts = generation_prompts(config, speed["prompts"])
    models = {"teacher": load_causal_lm(config.teacher.model), "student": load_causal_lm(str(student_dir))}
    return greedy_tokens_per_second(models, prompts, speed["new_tokens"], speed["rounds"])


def run_demo_lm(
    output_dir: Path, quick: bool = False, overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """Cache the teacher, evaluate it and the untrained student, distill, time generation; print and save
    a table and the report."""
    extra = [*(QUICK if quick else []), *(overrides or []), "eval.teacher=false"]
    output_dir.mkdir(parents=True, exist_ok=True)
    config = recipe(output_dir, extra)
    keep = len(config.student.layers or []) or config.student.num_layers
    print(f"data: {_source(config)}")
    print(f"[1/4] teacher cache in {config.cache.dir} (built once, reused after)")
    t0 = time.perf_counter()
    build_cache_for_config(config)
    print(f"      ready in {time.perf_counter() - t0:.0f} s")
    print(f"[2/4] teacher and untrained {keep}-layer student on dolly valid")
    teacher_m, before_m, t_params, s_params = _before(config)
    print(f"[3/4] distilling with forward KL from the cache ({config.train.max_steps} steps)")
    result = distill(config, overwrite=True)
    print("[4/4] greedy generation speed, teacher and student")
    speed = _speeds(config, output_dir / RUN, QUICK_SPEED if quick else SPEED)
    rows = [
        {"model": "teacher SmolLM2-135M-Instruct (30 layers)", "parameters": t_params, **teacher_m},
        {"model": f"student {keep} layers, before training", "parameters": s_params, **before_m},
        {
            "model": f"student {keep} layers, forward KL",
            "parameters": s_params,
            **result.metrics["validation"],
        },
    ]
    rows[0]["tokens_per_s"], rows[2]["tokens_per_s"] = speed["teacher"], speed["student"]
    table = format_table(rows)
    print(table)
    atomic_write_text(output_dir / "results.md", table + "\n")
    atomic_write_json(output_dir / "results.json", rows)
    print(f"outputs: {output_dir}/ ({RUN}, teacher-cache, results.md)")
    # the run does not evaluate its teacher (eval.teacher=false): its metrics come from step 2
    report = write_report(
        [output_dir / RUN],
        output_dir / "report",
        teacher_metrics={str(config.teacher.model): {"validation": teacher_m}},
    )
    print(f"report: {report}")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    teacher_speed = rows[0].get("tokens_per_s")
    lines = [
        "| model | parameters | perplexity (dolly valid) | ROUGE-L (dolly valid) | generation tokens/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rouge = f"{r['rouge_l']:.2f}" if "rouge_l" in r else "-"
        speed, ratio = "-", "-"
        if "tokens_per_s" in r:
            speed = f"{r['tokens_per_s']:.1f}"
            ratio = f"{r['tokens_per_s'] / teacher_speed:.2f}x" if teacher_speed else "-"
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['perplexity']:.2f} | {rouge} | {speed} | {ratio} |"
        )
    return "\n".join(lines)
