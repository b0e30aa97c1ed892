"""The app: training-format model input in both chat modes, bubbles, end-of-turn, Gradio 6 history, the blind
test, caps and feedback in-process; then the real server with the tiny model: 8 concurrent chats over HTTP
with gradio_client, and a headless Chromium (Playwright) driving the page.

Run: .venv/bin/python -m pytest -q tests/test_app.py
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import simme_common as sc
from simme_common.serving import handlers
from conftest import app_server, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
OWNER, CONTACTS = "Kai Surrogate", ["Nova Example", "Remy Sample"]
CHROMIUM = "/usr/bin/chromium"
GEN = dict(temperature=0.7, auto_temp=False, top_p=0.9, repetition_penalty=1.1, max_new_tokens=12)


def make_pipeline_outputs(root: Path) -> tuple[Path, Path]:
    """A small 01 output (messages + dataset with a test split) and 02 output (style card + one plot)."""
    from datasets import Dataset, DatasetDict
    from PIL import Image

    prepared, analysis = root / "prepared", root / "analysis"
    senders = [OWNER] * 3 + [CONTACTS[0]] * 5 + [CONTACTS[1]] * 2
    Dataset.from_dict({"sender": senders, "is_owner": [s == OWNER for s in senders]}).save_to_disk(str(prepared / "messages"))
    system = sc.build_system_prompt("one_on_one", OWNER, [CONTACTS[0]])
    samples = [[{"role": "system", "content": system}, {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"real answer {i}\nsecond bubble"}] for i in range(3)]
    samples.append(samples[0][:2] + [{"role": "assistant", "content": sc.SILENT_REPLY}])  # never shown in the game
    split = Dataset.from_dict({sc.MESSAGES: samples})
    DatasetDict(train=split, validation=split, test=split).save_to_disk(str(prepared / "dataset"))
    analysis.mkdir(parents=True)
    (analysis / "style_card.json").write_text(json.dumps({"schema_version": 1, "owner": OWNER,
                                                           "typing_gap_s": {"n": 5, "quantiles": {"p50": 0.3}}}))
    Image.new("RGB", (64, 48), (40, 120, 200)).save(analysis / "activity_by_hour.png")
    return prepared, analysis


@pytest.fixture(scope="module")
def pipeline_dirs(tmp_path_factory):
    return make_pipeline_outputs(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def app_mod(tiny_model_dir, pipeline_dirs, tmp_path_factory):
    """app.py imported in-process and loaded as main() does, on the tiny model with a missing adapter
    (`app_mod.APP`, `app_mod.PLOTS`: what load_app returned)."""
    prepared, analysis = pipeline_dirs
    env = {"SIMME_BASE_MODEL": str(tiny_model_dir), "SIMME_ADAPTER": str(tmp_path_factory.mktemp("x") / "no_adapter"),
           "SIMME_BACKEND": "transformers", "SIMME_PREPARED_DIR": str(prepared), "SIMME_ANALYSIS_DIR": str(analysis)}
    sys.modules.pop("app", None)
    module = importlib.import_module("app")
    module.APP, module.PLOTS = module.load_app(sc.AppSettings.from_env(env))
    return module


def run_chat(app, message, history=(), mode="One-on-one", contact=CONTACTS[0], members="Ann, Bo", sender="Ann",
             title="", pace=False, seed=1, **gen):
    """All outputs of one `respond` call."""
    g = {**GEN, **gen}
    return list(app.respond(message, list(history), mode, contact, members, sender, title, g["temperature"],
                            g["auto_temp"], g["top_p"], g["repetition_penalty"], g["max_new_tokens"], pace, seed))


# --- chat format: the app feeds the model exactly what 01 trains on -------------------------------------

def training_sample(chat_type: str, raw: list[tuple[int, str, str]], others: list[str]) -> list[dict]:
    """A training sample as 01 builds it: bursts (01's group_bursts), system prompt, "Name: text" group turns."""
    msgs = [{"role": "system", "content": sc.build_system_prompt(chat_type, OWNER, others)}]
    for turn in sc.group_bursts(raw, burst_seconds=120):
        own = turn["sender"] == OWNER
        content = turn["text"] if own else sc.format_user_turn(chat_type, turn["sender"], turn["text"])
        msgs.append({"role": "assistant" if own else "user", "content": content})
    return msgs


def as_gradio_history(chat_type: str, raw: list[tuple[int, str, str]]) -> list[dict]:
    """The same chat as the app shows it: one Gradio 6 message per bubble, structured content, group names."""
    import gradio as gr

    shown = [{"role": "assistant" if s == OWNER else "user",
              "content": t if s == OWNER else sc.format_user_turn(chat_type, s, t)} for _, s, t in raw]
    chatbot = gr.Chatbot()
    return chatbot.preprocess(chatbot.postprocess(shown))  # what a Gradio 6 handler really receives


@pytest.mark.parametrize("chat_type", ["one_on_one", "group"])
def test_app_messages_equal_the_training_format_in_both_modes(chat_type):
    raw = [(0, CONTACTS[0], "hey"), (1000, CONTACTS[0], "you there?"), (5000, OWNER, "yes"), (6000, OWNER, "what's up"),
           (9000, CONTACTS[0 if chat_type == "one_on_one" else 1], "lunch: today?"), (9500, CONTACTS[0], "ok")]
    others = [CONTACTS[0]] if chat_type == "one_on_one" else CONTACTS
    history = as_gradio_history(chat_type, raw)
    assert isinstance(history[0]["content"], list)  # Gradio 6 structured content, not plain strings
    got = sc.build_app_messages(history, chat_type=chat_type, owner=OWNER, others=others)
    assert got == training_sample(chat_type, raw, others)


def test_flatten_history_drops_silent_notes_system_and_file_parts():
    history = [{"role": "system", "content": "x"},
               {"role": "user", "content": [{"type": "text", "text": "Ann: hi"}, {"type": "file", "file": {"path": "a.png"}}]},
               {"role": "assistant", "content": sc.SILENT_NOTE}, {"role": "user", "content": [{"type": "text", "text": "Ann: anyone?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "me"}]}]
    assert sc.flatten_history(history, "group") == [{"role": "user", "content": "Ann: hi\nanyone?"},
                                                    {"role": "assistant", "content": "me"}]


def test_expand_turns_round_trips_through_flatten_history():
    sample = training_sample("group", [(0, "Ann", "a"), (1, OWNER, "b"), (2, OWNER, "c"), (3, "Bo", "d")], ["Ann", "Bo"])
    assert sc.flatten_history(sc.expand_turns(sample), "group") == sample[1:]


# --- bubbles, silence, end of turn ----------------------------------------------------------------------

def test_reply_is_split_into_bubbles_and_a_half_streamed_silent_marker_is_hidden(app_mod):
    assert handlers.as_bubbles("hey\n\nlol ") == [{"role": "assistant", "content": "hey"}, {"role": "assistant", "content": "lol"}]
    assert handlers.as_bubbles(sc.SILENT_REPLY) == [{"role": "assistant", "content": sc.SILENT_NOTE}]
    assert sc.stream_bubbles("<sil") == [] and sc.stream_bubbles("<s") == []
    assert sc.stream_bubbles("ok\nth") == ["ok", "th"]


def test_pacing_uses_the_owners_median_typing_gap_clipped():
    card = lambda p50: {"typing_gap_s": {"n": 9, "quantiles": {"p50": p50}}}  # noqa: E731
    assert sc.typing_gap_seconds(card(1.5)) == 1.5 and sc.typing_gap_seconds(card(60)) == 4.0
    assert sc.typing_gap_seconds(card(None)) is None and sc.typing_gap_seconds(None) is None


def test_respond_streams_progressively_longer_replies_as_bubbles(app_mod):
    # Seed 6: the tiny model's random reply holds no digit or "@". A word that gets one while streaming is hidden
    # again until the reply ends (it may be PII: chat_ui.mask_pii_streaming), so the stream would shrink there.
    outs = run_chat(app_mod.APP, "hey how are you", max_new_tokens=16, seed=6)
    assert outs[0] == ([{"role": "user", "content": "hey how are you"}], "")
    assert not re.search(r"[\d@]", "".join(sc.message_text(m["content"]) for m in outs[-1][0][1:]))
    texts = [sc.BUBBLE_DELIMITER.join(sc.message_text(m["content"]) for m in h[1:]) for h, _ in outs[1:-1]]
    assert len(texts) >= 3 and all(len(a) <= len(b) for a, b in zip(texts, texts[1:])) and texts[0] != texts[-1]
    final = outs[-1][0]
    assert final[0]["role"] == "user" and all(m["role"] == "assistant" for m in final[1:])


def test_group_message_is_sent_as_the_chosen_member(app_mod):
    final = run_chat(app_mod.APP, "who's in?", mode="Group", members="Ann, Bo", sender="Bo")[-1][0]
    assert final[0] == {"role": "user", "content": "Bo: who's in?"}


@pytest.fixture(scope="module")
def eos_prone_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny Llama whose next token is the end-of-turn token with probability 1/4, any other token uniformly.

    Embeddings are the unit vector e0 and the layers add nothing, so the final norm gives h = sqrt(hidden) * e0;
    only the end-of-turn row of the (untied) head reads e0, with logit log(1/3 * (vocab - 1)).
    """
    import math

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = LlamaConfig.from_pretrained(tiny_model_dir, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.norm.weight[0] = 1.0
        eot = tok.convert_tokens_to_ids(sc.end_of_turn_token(tok))
        model.lm_head.weight[eot, 0] = math.log((len(tok) - 1) / 3) / math.sqrt(config.hidden_size)
    out = tmp_path_factory.mktemp("eos_prone")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_generation_stops_at_the_end_of_turn_token(eos_prone_model_dir):
    twin = sc.load_twin(str(eos_prone_model_dir), None, backend="transformers")
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    lengths = []
    for seed in range(8):  # each reply is ~3 tokens; without the stop it would run to max_new_tokens
        reply = twin.generate(msgs, temperature=1.0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=60, seed=seed)
        assert "<|im_end|>" not in reply
        lengths.append(len(twin.tokenizer(reply, add_special_tokens=False)["input_ids"]))
    assert max(lengths) < 30 and sum(lengths) > 0, lengths


# --- caps -----------------------------------------------------------------------------------------------

def test_overlong_message_is_refused_and_kept_in_the_box(app_mod, monkeypatch):
    monkeypatch.setattr(app_mod.APP, "settings", dataclasses.replace(app_mod.APP.settings, max_message_chars=20))
    with pytest.warns(UserWarning, match="limited to 20 characters"):
        assert run_chat(app_mod.APP, "x" * 21) == [([], "x" * 21)]


def test_context_is_trimmed_from_the_front_to_the_token_budget(app_mod, monkeypatch):
    history = [{"role": r, "content": f"turn {i} " + "word " * 10} for i, r in enumerate(["user", "assistant"] * 6)]
    full = app_mod.APP.context(history, "one_on_one", ["Nova"], None)
    budget = len(app_mod.APP.twin.prompt_ids(full)) // 2
    monkeypatch.setattr(app_mod.APP, "settings", dataclasses.replace(app_mod.APP.settings, max_context_tokens=budget))
    with pytest.warns(UserWarning, match="oldest"):
        trimmed = app_mod.APP.context(history, "one_on_one", ["Nova"], None)
    assert trimmed[0] == full[0] and trimmed[-1] == full[-1] and trimmed[1:] == full[-(len(trimmed) - 1):]
    assert app_mod.APP.twin.count_tokens(trimmed) <= budget < app_mod.APP.twin.count_tokens(full)


def test_trimming_keeps_the_same_start_for_several_turns_so_the_kv_prefix_is_reused():
    count = lambda msgs: sum(len(m["content"].split()) + 4 for m in msgs)  # additive, like tokens per turn
    system = {"role": "system", "content": "be me " * 10}
    chat, starts = [system], []
    for i in range(60):
        chat.append({"role": "user" if i % 2 == 0 else "assistant", "content": "word " * (3 + i * 7 % 11)})
        kept, dropped = sc.trim_context(chat, count, 200, block_tokens=50)
        assert kept[0] == system and kept[1:] == chat[1 + dropped:] and count(kept) <= 200
        assert dropped == 0 or count(kept) > 200 - 50 - 17  # at most a block (+ one turn of 17) below the budget
        starts.append(dropped)
        longest, d1 = sc.trim_context(chat, count, 200)  # default: as many turns as fit (04_evaluate)
        assert count(longest) <= 200 and (d1 == 0 or count([system] + chat[d1:]) > 200) and d1 <= dropped
    changes = sum(a != b for a, b in zip(starts, starts[1:]))
    assert starts[-1] > 0 and changes <= 12  # about (tokens over budget) / block; turn by turn it would be 40+


def test_auth_must_be_user_colon_password():
    assert sc.parse_auth("me:se:cret") == ("me", "se:cret") and sc.parse_auth(None) is None
    with pytest.raises(sc.UserError, match="SIMME_AUTH"):
        sc.parse_auth("justaname")


# --- startup, blind test, feedback ----------------------------------------------------------------------

def test_missing_adapter_falls_back_to_the_base_model_with_a_banner(app_mod):
    assert "not found" in app_mod.APP.banner and app_mod.APP.twin.info()["adapter"] is None
    assert app_mod.APP.owner == OWNER and app_mod.APP.contacts == CONTACTS and len(app_mod.PLOTS) == 1


def test_blind_round_holds_the_real_reply_at_the_real_index_and_scores_guesses():
    rng = random.Random(0)
    positions = set()
    for _ in range(20):
        options, real = sc.new_blind_round("real", "twin", rng)
        assert options[real] == "real" and options[1 - real] == "twin"
        positions.add(real)
    assert positions == {0, 1}
    score = sc.score_guess(sc.score_guess({}, 0, 0), 1, 0)
    assert score == {"rounds": 2, "correct": 1} and sc.format_score(score) == "1/2 correct (50%)"


def test_blind_test_uses_only_non_silent_held_out_samples_and_keeps_score_in_state(app_mod):
    app = app_mod.APP
    assert len(app.blind_samples) == 3  # the silent sample is left out
    context, opt1, opt2, round_, _ = app.new_round()
    real_index = round_["real"]
    assert context[0]["role"] == "user" and [opt1, opt2][real_index].startswith("real answer")
    cleared, score, verdict = app.guess(real_index, round_, {"rounds": 0, "correct": 0})
    assert cleared is None and score == {"rounds": 1, "correct": 1} and "Right" in verdict
    assert app.guess(0, None, score)[1] == score  # no double counting without a new round
    # The next round was generated in the background while this one was judged, and is the one served next.
    sample, twin_reply = app._next_round.result(timeout=120)
    context, opt1, opt2, round_, _ = app.new_round()
    assert context == sc.expand_turns(sample[:-1])
    assert [opt1, opt2][1 - round_["real"]] == (sc.BUBBLE_DELIMITER.join(sc.split_bubbles(twin_reply)) or sc.SILENT_NOTE)


def test_ab_loads_adapter_b_and_refuses_a_missing_one_with_a_clear_error(app_mod, tiny_model_dir, tmp_path):
    import gradio as gr
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import torch

    # Random A and B, scaled up (alpha 32 / r 2) and seeded: an unseeded rank-2 delta at scale 1 sometimes left the tiny
    # model's 8 greedy tokens unchanged (both twins answered "\n" x 8), depending on what drew from the global RNG before.
    lora = LoraConfig(r=2, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(tmp_path / "adapter_b")
    app = app_mod.TwinApp(app_mod.APP.twin, owner=OWNER, settings=sc.AppSettings(adapter_dirs=str(tmp_path)))
    assert "adapter_b" in app.load_b(str(tmp_path / "adapter_b")) and app.twin_b.info()["adapter"]
    outs = list(app.respond_ab("hi", [], "One-on-one", "Nova", "", "", "", 0, False, 0.9, 1.0, 8, -1))
    pending = outs[-1][-1]
    by_twin = dict(zip(pending["order"], pending["replies"]))
    assert by_twin[0] == app.twin.generate(pending["messages"], temperature=0, top_p=0.9, repetition_penalty=1.0,
                                           max_new_tokens=8) != by_twin[1]
    with pytest.raises(gr.Error, match="not found"):
        app.load_b(str(tmp_path / "missing"))


def test_ab_pick_saves_prompt_chosen_rejected_appending_and_nothing_without_feedback_dir(app_mod, tmp_path):
    from datasets import load_from_disk

    app = app_mod.TwinApp(app_mod.APP.twin, owner=OWNER, twin_b=app_mod.APP.twin,
                          settings=sc.AppSettings(feedback_dir=str(tmp_path)))
    for round_ in range(2):
        outs = list(app.respond_ab(f"hi {round_}", [], "One-on-one", "Nova", "", "", "", 0.7, False, 0.9, 1.1, 8, 1))
        pending = outs[-1][-1]
        assert pending["replies"] == list(outs[-1][2:4]) and pending["messages"][-1]["content"] == f"hi {round_}"
        history = app.pick(1, pending, [])[0]
        assert history[0]["content"] == f"hi {round_}"
    rows = load_from_disk(str(tmp_path / "preferences"))
    assert rows.column_names[:3] == ["prompt", "chosen", "rejected"] and len(rows) == 2
    assert rows[1]["prompt"][0]["role"] == "system" and rows[1]["chosen"][0]["content"] == pending["replies"][1]
    app_mod.TwinApp(app.twin, twin_b=app.twin).pick(0, pending, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preferences", "preferences.lock"]


def test_thumbs_rate_the_whole_reply_with_its_prompt(app_mod, tmp_path):
    import gradio as gr
    from datasets import load_from_disk

    app = app_mod.TwinApp(app_mod.APP.twin, owner=OWNER, settings=sc.AppSettings(feedback_dir=str(tmp_path)))
    history = [{"role": "user", "content": "Ann: yo"}, {"role": "assistant", "content": "hey"},
               {"role": "assistant", "content": "sup"}, {"role": "user", "content": "Bo: ok"}]
    app.like(history, "Group", "", "Ann, Bo", "Ann", "", gr.LikeData(None, {"index": 1, "value": "hey", "liked": False}))
    row = load_from_disk(str(tmp_path / "ratings"))[0]
    assert row["completion"] == [{"role": "assistant", "content": "hey\nsup"}] and row["label"] is False
    assert row["prompt"][-1] == {"role": "user", "content": "Ann: yo"}


# --- the real server: concurrency over HTTP and a real browser ------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def server_process(tiny_model_dir, pipeline_dirs, tmp_path_factory):
    """Start `python app.py` (tiny model, free localhost port) first thing, so it boots while in-process tests run."""
    prepared, analysis = pipeline_dirs
    log = tmp_path_factory.mktemp("server") / "app.log"
    env = {**os.environ, "SIMME_BASE_MODEL": str(tiny_model_dir), "SIMME_ADAPTER": str(log.parent / "no_adapter"),
           "SIMME_BACKEND": "transformers", "SIMME_PREPARED_DIR": str(prepared), "SIMME_ANALYSIS_DIR": str(analysis),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    with app_server(env, log) as (proc, url):
        yield proc, url, log


@pytest.fixture(scope="module")
def server(server_process):
    """(url, log path) of the app server once it answers HTTP."""
    proc, url, log = server_process
    wait_until_serving(proc, url, log)
    return url, log


@pytest.mark.slow
def test_eight_simultaneous_http_chats_complete_without_interleaving(server, app_mod):
    from gradio_client import Client

    url, log = server
    messages = [f"message number {i} from client {i}" for i in range(8)]

    def chat(msg):
        client = Client(url, verbose=False, httpx_kwargs={"timeout": 120}, download_files=False, analytics_enabled=False)
        job = client.submit(msg, [], "One-on-one", "Nova", "", "", "", 0.7, False, 0.9, 1.1, 24, False, 7,
                                                api_name="/chat")
        return job.result(timeout=120), len(job.outputs())

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(chat, messages))
    for msg, ((history, box), n_updates) in zip(messages, results):
        assert box == "" and n_updates >= 3  # the reply streamed
        assert sc.message_text(history[0]["content"]) == msg
        reply = sc.BUBBLE_DELIMITER.join(sc.message_text(m["content"]) for m in history[1:])
        # Same request in-process, alone: the server's reply must be exactly this one, not a mix of neighbours.
        alone = run_chat(app_mod.APP, msg, contact="Nova", max_new_tokens=24, seed=7)[-1][0]
        assert reply == sc.BUBBLE_DELIMITER.join(m["content"] for m in alone[1:])
    assert not any(m in log.read_text() for m in messages), "chat text must never be logged"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium missing: run `make test-setup`")
def test_browser_chats_one_on_one_and_group_moves_temperature_and_sees_streaming(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _ = server
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url)
        expect(page.get_by_text("You are chatting with an AI twin")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Running the base model without an adapter")).to_be_visible()

        slider = page.locator("input[type=range]").first  # Temperature comes first in the settings
        slider.focus()
        for _ in range(4):
            slider.press("ArrowRight")
        expect(page.get_by_label("number input for Temperature")).to_have_value("0.9")

        # Record every text the last twin bubble shows while the reply streams.
        page.evaluate("""() => { window.seen = new Set(); window.changed = Date.now();
            new MutationObserver(() => { const b = document.querySelectorAll('[data-testid="bot"]');
                if (b.length && !window.seen.has(b[b.length - 1].innerText)) {
                    window.seen.add(b[b.length - 1].innerText); window.changed = Date.now(); } })
            .observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
        settled = "() => Date.now() - window.changed > 2500"  # the reply stopped changing: streaming is over
        box = page.get_by_placeholder("Type a message and press Enter")
        box.fill("hello from the browser")
        box.press("Enter")
        expect(page.locator('[data-testid="user"]').first).to_contain_text("hello from the browser")
        expect(page.locator('[data-testid="bot"]').first).to_be_visible(timeout=30_000)
        page.wait_for_function("() => window.seen.size >= 3", timeout=30_000)  # several partial replies were shown
        page.wait_for_function(settled, timeout=60_000)

        page.get_by_label("Group", exact=True).check()
        expect(page.get_by_label("Group members (comma-separated)")).to_be_visible()
        expect(page.locator('[data-testid="user"]')).to_have_count(0)  # a new mode starts a new chat
        box.fill("group hello")
        box.press("Enter")
        expect(page.locator('[data-testid="user"]').first).to_contain_text("Alex: group hello")
        expect(page.locator('[data-testid="bot"]').first).to_be_visible(timeout=30_000)
        page.wait_for_function(settled, timeout=60_000)
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)

        page.get_by_role("tab", name="Insights").click()
        expect(page.locator("img[src*='activity_by_hour']").first).to_be_visible(timeout=15_000)
        page.get_by_role("tab", name="Real or twin?").click()
        page.get_by_role("button", name="New round").click()
        expect(page.get_by_text("Which reply did the owner really send?")).to_be_visible(timeout=30_000)
        page.get_by_role("button", name="Reply 1 is real").click()
        expect(page.get_by_text("Score: ")).to_contain_text("/1 correct", timeout=15_000)
        page.screenshot(path=str(tmp_path / "blind.png"), full_page=True)
        browser.close()
    assert (tmp_path / "app.png").stat().st_size > 10_000
