"""04's metrics of the model itself are not fooled: a tiny model trained to game the replies (echo the friend,
always send one memorized reply, the owner's most frequent words, an empty reply, invented numbers) has a higher
owner-token perplexity on held-out real replies and a lower Hits@1 than the same model trained on the real replies.

The owner answers each of 10 topics with its own phrase plus a filler ("haha", "lol", "😂"); the friend writes about
a topic in 7 wordings, 6 train the models and the 7th is held out (a wording seen with other topics). A model can
only rank the held-out real replies above the other contexts' replies by having learned which topic gets which
answer. The honest model, for its part, ranks a held-out context's real reply above that context's echo, frequent
words, empty reply, invented number and another topic's memorized reply.
Run: .venv/bin/python -m pytest -q tests/test_model_metrics_gaming.py
"""

from collections import Counter

import pytest

import simme_common as sc
from simme_common import metrics_model as mm
from simme_common.text_features import stop_words, tokenize_words

TOPICS = [  # (what the friend writes about, the owner's answer): the answer never repeats the topic's words
    ("dinner", "yes im starving"), ("birthday party", "aww thank u so much"), ("keys", "again?? check the car"),
    ("train", "ugh no worries take ur time"), ("tennis", "im down what time"), ("job offer", "omg congrats so proud"),
    ("cat", "aw poor kitty ill go"), ("cà phê", "ừ ok luôn nha"), ("photos", "oops sending now"), ("meeting", "ok omw sorry"),
]
WORDINGS = ("What about the {}?", "Did you hear about the {}?", "So... the {} later?", "Quick question about the {}.",
            "Any news on the {}?", "Hey, the {}!", "Remember the {} tomorrow!")
FILLERS = ("haha", "lol", "😂")
STEPS = 60  # full-batch Adam, lr 1e-2: every model's train loss < 0.2 (honest 0.17), held-out Hits@1 9/10 on seeds 0-2


def _pairs(held_out: bool) -> list[tuple[str, str]]:
    """(friend's message, owner's real reply): per topic one wording is held out (topic c: wording c mod 7, so each
    wording is also seen with other topics) and the 6 others are for training."""
    return [(WORDINGS[k].format(topic), f"{answer} {FILLERS[(c + k) % len(FILLERS)]}")
            for c, (topic, answer) in enumerate(TOPICS) for k in range(len(WORDINGS)) if (k == c % len(WORDINGS)) == held_out]


def _gamed_targets(train: list[tuple[str, str]]) -> dict[str, list[str]]:
    """What each model is trained to answer the train contexts with: the real replies ("honest") or a gaming case."""
    owner = [a for _, a in train]
    stops = stop_words()
    top = " ".join(w for w, _ in Counter(w for t in owner for w in tokenize_words(t) if w not in stops).most_common(4))
    return {"honest": owner, "echo": [u for u, _ in train], "copy": [owner[0]] * len(train), "top_words": [top] * len(train),
            "empty": [""] * len(train), "numbers": [f"call me at 0987 654 3{i:02d}" for i in range(len(train))]}


def _gamed_candidates(train, test, targets: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per gaming case, its reply to each held-out context: the echo of that context, a memorized training reply to
    another topic, the frequent words, the empty reply, a number never seen in training."""
    per_topic = len(train) // len(test)
    return {"echo": [u for u, _ in test], "copy": [train[(i + 1) % len(test) * per_topic][1] for i in range(len(test))],
            "top_words": targets["top_words"][:len(test)], "empty": [""] * len(test),
            "numbers": [f"call me at 0912 345 6{i:02d}" for i in range(len(test))]}


def _example(tok, friend: str, reply: str) -> dict[str, list[int]]:
    """04's prompt + target + owner-token labels of one (friend, owner) exchange."""
    return sc.eval_example(tok, [{"role": "user", "content": friend}, {"role": "assistant", "content": reply}], 256, 512)


def _train(model_dir, tok, examples: list[dict[str, list[int]]]):
    """The tiny Llama fine-tuned in full on the owner tokens of `examples`, as 03 trains (assistant-only loss)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    width = max(len(e["prompt_ids"]) + len(e["target_ids"]) for e in examples)
    ids = torch.full((len(examples), width), tok.pad_token_id)
    labels, attn = torch.full_like(ids, -100), torch.zeros_like(ids)
    for r, e in enumerate(examples):
        seq = e["prompt_ids"] + e["target_ids"]
        ids[r, :len(seq)], attn[r, :len(seq)] = torch.tensor(seq), 1
        labels[r, :len(e["labels"])] = torch.tensor(e["labels"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(STEPS):
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def score_models(model_dir) -> dict:
    """Per model (honest + 5 gaming cases): perplexity and Hits@1 on the held-out exchanges, as 04 computes them;
    for the honest model also the candidate log-likelihoods of [real reply, each gaming case's reply] per context."""
    import torch
    from transformers import AutoTokenizer

    tok = sc.ensure_training_template(AutoTokenizer.from_pretrained(model_dir))
    train, test = _pairs(held_out=False), _pairs(held_out=True)
    held_out = [_example(tok, u, a) for u, a in test]
    targets = _gamed_targets(train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer, 32-wide model: intra-op threads only add overhead on a busy machine
    try:
        out = {}
        for case, replies in targets.items():
            torch.manual_seed(0)
            model = _train(model_dir, tok, [_example(tok, u, r) for (u, _), r in zip(train, replies)])
            nll, _ = sc.score_and_generate(model, tok, held_out, [False] * len(held_out))
            hits, k = mm.hits_at_1(model, [e["prompt_ids"] for e in held_out], [e["target_ids"] for e in held_out])
            out[case] = {"perplexity": sc.perplexity_from_nll(nll), "hits_at_1": sum(hits) / len(hits), "candidates": k}
            if case == "honest":  # (real, gamed) mean log-likelihood per held-out context, as hits_at_1 ranks them
                pair = lambda e, u, g: mm.candidate_loglik(  # noqa: E731
                    model, e["prompt_ids"], [e["target_ids"], _example(tok, u, g)["target_ids"]])
                out["candidate_loglik"] = {c: [pair(e, u, g) for e, (u, _), g in zip(held_out, test, texts)]
                                           for c, texts in _gamed_candidates(train, test, targets).items()}
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def scored(tiny_model_dir) -> dict:
    """The six tiny models trained and scored once for the module."""
    return score_models(tiny_model_dir)


CASES = ("echo", "copy", "top_words", "empty", "numbers")


@pytest.mark.parametrize("case", CASES)
def test_gamed_model_has_a_higher_owner_perplexity_on_held_out_replies(scored, case):
    honest, gamed = scored["honest"]["perplexity"], scored[case]["perplexity"]
    assert honest < 2, f"the honest model did not learn the owner's replies: perplexity {honest:.2f}"
    assert gamed > 100 * honest, f"{case}: perplexity {gamed:.2f} vs honest {honest:.2f}"


@pytest.mark.parametrize("case", CASES)
def test_gamed_model_ranks_the_real_reply_first_about_as_often_as_chance(scored, case):
    k = scored[case]["candidates"]
    honest, gamed = round(scored["honest"]["hits_at_1"] * k), round(scored[case]["hits_at_1"] * k)  # contexts of k
    assert k == len(TOPICS) and honest >= 7, f"the honest model ranks {honest} of {k} real replies first (chance: 1)"
    # A gamed model has not learned which topic gets which answer, so it prefers about the same real reply in every
    # context: 0 to 2 of 10 first (seeds 0-2), where the honest model gets 9.
    assert gamed <= 2, f"{case}: ranks {gamed} of {k} real replies first, honest {honest}"


@pytest.mark.parametrize("case", ("echo", "top_words", "empty", "numbers"))
def test_gamed_reply_as_a_candidate_never_outranks_the_real_reply_for_the_honest_model(scored, case):
    pairs = scored["candidate_loglik"][case]
    outranked = [(round(real, 2), round(gamed, 2)) for real, gamed in pairs if gamed >= real]
    assert not outranked, f"{case}: (real, gamed) mean log-likelihood where the gamed reply wins: {outranked}"
    # Strictly, with a margin: a one-token empty reply gets no bonus from the per-token mean.
    assert max(gamed - real for real, gamed in pairs) < -1.0


def test_memorized_training_reply_outranks_the_real_reply_at_most_once_for_the_honest_model(scored):
    """Known limit of the per-token mean: past its first token a memorized reply is predicted almost surely, so in the
    wrong context it comes within ~0.1 nat per token of the real reply (seeds 0-2: it outranked it in none of 10 contexts)."""
    pairs = scored["candidate_loglik"]["copy"]
    outranked = [(round(real, 2), round(gamed, 2)) for real, gamed in pairs if gamed >= real]
    assert len(outranked) <= 1, f"the memorized reply outranks the real reply in {len(outranked)} of {len(pairs)}: {outranked}"
