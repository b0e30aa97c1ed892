"""Tests of the app's generation path (simme_common/serving): streaming, stop at end-of-turn, reply
LRU cache, prefix KV reuse, thread safety, auto temperature and llama.cpp-vs-transformers agreement.

Run: .venv/bin/python -m pytest -q tests/test_serving.py
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import simme_common as sc
from conftest import run_llama_child

# Two tiny chats the fixture model learns by heart, so greedy replies (and where they end) are known.
CHATS = {
    "hey how are you doing today": "im good thanks wbu",
    "where are we going tonight?": "maybe the usual place",
}
GREEDY = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=24)


def _chat(user_text: str) -> list[dict]:
    """A one-on-one context ending with the contact's message."""
    system = sc.build_system_prompt("one_on_one", "Ada", ["Bo"])
    return [{"role": "system", "content": system}, {"role": "user", "content": user_text}]


@pytest.fixture(scope="module")
def trained_tiny_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama trained (full fine-tune, 80 Adam steps) to answer CHATS and end with <|im_end|>."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = sc.load_twin_tokenizer(str(tiny_model_dir), None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    batch = [tok.apply_chat_template(_chat(u) + [{"role": "assistant", "content": a}], return_dict=False) for u, a in CHATS.items()]
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    x = torch.nn.utils.rnn.pad_sequence([torch.tensor(ids) for ids in batch], batch_first=True, padding_value=tok.pad_token_id)
    mask = torch.zeros_like(x, dtype=torch.bool)
    for i, ids in enumerate(batch):
        mask[i, : len(ids)] = True  # pad == <|im_end|>, so the mask comes from the lengths
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer, 32-wide model: threads only add overhead
    for _ in range(80):  # loss < 0.03 after ~50 steps
        loss = model(input_ids=x, attention_mask=mask, labels=x.masked_fill(~mask, -100)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("trained_tiny")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def twin(trained_tiny_dir) -> sc.TwinModel:
    """The trained tiny model on the transformers backend."""
    return sc.load_twin(str(trained_tiny_dir), None, backend="transformers")


def test_stream_yields_growing_text_and_stops_at_end_of_turn(twin):
    chunks = list(twin.stream(_chat("hey how are you doing today"), use_cache=False, **GREEDY))
    assert len(chunks) >= 3
    assert all(a != b and b.startswith(a) for a, b in zip(chunks, chunks[1:]))
    # The learned reply ends with <|im_end|>: nothing after it (24 tokens were allowed), no special token shown.
    assert chunks[-1] == CHATS["hey how are you doing today"]
    assert twin.generate(_chat("hey how are you doing today"), use_cache=False, **GREEDY) == chunks[-1]


def test_generate_stops_at_max_new_tokens_when_no_end_of_turn(twin):
    short = twin.generate(_chat("hey how are you doing today"), use_cache=False, **dict(GREEDY, max_new_tokens=2))
    assert short and CHATS["hey how are you doing today"].startswith(short) and short != CHATS["hey how are you doing today"]


def test_reply_cache_returns_identical_text_for_identical_requests(trained_tiny_dir):
    twin = sc.load_twin(str(trained_tiny_dir), None, backend="transformers", cache_size=2)
    sampled = dict(temperature=1.5, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12)
    first = twin.generate(_chat("hey"), **sampled)
    assert twin.generate(_chat("hey"), **sampled) == first  # a sample at T=1.5 served again from the cache
    assert twin.stats["reply_cache_hits"] == 1 and twin.stats["requests"] == 1
    twin.generate(_chat("hey"), **dict(sampled, seed=7))  # other settings (seed) -> a new request
    twin.generate(_chat("ok"), **sampled)  # third distinct entry evicts the oldest (size 2)
    twin.generate(_chat("hey"), **sampled)
    assert twin.stats == dict(twin.stats, reply_cache_hits=1, requests=4)


def test_prefix_kv_cache_reuse_gives_the_same_greedy_reply(trained_tiny_dir):
    first, follow_up = _chat("hey how are you doing today"), None
    replies = {}
    for prefix in (True, False):
        twin = sc.load_twin(str(trained_tiny_dir), None, backend="transformers", cache_size=0)
        twin.prefix_cache = prefix
        reply = twin.generate(first, **GREEDY)
        follow_up = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "where are we going tonight?"}]
        replies[prefix] = twin.generate(follow_up, **GREEDY)
        assert (twin.stats["prefix_tokens_reused"] > 0) == prefix
    assert replies[True] == replies[False]


def test_concurrent_streams_do_not_interleave(twin):
    results: dict[str, list[str]] = {}

    def run(user_text: str) -> None:
        results[user_text] = list(twin.stream(_chat(user_text), use_cache=False, **GREEDY))

    threads = [threading.Thread(target=run, args=(u,)) for u in CHATS for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for user_text, reply in CHATS.items():
        chunks = results[user_text]
        assert chunks[-1] == reply
        assert all(reply.startswith(c) for c in chunks)  # every partial text belongs to this request only


def test_missing_adapter_raises_user_error(tiny_model_dir, tmp_path):
    with pytest.raises(sc.UserError, match="not found"):
        sc.load_twin(str(tiny_model_dir), str(tmp_path / "no_such_adapter"), backend="transformers")
    with pytest.raises(sc.UserError, match="adapter_config.json"):
        sc.load_twin(str(tiny_model_dir), str(tmp_path), backend="transformers")


def test_auto_temperature_rises_with_repetition_and_is_lower_for_young_chats():
    varied = ["sure see you at 8", "bring the blue jacket", "lol no way"]
    repetitive = ["haha ok sure thing", "haha ok sure thing", "haha ok sure thing"]
    assert sc.auto_temperature(varied, context_tokens=300) == 0.7
    assert sc.auto_temperature(varied, context_tokens=10) == 0.6
    assert sc.auto_temperature(repetitive, context_tokens=300) > sc.auto_temperature(varied, context_tokens=300)
    assert sc.auto_temperature(repetitive, context_tokens=300) <= 1.1
    assert sc.auto_temperature([], context_tokens=0) == 0.6


def _random_lora(base: str, out: Path, alpha: int) -> Path:
    """A LoRA with random nonzero A and B (init_lora_weights=False) on every projection of `base`, saved to `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=alpha, init_lora_weights=False, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    get_peft_model(model, cfg).save_pretrained(out)
    return out


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_llama_cpp_greedy_tokens_match_transformers_with_the_same_adapter(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    base = sc.resolve_base_model(None)  # the real default model (SmolLM2-135M-Instruct)
    adapter = _random_lora(base, tmp_path / "adapter", alpha=2)
    monkeypatch.setenv("SIMME_CACHE", str(tmp_path / "cache"))  # exported GGUFs go to the test's tmp dir
    messages = _chat("hey! are we still on for dinner tomorrow?")
    settings = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=16, use_cache=False)
    hf = sc.load_twin(base, str(adapter), backend="transformers")
    cpp = sc.load_twin(base, str(adapter), backend="llama.cpp", quantization="f32",
                      llama=sc.LlamaCppOptions(n_threads=2))
    plain = sc.load_twin(base, None, backend="transformers")
    ids = hf.prompt_ids(messages)
    assert cpp.prompt_ids(messages) == ids
    hf_tokens = hf.tokenizer(hf.generate(messages, **settings), add_special_tokens=False)["input_ids"]
    cpp_tokens = cpp.tokenizer(cpp.generate(messages, **settings), add_special_tokens=False)["input_ids"]
    base_reply = plain.generate(messages, **settings)
    assert len(hf_tokens) >= 8
    assert cpp_tokens[:12] == hf_tokens[:12]
    hf_nll, cpp_nll = hf.nll(ids), cpp.nll(ids)  # teacher-forced: the same numbers at f32
    assert cpp_nll[1] == hf_nll[1] == len(ids) - 1 and cpp_nll[0] == pytest.approx(hf_nll[0], rel=2e-3)
    assert hf.generate(messages, **settings) != base_reply  # the adapter changes the reply, so it was applied on both


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_llama_cpp_interleaved_chats_resume_from_their_own_kv_snapshot(tmp_path, monkeypatch):
    """Chat A, then chat B (which replaces A in llama.cpp's KV cache), then A's follow-up: A's snapshot is
    restored instead of prefilling A again, and the greedy reply is the one a cold start gives."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    monkeypatch.setenv("SIMME_CACHE", str(tmp_path / "cache"))
    twin = sc.load_twin(sc.resolve_base_model(None), None, backend="llama.cpp", quantization="f32",
                        llama=sc.LlamaCppOptions(n_threads=2),
                        cache_size=0)
    settings = dict(temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12)
    a = _chat("hey! are we still on for dinner tomorrow? I booked the thai place near the station for 7")
    b = [{"role": "system", "content": sc.build_system_prompt("group", "Ada", ["Cy", "Di"])},
         {"role": "user", "content": "Cy: who is bringing the speaker on saturday"}]
    reply_a = twin.generate(a, **settings)
    twin.generate(b, **settings)
    follow_up = a + [{"role": "assistant", "content": reply_a}, {"role": "user", "content": "great, see you there"}]
    before = twin.stats["prefix_tokens_reused"]
    warm = twin.generate(follow_up, **settings)
    assert twin.stats["prefix_tokens_reused"] - before >= twin.count_tokens(a)  # A's prompt came from its snapshot
    twin.forget_prefix()
    twin.prefix_cache = False
    assert twin.generate(follow_up, **settings) == warm
    # built and run on one thread (a model built on another ran at half speed or worse: see ModelThread)
    assert twin.call_on_model(threading.get_ident) == twin.info()["built_on_thread"] != threading.get_ident()


def test_model_thread_runs_calls_in_order_on_one_thread_and_raises_their_errors():
    worker = sc.ModelThread(name="simme-test")
    seen: list[tuple[int, int]] = []
    for i in range(3):
        worker.submit(lambda i=i: seen.append((i, threading.get_ident())))
    ident = worker.call(threading.get_ident)
    assert [i for i, _ in seen] == [0, 1, 2] and {t for _, t in seen} == {ident} and ident != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    assert worker.call(lambda: "still serving") == "still serving"


def _long_chat() -> list[dict]:
    """A one-on-one chat of 100+ prompt tokens ending with a user turn (one prompt batch of >= 64 tokens)."""
    turns = ["hey! are we still on for dinner tomorrow?", "yes!!\nwhere tho", "the thai place near the station, 7pm?",
             "perfect 👍\nsee u there", "can you bring the board game from last time, the one with the trains",
             "ticket to ride? sure\nill bring snacks too", "amazing. also Cy might join, is that ok with you"]
    return _chat(turns[0]) + [{"role": ("assistant", "user")[i % 2], "content": t} for i, t in enumerate(turns[1:])]


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_llama_cpp_default_quantization_generates_in_a_child_process(tmp_path):
    """The app's CPU default must not crash natively: on AMX Xeons it is Q8_0 in the AMX buffer with the
    llama.cpp that `make setup` builds (the released one segfaults there, ggml-org/llama.cpp#20824), and IQ4_NL on
    the repack buffer with any other build or CPU. Run in a child process so a segfault is a failing test, not a
    dead test session. Its NLL on a chat must stay near the fp32 transformers path with the same adapter (a broken
    kernel or repack gives ratios >> 1)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    amx = sc.llama_cpp_amx_usable(sc.llama_cpp_extra_bufts(), llama_cpp.__version__)
    base = sc.resolve_base_model(None)
    adapter = _random_lora(base, tmp_path / "adapter", alpha=2)
    turns = [("user", "hey! are we still on for dinner tomorrow?"), ("assistant", "yes!!\nwhere tho"),
             ("user", "the thai place near the station, 7pm?"), ("assistant", "perfect 👍\nsee u there")]
    messages = _chat(turns[0][1]) + [{"role": r, "content": t} for r, t in turns[1:]]
    code = (
        "import json, sys, simme_common as sc\n"
        "import os\n"
        "options = sc.LlamaCppOptions(n_threads=2, amx_bf16_min_tokens=os.environ.get('SIMME_AMX_BF16_MIN_TOKENS'))\n"
        f"twin = sc.load_twin(sc.resolve_base_model(None), {str(adapter)!r}, backend='llama.cpp', llama=options)\n"
        f"messages = {messages[:2]!r}\n"
        "reply = twin.generate(messages, temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=16)\n"
        f"nll = twin.nll(sc.chat_token_ids(twin.tokenizer, {messages!r}))\n"
        "print(json.dumps({'info': twin.info(), 'n_chars': len(reply), 'nll': nll}))\n"
    )
    out = run_llama_child(code, tmp_path / "cache")
    assert out["info"]["quantization"] == sc.default_gguf_quant(amx) and out["n_chars"] > 0
    # IQ4_NL layers are repackable; "default" on CPUs without AMX
    assert out["info"]["weight_buffer"] in (("AMX",) if amx else ("default", "CPU_REPACK"))
    hf = sc.load_twin(base, str(adapter), backend="transformers")
    ref = hf.nll(sc.chat_token_ids(hf.tokenizer, messages))
    assert out["nll"][1] == ref[1] > 40
    assert 0.97 < out["nll"][0] / ref[0] < 1.08, (out["nll"], ref)  # measured 1.03 (IQ4_NL and Q4_0 alike here)


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_llama_cpp_prompt_batches_take_flash_attention_and_match_transformers(tmp_path):
    """Our build runs prompt batches of >= 64 tokens through flash attention (faster prefill) and one-token decode
    steps through mul_mat + soft_max on the same transposed V cache (fast decode). A long chat's NLL and greedy reply
    must match the fp32 transformers path either way; SIMME_FA_PREFILL_MIN_TOKENS=0 turns the patch off, which must
    change the numbers slightly (or flash attention was not used). Child processes: llama.cpp reads it once."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    if sc.LLAMA_CPP_FA_PREFILL not in llama_cpp.__version__:
        pytest.skip(f"llama-cpp-python {llama_cpp.__version__} is not our build (make setup)")
    base = sc.resolve_base_model(None)
    messages = _long_chat()
    code = (
        "import json, simme_common as sc\n"
        "twin = sc.load_twin(sc.resolve_base_model(None), None, backend='llama.cpp', quantization='f32',"
        " llama=sc.LlamaCppOptions(n_threads=2))\n"
        f"messages = {messages!r}\n"
        "reply = twin.generate(messages, temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12)\n"
        "nll = twin.nll(sc.chat_token_ids(twin.tokenizer, messages + [{'role': 'assistant', 'content': 'ok'}]))\n"
        "print(json.dumps({'reply': reply, 'nll': nll}))\n"
    )
    out = {fa_min: run_llama_child(code, tmp_path / "cache", SIMME_FA_PREFILL_MIN_TOKENS=fa_min) for fa_min in ("64", "0")}
    hf = sc.load_twin(base, None, backend="transformers")
    ids = sc.chat_token_ids(hf.tokenizer, messages + [{"role": "assistant", "content": "ok"}])
    assert len(hf.prompt_ids(messages)) >= 100  # the prompt is one batch of >= 64 tokens
    ref = hf.nll(ids)
    assert out["64"]["nll"] != out["0"]["nll"]  # the two attention paths round differently
    for fa_min in ("64", "0"):
        assert out[fa_min]["nll"][1] == ref[1] and out[fa_min]["nll"][0] == pytest.approx(ref[0], rel=2e-3)
    hf_reply = hf.generate(messages, temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12)
    assert out["64"]["reply"] == hf_reply


@pytest.mark.llama_cpp
@pytest.mark.slow
def test_amx_prompt_batches_take_bf16_tiles_and_match_transformers(tmp_path):
    """On AMX CPUs our build runs prompt batches of >= 32 tokens through AMX-BF16 tiles on a BF16 copy of the Q8_0
    weights (faster prefill); decode keeps the Q8_0 kernels. On the default app path (Q8_0, with an adapter) the
    prompt's logits must be at least as close to fp32 transformers as with the Q8_0 int8 tiles
    (SIMME_AMX_BF16_MIN_TOKENS=0, no copy; measured mean |diff| 0.14-0.17 against 0.23-0.24), must differ from them
    (or the BF16 tiles were not used), and a reply must still decode. Child processes: llama.cpp reads it once."""
    import numpy as np
    import torch

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    if not sc.llama_cpp_amx_usable(sc.llama_cpp_extra_bufts(), llama_cpp.__version__):
        pytest.skip("no AMX on this CPU, or not our llama.cpp build")
    if sc.LLAMA_CPP_AMX_BF16 not in llama_cpp.__version__:
        pytest.skip(f"llama-cpp-python {llama_cpp.__version__} is not our BF16 build (make setup)")
    base = sc.resolve_base_model(None)
    adapter = _random_lora(base, tmp_path / "adapter", alpha=2)
    messages = _long_chat()
    code = (
        "import json, sys, numpy as np, simme_common as sc\n"
        "import os\n"
        "options = sc.LlamaCppOptions(n_threads=2, amx_bf16_min_tokens=os.environ.get('SIMME_AMX_BF16_MIN_TOKENS'))\n"
        f"twin = sc.load_twin(sc.resolve_base_model(None), {str(adapter)!r}, backend='llama.cpp', llama=options)\n"
        f"messages = {messages!r}\n"
        "ids = twin.prompt_ids(messages)\n"
        "np.save(sys.argv[1], twin.prompt_logits(ids))  # every position's logits, as TwinModel.nll decodes them\n"
        "reply = twin.generate(messages, temperature=0.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12)\n"
        "print(json.dumps({'info': twin.info(), 'reply': reply}))\n"
    )
    out = {n: run_llama_child(code, tmp_path / "cache", args=[str(tmp_path / f"logits{n}.npy")],
                               SIMME_AMX_BF16_MIN_TOKENS=n) for n in ("32", "0")}
    assert out["32"]["info"]["amx_bf16_min_tokens"] == 32 and out["0"]["info"]["amx_bf16_min_tokens"] == 0
    assert out["32"]["info"]["quantization"] == "q8_0" and out["32"]["info"]["weight_buffer"] == "AMX"
    hf = sc.load_twin(base, str(adapter), backend="transformers")
    ids = hf.prompt_ids(messages)
    assert len(ids) >= 100  # one batch of >= 32 rows
    with torch.inference_mode():
        ref = hf.model(torch.tensor([ids])).logits[0].float().numpy()
    logits = {n: np.load(tmp_path / f"logits{n}.npy") for n in out}
    err = {n: float(np.abs(logits[n] - ref).mean()) for n in out}
    assert not np.array_equal(logits["32"], logits["0"])  # BF16 tiles and Q8_0 int8 tiles round differently
    assert err["32"] <= 1.1 * err["0"] and err["0"] < 0.5, err
    assert (logits["32"].argmax(1) == ref.argmax(1)).mean() >= 0.9
    assert out["32"]["reply"] and out["0"]["reply"]  # decode (one row: the Q8_0 kernels) after a BF16 prefill


def test_amx_bf16_copy_is_made_only_where_memory_allows():
    """The BF16 copy costs ~1.9x the GGUF: on by default while it fits in 1/8 of the RAM; the variable overrides."""
    gib = 2**30
    assert sc.amx_bf16_min_tokens(145 * 2**20, 16 * gib, None) == sc.AMX_BF16_MIN_TOKENS  # the default twin, a Space
    assert sc.amx_bf16_min_tokens(int(8.5 * gib), 64 * gib, None) == 0  # Llama-3.1-8B at Q8_0
    assert sc.amx_bf16_min_tokens(int(8.5 * gib), 64 * gib, "48") == 48
    assert sc.amx_bf16_min_tokens(145 * 2**20, 16 * gib, "0") == 0
    assert sc.amx_bf16_min_tokens(145 * 2**20, 16 * gib, " ") == sc.AMX_BF16_MIN_TOKENS
    with pytest.raises(sc.UserError, match="SIMME_AMX_BF16_MIN_TOKENS"):
        sc.amx_bf16_min_tokens(145 * 2**20, 16 * gib, "on")


def test_amx_is_used_only_with_the_fixed_llama_cpp_build():
    """The released llama.cpp segfaults in its AMX buffer: only our build (version label) may use it."""
    assert sc.llama_cpp_amx_usable({"AMX": 1, "CPU_REPACK": 2}, "0.3.36" + sc.LLAMA_CPP_AMX_FIX + "1")
    assert not sc.llama_cpp_amx_usable({"AMX": 1, "CPU_REPACK": 2}, "0.3.36")
    assert not sc.llama_cpp_amx_usable({"CPU_REPACK": 2}, "0.3.36" + sc.LLAMA_CPP_AMX_FIX + "1")
    assert sc.default_gguf_quant(True) == "q8_0" and sc.default_gguf_quant(False) == "iq4_nl"
    assert sc.llama_cpp_weight_buffers(Path("unused.gguf"), {"AMX": 1}, amx=True) is None
    assert sc.llama_cpp_weight_buffers(Path("unused.gguf"), {}, amx=False) is None


def test_prune_gguf_cache_keeps_the_most_recently_used_exports(tmp_path):
    from filelock import FileLock

    dirs = [tmp_path / f"export{i}" for i in range(6)]
    for d in dirs:
        d.mkdir()
        (d / "model-q8_0.gguf").write_bytes(b"GGUF")
    with FileLock(str(dirs[1] / ".lock")):  # another process is exporting into it
        for i, d in enumerate(dirs):
            os.utime(d, (1_000_000 + i, 1_000_000 + i))  # export5 is the most recently used
        removed = sc.prune_gguf_cache(tmp_path, keep=3, current=dirs[0])  # just written, even if it looks old
    assert sorted(removed) == [dirs[2], dirs[3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export0", "export1", "export4", "export5"]


def test_gguf_export_key_ignores_the_order_peft_saves_target_modules_in(tmp_path):
    """peft writes target_modules from a set (order varies per process); the same adapter must hit the cache."""
    keys = []
    for i, modules in enumerate([["q_proj", "v_proj", "down_proj"], ["down_proj", "q_proj", "v_proj"], ["q_proj"]]):
        d = tmp_path / f"adapter{i}"
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": modules}))
        (d / "adapter_model.safetensors").write_bytes(b"weights")
        keys.append(sc.gguf_export_key("base", str(d)))
    assert keys[0] == keys[1] != keys[2]


def test_repack_pattern_pins_only_repackable_layer_weights():
    """Mixed GGUFs (IQ4_NL puts Q5_K in the first ffn_down layers) keep the other types off the repack buffer."""
    import re

    tensors = [("token_embd.weight", "Q8_0", 49152), ("blk.0.attn_norm.weight", "F32", 576)]
    for layer in range(3):
        tensors += [(f"blk.{layer}.attn_q.weight", "IQ4_NL", 576), (f"blk.{layer}.ffn_up.weight", "Q4_0", 1536),
                    (f"blk.{layer}.ffn_down.weight", "Q5_K" if layer < 2 else "IQ4_NL", 576),
                    (f"blk.{layer}.attn_k.weight", "IQ4_NL", 190 if layer == 1 else 192)]  # rows % 8 != 0: no repack
    pattern = sc.repack_pattern(tensors)
    pinned = {name for name, _, _ in tensors if re.search(pattern, name)}
    assert pinned == {f"blk.{i}.attn_q.weight" for i in range(3)} | {f"blk.{i}.ffn_up.weight" for i in range(3)} | {
        "blk.2.ffn_down.weight", "blk.0.attn_k.weight", "blk.2.attn_k.weight"}
    assert not re.search(pattern, "blk.12.attn_q.weight")  # layer 1 and 2 patterns do not match layer 12
    assert sc.repack_pattern([("blk.0.ffn_down.weight", "Q8_0", 576), ("output_norm.weight", "F32", 576)]) is None
