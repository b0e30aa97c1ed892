"""Benchmark of 03_train: trained tokens/s of the cpu_demo recipe against SFTTrainer's defaults, same run.

python bench/bench_train.py            # bundled sample (data/01_prepared), 3 alternating rounds of 3 steps + an ablation
python bench/bench_train.py --pair     # the same without the one-flag ablation (recipe and defaults only)
python bench/bench_train.py --pair --also "project, system allocator"   # + chosen variants of the ablation
python bench/bench_train.py --quick    # 2 rounds of 1 step on 2 x 64-token chitchat samples (aimed at <= 40 s idle)

Each variant runs in its own worker process (accelerate's state is per process) and trains one `train()`, paused
between rounds so the variants take turns on the cores. The first round (train() setup, the optimizer's state, the
allocator's first growth, the recipe's torch.compile of its decoder layers) is untimed; tokens/s is timed inside the
optimizer steps of the later rounds (a callback), so it is the steady rate a real run has after its first step.

Both sides train the default model (SmolLM2-135M-Instruct) with the recipe's LoRA config on the same samples,
built by 03_train.build_trainer. The baseline is `SFTConfig` and `ModelConfig` with their defaults (bf16
autocast, gradient checkpointing, sdpa attention, random batches padded to the longest sample, TRL's LM head on
every position, frozen weights re-cast to bf16 by autocast on every forward, autocast casting each op's inputs
itself rather than each activation once (simme_common/bf16_step.py), uncompiled layers, glibc's malloc), plus
`use_cpu=True`, without which the defaults refuse to start on a CPU-only machine. The recipe's workers re-run
themselves on its allocator (mimalloc where installed), as 03 does.
Tokens are the non-padding tokens TRL counts; the GEMM floor is 4 x params x tokens/s (forward 2P + input-gradient
2P per token; frozen weights get no gradient) over the machine's measured matmul rate in the dtype the recipe computes in (bf16
where `dtype: auto` chose bf16 autocast); both the fp32 and the bf16 rates are reported, with the CPU flags. That
rate is measured on 1024² matrices; the same fraction against the rate of a decoder layer's own matmul shapes at
the recipe's mean batch rows is reported beside it, since a small model's narrow products cannot use all of a
wide unit such as AMX.
Padding waste (padded / all tokens of the batches actually trained) and the training set's length distribution
are measured per variant. The full run also ablates the defaults one flag at a time to show why.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402
from simme_common.bf16_step import LeanStep  # noqa: E402

ROOT = benchlib.ROOT
RECIPE = ROOT / "configs" / "cpu_demo.yaml"
PROJECT, BASELINE = "project (cpu_demo.yaml)", "SFTTrainer defaults"
ONE_THREAD = "project, 1 torch thread"  # what accelerate launch without --cpu would leave (OMP_NUM_THREADS=1)
SDPA = "project, sdpa attention"  # the recipe with torch's default attention instead of eager
SYSTEM_MALLOC = "project, system allocator"  # the recipe on glibc's malloc instead of mimalloc
PLAIN_AUTOCAST = "project, autocast's own casts"  # the recipe without simme_common/bf16_step.py
NOT_COMPILED = "project, not compiled"  # the recipe with --compile_layers false
RECIPE_SIDE = (PROJECT, ONE_THREAD, SDPA, SYSTEM_MALLOC, PLAIN_AUTOCAST, NOT_COMPILED)
PAIR_ONLY = (PLAIN_AUTOCAST, NOT_COMPILED)  # through --pair --also only: 8 workers already fill 24 GB in the full run


def chitchat_samples(out_dir: Path, n: int) -> Path:
    """A prepared dataset (01's contract) of `n` chitchat conversations, for machines without data/01_prepared."""
    import chitchat_dataset
    from datasets import Dataset, DatasetDict

    rows = []
    for conv_id, conv in chitchat_dataset.Dataset().items():
        turns = [" ".join(m["text"] for m in turn) for turn in conv["messages"]][:8]
        # Short like 01's windows (<= 200 tokens; 600 characters is roughly 150): longer ones make the defaults'
        # full-vocab logits and their copies take ~9 GB per worker, and five workers do not fit in 24 GB.
        while len(turns) > 2 and sum(map(len, turns)) > 600:
            turns.pop()
        if len(turns) < 2:
            continue
        messages = [{"role": "system", "content": sc.build_system_prompt("one_on_one", "Sam", ["Alex"])}]
        messages += [{"role": "user" if (len(turns) - i) % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        rows.append({"messages": messages, "chat_id": conv_id, "chat_type": "one_on_one", "session_start": 0, "n_tokens": 0})
        if len(rows) == n:
            break
    DatasetDict(train=Dataset.from_list(rows)).save_to_disk(str(out_dir / "dataset"))
    return out_dir


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def variant_configs(stage, input_dir: Path, out_dir: Path, quick: bool, rounds: int = 1) -> tuple[object, object, dict]:
    """(TrainArguments, ModelConfig, {variant name: SFTConfig}) of the recipe, the defaults and (full run) the
    ablation, each training `rounds` rounds of 1 (quick) or 3 optimizer steps."""
    from trl import SFTConfig

    steps = (1 if quick else 3) * rounds
    common = ["--input_dir", str(input_dir), "--max_steps", str(steps), "--logging_steps", "1000", "--disable_tqdm", "true",
              "--save_strategy", "no", "--report_to", "none"]
    if quick:  # short samples and small batches keep the bf16 baseline inside the time budget
        common += ["--max_length", "64", "--per_device_train_batch_size", "2"]
    train_args, recipe, model_args = stage.parse_args(["--config", str(RECIPE), "--output_dir", str(out_dir / "p"), *common])
    # The baseline: SFTConfig's defaults with only what the comparison needs (CPU, owner-only loss, step count).
    defaults = {"output_dir": str(out_dir / "b"), "use_cpu": True, "assistant_only_loss": True, "max_steps": steps,
                "logging_steps": 1000, "disable_tqdm": True, "save_strategy": "no", "report_to": "none"}
    if quick:
        defaults.update(max_length=64, per_device_train_batch_size=2)
    variants = {PROJECT: lambda: recipe, BASELINE: lambda: SFTConfig(**defaults)}
    if not quick:  # one default changed at a time: where the time goes; and the recipe on one thread
        variants[ONE_THREAD] = lambda: recipe
        variants[SDPA] = lambda: recipe
        variants[SYSTEM_MALLOC] = lambda: recipe
        variants[PLAIN_AUTOCAST] = lambda: recipe
        variants[NOT_COMPILED] = lambda: recipe
        variants["defaults + fp32"] = lambda: SFTConfig(**defaults, bf16=False)
        variants["defaults + fp32 + no checkpointing"] = lambda: SFTConfig(**defaults, bf16=False, activation_checkpointing=False)
        variants["defaults + fp32 + no ckpt + length-grouped"] = lambda: SFTConfig(
            **defaults, bf16=False, activation_checkpointing=False, train_sampling_strategy="group_by_length")
    return train_args, model_args, variants


def worker(name: str, input_dir: Path, out_dir: Path, quick: bool, rounds: int) -> None:
    """One variant in its own process (accelerate's state is per process): one `train()` of `rounds` rounds, paused
    between rounds until the next 'go' on stdin, so rounds after the first are steady steps, as in a real run."""
    import torch

    stage = sc.load_script(ROOT / "03_train.py")
    train_args, model_args, variants = variant_configs(stage, input_dir, out_dir, quick, rounds)
    # The recipe's allocator, as 03 gets it (this worker re-runs itself on mimalloc); the defaults keep the system's
    sc.reexec_with_allocator(train_args.allocator if name in RECIPE_SIDE and name != SYSTEM_MALLOC else "system")
    if name == ONE_THREAD:
        train_args.num_threads = 1
    elif name == SDPA:
        model_args.attn_implementation = "sdpa"
    if quick or name == NOT_COMPILED or name not in RECIPE_SIDE:  # quick: 2 x 1 step would be all compiling
        train_args.compile_layers = "false"
    if name == PLAIN_AUTOCAST or name not in RECIPE_SIDE:
        stage.lean_bf16_step = lambda model: LeanStep()  # autocast casts each op's inputs itself
    if name not in RECIPE_SIDE:  # ModelConfig's default dtype and attention (sdpa), and TRL's LM head on every position
        from trl import ModelConfig

        for field in ("dtype", "attn_implementation"):
            setattr(model_args, field, ModelConfig.__dataclass_fields__[field].default)
        stage.compact_lm_head = lambda model: "baseline: TRL's head"
        stage.frozen_linears_to_bf16 = lambda model: 0  # autocast re-casts frozen weights on every forward
    trainer, info = stage.build_trainer(train_args, variants[name](), model_args)
    timer = benchlib.step_timer()
    trainer.add_callback(timer)
    params = sum(p.numel() for p in trainer.model.get_base_model().parameters())
    config = trainer.model.get_base_model().config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dims = {"hidden": config.hidden_size, "intermediate": config.intermediate_size,
            "q": config.num_attention_heads * head_dim, "kv": config.num_key_value_heads * head_dim}
    collate, padded = trainer.data_collator, {"all": 0, "real": 0}

    def counting_collator(examples):
        batch = collate(examples)
        padded["all"] += batch["attention_mask"].numel()
        padded["real"] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting_collator
    lengths = sorted(len(x) for x in trainer.train_dataset["input_ids"])
    quantiles = {f"p{q}": lengths[min(len(lengths) - 1, len(lengths) * q // 100)] for q in (10, 50, 90, 99)}
    print(json.dumps({"ready": name, "params": params, "threads": torch.get_num_threads(),
                      "precision": info["precision"], "supervised_only_head": info["supervised-only LM head"],
                      "allocator": sc.allocator_in_use(), "layer_dims": dims,
                      "batch_size": trainer.args.per_device_train_batch_size,
                      "lengths": {"n": len(lengths), "mean": sum(lengths) / len(lengths), **quantiles,
                                  "max": lengths[-1]}}), flush=True)
    if sys.stdin.readline().strip() == "go":
        trainer.add_callback(round_breaks(trainer, timer, padded, trainer.args.max_steps // rounds, rounds))
        trainer.train()


def round_breaks(trainer, timer, padded: dict, steps: int, rounds: int):
    """A Trainer callback that ends a round every `steps` optimizer steps: it prints the round's JSON reply and
    waits for the next 'go' (stops training on end of input)."""
    from transformers import TrainerCallback

    class RoundBreaks(TrainerCallback):
        def __init__(self):
            self.mark()

        def mark(self):
            self.start = (trainer._total_train_tokens, cpu_seconds(), time.perf_counter(), len(timer.times),
                          padded["all"], padded["real"])

        def on_step_end(self, args, state, control, **_):
            if state.global_step % steps:
                return
            tokens0, c0, t0, s0, all0, real0 = self.start
            print(json.dumps({"tokens": trainer._total_train_tokens - tokens0, "s": time.perf_counter() - t0,
                              "step_s": sum(timer.times[s0:]), "cpu_s": cpu_seconds() - c0,
                              "batch_tokens": padded["all"] - all0, "real_tokens": padded["real"] - real0}), flush=True)
            if state.global_step < steps * rounds:
                release_memory_if_short()
                if sys.stdin.readline().strip() != "go":
                    control.should_training_stop = True
            self.mark()

    return RoundBreaks()


def release_memory_if_short() -> None:
    """Hand freed memory back to the OS while paused, but only when the machine runs short of memory (the full run
    keeps eight workers alive side by side): the allocators keep freed memory otherwise, and the page faults of
    getting it back would land in the next round's steps."""
    import psutil

    memory = psutil.virtual_memory()
    if memory.available < memory.total / 4:
        gc.collect()
        sc.release_free_memory()


def layer_rows(info: dict) -> int:
    """Tokens in the recipe's mean batch: the rows of its matmuls."""
    return round(info[PROJECT]["batch_size"] * info[PROJECT]["lengths"]["mean"])


def race(names: list[str], input_dir: Path, tmp: Path, quick: bool, reps: int) -> tuple[dict, dict, dict]:
    """Every variant in its own worker, one untimed round, then `reps` alternating rounds:
    (ready info, rounds, {floor: {dtype: GEMM GFLOP/s}}), the floors measured before and after the rounds (the
    better one kept): on 1024² matrices ("square") and on a decoder layer's shapes at the recipe's mean batch
    rows ("layer")."""
    workers = {}
    for i, name in enumerate(names):
        cmd = [sys.executable, __file__, "--worker", name, "--input_dir", str(input_dir), "--worker_dir", str(tmp / f"w{i}"),
               "--rounds", str(reps + 1)]
        workers[name] = benchlib.Worker(cmd + (["--quick"] if quick else []), stderr=subprocess.DEVNULL)
    info = {name: w.ready() for name, w in workers.items()}
    rounds: dict[str, list[dict]] = {name: [] for name in names}

    def run(name: str):
        return lambda: rounds[name].append(workers[name].call("go"))

    dims, rows = info[PROJECT]["layer_dims"], layer_rows(info)
    floors = {"square": lambda dtype: benchlib.gemm_gflops(dtype=dtype),
              "layer": lambda dtype: benchlib.layer_gemm_gflops(dims, rows, dtype=dtype)}
    gflops = {floor: {dtype: rate(dtype) for dtype in ("float32", "bfloat16")} for floor, rate in floors.items()}
    # untimed: the first steps pay one-time kernel and allocator setup
    benchlib.alternate({name: run(name) for name in names}, 1)
    rounds = {name: [] for name in names}
    benchlib.alternate({name: run(name) for name in names}, reps)
    gflops = {floor: {dtype: max(rate, floors[floor](dtype)) for dtype, rate in by_dtype.items()}
              for floor, by_dtype in gflops.items()}
    for w in workers.values():
        w.close()
    return info, rounds, gflops


def summarize(info: dict, rounds: dict, gflops: dict) -> dict:
    """tokens/s per variant, ratios to the defaults, the GEMM-floor fractions, padding and the summary rows."""
    names = list(rounds)
    params, threads = info[PROJECT]["params"], info[PROJECT]["threads"]
    recipe_dtype = "bfloat16" if info[PROJECT]["precision"]["bf16_autocast"] else "float32"
    rates = {name: [r["tokens"] / r["step_s"] for r in rs] for name, rs in rounds.items()}  # inside the steps
    round_rates = {name: [r["tokens"] / r["s"] for r in rs] for name, rs in rounds.items()}  # steps + batch loading
    med = {name: benchlib.stats(r)["median"] for name, r in rates.items()}
    # Tokens per CPU-second x threads: what the same work gives on an idle machine (the cores were shared).
    quiet = {name: sum(r["tokens"] for r in rs) / (sum(r["cpu_s"] for r in rs) / threads) for name, rs in rounds.items()}
    floors = {dtype: {name: 4 * params * med[name] / (rate * 1e9) for name in names}
              for dtype, rate in gflops["square"].items()}
    floor = floors[recipe_dtype]
    layer_floor = {name: 4 * params * med[name] / (gflops["layer"][recipe_dtype] * 1e9) for name in names}
    padding = {name: 1 - sum(r["real_tokens"] for r in rs) / max(1, sum(r["batch_tokens"] for r in rs))
               for name, rs in rounds.items()}
    summary = [
        benchlib.summary_row("trained tokens/s, cpu_demo.yaml vs SFTTrainer defaults", "tok/s", rates[PROJECT],
                             rates[BASELINE], target=">= 3x defaults"),
        {"metric": f"fraction of the GEMM floor in the recipe's dtype ({recipe_dtype})", "unit": "",
         "project": floor[PROJECT], "baseline": floor[BASELINE], "target": ">= 0.50"},
        {"metric": f"fraction of the GEMM floor at the model's layer shapes ({recipe_dtype}, "
                   f"{gflops['layer'][recipe_dtype]:.0f} GFLOP/s)", "unit": "",
         "project": layer_floor[PROJECT], "baseline": layer_floor[BASELINE], "target": ""},
        {"metric": "padding waste (padded / all batch tokens)", "unit": "", "project": padding[PROJECT],
         "baseline": padding[BASELINE], "target": ""},
    ]
    return {
        "params": params, "gemm_gflops": gflops, "recipe_dtype": recipe_dtype, "threads": threads,
        "cpu_flags": benchlib.cpu_flags(), "load_avg_1m": os.getloadavg()[0],
        "precision": {name: i["precision"]["reason"] for name, i in info.items()},
        "supervised_only_head": {name: i["supervised_only_head"] for name, i in info.items()},
        "allocator": {name: i["allocator"] for name, i in info.items()},
        "train_lengths": info[PROJECT]["lengths"], "padding_waste": padding,
        "floor_fraction_by_dtype": floors, "floor_fraction_layer_shapes": layer_floor,
        "layer_rows": layer_rows(info),
        "tokens_per_round": {name: rs[0]["tokens"] for name, rs in rounds.items()},
        "tokens_per_s": {name: benchlib.stats(r) for name, r in rates.items()},
        "tokens_per_s_whole_rounds": {name: benchlib.stats(r) for name, r in round_rates.items()},
        "ratio_vs_defaults": {name: med[name] / med[BASELINE] for name in names},
        "tokens_per_cpu_s_x_threads": quiet,
        "floor_fraction": floor,
        "summary": summary,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 step on 64-token samples (<= 40 s)")
    parser.add_argument("--reps", type=int, default=None, help="alternating rounds (default 2 quick, 3 full)")
    parser.add_argument("--pair", action="store_true", help="only the recipe and the defaults (no one-flag ablation)")
    parser.add_argument("--also", action="append", default=[], help="with --pair: this variant of the full run's "
                        "too (e.g. 'project, system allocator'); repeatable")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1, help=argparse.SUPPRESS)
    benchlib.add_out_dir_arg(parser)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.worker:
        worker(args.worker, Path(args.input_dir), Path(args.worker_dir), args.quick, args.rounds)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    sample = ROOT / sc.PREPARED_DIR
    input_dir = sample if (sample / "dataset").exists() and not args.quick else chitchat_samples(tmp / "data", 64 if args.quick else 512)
    names = list(variant_configs(sc.load_script(ROOT / "03_train.py"), input_dir, tmp, args.quick)[2])
    if unknown := [name for name in args.also if name not in names]:
        parser.error(f"--also: no variant named {unknown}; variants: {names}")
    names = [PROJECT, BASELINE, *args.also] if args.pair else [name for name in names if name not in PAIR_ONLY]
    info, rounds, gflops = race(names, input_dir, tmp, args.quick, args.reps or (2 if args.quick else 3))
    result = {"input": "bundled sample" if input_dir == sample else "chitchat samples", **summarize(info, rounds, gflops)}
    benchlib.write_result("train", result, args.quick, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
