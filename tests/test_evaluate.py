"""04_evaluate: metrics on hand-made replies, owner-only perplexity, the docs generated from metric_defs, a smoke run with a gate.

Run: .venv/bin/python -m pytest -q tests/test_evaluate.py
"""

import json
from pathlib import Path

import pytest

import simme_common as sc
from conftest import ROOT, build_tiny_model



def _load_script():
    """04_evaluate.py as a module (a numbered filename cannot be imported with `import`)."""
    return sc.load_script(ROOT / "04_evaluate.py")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and spinning threads crawl on a busy 2-core machine (8x here)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sample(chat_type: str, turns: list[tuple[str, str]]) -> list[dict]:
    """A contract-format sample: system prompt, then (role, text) turns; the last is the owner's."""
    system = sc.build_system_prompt(chat_type, "Owner", ["Bo"] if chat_type == "one_on_one" else ["Bo", "Cy"])
    return [{"role": "system", "content": system}] + [{"role": r, "content": t} for r, t in turns]


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory, tiny_model_dir):
    """A prepared DatasetDict, a style card and a LoRA adapter (nonzero, so the twin differs from the base)."""
    import torch
    from datasets import Dataset, DatasetDict
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("eval")
    one = lambda u, a: _sample("one_on_one", [("user", u), ("assistant", a)])  # noqa: E731
    train = [one("hey how are you doing today", "im good thanks wbu"), one("where are we going tonight?", "maybe the usual place"),
             _sample("group", [("user", "Bo: lol that is so funny 😂"), ("assistant", "haha ok")])]
    test = [one("hey how are you doing today", "im good thanks wbu 😂"), one("anh ơi mai đi cà phê không", "ừ được đó, mấy giờ"),
            one("can't wait 🎉", "sounds good!!\nsee you tomorrow"),
            _sample("group", [("user", "Bo: ok see you tomorrow"), ("user", "Cy: haha ok"), ("assistant", sc.SILENT_REPLY)])]

    def split(rows):
        return Dataset.from_dict({sc.MESSAGES: rows, "chat_id": [f"c{i % 2}" for i in range(len(rows))],
                                  "chat_type": ["one_on_one"] * len(rows), "session_start": [1000 * i for i in range(len(rows))],
                                  "n_tokens": [40] * len(rows)})

    DatasetDict(train=split(train), validation=split(train[:1]), test=split(test)).save_to_disk(str(root / "prepared" / "dataset"))
    (root / "analysis").mkdir()
    card = sc.reply_style_card(["im good thanks wbu", "haha ok 😂", "ừ được đó"])
    (root / "analysis" / "style_card.json").write_text(json.dumps(card, ensure_ascii=False))

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(root / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "adapter")
    return root


def _args(module, root: Path, out: str, **kw):
    """Fast smoke settings for the tiny model."""
    base = dict(input_dir=str(root / "prepared"), analysis_dir=str(root / "analysis"), adapter_path=str(root / "adapter"),
                output_dir=str(root / out), max_examples=10, max_new_tokens=8, batch_size=2, speed_samples=1,
                speed_tokens=4, pii_samples_per_probe=1, n_bootstrap=20)
    return module.EvaluateArguments(**(base | kw))


# --- metrics on hand-made inputs -----------------------------------------------------------------------------

def test_repetition_flags_loops_and_empty_replies_but_not_silence():
    assert sc.repetition_scores(["ok see you tomorrow"]) == [0.0]
    assert sc.repetition_scores(["lol " * 20])[0] > 0.9
    assert sc.repetition_scores(["", sc.SILENT_REPLY]) == [1.0, None]


def test_memorization_sees_short_turns_and_digits_but_not_common_phrases():
    secret = "my locker code is 7421 at the gym on 5th"
    catch = "see you later alligator"
    index = sc.memorization_index([secret, "gate code 4455 ok", catch, catch, catch], other_turns=["ok", "lol sure"])
    replies = [f"btw {secret} lol", "gate code 4455 ok", catch, "see you later", "lol sure"]
    assert sc.memorized(replies, index) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_pii_findings_split_invented_from_memorized_values():
    from simme_common.metrics import pii_findings, training_pii_values

    values = training_pii_values(["call me at 0912 345 678 tonight", "ok"])
    counts, memorized_pii, kinds = pii_findings(["my number is 0912345678", "call 0987 654 321", "ok see you"], values)
    assert counts == [1.0, 1.0, 0.0] and memorized_pii == [1.0, 0.0, 0.0] and kinds["phone"] == 2


def test_style_reference_is_the_owners_bursts_without_stop_words_and_emoji_is_na_without_emoji():
    from simme_common.metrics_style import owner_profile, reply_features, style_stats

    plain = owner_profile(["ok see you\nat the gym", "haha fine", "the usual place then"])
    assert plain["emoji"] is None and "the" not in plain["words"] and plain["words"]["gym"] == 1
    feats = [reply_features(r) for r in ["ok see you\nat the gym 😂", "haha fine"]]
    assert feats[0]["chars"] == len("ok see you\nat the gym 😂")  # a burst is one unit, bubbles included
    stats = style_stats(feats, plain, [0, 1])
    assert stats["emoji_match"] is None and 0 < stats["vocab_overlap"] <= 1 and 0 <= stats["length_similarity"] <= 1


def test_bootstrap_interval_contains_the_mean_and_needs_two_examples():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    lo, hi = sc.bootstrap_ci(lambda idx: sum(values[i] for i in idx) / len(idx), len(values), n_boot=200)
    assert lo <= 4 / 6 <= hi and lo < hi
    assert sc.bootstrap_ci(lambda idx: 1.0, 1) is None


def test_histogram_match_interval_is_centred_on_its_value():
    """A resampled set repeats replies: its vocabulary histogram is narrower and matches the owner's worse by itself.
    The plain percentile interval then lies below the value; the re-centred one holds it."""
    from simme_common.metrics_style import owner_profile, reply_features, style_stats

    words = [f"q{a}{b}x" for a in "abcdefghijklmnopqrst" for b in "abcdefghijklmno"]  # 300 distinct words
    owner = owner_profile(words)  # each word 1/300 of the owner's words
    feats = [reply_features(w) for w in words[:120]]  # 120 of them once each: 120/300 matched
    stat = lambda idx: style_stats(feats, owner, idx)["vocab_overlap"]  # noqa: E731
    value = stat(list(range(len(feats))))
    plain = sc.bootstrap_ci(stat, len(feats), n_boot=300)
    centred = sc.bootstrap_ci(stat, len(feats), n_boot=300, centre=value)
    assert plain[1] < value, "the bias this corrects"
    assert centred[0] <= value <= centred[1] and centred[1] - centred[0] == pytest.approx(plain[1] - plain[0])


def test_telex_keeps_vietnamese_marks_distinct_and_emoji_are_spelled_out():
    from simme_common.metrics_style import bertscore_text, telex

    assert telex("không được") == "khoong dduwowcj" and telex("bán") != telex("bạn")
    assert "tears of joy" in bertscore_text("😂") and bertscore_text("😂") != bertscore_text("🎉")


def test_metric_docs_in_docs_evaluate_md_are_generated_from_metric_defs():
    from simme_common.scorecard import DOCS_END, DOCS_START, metric_docs_markdown

    text = (ROOT / "docs" / "evaluate.md").read_text(encoding="utf-8")
    section = text.split(DOCS_START, 1)[1].split(DOCS_END, 1)[0].strip()
    assert section == metric_docs_markdown().strip(), "run: python 04_evaluate.py --write_metric_docs docs/evaluate.md"
    assert all(f"**{k}**" in section for k in sc.METRIC_KEYS)


# --- perplexity -------------------------------------------------------------------------------------------------

def test_perplexity_scores_only_owner_tokens_and_generation_reuses_the_prompt_cache(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = sc.ensure_training_template(AutoTokenizer.from_pretrained(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    a = _sample("group", [("user", "Bo: hi"), ("assistant", "yo\nok"), ("user", "Cy: lol"), ("assistant", "haha")])
    b = _sample("group", [("user", "Bo: something entirely different and much longer"), ("assistant", "yo\nok"),
                          ("user", "Cy: lol"), ("assistant", "haha")])
    ex_a, ex_b = sc.eval_example(tok, a, 256, 512), sc.eval_example(tok, b, 256, 512)
    assert ex_a["prompt_ids"] == sc.chat_token_ids(tok, a[:-1], add_generation_prompt=True)
    assert tok.decode(ex_a["target_ids"]) == "haha<|im_end|>"
    assert tok.decode([t for t in ex_a["labels"] if t != -100]) == "yo\nok<|im_end|>haha<|im_end|>"
    # Batched, left-padded and cached (a is padded next to the longer b) = the model's own loss on a alone.
    nll, replies = sc.score_and_generate(model, tok, [ex_a, ex_b], [True, False], max_new_tokens=6, temperature=0.0, batch_size=2)
    (nll_a, n_a), (nll_b, n_b) = nll
    assert n_a == n_b == len(tok("yo\nok<|im_end|>haha<|im_end|>", add_special_tokens=False)["input_ids"])
    full = ex_a["prompt_ids"] + ex_a["target_ids"]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([full]), labels=torch.tensor([ex_a["labels"]])).loss.item()
    assert nll_a / n_a == pytest.approx(ref, rel=1e-4)
    assert sc.perplexity_from_nll([(nll_a, n_a)]) == pytest.approx(2.718281828 ** ref, rel=1e-4)
    # The reply generated from the cropped prompt cache = plain greedy generate from the prompt.
    assert replies[1] is None and replies[0]["n_tokens"] >= 1
    with torch.no_grad():
        plain = model.generate(torch.tensor([ex_a["prompt_ids"]]), max_new_tokens=6, do_sample=False,
                               eos_token_id=sc.stop_token_ids(tok), pad_token_id=tok.pad_token_id)[0, len(ex_a["prompt_ids"]):]
    stop = next((k + 1 for k, t in enumerate(plain.tolist()) if t in sc.stop_token_ids(tok)), len(plain))
    assert replies[0]["text"] == tok.decode(plain[:stop], skip_special_tokens=True).strip()
    assert replies[0]["n_tokens"] == stop


def test_hits_at_1_scores_candidates_on_one_cached_prompt_like_separate_forwards(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simme_common import metrics_model as mm

    tok = sc.ensure_training_template(AutoTokenizer.from_pretrained(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = sc.chat_token_ids(tok, _sample("one_on_one", [("user", "hey how are you doing today")]), add_generation_prompt=True)
    cands = [tok(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in ("im good thanks wbu", "ok", "lol that is so funny 😂")]
    got = mm.candidate_loglik(model, prompt, cands)
    for c, value in zip(cands, got):
        with torch.no_grad():
            logp = model(torch.tensor([prompt + c])).logits[0].log_softmax(-1)
        want = sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(c)) / len(c)
        assert value == pytest.approx(want, abs=1e-4)
    # Ranking: each context's own reply is candidate 0; distractors come from other contexts only.
    cands_of = mm.hits_candidates(25, seed=1)
    assert all(c[0] == i and i not in c[1:] and len(c) == 20 for i, c in enumerate(cands_of))
    hits, k = mm.hits_at_1(model, [prompt] * 3, cands, seed=1)
    assert k == 3 and len(hits) == 3 and set(hits) <= {0.0, 1.0}


# --- the stage ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smoke_run_writes_three_columns_and_gate_exit_codes(pipeline_dirs):
    module = _load_script()
    module.main(_args(module, pipeline_dirs, "eval"))
    out = pipeline_dirs / "eval"
    card = json.loads((out / "scorecard.json").read_text())
    assert set(sc.METRIC_KEYS) <= set(card["base"]) and set(sc.METRIC_KEYS) <= set(card["finetuned"])
    assert card["n_examples"] == 3 and card["settings"]["n_silent_targets_skipped"] == 1
    assert card["base"]["perplexity"] != card["finetuned"]["perplexity"]  # the adapter is active only for the twin
    assert card["finetuned"]["perplexity_validation"] is not None and card["finetuned"]["ms_per_token"] > 0
    assert card["real"]["length_similarity"] is not None and card["real"].get("bleu") is None  # pairwise: no real column
    assert len(card["settings"]["split_fingerprint"]) == 16
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and set(rows[0]) == {"context", "real", "base", "twin"}
    md = (out / "scorecard.md").read_text()
    assert "| perplexity |" in md and "| real |" in md and (out / "run_config.json").exists()

    # The same adapter as the previous one, same split: the paired gate passes; a better earlier scorecard fails it.
    # Without the base (as `make retrain` runs it) the twins' numbers are those of the full run.
    module.main(_args(module, pipeline_dirs, "eval2", baseline_adapter=str(pipeline_dirs / "adapter"), score_base=False))
    card2 = json.loads((pipeline_dirs / "eval2" / "scorecard.json").read_text())
    gate = card2["gate"]
    assert gate["passed"] and {r["status"] for r in gate["rows"]} <= {"ok", "n/a"}
    assert card2["base"] is None and card2["settings"]["score_base"] is False
    assert card2["finetuned"]["perplexity"] == pytest.approx(card["finetuned"]["perplexity"], rel=1e-6)
    assert "| perplexity | ↓ | not scored |" in (pipeline_dirs / "eval2" / "scorecard.md").read_text()
    assert set(json.loads((pipeline_dirs / "eval2" / "samples.jsonl").read_text().splitlines()[0])) == {"context", "real", "twin"}
    better = card | {"finetuned": card["finetuned"] | {"rouge_l": card["finetuned"]["rouge_l"] + 0.5}}
    (pipeline_dirs / "better.json").write_text(json.dumps(better))
    with pytest.raises(SystemExit) as exc:
        module.main(_args(module, pipeline_dirs, "eval3", baseline=str(pipeline_dirs / "better.json")))
    assert exc.value.code == 1
    gate = json.loads((pipeline_dirs / "eval3" / "scorecard.json").read_text())["gate"]
    assert not gate["passed"] and {r["metric"] for r in gate["rows"] if r["status"] == "REGRESSED"} == {"rouge_l"}


@pytest.mark.slow
def test_bad_inputs_give_one_sentence_user_errors(pipeline_dirs, tmp_path):
    module = _load_script()
    with pytest.raises(sc.UserError, match="no LoRA adapter"):
        module.main(_args(module, pipeline_dirs, "x", adapter_path=str(tmp_path / "missing")))
    other_base = build_tiny_model(tmp_path / "other", hidden=48)
    with pytest.raises(sc.UserError, match="does not fit base model"):
        module.main(_args(module, pipeline_dirs, "x", model_name_or_path=str(other_base)))
    from datasets import load_from_disk

    data = load_from_disk(str(pipeline_dirs / "prepared" / "dataset"))
    data["test"] = data["test"].select([])
    data.save_to_disk(str(tmp_path / "empty" / "dataset"))
    with pytest.raises(sc.UserError, match="empty"):
        module.main(_args(module, pipeline_dirs, "x", input_dir=str(tmp_path / "empty")))


def test_readme_verdict_follows_each_rows_direction_and_interval():
    """The README's "sounds like me" line is generated: lower-is-better AUC, a tie that is not a win, an interval."""
    verdict = sc.load_script(ROOT / "scripts" / "readme_scorecard.py").verdict
    card = {"base": {"hits_at_1": 0.14, "owner_likeness": 0.24, "discriminator_auc": 0.92},
            "finetuned": {"hits_at_1": 0.14, "owner_likeness": 0.69, "discriminator_auc": 0.95},
            "ci": {"finetuned": {"owner_likeness": [0.65, 0.73]}}}
    line = verdict(card)
    assert "hits_at_1 0.14 vs 0.14: the twin does not beat the base" in line
    assert "owner_likeness 0.69 vs 0.24: the twin beats the base, the base outside the twin's 95 % interval" in line
    assert "discriminator_auc 0.95 vs 0.92: the twin does not beat the base" in line
    close = card | {"finetuned": card["finetuned"] | {"hits_at_1": 0.12}, "ci": {"finetuned": {"hits_at_1": [0.04, 0.22]}}}
    assert "hits_at_1 0.12 vs 0.14: the twin does not beat" in verdict(close)
    close["base"] = card["base"] | {"hits_at_1": 0.1}
    assert "hits_at_1 0.12 vs 0.1: the twin beats the base, but the base lies inside the twin's 95 % interval: not a clear win" in verdict(close)
