"""Ablation of the CPU recipe (configs/cpu_demo.yaml): which settings make the better twin in <= 10 min of training.

python bench/ablate_train.py                       # every variant below on the bundled sample (hours on 2 cores)
python bench/ablate_train.py --quick               # 2 variants x 8 steps on 256 training samples, 16 validation samples
python bench/ablate_train.py --only recipe,lr_1e-3 # named variants

Each variant is one `python 03_train.py --config configs/cpu_demo.yaml <overrides>` run (its own process, like
`make pipeline`), on data/01_prepared or a dataset derived from it (whole sessions, newest sessions weighted).
It is judged on the **validation** split, never on test: perplexity of the owner's turns (04's
`eval_example` + `score_and_generate`, owner tokens only), with --replies > 0 the length similarity of
sampled replies to the owner's train-split turns (04's style metric), and with --hits_contexts > 0 04's Hits@1
(the real reply ranked against 19 owner replies to other validation contexts). The table (Markdown, for
docs/train.md) lists twin/base perplexity, training seconds and trained tokens, so a variant that buys fidelity
with time shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402

ROOT = benchlib.ROOT
RECIPE = ROOT / "configs" / "cpu_demo.yaml"
ATTN = "q_proj k_proj v_proj o_proj"

# name -> (03 overrides, dataset variant). What issue #21 asks to search: steps and batch, learning rate and schedule,
# LoRA rank and modules, full fine-tuning vs LoRA, NEFTune, sessions vs windows, newest sessions weighted; also the
# loss on every speaker's turns. Overrides are relative to cpu_demo.yaml as committed (the tables in docs/train.md
# name their commit).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "recipe": ("", None),  # 184 steps x 8, lr 2e-3, within max_train_minutes 9.9
    "steps_32_batch_8_lr_1e-3": ("--max_steps 32 --learning_rate 1e-3", None),  # ~2 min: the short end of the search
    "steps_32_batch_8": ("--max_steps 32", None),
    "steps_64_batch_8": ("--max_steps 64", None),
    "steps_128_batch_8": ("--max_steps 128", None),
    "steps_320_batch_4": ("--max_steps 320 --per_device_train_batch_size 4", None),
    # what the compiled AMX recipe trains in its 9.9 minutes (max_train_minutes cuts a slower CPU's run to what fits)
    "steps_400_batch_8": ("--max_steps 400", None),
    "steps_400_batch_8_all_turns": ("--max_steps 400 --assistant_only_loss false", None),
    "lr_1e-3": ("--learning_rate 1e-3", None),
    "lr_3e-3": ("--learning_rate 3e-3", None),
    "adam_beta2_0.99": ("--adam_beta2 0.99", None),  # a shorter second-moment memory for a short run
    "loraplus_4": ("--loraplus_lr_ratio 4", None),  # LoRA+: B matrices at 4x the rate of A
    "loraplus_16": ("--loraplus_lr_ratio 16", None),
    "schedule_constant": ("--lr_scheduler_type constant", None),
    # warmup, a constant rate, then a cosine decay over the last quarter (46 of 184 planned steps)
    "schedule_wsd": ('--lr_scheduler_type warmup_stable_decay --lr_scheduler_kwargs {"num_decay_steps":46}', None),
    "schedule_linear": ("--lr_scheduler_type linear", None),
    "lora_r8": ("--lora_r 8 --lora_alpha 16", None),
    "lora_r32": ("--lora_r 32 --lora_alpha 64", None),
    "lora_attention_only": (f"--lora_target_modules {ATTN}", None),
    # LoRA on the top layers: backpropagation stops below them, so more steps fit in the recipe's time budget
    "lora_top_15_layers": ("--lora_top_layers 15 --max_steps 320", None),
    "lora_top_20_layers": ("--lora_top_layers 20 --max_steps 320", None),
    "full_finetune": ("--use_peft false --learning_rate 5e-5", None),
    "neftune_5": ("--neftune_noise_alpha 5", None),
    "all_turns": ("--assistant_only_loss false", None),  # every speaker's turns trained, not only the owner's
    "whole_sessions": ("--max_length 1024 --per_device_train_batch_size 1 --max_steps 256 --attn_implementation sdpa",
                       "sessions"),
    "newest_25pct_x2": ("", "newest"),
    # the real last reply ranked above an in-batch one after its context, beside the LM loss (~2x a step)
    "reply_ranking_0.3": ("--reply_ranking_weight 0.3", None),
    "reply_ranking_1": ("--reply_ranking_weight 1", None),
    "reply_ranking_3": ("--reply_ranking_weight 3", None),
}
QUICK = ("recipe", "lr_1e-3")


def derived_dataset(input_dir: Path, kind: str, out_dir: Path, limit: int | None = None) -> Path:
    """01's dataset with the train split changed: 'sessions' joins each session's windows into one sample,
    'newest' repeats the newest quarter of the training sessions, 'same' keeps it; `limit` then keeps a seeded
    random subset (quick mode: 03 tokenizes the whole split before training). Validation and test untouched."""
    import random

    from datasets import Dataset, load_from_disk

    data = load_from_disk(str(input_dir / "dataset"))
    rows = data["train"].to_list()
    if kind == "sessions":
        merged: dict[tuple, dict] = {}
        for row in rows:  # 01 writes a session's windows in order, without overlap
            key = (row["chat_id"], row["session_start"])
            if key in merged:
                merged[key]["messages"] += [m for m in row["messages"] if m["role"] != "system"]
                merged[key]["n_tokens"] += row["n_tokens"]
            else:
                merged[key] = {**row, "messages": list(row["messages"])}
        rows = list(merged.values())
    elif kind == "same":
        pass
    elif kind == "newest":
        starts = sorted({r["session_start"] for r in rows})
        cutoff = starts[len(starts) * 3 // 4]
        rows = rows + [r for r in rows if r["session_start"] >= cutoff]
    else:
        raise ValueError(f"unknown dataset variant {kind!r}")
    if limit is not None and len(rows) > limit:
        rows = random.Random(0).sample(rows, limit)
    data["train"] = Dataset.from_list(rows, features=data["train"].features)
    data.save_to_disk(str(out_dir / "dataset"))
    return out_dir


def train(name: str, overrides: str, input_dir: Path, out_dir: Path, extra: list[str]) -> dict:
    """One 03 run; its seconds, trained tokens and final loss from the adapter's log history."""
    cmd = [sys.executable, str(ROOT / "03_train.py"), "--config", str(RECIPE), "--input_dir", str(input_dir),
           "--output_dir", str(out_dir), "--disable_tqdm", "true", *overrides.split(), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: 03_train.py failed:\n{proc.stderr[-2000:]}")
    history = json.loads((out_dir / "log_history.json").read_text())
    final = history[-1] if history else {}
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    return {"train_s": final.get("train_runtime", time.perf_counter() - t0), "wall_s": time.perf_counter() - t0,
            "tokens": tokens, "train_loss": final.get("train_loss")}


def load_judge(input_dir: Path, n_val: int, seed: int) -> dict:
    """The validation samples (a seeded subset) and the owner's train-split turns (length reference)."""
    import random

    from datasets import load_from_disk

    data = load_from_disk(str(input_dir / "dataset"))
    val = [m for m in data["validation"]["messages"] if m and m[-1]["role"] == sc.OWNER_ROLE]
    val = random.Random(seed).sample(val, min(n_val, len(val)))
    owner_turns = [m["content"] for msgs in data["train"]["messages"] for m in msgs if m["role"] == sc.OWNER_ROLE]
    return {"validation": val, "owner_turns": owner_turns}


def judge(model_dir: Path | None, judge_data: dict, replies: int, seed: int, hits_contexts: int = 0) -> dict:
    """Validation perplexity of the owner's turns, (replies > 0) the length similarity of sampled replies and
    (hits_contexts > 0) Hits@1 over that many contexts whose real reply has text, as 04 ranks them."""
    from simme_common.eval_generation import eval_example, perplexity_from_nll, score_and_generate
    from simme_common.metrics_model import hits_at_1

    base = sc.resolve_base_model(None)
    is_adapter = model_dir is not None and (model_dir / "adapter_config.json").exists()
    tokenizer = sc.load_tokenizer(str(model_dir) if model_dir is not None else base)
    if model_dir is None or is_adapter:
        model = sc.load_model(base, tokenizer, str(model_dir) if is_adapter else None, merge=is_adapter)
    else:
        model = sc.load_model(str(model_dir), tokenizer)  # full fine-tuning wrote whole weights
    model.eval()
    examples = [eval_example(tokenizer, m, 384, 512) for m in judge_data["validation"]]
    generate = [i < replies for i in range(len(examples))]
    nll, generated = score_and_generate(model, tokenizer, examples, generate, batch_size=16, seed=seed)
    result = {"ppl": perplexity_from_nll(nll), "length_similarity": None, "hits_at_1": None}
    if hits_contexts:
        kept = [i for i, m in enumerate(judge_data["validation"]) if sc.split_target(m)[1].strip() != sc.SILENT_REPLY]
        hits, _ = hits_at_1(model, [examples[i]["prompt_ids"] for i in kept], [examples[i]["target_ids"] for i in kept],
                            seed, hits_contexts)
        result["hits_at_1"] = sc.mean_of(hits)
    if replies:
        from simme_common.metrics_style import owner_profile, reply_features, style_stats  # 04's style metric

        feats = [reply_features(r["text"]) for r in generated if r is not None]
        reference = owner_profile(judge_data["owner_turns"])
        result["length_similarity"] = style_stats(feats, reference, range(len(feats)))["length_similarity"]
    return result


def table(rows: list[dict], base: dict) -> str:
    """The Markdown table docs/train.md includes."""
    lines = [f"Base model: validation perplexity {base['ppl']:.2f}" +
             (f", length similarity {base['length_similarity']:.2f}" if base["length_similarity"] is not None else "") +
             (f", Hits@1 {base['hits_at_1']:.3f}" if base.get("hits_at_1") is not None else ""),
             "", "| variant | overrides | twin/base ppl | length sim. | Hits@1 | train s | trained tokens | train loss |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r.get("ppl", float("inf"))):
        if "error" in r:  # a failed variant stays in the table, not silently dropped
            lines.append(f"| {r['variant']} | `{r['overrides'] or '(recipe)'}` | failed: {r['error']} | | | | | |")
            continue
        sim = f"{r['length_similarity']:.2f}" if r["length_similarity"] is not None else "–"
        hits = f"{r['hits_at_1']:.3f}" if r.get("hits_at_1") is not None else "–"
        loss = f"{r['train_loss']:.3f}" if r["train_loss"] is not None else "–"
        lines.append(f"| {r['variant']} | `{r['overrides'] or '(recipe)'}` | {r['ppl'] / base['ppl']:.3f} | {sim} | {hits} | "
                     f"{r['train_s']:.0f} | {int(r['tokens']):,} | {loss} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"variants {', '.join(QUICK)} at 8 steps on 256 training samples, 16 validation samples")
    parser.add_argument("--only", default=None, help="comma-separated variant names (default: all, or --quick's)")
    parser.add_argument("--input_dir", type=Path, default=ROOT / sc.PREPARED_DIR, help="01_prepare's output")
    parser.add_argument("--val_samples", type=int, default=None, help="validation samples judged (default 256, quick 32)")
    parser.add_argument("--replies", type=int, default=None, help="of which sampled for length similarity (64, quick 0)")
    parser.add_argument("--hits_contexts", type=int, default=None,
                        help="validation contexts ranked for Hits@1 (default 200, quick 0; 0 skips it)")
    parser.add_argument("--max_steps", type=int, default=None, help="override every variant's steps (quick: 8)")
    parser.add_argument("--seed", type=int, default=42)
    benchlib.add_out_dir_arg(parser)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not (args.input_dir / "dataset").exists():
        raise SystemExit(f"error: {args.input_dir}/dataset not found; run 01_prepare.py (make pipeline) first")
    names = args.only.split(",") if args.only else list(QUICK if args.quick else VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    n_val = args.val_samples or (16 if args.quick else 256)
    limit = 256 if args.quick else None
    replies = args.replies if args.replies is not None else (0 if args.quick else 64)
    hits_contexts = args.hits_contexts if args.hits_contexts is not None else (0 if args.quick else 200)
    steps = args.max_steps or (8 if args.quick else None)
    extra = ["--max_steps", str(steps)] if steps else []

    judge_data = load_judge(args.input_dir, n_val, args.seed)
    base = judge(None, judge_data, replies, args.seed, hits_contexts)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ablate_train_") as tmp:
        for name in names:
            overrides, data_kind = VARIANTS[name]
            data_dir = args.input_dir if data_kind is None and limit is None else derived_dataset(
                args.input_dir, data_kind or "same", Path(tmp) / f"data_{name}", limit)
            out = Path(tmp) / name
            try:
                trained = train(name, overrides, data_dir, out, extra)  # --max_steps in `extra` wins (given last)
            except RuntimeError as err:  # one broken variant must not cost the hours spent on the others
                print(err, file=sys.stderr, flush=True)
                rows.append({"variant": name, "overrides": overrides, "error": "03_train.py exited with an error"})
            else:
                rows.append({"variant": name, "overrides": overrides, **trained, **judge(out, judge_data, replies, args.seed, hits_contexts)})
                print(f"{name}: validation ppl {rows[-1]['ppl']:.2f} (base {base['ppl']:.2f}), "
                      f"{trained['train_s']:.0f} s", flush=True)
            markdown = table(rows, base)
            result = {"variants": rows, "base": base, "val_samples": n_val, "replies": replies, "hits_contexts": hits_contexts,
                      "max_steps": steps,
                      "train_subset": limit, "load_avg_1m": os.getloadavg()[0], "table_md": markdown}
            # rewritten after every variant: an interrupted run keeps what it measured
            benchlib.write_result("ablate_train", result, args.quick, args.out_dir, echo=False)
    print(markdown)
    benchlib.write_result("ablate_train", result, args.quick, args.out_dir)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
