"""`kdkit demo lm` (and `make demo-lm`): the causal-LM recipe at smoke scale on a CPU.

The packaged SmolLM2-135M-Instruct teacher (converted once from its GGUF and cached in KDKIT_HOME) is
distilled into a 10-layer student cut from its 30 layers, on dolly dev, twice: with token-level forward
KL and with ATKD (on forward KL), same data, steps and seed (configs/dolly_smol10l_from_smol135m_*.yaml).
The table gives perplexity on response tokens and ROUGE-L of greedy answers on dolly valid (a subset on
CPU) for the teacher, the student before training, and the two distilled students. At this scale (100
steps of 4 sequences) the students are not usable: the demo shows the pipeline, not a student to ship.
Data: the recipes' local copy of dolly under ``$KDKIT_DATA_ROOT`` (``data.local``) when it is there, else
``databricks/databricks-dolly-15k`` from the hub; the demo prints which.
The HTML report of the two runs and their teacher (``kdkit report``) goes to ``<output_dir>/report/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.config import data_root, load_config
from kdkit.data.lm import load_lm_data
from kdkit.eval.lm_evaluate import lm_metrics
from kdkit.io import atomic_write_json, atomic_write_text
from kdkit.models import build_lm_student, count_parameters, load_causal_lm, load_tokenizer, with_pad_token
from kdkit.report import write_report
from kdkit.runtime import make_accelerator
from kdkit.train.run import distill

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPES = {
    "forward_kl": "dolly_smol10l_from_smol135m_forward_kl.yaml",
    "atkd": "dolly_smol10l_from_smol135m_atkd.yaml",
}
QUICK = ["train.max_steps=4", "data.max_train_samples=32", "data.max_eval_samples=4", "eval.max_new_tokens=8"]


def recipe(name: str, output_dir: Path, overrides: list[str]) -> Any:
    path = CONFIGS / RECIPES[name]
    return load_config(path, [*overrides, f"output_dir={output_dir / name}", "eval.datasets={}"])


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


def run_demo_lm(
    output_dir: Path, quick: bool = False, overrides: list[str] | None = None
) -> list[dict[str, Any]]:
    """Evaluate teacher and untrained student, distill with forward KL and ATKD; print and save a table."""
    extra = [*(QUICK if quick else []), *(overrides or []), "eval.teacher=false"]
    output_dir.mkdir(parents=True, exist_ok=True)
    first = recipe("forward_kl", output_dir, extra)
    print(f"data: {_source(first)}")
    print("[1/3] teacher and untrained 10-layer student on dolly valid")
    teacher_m, before_m, t_params, s_params = _before(first)
    rows = [
        {"model": "teacher SmolLM2-135M-Instruct (30 layers)", "parameters": t_params, **teacher_m},
        {"model": "student 10 layers, before training", "parameters": s_params, **before_m},
    ]
    for i, name in enumerate(RECIPES, start=2):
        print(f"[{i}/3] distilling with {name}")
        result = distill(recipe(name, output_dir, extra), overwrite=True)
        rows.append(
            {"model": f"student 10 layers, {name}", "parameters": s_params, **result.metrics["validation"]}
        )
    table = format_table(rows)
    print(table)
    atomic_write_text(output_dir / "results.md", table + "\n")
    atomic_write_json(output_dir / "results.json", rows)
    print(f"outputs: {output_dir}/ (forward_kl, atkd, results.md)")
    # the runs do not evaluate their teacher (eval.teacher=false): its metrics come from step 1
    report = write_report(
        [output_dir / name for name in RECIPES],
        output_dir / "report",
        teacher_metrics={str(first.teacher.model): {"validation": teacher_m}},
    )
    print(f"report: {report}")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | parameters | perplexity (dolly valid) | ROUGE-L (dolly valid) |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        rouge = f"{r['rouge_l']:.2f}" if "rouge_l" in r else "-"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['perplexity']:.2f} | {rouge} |")
    return "\n".join(lines)
