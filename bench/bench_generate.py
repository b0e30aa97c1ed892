"""Benchmark of the app's generation path (simme_common.load_twin, backend "auto") against plain fp32
transformers.generate of the same model with the same LoRA adapter, and of each of our llama.cpp patches with
against without, alternating, in one run.

python bench/bench_generate.py            # 5 reps, 64 new tokens after a ~200-token chat, 2 threads
python bench/bench_generate.py --quick    # 2 reps of 32 new tokens, a 20-turn long chat, 4 concurrent chats (<= 90 s when idle, GGUF cached)
python bench/bench_generate.py --adapter outputs/03_adapter --quant q4_k_m   # another GGUF type
python bench/bench_generate.py --concurrent_only   # only the 16-concurrent-chats rows (batched vs one at a time)
python bench/bench_generate.py --concurrent_only --threads 1 --concurrent_seconds 30   # a shorter one, 1 thread

Every measured configuration runs in its own process (this file with --worker NAME: one request line in, one JSON
line out), taking turns round by round. Sharing one process, the fp32 baseline's OpenMP threads competed with
llama.cpp's (27.7 tok/s measured there, 100-112 for the app's path alone), and llama.cpp reads the patches'
switches once per process.

Without --adapter, a LoRA with random nonzero weights (peft init_lora_weights=False) on every projection
is made, so both paths really apply an adapter. Reported: decode tokens/s (tokens after the first / their
time), first-token latency on a cold ~200-token context, on a follow-up turn (prefix KV reuse) and on the
same follow-up after another user's chat (stored KV snapshot), on the turns of a long chat past the app's
context budget (trimmed a block at a time vs turn by turn), the
fraction of the memory-bandwidth floor (weight bytes read per token / measured read bandwidth), what the
quantization costs (teacher-forced NLL of the chat against the fp32 model; 1.00 = lossless), peak RSS;
on CUDA also the bitsandbytes 4-bit (NF4) and 8-bit paths against bf16.

Concurrent rows (llama.cpp): --clients users at once, each keeping a chat going for --concurrent_seconds like
tests/test_load.py's clients (sampled replies of up to --concurrent_tokens tokens, then at once a new unique message,
the history trimmed to the app's budget), in the app's worker (batched decoding, LlamaCppOptions.max_batch) against a
worker of the same path with max_batch=1 (one request at a time), taking turns: p50/p95 first output and aggregate
generated tokens/s of the follow-up turns, and p50/p95 first output of the cold first turns on their own (prefills of
whole prompts, compute bound on either path).

Patch rows (patches/llama-cpp-python-0.3.36-*.patch; in the table, project = with and baseline = without): "with" is
the app's path, "without" the same path with the patch's work switched off at run time, where our build then does
what a stock llama-cpp-python 0.3.36 does, so no second build is needed:
  amx-tilecfg       the AMX weight buffer off, i.e. the app's quantization and weight placement for a build whose AMX
                    kernels are unusable (stock ggml's crash): first token and decode tokens/s
  fa-prefill        SIMME_FA_PREFILL_MIN_TOKENS=0: prompt batches without flash attention; first token
  amx-bf16-prefill  amx_bf16_min_tokens "0": Q8_0 prompt batches on the int8 AMX tiles only; first token
A row whose patch cannot act here says why instead, e.g. "n/a (no AMX)".
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402
from generate_worker import random_lora, serve_worker  # noqa: E402

# Made-up small talk (no real data): repeated until the chat is ~200 tokens.
PATCHES = {
    "amx-tilecfg": ("no_amx", "AMX weight buffer off"),
    "fa-prefill": ("no_fa_prefill", "SIMME_FA_PREFILL_MIN_TOKENS=0"),
    "amx-bf16-prefill": ("no_amx_bf16", "SIMME_AMX_BF16_MIN_TOKENS=0"),
}
PATCH_TAGS = {"amx-tilecfg": sc.LLAMA_CPP_AMX_FIX, "fa-prefill": sc.LLAMA_CPP_FA_PREFILL,
              "amx-bf16-prefill": sc.LLAMA_CPP_AMX_BF16}  # each patch's mark in llama_cpp.__version__
# llama.cpp reads this one itself (getenv, once per process), so it goes into the worker's environment.
WORKER_ENV = {"no_fa_prefill": {"SIMME_FA_PREFILL_MIN_TOKENS": "0"}}
LONG_CHAT_BUDGET = 512  # the app's default context budget (AppSettings.max_context_tokens)


def patch_unavailable(patch: str, app: dict) -> str | None:
    """Why `patch` cannot act on the app's twin here (the row's text), or None when its row can be measured."""
    if app["backend"] != "llama.cpp":
        return f"n/a (backend {app['backend']})"
    if patch != "fa-prefill" and "AMX" not in app["bufts"]:
        return "n/a (no AMX)"
    version = app["info"].get("llama_cpp", "")
    if PATCH_TAGS[patch] not in version:
        return f"n/a (llama-cpp-python {version} is built without it; `make setup` builds it in)"
    if patch == "amx-bf16-prefill" and not app["info"].get("amx_bf16_min_tokens"):
        return f"n/a (BF16 tiles off here: {app['info'].get('quantization')} weights, or amx_bf16_min_tokens 0)"
    return None


def start_worker(args, name: str, base: str, adapter: str) -> benchlib.Worker:
    """Worker `name` (a configuration of this file in its own process), loaded."""
    cmd = [sys.executable, __file__, "--worker", name, "--base_model", base, "--adapter", adapter,
           "--threads", str(args.threads), "--prompt_tokens", str(args.prompt_tokens),
           "--new_tokens", str(args.new_tokens), "--reps", str(args.reps)] + (["--quant", args.quant] if args.quant else [])
    worker = benchlib.Worker(cmd, env={**os.environ, **WORKER_ENV.get(name, {})})
    worker.ready()  # one load at a time: the first exports (and caches) the GGUF that later ones read
    return worker


def start_workers(args, base: str, adapter: str, workers: dict) -> dict[str, str | None]:
    """Fill `workers` with the app, the fp32 baseline, the one-at-a-time path (llama.cpp) and the without side of every
    patch that can act here; returns each patch's reason when it cannot."""
    workers["app"] = start_worker(args, "app", base, adapter)
    reasons = {patch: patch_unavailable(patch, workers["app"].ready()) for patch in PATCHES}
    serial = ["serial"] if workers["app"].ready()["backend"] == "llama.cpp" else []
    fp32 = [] if args.concurrent_only else ["fp32"]
    patches = [] if args.concurrent_only else [PATCHES[patch][0] for patch, reason in reasons.items() if reason is None]
    for name in fp32 + serial + patches:
        workers[name] = start_worker(args, name, base, adapter)
    return reasons


def time_concurrent(workers: dict, args) -> dict:
    """--clients chats at once on the app's worker (batched) and on the one-at-a-time worker, taking turns."""
    rounds: dict[str, list[dict]] = {"project": [], "baseline": []}
    request = f"concurrent {args.clients} {args.concurrent_seconds} {args.concurrent_tokens} {LONG_CHAT_BUDGET}"
    for _ in range(args.concurrent_reps):
        rounds["project"].append(workers["app"].call(request))
        rounds["baseline"].append(workers["serial"].call(request))
    # what one batched step costs by chats: near flat when decode is memory bound, linear when compute bound
    rounds["decode_step_ms"] = workers["app"].call(f"steps {3 if args.quick else 9}")
    return rounds


def concurrent_rows(args, rounds: dict) -> list[dict]:
    """Batched decoding vs one request at a time, one sample a round: aggregate tokens/s and p50/p95 first output of
    the turns after each chat's first (the steady state), and p50/p95 of the cold first turns."""
    def quantile(values: list[float], q: float) -> float:
        ordered = sorted(values) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    what = (f"concurrent: {args.clients} chats kept going for {args.concurrent_seconds:g} s, replies of <= "
            f"{args.concurrent_tokens} tokens")
    samples = {side: {"tps": [r["tps"] for r in runs], "tps_all": [r["tps_all"] for r in runs],
                      "p50": [quantile(r["firsts"], 0.5) for r in runs], "p95": [quantile(r["firsts"], 0.95) for r in runs],
                      "cold50": [quantile(r["cold_firsts"], 0.5) for r in runs],
                      "cold95": [quantile(r["cold_firsts"], 0.95) for r in runs]}
               for side, runs in rounds.items() if side in ("project", "baseline")}
    p, b = samples["project"], samples["baseline"]
    vs = "batched vs one at a time"

    def row(metric: str, unit: str, key: str, higher: bool = True, target: str = "") -> dict:
        if any(math.isnan(v) for v in p[key] + b[key]):  # no follow-up turn: the cold turns outlasted the run
            return {"metric": metric, "unit": unit, "target": target,
                    "project": "n/a (no follow-up turn ended in --concurrent_seconds; cold turns took longer)"}
        return benchlib.summary_row(metric, unit, p[key], b[key], higher_is_better=higher, target=target)

    return [
        row(f"{what}, aggregate generated tokens/s after the cold turns, {vs}", "tok/s", "tps", target=">= 2x"),
        row(f"{what}, p95 first output of follow-up turns, {vs}", "s", "p95", higher=False, target="<= 1.5 s"),
        row(f"{what}, p50 first output of follow-up turns, {vs}", "s", "p50", higher=False),
        row(f"{what}, p95 first output of the cold first turns, {vs}", "s", "cold95", higher=False),
        row(f"{what}, p50 first output of the cold first turns, {vs}", "s", "cold50", higher=False),
        row(f"{what}, generated tokens/s over the whole run, {vs}", "tok/s", "tps_all"),
    ]


def time_rounds(workers: dict, reps: int) -> dict[str, list[dict]]:
    """Every worker's cold reply and the app's follow-up turns, taking turns for `reps` rounds after a warm-up round."""
    requests = {"project": ("app", "cold"), "baseline": ("fp32", "cold"), "project_turn": ("app", "turn"),
                "project_return": ("app", "return")}
    requests.update({name: (name, "cold") for name in workers if name not in ("app", "fp32", "serial")})
    samples: dict[str, list[dict]] = {key: [] for key in requests}

    def ask(key: str, name: str, op: str):
        return lambda: samples[key].append(workers[name].call(op))

    benchlib.alternate({key: ask(key, *request) for key, request in requests.items()}, reps, warmup=1)
    return {key: answers[1:] for key, answers in samples.items()}  # without the warm-up round


def time_long_chats(app: benchlib.Worker, quick: bool) -> dict[str, list[float]]:
    """First tokens of long chats past the budget: trimmed a quarter of the budget at a time (the KV prefix survives
    several turns) against turn by turn (the start moves every turn, so every turn re-prefills the whole budget)."""
    turns, budget = 20 if quick else 40, LONG_CHAT_BUDGET
    long_chat: dict[str, list[float]] = {"project": [], "baseline": []}
    for _ in range(1 if quick else 2):
        long_chat["baseline"] += app.call(f"long {turns} {budget} 1")["firsts"]
        long_chat["project"] += app.call(f"long {turns} {budget} {budget // 4}")["firsts"]
    return long_chat


def app_rows(app: dict, first: dict, tps: dict, long_chat: dict, nll_ratio: float) -> list[dict]:
    """The app's path against the fp32 baseline: the summary rows."""
    n_prompt, info = app["prompt_tokens"], app["info"]
    return [
        benchlib.summary_row(f"decode tokens/s, {app['backend']} {info.get('quantization')} vs fp32 generate", "tok/s",
                             tps["project"], tps["baseline"], target=">= 4x"),
        benchlib.summary_row(f"first token, cold {n_prompt}-token context", "s", first["project"], first["baseline"],
                             higher_is_better=False, target="<= 0.3 s"),
        benchlib.summary_row("NLL of the chat, app path / fp32 (quantization cost)", "ratio", [nll_ratio], target="<= 1.03"),
        benchlib.summary_row("first token, follow-up turn (prefix KV reuse) vs cold baseline", "s", first["project_turn"],
                             first["baseline"], higher_is_better=False, target="<= 0.3 s"),
        benchlib.summary_row("first token, follow-up turn after another user's chat (KV snapshot) vs cold baseline",
                             "s", first["project_return"], first["baseline"], higher_is_better=False, target="<= 0.3 s"),
        benchlib.summary_row(f"first token, turns past the {LONG_CHAT_BUDGET}-token budget: block trimming vs turn "
                             "by turn (mean)", "s", [sum(long_chat["project"]) / len(long_chat["project"])],
                             [sum(long_chat["baseline"]) / len(long_chat["baseline"])], higher_is_better=False),
    ]


def patch_rows(ready: dict, first: dict, tps: dict, reasons: dict) -> tuple[list[dict], dict]:
    """Per patch, its rows (project = with, baseline = without) or its reason; and what each without side was."""
    rows, detail = [], {}
    n_prompt = ready["app"]["prompt_tokens"]
    for patch, (name, without) in PATCHES.items():
        if patch == "amx-tilecfg" and name in ready:
            w, wo = ready["app"]["info"], ready[name]["info"]
            without += (f": {wo.get('quantization')} on {wo.get('weight_buffer')} "
                        f"vs {w.get('quantization')} on {w.get('weight_buffer')}")
        detail[patch] = {"without": without, "worker": name} if reasons[patch] is None else {"n/a": reasons[patch]}
        metrics = [(f"first token, cold {n_prompt}-token context", "s", first, False)]
        if patch == "amx-tilecfg":  # AMX also moves decode; the two prefill patches leave decode as it was
            metrics.append(("decode tokens/s", "tok/s", tps, True))
        for what, unit, samples, higher in metrics:
            metric = f"patch {patch}: {what}, with vs without ({without})"
            if reasons[patch] is not None:
                rows.append({"metric": metric, "unit": unit, "project": reasons[patch], "target": ""})
            else:
                rows.append(benchlib.summary_row(metric, unit, samples["project"], samples[name], higher_is_better=higher))
    return rows, detail


def cuda_results(args, base: str, adapter: str) -> tuple[dict, list[dict]]:
    """The CUDA comparison (its own process): per quantization the stats, and a summary row each."""
    worker = start_worker(args, "cuda", base, adapter)
    try:
        runs = worker.call("run")
    finally:
        worker.close()
    gpu = {quant: {"decode_tps": benchlib.stats(r["decode_tps"]), "first_token_s": benchlib.stats(r["first_s"]),
                   "memory_gb": r["memory_gb"]} for quant, r in runs.items()}
    rows = [benchlib.summary_row(f"CUDA decode tokens/s, bnb {quant} vs bf16", "tok/s", r["decode_tps"],
                                 None if quant == "none" else [gpu["none"]["decode_tps"]["median"]])
            for quant, r in runs.items()]
    return gpu, rows


def measure(args, base: str, adapter: str) -> dict:
    """Every worker's numbers: ready info, round samples, long chats and NLL; workers closed before returning."""
    workers: dict[str, benchlib.Worker] = {}
    try:
        reasons = start_workers(args, base, adapter, workers)
        concurrent = time_concurrent(workers, args) if "serial" in workers else None
        if args.concurrent_only:
            return {"ready": {name: w.ready() for name, w in workers.items()}, "concurrent": concurrent}
        samples = time_rounds(workers, args.reps)
        long_chat = time_long_chats(workers["app"], args.quick)
        nll = {"project": workers["app"].call("nll")["nll"], "baseline": workers["fp32"].call("nll")["nll"]}
        return {"ready": {name: w.ready() for name, w in workers.items()}, "samples": samples,
                "long_chat": long_chat, "nll": nll, "reasons": reasons, "concurrent": concurrent}
    finally:
        for worker in workers.values():
            worker.close()


def summarize(args, m: dict) -> dict:
    """The result record (results.json's "generate") from `measure`'s numbers and the machine's read bandwidth."""
    app, fp32 = m["ready"]["app"], m["ready"]["fp32"]
    tps = {k: [s["decode_tps"] for s in v] for k, v in m["samples"].items()}
    first = {k: [s["first_s"] for s in v] for k, v in m["samples"].items()}
    p_tps, b_tps = benchlib.stats(tps["project"])["median"], benchlib.stats(tps["baseline"])["median"]
    nll_ratio = m["nll"]["project"][0] / m["nll"]["baseline"][0]
    # Bandwidth floor: every weight is read once per decoded token.
    bw = benchlib.mem_bandwidth_gbs()
    proj_bytes, fp32_bytes = app["weight_bytes"], fp32["weight_bytes"]
    rows, patches = patch_rows(m["ready"], first, tps, m["reasons"])
    return {
        "backend": app["backend"], "info": app["info"], "threads": args.threads, "prompt_tokens": app["prompt_tokens"],
        "new_tokens": args.new_tokens, "reps": args.reps, "load_s": round(app["load_s"], 2),
        "decode_tps": {k: benchlib.stats(v) for k, v in tps.items()},
        "long_chat_first_token_s": {k: benchlib.stats(v) for k, v in m["long_chat"].items()},
        "first_token_s": {k: benchlib.stats(v) for k, v in first.items()},
        "ratio_decode_tps": p_tps / b_tps,
        "nll_per_token": {k: v[0] / v[1] for k, v in m["nll"].items()}, "nll_ratio": nll_ratio,
        "bandwidth_gbs": bw,
        "floor_tps": {"project": bw * 1e9 / proj_bytes, "baseline": bw * 1e9 / fp32_bytes},
        "fraction_of_floor": {"project": p_tps / (bw * 1e9 / proj_bytes), "baseline": b_tps / (bw * 1e9 / fp32_bytes)},
        "weight_bytes_per_token": {"project": proj_bytes, "baseline": fp32_bytes},
        "patches": patches, "concurrent": m["concurrent"],
        "summary": app_rows(app, first, tps, m["long_chat"], nll_ratio) + rows
                   + (concurrent_rows(args, m["concurrent"]) if m["concurrent"] else []),
    }


def print_patch_rows(result: dict) -> None:
    """The patch rows and the CPU flags they depend on, readable at the end of the output."""
    print(f"CPU flags: {' '.join(benchlib.cpu_flags()) or 'unknown'} | llama-cpp-python {result['info'].get('llama_cpp')} "
          f"| {result.get('threads')} threads | load average now {os.getloadavg()[0]:.1f}")
    steps = (result.get("concurrent") or {}).get("decode_step_ms")
    if steps:
        print("one batched decode step (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
    for row in result["summary"]:
        if row["metric"].startswith(("patch ", "concurrent")):
            figures = (f"with {row['project']:.4g} | without {row['baseline']:.4g} | ratio {row['ratio']:.2f}x"
                       if "ratio" in row else row["project"])
            print(f"{row['metric']} ({row['unit']}): {figures}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 reps of 32 new tokens")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--prompt_tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads (the free Space has 2 vCPUs)")
    parser.add_argument("--base_model", default=None)
    parser.add_argument("--adapter", default=None, help="PEFT adapter dir (default: a random nonzero LoRA)")
    parser.add_argument("--quant", default=None, choices=sorted(sc.GGUF_FTYPES),
                        help=f"llama.cpp GGUF type of the app path (default the app's: {sc.AMX_GGUF_QUANT} on AMX CPUs with "
                             f"our llama.cpp build, else {sc.DEFAULT_GGUF_QUANT})")
    parser.add_argument("--clients", type=int, default=16, help="concurrent chats of the concurrent rows")
    parser.add_argument("--concurrent_seconds", type=float, default=60,
                        help="how long each concurrent chat keeps going (a new unique message as soon as its reply ends)")
    parser.add_argument("--concurrent_tokens", type=int, default=32, help="most tokens of each concurrent reply")
    parser.add_argument("--concurrent_reps", type=int, default=2, help="rounds of the concurrent rows, each side")
    parser.add_argument("--concurrent_only", action="store_true", help="only the concurrent rows (app vs one at a time)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    benchlib.add_out_dir_arg(parser)
    args = parser.parse_args()
    if args.worker:
        serve_worker(args)
        return 0
    if args.quick:
        args.reps, args.new_tokens, args.concurrent_reps = 2, min(args.new_tokens, 32), 1
        # the harness check: 4 short chats for 15 s exercise the concurrent rows (16 for 60 s take minutes a side)
        args.clients, args.concurrent_tokens = min(args.clients, 4), min(args.concurrent_tokens, 16)
        args.concurrent_seconds = min(args.concurrent_seconds, 15)

    import torch

    base = sc.resolve_base_model(args.base_model)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or str(random_lora(base, Path(tmp) / "lora"))
        if args.concurrent_only:
            m = measure(args, base, adapter)
            result = {"info": m["ready"]["app"]["info"], "threads": args.threads, "concurrent": m["concurrent"],
                      "summary": concurrent_rows(args, m["concurrent"]) if m["concurrent"] else []}
            benchlib.write_result("generate_concurrent", result, args.quick, args.out_dir)
            print_patch_rows(result)
            return 0
        result = summarize(args, measure(args, base, adapter))
        if torch.cuda.is_available():
            result["cuda"], rows = cuda_results(args, base, adapter)
            result["summary"] += rows
    benchlib.write_result("generate", result, args.quick, args.out_dir)
    print_patch_rows(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
