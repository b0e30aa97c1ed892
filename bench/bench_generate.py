"""Benchmark of the app's generation path (simme_common.load_twin, backend "auto") against plain fp32
transformers.generate of the same model with the same LoRA adapter, alternating, in one run.

python bench/bench_generate.py            # 5 reps, 64 new tokens after a ~200-token chat, 2 threads
python bench/bench_generate.py --quick    # 2 reps of 32 new tokens, a 20-turn long chat (<= 90 s when idle, GGUF cached)
python bench/bench_generate.py --adapter outputs/03_adapter --quant q4_k_m   # another GGUF type

Without --adapter, a LoRA with random nonzero weights (peft init_lora_weights=False) on every projection
is made, so both paths really apply an adapter. Reported: decode tokens/s (tokens after the first / their
time), first-token latency on a cold ~200-token context, on a follow-up turn (prefix KV reuse) and on the
same follow-up after another user's chat (stored KV snapshot), on the turns of a long chat past the app's
context budget (trimmed a block at a time vs turn by turn), the
fraction of the memory-bandwidth floor (weight bytes read per token / measured read bandwidth), what the
quantization costs (teacher-forced NLL of the chat against the fp32 model; 1.00 = lossless), peak RSS;
on CUDA also the bitsandbytes 4-bit (NF4) and 8-bit paths against bf16.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402

# Made-up small talk (no real data): repeated until the chat is ~200 tokens.
TURNS = [
    ("user", "hey are you around this weekend?"), ("assistant", "yeah mostly\nwhy whats up"),
    ("user", "we were thinking of going hiking on saturday morning, the trail near the lake"),
    ("assistant", "ohh nice\nhow early tho"), ("user", "like 7? we could grab coffee first"),
    ("assistant", "7 is brutal lol\nbut ok im in"), ("user", "great, I'll pick you up. bring a jacket, it gets cold up there"),
    ("assistant", "will do 👍"), ("user", "also do you still have my charger from last time?"),
    ("assistant", "yes!! its in my bag\nill bring it"),
]


def system_message(contact: str = "Bo") -> dict:
    """The app's system prompt for a one-on-one chat of the owner Ada with `contact`."""
    return {"role": "system", "content": sc.build_system_prompt("one_on_one", "Ada", [contact])}


def make_chat(tokenizer, target_tokens: int, contact: str = "Bo") -> list[dict]:
    """A one-on-one context with `contact` of `target_tokens` prompt tokens (within a word) ending with a user turn."""
    def n_tokens(last_user: str) -> int:
        chat = [system] + turns + [{"role": "user", "content": last_user}]
        return len(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False))

    system = system_message(contact)
    words = " ".join(text for role, text in TURNS if role == "user").split()
    turns: list[dict] = []
    for role, text in itertools.cycle(TURNS):  # whole turns while a one-word last message still fits after them
        turns.append({"role": role, "content": text})
        if n_tokens(words[0]) > target_tokens:
            turns.pop()
            if turns and turns[-1]["role"] == "user":  # the last message takes its place
                turns.pop()
            break
    last: list[str] = []  # the last message: as many words as fit
    for word in itertools.cycle(words):
        if last and n_tokens(" ".join(last + [word])) > target_tokens:
            break
        last.append(word)
    return [system] + turns + [{"role": "user", "content": " ".join(last)}]


def random_lora(base: str, out: Path) -> Path:
    """A rank-8 LoRA with random nonzero A and B on every projection (seeded, so its GGUF export is cached)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=2, init_lora_weights=False, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, cfg).save_pretrained(out)
    return out


def time_twin(twin, chat: list[dict], new_tokens: int, cold: bool, exact: bool = True) -> dict:
    """One streamed greedy reply: first-token latency and decode tokens/s. `exact`: exactly `new_tokens` tokens (no
    stop at the end-of-turn token, like min_new_tokens on the baseline); else the twin's own reply, as in the app."""
    stop_ids = twin.stop_ids
    if exact:
        twin.stop_ids = []
    if cold:
        twin.forget_prefix()  # llama.cpp and the transformers path would otherwise reuse the previous prompt's KV
        twin.prefix_cache = False
    t0 = time.perf_counter()
    first = None
    text = ""
    try:
        for text in twin.stream(chat, temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=new_tokens,
                                use_cache=False):
            first = first or time.perf_counter()
    finally:
        twin.stop_ids, twin.prefix_cache = stop_ids, True
    end = time.perf_counter()
    first = first or end
    n = new_tokens if exact else len(twin.tokenizer(text, add_special_tokens=False)["input_ids"])
    return {"first_s": first - t0, "decode_tps": (n - 1) / (end - first) if end > first else float("nan"), "text": text}


def long_chat_first_tokens(twin, turns: int, budget: int, block_tokens: int) -> list[float]:
    """First-token seconds of each turn of a growing chat once it outgrows `budget` (the app's trimming)."""
    users = [text for role, text in TURNS if role == "user"]
    twin.forget_prefix()
    chat, firsts = [system_message()], []
    for i in range(turns):
        chat.append({"role": "user", "content": f"{users[i % len(users)]} ({i})"})
        messages, dropped = sc.trim_context(chat, twin.count_tokens, budget, block_tokens=block_tokens)
        reply = time_twin(twin, messages, 16, cold=False, exact=False)
        chat.append({"role": "assistant", "content": reply["text"] or "ok"})
        if dropped:
            firsts.append(reply["first_s"])
    return firsts


def time_hf(model, input_ids, new_tokens: int) -> dict:
    """Plain transformers.generate (greedy, exactly `new_tokens`): first-token latency and decode tokens/s."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    marks: list[float] = []

    class Clock(BaseStreamer):
        def put(self, value):
            marks.append(time.perf_counter())

        def end(self):
            pass

    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, streamer=Clock())
    end = time.perf_counter()
    first = marks[1]  # marks[0] is the prompt
    return {"first_s": first - t0, "decode_tps": (new_tokens - 1) / (end - first)}


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
    args = parser.parse_args()
    reps = 2 if args.quick else args.reps
    if args.quick:
        args.new_tokens = min(args.new_tokens, 32)

    import torch

    torch.set_num_threads(args.threads)
    base = sc.resolve_base_model(args.base_model)
    tmp = tempfile.TemporaryDirectory()
    adapter = args.adapter or str(random_lora(base, Path(tmp.name) / "lora"))

    t = time.perf_counter()
    twin = sc.load_twin(base, adapter, backend="auto", quantization=None if torch.cuda.is_available() else args.quant,
                       n_threads=args.threads)
    load_s = time.perf_counter() - t
    chat = make_chat(twin.tokenizer, args.prompt_tokens)
    n_prompt = twin.count_tokens(chat)

    ref_model = sc.load_twin_transformers(base, adapter, twin.tokenizer, "none", device="cpu")  # fp32, adapter merged (the fastest plain form)
    input_ids = torch.tensor([twin.prompt_ids(chat)])
    cuda = torch.cuda.is_available()
    if cuda:
        ref_model = ref_model.to("cuda")
        input_ids = input_ids.to("cuda")

    other_chat = make_chat(twin.tokenizer, args.prompt_tokens, contact="Cy")  # another user of the same app
    samples: dict[str, list[dict]] = {"project": [], "baseline": [], "project_turn": [], "project_return": []}

    def project() -> None:
        samples["project"].append(time_twin(twin, chat, args.new_tokens, cold=True))

    def baseline() -> None:
        samples["baseline"].append(time_hf(ref_model, input_ids, args.new_tokens))

    def follow_up(reply: str) -> list[dict]:
        return chat + [{"role": "assistant", "content": reply or "ok"}, {"role": "user", "content": "ok cool see you then"}]

    def project_turn() -> None:
        # A follow-up turn: the twin's own first reply (ended by its end-of-turn token, as in the app) and the
        # context before it are in the KV cache (prefix reuse). An exact-length first reply would run past the
        # end-of-turn token, whose text re-tokenizes differently and defeats the reuse.
        twin.forget_prefix()
        first_reply = time_twin(twin, chat, args.new_tokens, cold=False, exact=False)["text"]
        samples["project_turn"].append(time_twin(twin, follow_up(first_reply), args.new_tokens, cold=False))

    def project_return() -> None:
        # The same follow-up after another user's chat took the model: served from the stored KV snapshot.
        twin.forget_prefix()
        first_reply = time_twin(twin, chat, args.new_tokens, cold=False, exact=False)["text"]
        time_twin(twin, other_chat, args.new_tokens, cold=False, exact=False)
        samples["project_return"].append(time_twin(twin, follow_up(first_reply), args.new_tokens, cold=False))

    benchlib.alternate({"project": project, "baseline": baseline, "project_turn": project_turn,
                        "project_return": project_return}, reps, warmup=1)
    for key in samples:
        samples[key] = samples[key][1:]  # drop the warm-up round

    # Long chats: the app trims a quarter of the budget at a time (the KV prefix survives several turns) against
    # trimming turn by turn (the start moves every turn, so every turn re-prefills the whole budget).
    budget, long_turns = 512, 20 if args.quick else 40
    long_chat = {"project": [], "baseline": []}
    for _ in range(1 if args.quick else 2):
        long_chat["baseline"] += long_chat_first_tokens(twin, long_turns, budget, block_tokens=1)
        long_chat["project"] += long_chat_first_tokens(twin, long_turns, budget, block_tokens=budget // 4)

    # What the speed costs: NLL of the same tokens, app path vs the fp32 model (the baseline's weights).
    ref_twin = sc.TwinModel(twin.tokenizer, "transformers", {}, model=ref_model)
    nll = {"project": twin.nll(input_ids[0].tolist()), "baseline": ref_twin.nll(input_ids[0].tolist())}
    nll_ratio = nll["project"][0] / nll["baseline"][0]

    # Bandwidth floor: every weight is read once per decoded token (tied embeddings read once, as the output matrix).
    bw = benchlib.mem_bandwidth_gbs()
    fp32_bytes = sum(p.numel() * p.element_size() for p in ref_model.parameters())
    proj_bytes = Path(twin.info()["gguf"]).stat().st_size if twin.backend == "llama.cpp" else fp32_bytes
    tps = {k: [s["decode_tps"] for s in v] for k, v in samples.items()}
    first = {k: [s["first_s"] for s in v] for k, v in samples.items()}
    p_tps, b_tps = benchlib.stats(tps["project"])["median"], benchlib.stats(tps["baseline"])["median"]
    summary = [
        benchlib.summary_row(f"decode tokens/s, {twin.backend} {twin.info().get('quantization')} vs fp32 generate", "tok/s",
                             tps["project"], tps["baseline"], target=">= 4x"),
        benchlib.summary_row(f"first token, cold {n_prompt}-token context", "s", first["project"], first["baseline"],
                             higher_is_better=False, target="<= 0.3 s"),
        benchlib.summary_row("NLL of the chat, app path / fp32 (quantization cost)", "ratio", [nll_ratio], target="<= 1.03"),
        benchlib.summary_row("first token, follow-up turn (prefix KV reuse) vs cold baseline", "s", first["project_turn"],
                             first["baseline"], higher_is_better=False, target="<= 0.3 s"),
        benchlib.summary_row("first token, follow-up turn after another user's chat (KV snapshot) vs cold baseline",
                             "s", first["project_return"], first["baseline"], higher_is_better=False, target="<= 0.3 s"),
        benchlib.summary_row(f"first token, turns past the {budget}-token budget: block trimming vs turn by turn (mean)",
                             "s", [sum(long_chat["project"]) / len(long_chat["project"])],
                             [sum(long_chat["baseline"]) / len(long_chat["baseline"])], higher_is_better=False),
    ]
    result = {
        "backend": twin.backend, "info": twin.info(), "threads": args.threads, "prompt_tokens": n_prompt,
        "new_tokens": args.new_tokens, "reps": reps, "load_s": round(load_s, 2),
        "decode_tps": {k: benchlib.stats(v) for k, v in tps.items()},
        "long_chat_first_token_s": {k: benchlib.stats(v) for k, v in long_chat.items()},
        "first_token_s": {k: benchlib.stats(v) for k, v in first.items()},
        "ratio_decode_tps": p_tps / b_tps,
        "nll_per_token": {k: v[0] / v[1] for k, v in nll.items()}, "nll_ratio": nll_ratio,
        "bandwidth_gbs": bw,
        "floor_tps": {"project": bw * 1e9 / proj_bytes, "baseline": bw * 1e9 / fp32_bytes},
        "fraction_of_floor": {"project": p_tps / (bw * 1e9 / proj_bytes), "baseline": b_tps / (bw * 1e9 / fp32_bytes)},
        "weight_bytes_per_token": {"project": proj_bytes, "baseline": fp32_bytes},
    }

    if cuda:  # the quantized adapter on GPU: bnb NF4 and LLM.int8 against bf16, same adapter
        gpu = {}
        for quant in ("none", "4bit", "8bit"):
            g = sc.load_twin(base, adapter, backend="transformers", quantization=quant)
            runs = [time_twin(g, chat, args.new_tokens, cold=True) for _ in range(reps + 1)][1:]
            gpu[quant] = {"decode_tps": benchlib.stats([r["decode_tps"] for r in runs]),
                          "first_token_s": benchlib.stats([r["first_s"] for r in runs]),
                          "memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3)}
            summary.append(benchlib.summary_row(f"CUDA decode tokens/s, bnb {quant} vs bf16", "tok/s",
                                                [r["decode_tps"] for r in runs],
                                                None if quant == "none" else [gpu["none"]["decode_tps"]["median"]]))
            del g
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result["cuda"] = gpu
    result["summary"] = summary
    benchlib.write_result("generate", result, args.quick)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
