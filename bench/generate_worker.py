"""The worker side of bench_generate.py: one process per measured configuration loads its twin (the app's path,
the fp32 baseline, or the app's path with one llama.cpp patch's work off) and times the requests it is sent.

Run through `bench_generate.py --worker NAME`, never alone.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402

TURNS = [
    ("user", "hey are you around this weekend?"), ("assistant", "yeah mostly\nwhy whats up"),
    ("user", "we were thinking of going hiking on saturday morning, the trail near the lake"),
    ("assistant", "ohh nice\nhow early tho"), ("user", "like 7? we could grab coffee first"),
    ("assistant", "7 is brutal lol\nbut ok im in"), ("user", "great, I'll pick you up. bring a jacket, it gets cold up there"),
    ("assistant", "will do 👍"), ("user", "also do you still have my charger from last time?"),
    ("assistant", "yes!! its in my bag\nill bring it"),
]

# patch -> (the worker that runs the app's path without it, what "without" is)


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


TOPICS = ["dinner tomorrow", "the hike on saturday", "the concert tickets", "your sister's birthday",
          "the board game night", "the trip to the coast", "coffee after work", "the new flat"]


def window_tokens(replies: list[dict], begin: float, end: float) -> float:
    """Tokens of `replies` generated within [begin, end], each reply's spread evenly from its first output to its end."""
    total = 0.0
    for r in replies:
        span = max(r["end"] - r["first"], 1e-9)
        total += r["tokens"] * max(0.0, min(end, r["end"]) - max(begin, r["first"])) / span
    return total


def concurrent_chats(twin, clients: int, seconds: float, new_tokens: int, prompt_tokens: int, budget: int) -> dict:
    """`clients` users at once, each keeping a chat going for `seconds` as tests/test_load.py's clients do: a sampled
    reply of up to `new_tokens` tokens (ending at the twin's end of turn, as in the app), then at once the next unique
    message, the history trimmed to `budget` tokens a quarter at a time as the app does. Every reply's turn, times
    and generated tokens; the steady window runs from when the last cold first turn ended to the deadline."""
    import threading

    chats = [make_chat(twin.tokenizer, prompt_tokens, contact=f"Friend{i}") for i in range(clients)]
    replies: list[dict] = []
    go = threading.Barrier(clients + 1)

    def user(i: int) -> None:
        chat, turn = chats[i], 0
        go.wait()
        while time.perf_counter() < deadline:
            t0, first, text = time.perf_counter(), None, ""
            for text in twin.stream(chat, temperature=0.7, top_p=0.9, repetition_penalty=1.1,
                                    max_new_tokens=new_tokens, seed=1000 * i + turn, use_cache=False):
                first = first or time.perf_counter()
            end = time.perf_counter()
            tokens = len(twin.tokenizer(text, add_special_tokens=False)["input_ids"])
            replies.append({"turn": turn, "start": t0, "first": first or end, "end": end, "tokens": tokens})
            message = f"hey, are we still on for {TOPICS[(i + turn) % len(TOPICS)]}? ({i}.{turn})"
            chat = chat + [{"role": "assistant", "content": text or "ok"}, {"role": "user", "content": message}]
            chat, _ = sc.trim_context(chat, twin.count_tokens, budget, block_tokens=budget // 4)
            turn += 1

    twin.forget_prefix()
    threads = [threading.Thread(target=user, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline = time.perf_counter() + seconds  # set before the barrier releases the users
    go.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    cold = [r for r in replies if r["turn"] == 0]
    warm_at = max(r["end"] for r in cold)
    steady = [r for r in replies if r["turn"] > 0]
    # cold turns running past the deadline (one at a time, loaded): the window is what follow-up turns ran in after them
    stop = deadline if deadline > warm_at else max((r["end"] for r in steady), default=warm_at)
    window = stop - warm_at
    return {"firsts": [r["first"] - r["start"] for r in steady], "cold_firsts": [r["first"] - r["start"] for r in cold],
            "tps": window_tokens(steady, warm_at, stop) / window if window > 0 else float("nan"),
            "tps_all": sum(r["tokens"] for r in replies) / wall, "replies": len(replies), "wall_s": wall,
            "steady_s": window}


def decode_steps(twin, reps: int = 9) -> dict:
    """Median ms of one batched decode step (one token for each of 1 to 16 chats, consecutive sequences of 150 cells;
    and 15 chats around an idle one, unpadded: two ubatches) on the twin's BatchDecoder; its cells are emptied."""
    import statistics

    import llama_cpp

    decoder, n_ctx = twin._decoder, 150

    def run() -> dict:
        decoder.forget()
        for slot in decoder.slots:
            decoder._fill([(100 + i % 500, i, slot.seq_id, i == n_ctx - 1) for i in range(n_ctx)])
        n = len(decoder.slots)
        cases = {f"{k} chats": list(range(k)) for k in (1, 2, 4, 8, 16) if k <= n}
        cases[f"{n - 1} chats around an idle one"] = [i for i in range(n) if i != n // 2]
        out = {}
        for name, seqs in cases.items():
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                decoder._fill([(200, n_ctx, i, True) for i in seqs])
                times.append(time.perf_counter() - t)
                for i in seqs:
                    llama_cpp.llama_memory_seq_rm(decoder.mem, i, n_ctx, -1)
            out[name] = round(statistics.median(times) * 1000, 1)
        decoder.forget()
        return out

    return twin.call_on_model(run)


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


# --- worker side: one measured configuration per process ---------------------------------------------------------


def load_app_twin(args):
    """The app's twin as worker `args.worker` runs it: as the app does ("app"), or with one patch's work off."""
    import torch

    settings = sc.AppSettings.from_env()  # the environment app.py would read
    options = dataclasses.replace(settings.llama_options(), n_threads=args.threads)
    if args.worker == "no_amx_bf16":
        options = dataclasses.replace(options, amx_bf16_min_tokens="0")
    if args.worker == "no_amx":  # weights placed as a stock build places them (its quantization and buffers)
        options = dataclasses.replace(options, amx=False)
    if args.worker == "serial":  # requests one at a time (the baseline of batched decoding)
        options = dataclasses.replace(options, max_batch=1)
    quant = settings.quant if torch.cuda.is_available() else args.quant or settings.quant
    return sc.load_twin(args.base_model, args.adapter, backend="auto", quantization=quant, llama=options)


def load_fp32_twin(args):
    """The baseline: the fp32 model with the adapter merged (the fastest plain form), on CUDA where there is one."""
    import torch

    tokenizer = sc.load_twin_tokenizer(args.base_model, args.adapter)
    model = sc.load_twin_transformers(args.base_model, args.adapter, tokenizer, "none", device="cpu")
    return sc.TwinModel(tokenizer, "transformers", {}, model=model.to("cuda") if torch.cuda.is_available() else model)


def describe(twin) -> dict:
    """Backend, info, llama.cpp's extra weight buffers and the weight bytes read per decoded token."""
    info = json.loads(json.dumps(twin.info(), default=str))
    if twin.backend == "llama.cpp":
        return {"backend": twin.backend, "info": info, "bufts": sorted(sc.llama_cpp_extra_bufts()),
                "weight_bytes": Path(info["gguf"]).stat().st_size}
    # tied embeddings count once, as the output matrix
    return {"backend": twin.backend, "info": info, "bufts": [],
            "weight_bytes": sum(p.numel() * p.element_size() for p in twin.model.parameters())}


def app_requests(twin, chat: list[dict], args) -> dict:
    """What the app's twin answers: a cold reply, a follow-up turn, a return after another chat, a long chat."""
    other_chat = make_chat(twin.tokenizer, args.prompt_tokens, contact="Cy")  # another user of the same app

    def follow_up(reply: str) -> list[dict]:
        return chat + [{"role": "assistant", "content": reply or "ok"}, {"role": "user", "content": "ok cool see you then"}]

    def own_reply() -> str:
        # The twin's first reply ends at its end-of-turn token, as in the app: an exact-length one would run past
        # it, and that text re-tokenizes differently, which defeats the prefix reuse the follow-up measures.
        twin.forget_prefix()
        return time_twin(twin, chat, args.new_tokens, cold=False, exact=False)["text"]

    def back_after_other_user() -> dict:
        # The same follow-up after another user's chat took the model: served from the stored KV snapshot.
        first_reply = own_reply()
        time_twin(twin, other_chat, args.new_tokens, cold=False, exact=False)
        return time_twin(twin, follow_up(first_reply), args.new_tokens, cold=False)

    return {
        "cold": lambda: time_twin(twin, chat, args.new_tokens, cold=True),
        "turn": lambda: time_twin(twin, follow_up(own_reply()), args.new_tokens, cold=False),
        "return": back_after_other_user,
        "long": lambda turns, budget, block: {"firsts": long_chat_first_tokens(twin, int(turns), int(budget), int(block))},
        "steps": lambda reps: decode_steps(twin, int(reps)),
        "concurrent": lambda clients, seconds, new_tokens, budget: concurrent_chats(
            twin, int(clients), float(seconds), int(new_tokens), args.prompt_tokens // 2, int(budget)),
    }


def cuda_runs(args) -> dict:
    """On CUDA, the twin with bnb NF4 and LLM.int8 against bf16, same adapter: samples and peak memory per type."""
    import torch

    out = {}
    for quant in ("none", "4bit", "8bit"):
        g = sc.load_twin(args.base_model, args.adapter, backend="transformers", quantization=quant)
        chat = make_chat(g.tokenizer, args.prompt_tokens)
        runs = [time_twin(g, chat, args.new_tokens, cold=True) for _ in range(args.reps + 1)][1:]
        out[quant] = {"decode_tps": [r["decode_tps"] for r in runs], "first_s": [r["first_s"] for r in runs],
                      "memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3)}
        del g
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return out


def serve_worker(args) -> None:
    """Load worker `args.worker`'s configuration, say so, then answer request lines ("op arg ...") until stdin closes."""
    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "cuda":
        benchlib.serve({"ready": "cuda"}, lambda line: cuda_runs(args) if line == "run" else None)
        return
    t = time.perf_counter()
    fp32 = args.worker == "fp32"
    twin = load_fp32_twin(args) if fp32 else load_app_twin(args)
    load_s = time.perf_counter() - t
    chat = make_chat(twin.tokenizer, args.prompt_tokens)
    ids = twin.prompt_ids(chat)
    if fp32:
        input_ids = torch.tensor([ids], device=twin.model.device)
        requests = {"cold": lambda: time_hf(twin.model, input_ids, args.new_tokens)}
    else:
        requests = app_requests(twin, chat, args)
    requests["nll"] = lambda: {"nll": list(twin.nll(ids))}

    def handle(line: str) -> dict | None:
        op, *params = line.split() or [""]
        return requests[op](*params) if op in requests else None

    benchlib.serve({"ready": args.worker, "load_s": load_s, "prompt_tokens": len(ids), **describe(twin)}, handle)


# --- parent side: workers, rounds, rows -----------------------------------------------------------------------------
