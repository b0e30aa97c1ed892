"""Where a 03 training step spends its CPU time: a torch.profiler table of a few cpu_demo steps.

python bench/profile_train.py                                   # the recipe, 6 steps, ops by self CPU time
python bench/profile_train.py -- --attn_implementation sdpa     # any 03 flag after `--` (here: the default attention)
python bench/profile_train.py --shapes --rows 40                # ops split by input shapes
python bench/profile_train.py --no_profile -- --compile_layers false   # plain step times, layers not compiled

Trains `configs/cpu_demo.yaml` on the bundled sample (data/01_prepared; run `make pipeline` or 01 first) through
03_train.build_trainer, so the trainer, LoRA, precision and LM-head patch are the recipe's. Prints the step times
(the first steps pay allocator and optimizer-state setup) and, unless --no_profile, the profiler's table. Nothing
is written besides the throwaway output folder in /tmp.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402

ROOT = benchlib.ROOT


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=30, help="rows of the profiler table")
    parser.add_argument("--shapes", action="store_true", help="group the table by input shapes")
    parser.add_argument("--no_profile", action="store_true", help="step times only (no profiler overhead)")
    parser.add_argument("train_args", nargs="*", help="03 flags, after `--`")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    stage = sc.load_script(ROOT / "03_train.py")
    out = tempfile.mkdtemp(prefix="profile_train_")
    train_args, sft_config, model_args = stage.parse_args([
        "--config", str(ROOT / "configs" / "cpu_demo.yaml"), "--output_dir", out, "--max_steps", str(args.steps),
        "--logging_steps", "1000", "--disable_tqdm", "true", "--save_strategy", "no", "--report_to", "none",
        *args.train_args])
    trainer, info = stage.build_trainer(train_args, sft_config, model_args)
    timer = benchlib.step_timer()
    trainer.add_callback(timer)
    if args.no_profile:
        trainer.train()
        table = None
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
            trainer.train()
        table = prof.key_averages(group_by_input_shape=args.shapes).table(
            sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40, max_shapes_column_width=80)
    tokens, times = trainer._total_train_tokens, timer.times
    steady = times[2:] or times
    print(f"precision: {info['precision']['reason']}; attention: {model_args.attn_implementation or 'default'}; "
          f"threads {torch.get_num_threads()}; CPU flags {' '.join(benchlib.cpu_flags())}")
    print(f"steps (s): {' '.join(f'{t:.2f}' for t in times)}")
    print(f"trained tokens {tokens}; ~{tokens / len(times) / (sum(steady) / len(steady)):.0f} tokens/s over steps 3+"
          + (" (under the profiler)" if table else ""))
    if table:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
