"""`kdkit eval`: metrics of a saved model on a config's data; for a distilled run whose method evaluates
more (e.g. with retrieval from its knowledge base), that method's sections too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdkit.commands.runs import run_method
from kdkit.config import Config, load_config
from kdkit.family import family_for
from kdkit.methods.base import EvalEnv
from kdkit.runtime import make_accelerator


def evaluate_saved(
    model_dir: str | Path,
    config: Config | dict[str, Any] | str | Path,
    overrides: list[str] | None = None,
    splits: list[str] | None = None,
) -> dict[str, Any]:
    """Metrics of the model saved in ``model_dir`` on the splits of ``config``'s data (default
    ``eval.splits``); the run's method may add sections (a ReAugKD run: ``"retrieval"``)."""
    config = load_config(config, overrides)
    family = family_for(config.task)
    accelerator = make_accelerator(config)
    model_dir = Path(model_dir)
    results, model, loaders, data, names = family.evaluate_saved(model_dir, config, splits, accelerator)
    found = run_method(model_dir)
    if found is not None:
        method, method_config = found
        env = EvalEnv(
            model,
            loaders,
            data,
            accelerator,
            config.task,
            names,
            model_dir,
            held_out=loaders.get("validation"),
            best_metric=family.best_metric(config.train, config.task),
        )
        results.update(method.extra_metrics(method_config, env))
    return results
