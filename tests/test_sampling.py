"""How replies are sampled (simme_common/sampling.py): the untempered stop keeps the end of the turn (and of
each bubble) at its temperature-1 probability while temperature shapes the rest, in 04's sampler, in transformers'
generate and in llama.cpp's sampler chain as the app builds them.

Run: .venv/bin/python -m pytest -q tests/test_sampling.py
"""

from __future__ import annotations

import pytest

import simme_common as sc
from conftest import run_llama_child

# A 100-token row: token 1 (a stop) at logit 1, token 2 at logit 2, the rest out of reach. At temperature 1 the stop
# has e / (e + e^2) = 0.269; at 0.5 plainly tempered e^2 / (e^2 + e^4) = 0.119.
P_STOP_T1, P_STOP_T05 = 0.2689, 0.1192


def _row():
    import torch

    row = torch.full((100,), -30.0)
    row[1], row[2] = 1.0, 2.0
    return row


def test_untempered_stop_keeps_each_stop_probability_and_tempers_the_rest():
    import numpy as np
    import torch

    torch.manual_seed(0)
    z = torch.randn(4, 300) * 3
    stops = [5, 17]
    out = sc.untempered_stop_logits(z, 0.6, stops)
    p1, q = z.softmax(-1), (out / 0.6).softmax(-1)
    assert torch.allclose(q[:, stops], p1[:, stops], atol=1e-6)
    rest = torch.ones(300, dtype=torch.bool)
    rest[stops] = False
    tempered = (z[:, rest] / 0.6).softmax(-1)
    assert torch.allclose(q[:, rest] / q[:, rest].sum(-1, keepdim=True), tempered, atol=1e-6)
    assert torch.equal(out[:, rest], z[:, rest])  # only the stops move
    assert torch.equal(sc.untempered_stop_logits(z, 1.0, stops), z)
    assert torch.equal(sc.untempered_stop_logits(z, 0.6, []), z)
    # the processor the app hands to llama.cpp gets one numpy row and returns it in place of the logits
    (processor,) = sc.stop_processors({"temperature": 0.6, "untempered_stop": True}, stops)
    assert np.allclose(processor(None, z[0].numpy()), out[0].numpy(), atol=1e-5)
    assert sc.stop_processors({"temperature": 0.6, "untempered_stop": False}, stops) == []
    assert sc.stop_processors({"temperature": 0.0, "untempered_stop": True}, stops) == []


def test_04_sampler_draws_the_stop_at_its_temperature_1_rate():
    import torch

    rows = _row().expand(20000, -1)
    plain = sc.sample_next(rows, 0.5, 1.0, torch.Generator().manual_seed(0))
    kept = sc.sample_next(rows, 0.5, 1.0, torch.Generator().manual_seed(0), stop_ids=[1])
    assert (plain == 1).float().mean().item() == pytest.approx(P_STOP_T05, abs=0.015)
    assert (kept == 1).float().mean().item() == pytest.approx(P_STOP_T1, abs=0.015)
    assert set(kept.tolist()) == {1, 2}


def test_04_generation_hands_the_sampler_the_stops_and_the_bubble_delimiter(tiny_model_dir, monkeypatch):
    """04's decode loop samples with `untempered_token_ids` (the real sampler runs; the wrapper only records what it
    was given), and with `untempered_stop=False` with nothing untempered."""
    import torch
    from transformers import AutoModelForCausalLM

    from simme_common import eval_generation

    tok = sc.load_twin_tokenizer(str(tiny_model_dir), None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    given = []

    def recording(logits, temperature, top_p, generator=None, stop_ids=None):
        given.append(stop_ids)
        return sc.sample_next(logits, temperature, top_p, generator, stop_ids)

    monkeypatch.setattr(eval_generation, "sample_next", recording)
    contexts = [[{"role": "user", "content": "hey how are you"}]]
    for untempered, expected in ((True, sc.untempered_token_ids(tok)), (False, None)):
        given.clear()
        sc.generate_replies(model, tok, contexts, max_new_tokens=3, untempered_stop=untempered)
        assert given and all(g == expected for g in given)
    assert len(sc.untempered_token_ids(tok)) == len(sc.stop_token_ids(tok)) + 1


def test_transformers_generate_applies_the_untempered_stop_before_its_temperature(tiny_model_dir):
    """The app's transformers path passes `stop_processors` to `generate`: custom processors run before its
    temperature and top-p, so each step's final distribution gives the stop its raw probability."""
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessorList

    tok = sc.load_twin_tokenizer(str(tiny_model_dir), None)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    stops = sc.stop_token_ids(tok)
    untempered = sc.untempered_token_ids(tok)  # what the app passes: the stops and the bubble delimiter
    newline = tok(sc.BUBBLE_DELIMITER, add_special_tokens=False)["input_ids"]
    assert len(newline) == 1 and untempered == sorted(set(stops) | set(newline))
    ids = torch.tensor([sc.chat_token_ids(tok, [{"role": "user", "content": "hey how are you"}], add_generation_prompt=True)])
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.5, top_p=None,
                         top_k=None, max_new_tokens=6, eos_token_id=stops, pad_token_id=tok.pad_token_id,
                         logits_processor=LogitsProcessorList(sc.stop_processors({"temperature": 0.5, "untempered_stop": True}, untempered)),
                         output_scores=True, output_logits=True, return_dict_in_generate=True)
    for raw, final in zip(out.logits, out.scores):
        p_raw, p_final = raw.float().softmax(-1)[0, untempered], final.float().softmax(-1)[0, untempered]
        assert torch.allclose(p_final, p_raw, rtol=1e-3, atol=1e-7)
        assert not torch.allclose((raw.float() / 0.5).softmax(-1)[0, untempered], p_raw, rtol=1e-2)  # tempering would move it


CHAIN = r"""
import json, sys, ctypes
import numpy as np
import llama_cpp
from llama_cpp._internals import LlamaTokenDataArray
import simme_common as sc

twin = sc.load_twin(sys.argv[1], None, backend="llama.cpp", quantization="f32",
                    llama=sc.LlamaCppOptions(n_threads=1, max_batch=1), cache_size=0)
llama = twin.llama
n_vocab = llama.n_vocab()
stop = twin.stop_ids[0]
others = [t for t in range(n_vocab) if t not in twin.untempered_ids][:4]


def draws(chain, logits, n=4000):
    arr = LlamaTokenDataArray(n_vocab=n_vocab)
    counts = {}
    for _ in range(n):
        arr.copy_logits(logits)
        llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(arr.candidates))
        token = int(arr.candidates_data.id[arr.candidates.selected])
        counts[token] = counts.get(token, 0) + 1
    return {str(t): c / n for t, c in counts.items()}


out = {"stop": stop, "others": others}
logits = np.full(n_vocab, -30.0, dtype=np.single)
logits[stop], logits[others[0]] = 1.0, 2.0
for untempered in (False, True):
    settings = dict(temperature=0.5, top_p=1.0, repetition_penalty=1.0, untempered_stop=untempered)
    out[f"stop_rate_{untempered}"] = draws(sc.llama_sampler(llama, {**settings, "seed": 0}, twin.untempered_ids, []), logits).get(str(stop), 0.0)
# Where the order matters: a nucleus that is 4 tokens wide at temperature 1 and 2 at 0.5, a penalty on two tokens
# of the history (the stop among them).
logits = np.full(n_vocab, -30.0, dtype=np.single)
logits[stop] = 1.0
for t, z in zip(others, (2.0, 1.5, 1.0, 0.5)):
    logits[t] = z
settings = dict(temperature=0.5, top_p=0.8, repetition_penalty=1.3, untempered_stop=True)
history = [stop, others[1], stop]
out["ours"] = draws(sc.llama_sampler(llama, {**settings, "seed": 0}, twin.untempered_ids, history), logits)
llama.set_seed(0)
own = llama._init_sampler(top_k=sc.SAMPLE_TOP_K, top_p=0.8, min_p=0.0, temp=0.5, repeat_penalty=1.3,
                          logits_processor=sc.stop_processors(settings, twin.untempered_ids))
for t in history:
    own.accept(t)
out["llama_cpp_python"] = draws(own, logits)
out["logits"] = {str(t): float(logits[t]) for t in [stop, *others]}
out["n_vocab"], out["history"], out["untempered"] = n_vocab, history, twin.untempered_ids
twin.close()
print(json.dumps(out))
"""


def _transformers_probs(child: dict, settings: dict):
    """The next-token distribution transformers' generate draws from for the child's logits and history: its
    repetition penalty, the app's logits processors, then temperature, top-k and top-p (generate's order)."""
    import torch
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    row = torch.full((1, child["n_vocab"]), -30.0)
    for t, z in child["logits"].items():
        row[0, int(t)] = z
    ids = torch.tensor([child["history"]])
    chain = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"]),
                                 *sc.stop_processors(settings, child["untempered"]),
                                 TemperatureLogitsWarper(settings["temperature"]), TopKLogitsWarper(sc.SAMPLE_TOP_K),
                                 TopPLogitsWarper(settings["top_p"])])
    return chain(ids, row).softmax(-1)[0]


@pytest.mark.llama_cpp
def test_llama_cpp_sampler_chain_of_the_app_draws_as_transformers_generate(tiny_model_dir, tmp_path):
    """Both llama.cpp paths of the app build their sampler with `llama_sampler`: it stops at the raw rate with the
    untempered stop and the tempered one without, and with a penalty, a history and top-p < 1 its draws follow the
    distribution of transformers' generate (penalty over the history, untempered stop, temperature, top-k, top-p).
    llama-cpp-python's own chain (top-p before temperature, only generated tokens penalized) does not."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
    child = run_llama_child(CHAIN, tmp_path / "cache", args=[str(tiny_model_dir)])
    assert child["stop_rate_False"] == pytest.approx(P_STOP_T05, abs=0.025)
    assert child["stop_rate_True"] == pytest.approx(P_STOP_T1, abs=0.025)
    expected = _transformers_probs(child, dict(temperature=0.5, top_p=0.8, repetition_penalty=1.3, untempered_stop=True))
    tokens = [child["stop"], *child["others"]]
    assert (expected[tokens] > 0.02).sum() >= 3  # the stop and two tokens in the nucleus: the comparison has teeth

    def distance(freqs):  # total variation between the draws and the expected distribution
        return 0.5 * sum(abs(freqs.get(str(t), 0.0) - float(expected[t])) for t in tokens) + \
            0.5 * sum(f for t, f in freqs.items() if int(t) not in tokens)

    assert distance(child["ours"]) < 0.03, (child["ours"], expected[tokens].tolist())
    assert distance(child["llama_cpp_python"]) > 0.06, (child["llama_cpp_python"], expected[tokens].tolist())
