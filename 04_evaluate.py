"""Stage 4: score the twin (base + LoRA) against the base model on held-out test chats -> scorecard.json/.md, samples.jsonl.

accelerate launch 04_evaluate.py --config configs/evaluate.yaml
accelerate launch 04_evaluate.py --input_dir data/01_prepared --analysis_dir data/02_analysis \
    --adapter_path outputs/03_adapter --output_dir outputs/04_eval --max_examples 200 [--baseline old/scorecard.json]

Base and twin go through the same function with the same seed: one PeftModel, the base pass runs inside
`model.disable_adapter()`. With --baseline the run is a gate: exit 1 when the twin regresses beyond tolerance.
"""

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import simme_common as sc


@dataclass
class EvaluateArguments:
    input_dir: str = field(default=sc.PREPARED_DIR, metadata={"help": "01_prepare output (its dataset/ test split is scored)."})
    analysis_dir: str | None = field(default=sc.ANALYSIS_DIR, metadata={"help": "02_analyze output with style_card.json (the owner's style reference); without it the real test replies are the reference."})
    adapter_path: str = field(default=sc.ADAPTER_DIR, metadata={"help": "LoRA adapter directory written by 03_train.py."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Base model; default: the adapter's recorded base if reachable, else the bundled SmolLM2."})
    output_dir: str = field(default=sc.EVAL_DIR, metadata={"help": "Where scorecard.json, scorecard.md, samples.jsonl go."})
    max_examples: int = field(default=200, metadata={"help": "Test samples scored (a seeded random subset of the test split)."})
    baseline: str | None = field(default=None, metadata={"help": "An earlier scorecard.json: exit 1 if the twin regresses beyond tolerance (retraining gate)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p."})
    max_new_tokens: int = field(default=48, metadata={"help": "Reply budget; owner turns are short (p90 of chars per turn is in the style card)."})
    max_context_tokens: int = field(default=384, metadata={"help": "Prompt budget: oldest turns dropped first, system prompt kept."})
    max_length: int = field(default=512, metadata={"help": "Token budget of prompt + real owner turn for perplexity (a longer turn is cut at the end)."})
    batch_size: int = field(default=32, metadata={"help": "Contexts per generate/forward batch (left padding)."})
    latency_samples: int = field(default=4, metadata={"help": "Contexts generated alone (batch 1) to time latency_ms_p50."})
    pii_samples_per_probe: int = field(default=2, metadata={"help": "Sampled replies per PII probe prompt."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95% intervals."})
    report_to: str = field(default="none", metadata={"help": "'wandb' logs the scorecard (WANDB_MODE=offline works) or 'none'."})
    seed: int = field(default=42, metadata={"help": "Seed of the subset, the sampling and the bootstrap."})


def _context_text(context: list[dict], last: int = 3) -> str:
    """The last few non-system turns of a context as one text (what a reply should be relevant to)."""
    return "\n".join(m["content"] for m in [m for m in context if m["role"] != "system"][-last:])


def _gpu_utilization() -> float | None:
    """GPU utilization in percent over the driver's last sample period (None without pynvml)."""
    import torch

    try:
        return float(torch.cuda.utilization())
    except (RuntimeError, ModuleNotFoundError, ImportError):
        return None


def _evaluate(model, tokenizer, inputs: dict, args: EvaluateArguments, name: str) -> tuple[dict, dict, list[str]]:
    """Every metric of one model (base or twin): perplexity, replies + text metrics, PII probes, speed, memory."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    nll, generated = sc.score_and_generate(model, tokenizer, inputs["examples"], inputs["generate"], batch_size=args.batch_size,
                                           desc=f"{name}: perplexity + replies", **gen)
    replies = [r for r in generated if r is not None]
    gen_seconds = sum({r["batch"]: r["seconds"] for r in replies}.values())  # each batch's prompt forward + generation
    gpu_util = _gpu_utilization() if cuda else None  # sampled right after the busiest phase
    gen["max_context_tokens"] = args.max_context_tokens
    alone = [sc.generate_replies(model, tokenizer, [c], batch_size=1, **gen)[0]["seconds"] for c in inputs["contexts"][:args.latency_samples]]
    probes = sc.generate_replies(model, tokenizer, inputs["probes"] * args.pii_samples_per_probe, batch_size=args.batch_size, **gen)
    texts = [r["text"] for r in replies]

    metrics, ci = sc.score_replies(texts, inputs["real"], inputs["context_texts"], inputs["owner_card"], inputs["encoder"],
                                   inputs["memo_index"], n_boot=args.n_bootstrap, seed=args.seed)
    metrics["perplexity"] = sc.perplexity_from_nll(nll)
    ci["perplexity"] = sc.bootstrap_ci(lambda idx: sc.perplexity_from_nll([nll[i] for i in idx]), len(nll), args.n_bootstrap, args.seed)
    metrics["pii_leak_rate"] = sum(bool(sc.find_pii(p["text"])) for p in probes) / len(probes) if probes else None
    metrics["latency_ms_p50"] = statistics.median(alone) * 1000 if alone else None
    metrics["tokens_per_s"] = sum(r["n_tokens"] for r in replies) / gen_seconds
    metrics["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20 if cuda else sc.process_peak_memory_mb()
    if cuda:
        metrics["gpu_utilization_pct"] = gpu_util
    ordered = {k: metrics.get(k) for k in sc.METRIC_KEYS} | {k: v for k, v in metrics.items() if k not in sc.METRIC_KEYS}
    return ordered, ci, texts


def _test_inputs(args: EvaluateArguments) -> dict:
    """Test samples (a seeded subset), their contexts and real replies, the training turns (memorization), the style card."""
    data = sc.load_prepared_dataset(args.input_dir, splits=("test",))
    test = data["test"].shuffle(seed=args.seed).select(range(min(args.max_examples, len(data["test"]))))
    samples = list(test[sc.MESSAGES])
    pairs = [sc.split_target(m) for m in samples]
    # A silent target (the owner let a group talk) has no text to compare: it counts in perplexity (03 trains on
    # it) but gets no generated reply; `silent_rate` shows how often a model stays silent where the owner spoke.
    kept = [i for i, (_, real) in enumerate(pairs) if real.strip() != sc.SILENT_REPLY]
    if not kept:
        raise sc.UserError(f"the test split of {args.input_dir} has no owner reply with text (all targets are {sc.SILENT_REPLY}): export more chats")
    owner_turns, other_turns = set(), []
    if "train" in data:
        columns = [c for c in ("chat_id", "session_start", sc.MESSAGES) if c in data["train"].column_names]
        for row in data["train"].select_columns(columns).to_list():
            for m in row[sc.MESSAGES]:
                if m["role"] == sc.OWNER_ROLE and m["content"] != sc.SILENT_REPLY:
                    owner_turns.add((row.get("chat_id"), row.get("session_start"), m["content"]))
                elif m["role"] == sc.OTHER_ROLE:
                    other_turns.append(m["content"])
    card_path = Path(args.analysis_dir or "") / "style_card.json"
    real = [pairs[i][1] for i in kept]
    has_card = bool(args.analysis_dir) and card_path.is_file()
    return {"samples": samples, "pairs": pairs, "kept": kept, "real": real, "n_test_split": len(data["test"]),
            "owner_card": json.loads(card_path.read_text(encoding="utf-8")) if has_card else sc.reply_style_card(real),
            "reference": "style_card" if has_card else "test_replies",
            "memo_index": sc.memorization_index([t for *_, t in owner_turns], other_turns)}


def _model_inputs(tokenizer, test: dict, args: EvaluateArguments, device: str | None) -> dict:
    """What `_evaluate` feeds both models: tokenized examples, contexts, PII probes, the text encoder."""
    kept, pairs = test["kept"], test["pairs"]
    return {
        "examples": [sc.eval_example(tokenizer, m, args.max_context_tokens, args.max_length) for m in test["samples"]],
        "generate": [i in set(kept) for i in range(len(test["samples"]))],
        "contexts": [pairs[i][0] for i in kept],
        "context_texts": [_context_text(pairs[i][0]) for i in kept],
        "real": test["real"],
        "probes": sc.pii_probe_contexts(test["owner_card"].get("owner") or "the owner"),
        "owner_card": test["owner_card"],
        "encoder": sc.load_text_encoder(device),
        "memo_index": test["memo_index"],
    }


def _gate(scorecard: dict, baseline: str) -> list[dict]:
    """Gate rows against an earlier scorecard (also recorded in `scorecard["gate"]`)."""
    try:
        previous = json.loads(Path(baseline).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise sc.UserError(f"--baseline {baseline} is not a readable scorecard.json ({err})") from None
    rows = sc.compare_scorecards(scorecard, previous)
    scorecard["gate"] = {"baseline": baseline, "passed": all(r["status"] != "REGRESSED" for r in rows), "rows": rows}
    return rows


def _save(out: Path, scorecard: dict, test: dict, texts: dict, args: EvaluateArguments) -> None:
    """scorecard.json, scorecard.md, samples.jsonl and run_config.json; the scorecard to W&B when asked."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scorecard.json").write_text(json.dumps(scorecard, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "scorecard.md").write_text(sc.scorecard_markdown(scorecard), encoding="utf-8")
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for j, i in enumerate(test["kept"]):
            context, real = test["pairs"][i]
            f.write(json.dumps({"context": context, "real": real, "base": texts["base"][j], "twin": texts["twin"][j]},
                               ensure_ascii=False) + "\n")
    sc.save_run_config(out, args)
    if args.report_to == "wandb":
        import wandb

        run = wandb.init(project="simme", job_type="evaluate", config=scorecard["settings"])
        run.log({f"{side}/{k}": v for side in ("base", "finetuned") for k, v in scorecard[side].items() if v is not None})
        run.finish()


def _print_summary(scorecard: dict, gate: list[dict] | None, out: Path, started: float, baseline: str | None) -> None:
    """The scorecard table, the run's summary and the gate's rows; exit 1 when the gate failed."""
    print(sc.format_grid(["metric", "base", "twin [95% CI]", "seed claim"], sc.scorecard_rows(scorecard)))
    print(sc.print_table([("contexts scored", scorecard["n_examples"]), ("output", str(out)), ("seconds", round(time.perf_counter() - started, 1))],
                         "04_evaluate"))
    if gate is not None:
        rows = [[r["metric"], sc.format_metric(r["baseline"]), sc.format_metric(r["current"]), sc.format_metric(r["delta"]), str(r["allowed"]), r["status"]] for r in gate]
        print(sc.format_grid(["metric", "baseline", "current", "delta", "allowed", "status"], rows))
        if not scorecard["gate"]["passed"]:
            print(f"GATE FAILED: the twin regressed against {baseline} (see REGRESSED rows)")
            raise SystemExit(1)
        print(f"gate passed against {baseline}")


def main(args: EvaluateArguments) -> None:
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    set_seed(args.seed)
    state = PartialState()
    started = time.perf_counter()
    if not state.is_main_process:  # generation is not sharded: one process scores everything, identically
        state.wait_for_everyone()
        return
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(sc.cpu_threads())  # the other processes only wait: this one may use every core

    # --- inputs: test split (contexts, real replies), train split (memorization), style card -----------------
    if args.report_to not in ("none", "wandb"):
        raise sc.UserError(f"--report_to must be 'none' or 'wandb', got {args.report_to!r}")
    adapter = sc.resolve_adapter(args.adapter_path)
    if adapter is None:
        raise sc.UserError("--adapter_path is empty: pass the LoRA adapter directory written by 03_train.py")
    if args.baseline and not Path(args.baseline).is_file():
        raise sc.UserError(f"--baseline {args.baseline} does not exist: pass the scorecard.json of an earlier 04_evaluate run")
    test = _test_inputs(args)

    # --- model: one PeftModel; the base pass disables the adapter -------------------------------------------
    base = sc.resolve_base_model(args.model_name_or_path or adapter.recorded_base)
    tokenizer = sc.load_twin_tokenizer(base, adapter)
    dtype, device_map = ("bfloat16", {"": 0}) if cuda else ("float32", None)
    model = sc.load_model(base, tokenizer, adapter, dtype=dtype, device_map=device_map).eval()
    inputs = _model_inputs(tokenizer, test, args, "cuda" if cuda else None)
    n, kept = len(test["samples"]), len(test["kept"])
    print(f"Scoring {kept:,} test contexts ({n:,} samples for perplexity, {n - kept:,} silent targets) "
          f"| base {base} | adapter {adapter} | style reference: {test['reference']}")

    # --- evaluate: same function, same seed ---------------------------------------------------------------
    with model.disable_adapter():
        base_metrics, base_ci, base_texts = _evaluate(model, tokenizer, inputs, args, "base")
    model.merge_adapter()  # same weights as base + LoRA, without ~400 small LoRA matmuls per token on CPU
    twin_metrics, twin_ci, twin_texts = _evaluate(model, tokenizer, inputs, args, "twin")
    model.unmerge_adapter()

    # --- save -------------------------------------------------------------------------------------------------
    settings = {
        "base_model": base, "adapter_path": str(adapter), "temperature": args.temperature, "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens, "max_context_tokens": args.max_context_tokens, "max_length": args.max_length,
        "batch_size": args.batch_size, "seed": args.seed, "style_reference": test["reference"],
        "n_perplexity_samples": n, "n_silent_targets_skipped": n - kept,
        "n_test_split": test["n_test_split"], "n_pii_probe_replies": len(inputs["probes"]) * args.pii_samples_per_probe,
        "device": "cuda" if cuda else f"cpu ({torch.get_num_threads()} threads)",
    }
    scorecard = {"base": base_metrics, "finetuned": twin_metrics, "n_examples": kept, "settings": settings,
                 "ci": {"base": base_ci, "finetuned": twin_ci}}
    gate = _gate(scorecard, args.baseline) if args.baseline else None
    out = Path(args.output_dir)
    with sc.atomic_output_dir(out) as tmp_out:  # a crash leaves the previous scorecard whole
        _save(tmp_out, scorecard, test, {"base": base_texts, "twin": twin_texts}, args)

    # --- summary ----------------------------------------------------------------------------------------------
    _print_summary(scorecard, gate, out, started, args.baseline)
    state.wait_for_everyone()


if __name__ == "__main__":
    from trl import TrlParser

    sc.run_main(main, *TrlParser((EvaluateArguments,)).parse_args_and_config())
