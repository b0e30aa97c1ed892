"""Benchmark of 04_evaluate: 04's real model path (`score_and_generate`: perplexity + reply generation from one
prompt forward) for N test contexts, batched (project) vs one context at a time (baseline), alternating after a
warm-up, on the default base model + a LoRA adapter; then the whole stage (base + twin + real) on 200 contexts.

python bench/bench_evaluate.py            # 32 contexts, warm-up + 3 reps alternating, + the whole stage on 200 contexts (target <= 600 s)
python bench/bench_evaluate.py --quick    # 4 contexts, 8 new tokens, warm-up + 3 reps, no stage run (<= 60 s on an idle 2-core machine)

Contexts come from chitchat-dataset (MIT; the first speaker of a conversation is the owner), cut before an
owner turn, so the benchmark runs without 01's output. The adapter is a fresh LoRA (all-linear, r=16) with
zero B matrices: the same unmerged PeftModel forward that 04 runs. Greedy decoding on both sides, so
batched and one-at-a-time runs generate comparable amounts of text (tokens/s is reported too).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402

ROOT = benchlib.ROOT


def chitchat_samples(n: int, max_turns: int = 8) -> list[list[dict]]:
    """`n` contract-format samples (system, user/assistant turns, ending on the owner's turn) from chitchat-dataset."""
    import chitchat_dataset

    out = []
    for conv in chitchat_dataset.Dataset().values():
        turns = [" ".join(m["text"] for m in turn) for turn in conv["messages"] if turn]
        first = conv["messages"][0][0]["sender"] if conv["messages"] and conv["messages"][0] else None
        roles = [sc.OWNER_ROLE if turn[0]["sender"] == first else sc.OTHER_ROLE for turn in conv["messages"] if turn]
        end = max((i for i, r in enumerate(roles[:max_turns]) if r == sc.OWNER_ROLE and i > 0), default=None)
        if end is None:
            continue
        system = sc.build_system_prompt("one_on_one", "Owner", ["Friend"])
        out.append([{"role": "system", "content": system}] + [{"role": r, "content": t} for r, t in zip(roles[:end + 1], turns[:end + 1])])
        if len(out) == n:
            break
    return out


def make_adapter(out_dir: Path, tokenizer):
    """A zero-initialised LoRA (all-linear, r=16) on the default base model, saved with the training tokenizer.

    Returns the unmerged PeftModel in eval mode (what `sc.load_model` loads back from `out_dir`).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(sc.resolve_base_model(None)),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model.eval()


def prepared_dir(out_dir: Path, samples: list[list[dict]], train: list[list[dict]]) -> Path:
    """A 01-contract DatasetDict (test = the samples, train = other conversations) for the whole-stage run."""
    from datasets import Dataset, DatasetDict

    def split(rows):
        return Dataset.from_dict({sc.MESSAGES: rows, "chat_id": [f"c{i}" for i in range(len(rows))],
                                  "chat_type": ["one_on_one"] * len(rows), "session_start": [0] * len(rows),
                                  "n_tokens": [0] * len(rows)})

    DatasetDict(train=split(train), validation=split(train[:len(samples)]), test=split(samples)).save_to_disk(str(out_dir / "dataset"))
    return out_dir


def time_generation(model, tokenizer, samples: list[list[dict]], new_tokens: int, reps: int) -> tuple[dict, list[dict]]:
    """04's `score_and_generate` batched against one context at a time, alternating after a warm-up round:
    (result fields, summary rows)."""
    import torch

    n = len(samples)
    examples = [sc.eval_example(tokenizer, s, 384, 512) for s in samples]
    generated: dict[str, int] = {}
    cpu_s: dict[str, list[float]] = {}

    def run(batch_size: int, name: str):
        def fn():
            before = time.process_time()  # CPU seconds next to wall time: the shared machine makes wall time noisy
            _, replies = sc.score_and_generate(model, tokenizer, examples, [True] * n, max_new_tokens=new_tokens,
                                               temperature=0.0, batch_size=batch_size)
            generated[name] = sum(r["n_tokens"] for r in replies)
            cpu_s.setdefault(name, []).append(time.process_time() - before)
        return fn

    times = benchlib.alternate({"project": run(32, "project"), "baseline": run(1, "baseline")}, reps=reps, warmup=1)
    cpu_s = {k: v[-reps:] for k, v in cpu_s.items()}  # the warm-up round is not timed
    per_context = {k: [t / n for t in v] for k, v in times.items()}
    summary = [benchlib.summary_row(f"score + generate {n} contexts ({new_tokens} new tokens max), per context", "s", per_context["project"],
                                    per_context["baseline"], higher_is_better=False)]
    # 04 generates for base and twin; perplexity and scoring are small next to generation (see the stage run).
    result = {"n_contexts": n, "torch_threads": torch.get_num_threads(), "gemm_gflops": benchlib.gemm_gflops(),
              "generation_s": {k: benchlib.stats(v) for k, v in times.items()},
              "generation_cpu_s": cpu_s, "generated_tokens": generated,
              "tokens_per_s": {k: generated[k] / benchlib.stats(v)["median"] for k, v in times.items()},
              "extrapolated_200_contexts_base_and_twin_generation_s": 2 * 200 * benchlib.stats(per_context["project"])["median"]}
    return result, summary


def time_stage(samples: list[list[dict]], train: list[list[dict]], adapter: Path, tmp: Path) -> tuple[dict, dict]:
    """The whole 04 stage on `samples`, base + twin + real: (result fields, summary row)."""
    stage = sc.load_script(ROOT / "04_evaluate.py")
    prepared = prepared_dir(tmp / "prepared", samples, train)
    stage_args = stage.EvaluateArguments(input_dir=str(prepared), analysis_dir=None, adapter_path=str(adapter),
                                         output_dir=str(tmp / "eval"), max_examples=len(samples))
    t0, c0 = time.perf_counter(), time.process_time()
    stage.main(stage_args)
    stage_s = time.perf_counter() - t0
    row = benchlib.summary_row(f"04_evaluate, {len(samples)} contexts, base + twin + real", "s", [stage_s],
                               higher_is_better=False, target="<= 600 s on 2 cores")
    return {"stage_s": stage_s, "stage_cpu_s": time.process_time() - c0}, row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 contexts, 8 new tokens, no whole-stage run (<= 60 s)")
    parser.add_argument("--contexts", type=int, default=None, help="contexts per generation timing (default 32, quick 4)")
    parser.add_argument("--stage_contexts", type=int, default=200, help="contexts of the whole-stage run (0 skips it)")
    benchlib.add_out_dir_arg(parser)
    args = parser.parse_args()

    # --- inputs: chitchat contexts and a fresh adapter -------------------------------------------------------------
    started = time.perf_counter()
    n = args.contexts or (4 if args.quick else 32)
    tmp = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    stage_n = 0 if args.quick else args.stage_contexts
    samples = chitchat_samples(max(n, stage_n) + stage_n)  # the stage's train split: conversations after its test ones
    tokenizer = sc.load_tokenizer(None)
    adapter = tmp / "adapter"
    model = make_adapter(adapter, tokenizer)
    print(f"{n} contexts ready after {time.perf_counter() - started:.1f} s", flush=True)

    # --- 04's path: batched vs one context at a time, alternating after a warm-up ------------------------------
    result, summary = time_generation(model, tokenizer, samples[:n], 8 if args.quick else 48, reps=3)
    print(f"generation timed after {time.perf_counter() - started:.1f} s", flush=True)

    # --- the whole stage on 200 contexts, base + twin + real (the <= 10 min target) ------------------------------
    if stage_n:
        stage_result, row = time_stage(samples[:stage_n], samples[stage_n:2 * stage_n], adapter, tmp)
        result.update(stage_result)
        summary.append(row)
    result["summary"] = summary
    benchlib.write_result("evaluate", result, args.quick, args.out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
