"""The compact teacher-cache format against the plain one: bytes per token, coding speed, and the losses'
error on real batches, for a 49,152-token vocabulary (SmolLM2-135M-Instruct) and a 262,144-token one
(Gemma-3-270M), each teaching a student cut from itself.

For each vocabulary: build a plain top-64 cache of the first ``--examples`` dolly training examples (the
shipped recipe's data and tokenization), copy it into the compact format (``kdkit.teacher.build.
compact_copy``), then on batches of ``--batch-size`` examples compute every token-level loss (forward and
reverse KL, JSD, skew KL, TVD, ATKD on forward and reverse KL) of each student from the plain rows and from
the decoded compact rows. Students: the recipe's cut at initialisation (far from the teacher), and any
trained student dirs given with ``--trained`` (closer to it).

    python benchmarks/compact_cache.py --examples 200            # ~15 min on a 2-core CPU
    python benchmarks/compact_cache.py --trained runs/frontier/cut-20   # add a trained SmolLM2 student
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_root_overrides

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "dolly_smol10l_from_smol135m_forward_kl.yaml"
VOCABS = {  # name -> overrides of the shipped recipe: the teacher, and a student cut from it
    "49k": ["teacher.model=smollm2-135m", "student.num_layers=10"],
    "262k": ["teacher.model=gemma3-270m", "student.num_layers=6", "student.model=null"],
}
LOSSES: list[tuple[str, str, dict[str, Any]]] = [
    ("forward KL", "forward_kl", {}),
    ("reverse KL", "reverse_kl", {}),
    ("JSD 0.5", "generalized_jsd", {"beta": 0.5}),
    ("skew KL 0.1", "skew_kl", {"alpha": 0.1}),
    ("TVD", "tvd", {}),
    ("ATKD (forward)", "atkd", {"reverse": False}),
    ("ATKD (reverse)", "atkd", {"reverse": True}),
]


def _bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.glob("shard-*.safetensors"))


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from kdkit.commands.cache import build_cache_for_config
    from kdkit.config import load_config
    from kdkit.data.lm import LMCollator, LMDataset, encode_lm, load_lm_data, shift_labels
    from kdkit.losses.topk import topk_atkd_loss, topk_token_loss
    from kdkit.models import build_lm_student, load_causal_lm, load_tokenizer, with_pad_token
    from kdkit.models.causal_lm import lm_forward
    from kdkit.teacher.build import compact_copy
    from kdkit.teacher.cache import TeacherCache

    out = Path(args.out) / name
    overrides = [
        *data_root_overrides(args.data_root), *VOCABS[name], f"data.max_train_samples={args.examples}",
        f"cache.dir={out / 'plain'}", "cache.top_k=64", f"cache.batch_size={args.batch_size}",
    ]  # fmt: skip
    config = load_config(CONFIG, overrides)
    t0 = time.perf_counter()
    build_cache_for_config(config)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compact_copy(out / "plain", out / "compact")
    encode_s = time.perf_counter() - t0
    plain, compact = TeacherCache.load(out / "plain"), TeacherCache.load(out / "compact")
    rows = int(sum(h.get_tensor("offsets")[-1] for h in plain._handles))

    tokenizer = with_pad_token(load_tokenizer(config.teacher.model))
    dataset = LMDataset(
        encode_lm(load_lm_data(config.data).split("train"), tokenizer, config.student.max_length, config.data.chat_template)
    )  # fmt: skip
    collate = LMCollator(tokenizer.pad_token_id)
    batches = [
        collate([dataset[i] for i in range(s, min(s + args.batch_size, len(dataset)))])
        for s in range(0, len(dataset), args.batch_size)
    ][: args.batches]
    torch.manual_seed(0)
    students = {"cut at init": build_lm_student(config.student, config.teacher.model)[0]}
    for path in args.trained if name == "49k" else []:
        students[f"trained {Path(path).name}"] = load_causal_lm(path)
    vocab = int(plain.meta["provenance"]["vocab_size"])
    decode_s, errors = 0.0, {}
    for student_name, student in students.items():
        student.eval()
        per_loss: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in LOSSES}
        for batch in batches:
            targets, mask = shift_labels(batch)
            counts = mask.sum(1).tolist()
            a = plain.topk(batch["idx"], counts)
            t0 = time.perf_counter()
            b = compact.topk(batch["idx"], counts)
            decode_s += time.perf_counter() - t0
            with torch.no_grad():
                s = lm_forward(student, batch["student"], chunked=True)
                hs, ws = s.hidden[:, :-1], s.weight
                for label, divergence, kw in LOSSES:
                    values = []
                    for top in (a, b):
                        if divergence == "atkd":
                            loss, _ = topk_atkd_loss(hs, ws, top, targets, mask, vocab_size=vocab, **kw)
                        else:
                            loss, _ = topk_token_loss(
                                hs, ws, top, mask, divergence=divergence, vocab_size=vocab, **kw
                            )
                        values.append(float(loss))
                    per_loss[label].append((values[0], values[1]))
        errors[student_name] = {
            label: {
                "loss": sum(v[0] for v in pairs) / len(pairs),
                "max_rel_err": max(abs(v[1] / v[0] - 1) for v in pairs),
                "mean_rel_err": abs(sum(v[1] for v in pairs) / sum(v[0] for v in pairs) - 1),
            }
            for label, pairs in per_loss.items()
        }
    return {
        "vocab": vocab,
        "rows": rows,
        "plain_bytes_per_token": _bytes(out / "plain") / rows,
        "compact_bytes_per_token": _bytes(out / "compact") / rows,
        "cache_build_s": build_s,
        "compact_encode_tokens_per_s": rows / encode_s,
        "compact_decode_tokens_per_s": sum(int(b["labels"].ne(-100).sum()) for b in batches)
        * len(students)
        / decode_s,
        "batches": len(batches),
        "errors": errors,
    }


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"command: python benchmarks/compact_cache.py --examples {args.examples} --batches {args.batches} "
        f"--batch-size {args.batch_size}" + (f" --trained {' '.join(args.trained)}" if args.trained else ""),
        "",
        "| vocabulary | tokens | plain B/token | compact B/token | ratio | encode tok/s | decode tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        lines.append(
            f"| {r['vocab']:,} | {r['rows']:,} | {r['plain_bytes_per_token']:.1f} | {r['compact_bytes_per_token']:.1f} | "
            f"{r['plain_bytes_per_token'] / r['compact_bytes_per_token']:.2f}x | {r['compact_encode_tokens_per_s']:,.0f} | "
            f"{r['compact_decode_tokens_per_s']:,.0f} |"
        )
    lines += ["", "| vocabulary | student | loss | mean loss | max relative error (any batch) | error of the mean |",
              "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for r in results.values():
        for student, by_loss in r["errors"].items():
            for label, e in by_loss.items():
                lines.append(
                    f"| {r['vocab']:,} | {student} | {label} | {e['loss']:.4f} | {e['max_rel_err']:.1e} | {e['mean_rel_err']:.1e} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=200, help="dolly training examples cached")
    parser.add_argument("--batches", type=int, default=25, help="batches whose losses are compared")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vocabs", nargs="+", default=list(VOCABS), choices=list(VOCABS))
    parser.add_argument(
        "--trained", nargs="*", default=[], help="trained SmolLM2 student dirs (49k vocabulary)"
    )
    parser.add_argument("--data-root", default=None, help="local data copies (default: $KDKIT_DATA_ROOT)")
    parser.add_argument("--out", default="runs/bench/compact-cache")
    args = parser.parse_args()
    from kdkit.cli import _quiet_libraries

    _quiet_libraries()
    results = {name: measure(name, args) for name in args.vocabs}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results, args))


if __name__ == "__main__":
    main()
