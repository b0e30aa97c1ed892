"""GPU readiness check: the GPU recipes and launchers of 03 and the app's CUDA serving path, on the bundled model.

make gpu-check                          # = python scripts/gpu_check.py
python scripts/gpu_check.py --steps 20  # more steps per run (default 10)

On one CUDA GPU, each row is a short 03_train run on the bundled SmolLM2-135M-Instruct and data/01_prepared
(or a small chitchat dataset where there is none):
  8-bit    configs/llama31_8b_8bit.yaml (bitsandbytes LLM.int8 base)
  4-bit    configs/qlora_4bit.yaml (NF4 + double quantization, paged 8-bit AdamW)
  FSDP     configs/accelerate/fsdp.yaml on 1 process, the 8-bit recipe with --load_in_8bit false
  ZeRO-3   configs/accelerate/deepspeed_zero3.yaml on 1 process, same (needs `pip install -r requirements-gpu.txt`)
then the app's serving path (simme_common.serving.load_twin: transformers + bitsandbytes 4-bit on CUDA) on the
4-bit run's adapter. It prints trained tokens/s and peak GPU memory per row, and writes outputs/bench/gpu_check.json
after each row. Every run is its own process (accelerate's state is per process); a failed row prints its error and the
rest go on.

python scripts/gpu_check.py --model_name_or_path meta-llama/Llama-3.1-8B --only 8-bit,4-bit,serving
python scripts/gpu_check.py --model_name_or_path configs/shapes/llama-3.1-8b --random_weights --only 8-bit,4-bit,serving
  --random_weights builds the model from its config.json with random weights (tokenizer: the model's own, else
  --tokenizer_from, else the bundled one): speed and memory do not depend on the weights' values, so a GPU can be
  sized for a model whose weights are not at hand (a machine without Hub access).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import simme_common as sc  # noqa: E402

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
RUNS = {  # name -> (accelerate config or None, recipe, extra 03 flags)
    "8-bit": (None, "llama31_8b_8bit.yaml", []),
    "4-bit": (None, "qlora_4bit.yaml", []),
    "FSDP": ("fsdp.yaml", "llama31_8b_8bit.yaml", ["--load_in_8bit", "false"]),
    "ZeRO-3": ("deepspeed_zero3.yaml", "llama31_8b_8bit.yaml", ["--load_in_8bit", "false"]),
}


def child(argv: list[str]) -> None:
    """In the launched process: run 03's main, then print tokens/s and peak GPU memory as one JSON line."""
    import torch
    from accelerate import PartialState

    stage = sc.load_script(ROOT / "03_train.py")
    trainer = stage.main(*stage.parse_args(argv))
    history = trainer.state.log_history
    runtime = next((h["train_runtime"] for h in reversed(history) if "train_runtime" in h), None)
    tokens = next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), 0)
    if PartialState().is_main_process:
        print(json.dumps({"tokens_per_s": tokens / runtime if runtime else None, "tokens": tokens,
                          "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}), flush=True)


def random_copy(src: str, dst: Path, tokenizer_from: str | None) -> str:
    """`src`'s architecture (config.json) with random bf16 weights, built on the GPU and saved to `dst`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(src)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_from or src)
    except (OSError, ValueError):  # a config-only directory has no tokenizer files
        tokenizer = AutoTokenizer.from_pretrained(sc.resolve_base_model(None))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    del model
    torch.cuda.empty_cache()
    return str(dst)


def run_training(name: str, model: str, input_dir: Path, out_dir: Path, steps: int) -> dict:
    """One row: 03 under the run's launcher, in its own process; its JSON line, or the error."""
    launcher, recipe, extra = RUNS[name]
    launch = [*ACCELERATE, "--num_processes", "1", "--num_machines", "1"]
    if launcher:
        launch += ["--config_file", str(ROOT / "configs" / "accelerate" / launcher)]
    else:
        launch += ["--mixed_precision", "bf16", "--dynamo_backend", "no"]
    args = ["--config", str(ROOT / "configs" / recipe), "--model_name_or_path", model,
            "--input_dir", str(input_dir), "--output_dir", str(out_dir), "--max_steps", str(steps),
            "--save_strategy", "no", "--eval_strategy", "no", "--max_length", "512", "--disable_tqdm", "true", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run([*launch, __file__, "--child", *args], cwd=ROOT, capture_output=True, text=True)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith('{"tokens_per_s"')), None)
    if proc.returncode != 0 or line is None:
        return {"ok": False, "error": (proc.stderr or proc.stdout)[-1500:], "wall_s": time.perf_counter() - t0}
    return {"ok": True, **json.loads(line), "wall_s": time.perf_counter() - t0}


def run_serving(model: str, adapter: Path, n_tokens: int = 64) -> dict:
    """The app's CUDA path: load_twin (transformers + 4-bit) and one timed reply after a warm-up."""
    import torch

    from simme_common.serving.loader import load_twin

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    twin = load_twin(base_model=model, adapter=str(adapter) if (adapter / "adapter_config.json").exists() else None)
    load_s = time.perf_counter() - start
    messages = [{"role": "user", "content": "hey, are we still on for tonight?"}]
    twin.generate(messages, max_new_tokens=8, seed=0, use_cache=False)
    ids_before = twin.count_tokens(messages)
    t0 = time.perf_counter()
    text = twin.generate(messages, max_new_tokens=n_tokens, seed=1, use_cache=False, temperature=0.7)
    seconds = time.perf_counter() - t0
    n = max(1, len(twin.prompt_ids(messages + [{"role": "assistant", "content": text}])) - ids_before)
    info = twin.info()
    twin.close()
    return {"ok": True, "backend": info.get("backend"), "device": info.get("device"), "load_s": load_s,
            "tokens_per_s": n / seconds, "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}


def write_results(args: argparse.Namespace, model: str, results: dict) -> None:
    """gpu_check.json after every row, so a run stopped half-way keeps the rows it finished."""
    import torch

    config = json.loads((Path(model) / "config.json").read_text()) if (Path(model) / "config.json").exists() else {}
    (args.out_dir / "gpu_check.json").write_text(json.dumps({
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "model": args.model_name_or_path or sc.DEFAULT_BASE_MODEL, "random_weights": args.random_weights,
        "architecture": config.get("architectures"), "steps": args.steps, "rows": results}, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per training row")
    parser.add_argument("--only", default=None, help=f"comma-separated rows among {', '.join(RUNS)}, serving")
    parser.add_argument("--out_dir", type=Path, default=ROOT / "outputs" / "bench")
    parser.add_argument("--model_name_or_path", default=None, help="base model (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--random_weights", action="store_true", help="the model's architecture with random weights")
    parser.add_argument("--tokenizer_from", default=None, help="tokenizer for --random_weights when the model has none")
    parser.add_argument("--input_dir", type=Path, default=None, help="a prepared dataset (default: data/01_prepared)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    if "--child" in sys.argv[1:]:  # 03's own flags follow; some share names with this script's
        child([a for a in sys.argv[1:] if a != "--child"])
        return 0
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("error: no CUDA GPU here; gpu-check runs on a GPU machine", file=sys.stderr)
        return 2
    rows = args.only.split(",") if args.only else [*RUNS, "serving"]
    results: dict[str, dict] = {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        model = sc.resolve_base_model(args.model_name_or_path) if not args.random_weights else \
            random_copy(args.model_name_or_path or sc.resolve_base_model(None), Path(tmp) / "model", args.tokenizer_from)
        input_dir = args.input_dir or ROOT / sc.PREPARED_DIR
        if not (input_dir / "dataset").exists():
            sys.path.insert(0, str(ROOT / "bench"))
            from bench_train import chitchat_samples

            input_dir = chitchat_samples(Path(tmp) / "data", 256)
        for name in [r for r in rows if r in RUNS]:
            results[name] = run_training(name, model, input_dir, Path(tmp) / name.replace("-", "_"), args.steps)
            print(f"{name:8s} {json.dumps(results[name])[:300]}", flush=True)
            write_results(args, model, results)
        if "serving" in rows:
            try:
                results["serving"] = run_serving(model, Path(tmp) / "4_bit")
            except Exception as err:  # noqa: BLE001  (a row's failure is its result)
                results["serving"] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:1500]}
            print(f"serving  {json.dumps(results['serving'])[:300]}", flush=True)
            write_results(args, model, results)
    print(sc.print_table([(name, f"{r['tokens_per_s']:.0f} tok/s, peak {r['peak_gpu_mb']:.0f} MiB" if r.get("ok")
                           else "FAILED") for name, r in results.items()], f"gpu-check ({torch.cuda.get_device_name(0)})"))
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
