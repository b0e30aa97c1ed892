"""Batched llama.cpp decoding (serving/batch_decoder.py): concurrent chats decoded together give exactly the replies
of the one-at-a-time path, the queue is bounded, a caller that leaves frees its slot, a chat's next turn reuses its
cells. llama.cpp is native code: each test runs it in a child process, so a crash fails the test, not the session.

Run: .venv/bin/python -m pytest -q tests/test_serving_batch.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_llama_child

CHILD = r"""
import json, queue, sys, threading
import simme_common as sc
from simme_common.serving.batch_decoder import TwinBusy

base = sys.argv[1]

def chat(text, contact="Bo"):
    return [{"role": "system", "content": sc.build_system_prompt("one_on_one", "Ada", [contact])},
            {"role": "user", "content": text}]

def load(max_batch, max_waiting=32):
    options = sc.LlamaCppOptions(n_threads=1, max_batch=max_batch, max_waiting=max_waiting, batch_n_ctx=256)
    return sc.load_twin(base, None, backend="llama.cpp", quantization="f32", llama=options, cache_size=0)

# Prompts of different lengths (their replies end at different steps); greedy, then sampled with a seed each.
chats = [chat("hey how are you doing today" + " haha" * i, contact=f"C{i}") for i in range(6)]
greedy = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=20)
sampled = [dict(temperature=0.9, top_p=0.9, repetition_penalty=1.1, max_new_tokens=20, seed=i) for i in range(6)]

one = load(1)
expected = [one.generate(c, **greedy) for c in chats] + [one.generate(c, **s) for c, s in zip(chats, sampled)]
one.close()

twin = load(4, max_waiting=2)

def drain(q):
    out = []
    while (item := q.get(timeout=60)) is not None:
        out.append(item)
    return out

# A gap: four chats admitted together take slots 0-3 of the fresh twin; slot 1's reply ends after 2 tokens while
# slots 0 and 2 go on, so their steps decode a throwaway token in slot 1 to stay one ubatch.
hold = threading.Event()
twin._thread.submit(hold.wait)
gap_queues = [queue.Queue() for _ in range(4)]
for i, q in enumerate(gap_queues):
    twin._decoder.submit(twin.prompt_ids(chats[i]), dict(greedy, seed=None, max_new_tokens=2 if i == 1 else 20), q.put,
                         threading.Event())
hold.set()
gap = [twin.tokenizer.decode(drain(q), skip_special_tokens=True) for q in gap_queues]
padded = twin._decoder.padded_rows

results = [None] * 12
def run(i):
    results[i] = twin.generate(chats[i % 6], **(greedy if i < 6 else sampled[i - 6]))
threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
for t in threads[:6]: t.start()  # 4 decoding, 2 waiting: all six admitted
for t in threads[:6]: t.join()
for t in threads[6:]: t.start()
for t in threads[6:]: t.join()

# The queue: with the model thread held, 4 + 2 requests are queued and the 7th is refused at once.
hold = threading.Event()
twin._thread.submit(hold.wait)
queued = [queue.Queue() for _ in range(6)]
for q in queued:
    twin._decoder.submit(twin.prompt_ids(chats[0]), dict(greedy, seed=None), q.put, threading.Event())
refused = ""
try:
    next(twin.stream(chats[1], **greedy))
except TwinBusy as err:
    refused = str(err)
hold.set()
drained = [len(drain(q)) for q in queued]

# A caller that leaves after its first text frees its slot; the next turn of a chat reuses its cells.
stream = twin.stream(chats[2], temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=200)
next(stream)
stream.close()
twin.call_on_model(lambda: None)  # after the loop has ended
active_after_leave = twin._decoder.active()
first = twin.generate(chats[3], **greedy)
follow_up = chats[3] + [{"role": "assistant", "content": first or "ok"}, {"role": "user", "content": "ok see you"}]
before = twin.stats["prefix_tokens_reused"]
warm = twin.generate(follow_up, **greedy)
reused = twin.stats["prefix_tokens_reused"] - before
twin.forget_prefix()
twin.prefix_cache = False
cold = twin.generate(follow_up, **greedy)
too_long = ""
try:
    twin.generate(chat("hey " * 400), **greedy)
except sc.UserError as err:
    too_long = str(err)
info = twin.info()
twin.close()
closed = ""
try:
    twin._decoder.submit(twin.prompt_ids(chats[0]), dict(greedy, seed=None), print, threading.Event())
except RuntimeError as err:
    closed = str(err)
print(json.dumps({"expected": expected, "results": results, "gap": gap, "padded": padded, "refused": refused,
                  "drained": drained, "active_after_leave": active_after_leave, "reused": reused,
                  "prompt_tokens": len(twin.prompt_ids(chats[3])), "warm": warm, "cold": cold,
                  "too_long": too_long, "closed": closed, "info": info}, default=str))
"""


@pytest.fixture(scope="module")
def sharp_tiny_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama with larger random weights: its greedy replies depend on the prompt (the stock init's
    near-uniform logits answer every prompt with the same token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.3)
    out = tmp_path_factory.mktemp("sharp_tiny")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_batched_replies_equal_one_at_a_time_and_the_queue_is_bounded(sharp_tiny_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    out = run_llama_child(CHILD, tmp_path / "cache", args=[str(sharp_tiny_dir)])
    assert out["info"]["max_batch"] == 4 and out["info"]["n_ctx_per_chat"] == 256
    # Six concurrent chats decoded together: each greedy reply is exactly the one-at-a-time path's.
    assert out["results"][:6] == out["expected"][:6]
    assert len(set(out["expected"][:6])) == 6  # distinct replies, so a mix-up between sequences would show
    # Steps that padded the gap of a finished reply's slot decode the others' tokens as before.
    assert out["padded"] > 0 and [out["gap"][i] for i in (0, 2, 3)] == [out["expected"][i] for i in (0, 2, 3)]
    # Sampled with a seed each: the first token comes from the same prompt batch and seed, so it is the same; later
    # ones may part, as a batch sums floats in another order (logits within ~1e-5) and top-p's cut moves with that.
    sampled, expected = out["results"][6:], out["expected"][6:]
    assert all(r and r[0] == e[0] for r, e in zip(sampled, expected)) and len(set(sampled)) == 6
    assert "busy" in out["refused"] and "4 chats" in out["refused"]
    assert out["drained"] == [20] * 6  # the queued requests were served once the model was free
    assert out["active_after_leave"] == 0
    assert out["reused"] >= out["prompt_tokens"] - 1 and out["warm"] == out["cold"]
    assert "do not fit" in out["too_long"] and "256" in out["too_long"]
    assert "unloaded" in out["closed"]
