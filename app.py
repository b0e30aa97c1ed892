"""SimMe app: chat with the owner's AI twin (one-on-one or in a group), compare two adapters, see the style
insights and play "Real or twin?". Private by default: no share link, a login required anywhere but on this
machine (throttled), no chat text logged, nothing stored unless SIMME_FEEDBACK_DIR is set, every client input
capped server-side, no analytics, the Hub offline unless a Hub adapter is configured. See docs/app.md.

python app.py                                              # http://127.0.0.1:7860, adapter outputs/03_adapter
SIMME_ADAPTER=outputs/03_adapter SIMME_AUTH=me:secret GRADIO_SERVER_PORT=7861 python app.py

Every setting is an environment variable SIMME_<FIELD> of simme_common.settings.AppSettings, read once by main().
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr

import simme_common as sc

ONE_ON_ONE, GROUP = "One-on-one", "Group"


def member_names(members, settings: sc.AppSettings) -> list[str]:
    """The group member list as sent by the client, within the caps: at most max_members names of max_name_chars."""
    text = sc.clip_text(members, settings.max_members * (settings.max_name_chars + 2))
    return [name[:settings.max_name_chars].strip() for name in sc.parse_names(text)][:settings.max_members]


def chat_setup(mode: str, contact: str | None, members: str | None, sender: str | None,
               settings: sc.AppSettings | None = None) -> tuple[str, str, list[str]]:
    """(chat_type, who sends the next message, the owner's chat partners) from the chat controls, names capped."""
    settings = settings or sc.AppSettings()
    if mode == GROUP:
        names = member_names(members, settings)
        speaker = sc.clip_text(sc.clip_text(sender, 4 * settings.max_name_chars).replace(":", " "), settings.max_name_chars)
        speaker = speaker or (names[0] if names else "Friend")
        return "group", speaker, names if speaker in names else names[:settings.max_members - 1] + [speaker]
    contact = sc.clip_text(contact, settings.max_name_chars) or "Friend"
    return "one_on_one", contact, [contact]


def sender_choices(members: str, sender: str | None, settings: sc.AppSettings | None = None):
    """The "Send as" dropdown after the member list changed: its names, keeping the current sender if listed."""
    names = member_names(members, settings or sc.AppSettings())
    return gr.update(choices=names, value=sender if sender in names else (names or [""])[0])


UNEXPECTED_ERROR = "Something went wrong on the server; please try again."


def client_errors(fn):
    """`fn` (a function or generator) for Gradio: an unexpected exception reaches the client as UNEXPECTED_ERROR,
    one sentence; the server log gets its type and where it was raised, not its message (it may quote the chat)."""
    def fail(err: Exception):
        if isinstance(err, gr.Error):
            raise err
        frame = (inspect.trace() or [None])[-1]
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        print(f"handler {fn.__name__} failed: {type(err).__name__}{where}", file=sys.stderr, flush=True)
        raise gr.Error(UNEXPECTED_ERROR) from None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                fail(err)
        return generator

    @functools.wraps(fn)
    def function(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            fail(err)
    return function


def session_of(request: gr.Request | None) -> str:
    """The browser tab or API client a request comes from (the reply cache's scope); "local" in-process."""
    return getattr(request, "session_hash", None) or "local"


def private_environment(settings: sc.AppSettings, environ=os.environ) -> None:
    """No analytics, and the Hub offline unless the configuration needs it (a variable already set is kept).

    huggingface_hub read HF_HUB_OFFLINE when gradio imported it, so its constant is set too.
    """
    environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if not sc.needs_hub(settings):
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            environ.setdefault(name, "1")
    if environ is os.environ and environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def load_twin(settings: sc.AppSettings, adapter: str | None, base_model: str | None = None):
    """A twin with the settings' base model (or `base_model`), backend, quantization and llama.cpp options."""
    return sc.load_twin(base_model or settings.base_model, adapter, backend=settings.backend,
                        quantization=settings.quant, llama=settings.llama_options())


def as_bubbles(reply: str) -> list[dict]:
    """A twin reply as assistant chat messages, one per bubble (a silent note when there is none)."""
    return [{"role": "assistant", "content": b} for b in sc.split_bubbles(reply) or [sc.SILENT_NOTE]]


class TwinApp:
    """What the UI handlers share: the twin(s), the owner's name and style card, and the blind-test samples."""

    def __init__(self, twin, *, settings: sc.AppSettings | None = None, owner="Me", contacts=(), style_card=None,
                 blind_samples=(), twin_b=None, banner=None):
        self.settings = settings or sc.AppSettings()
        self.twin, self.twin_b, self.banner, self.feedback_dir = twin, twin_b, banner, self.settings.feedback_dir
        self.owner, self.contacts, self.style_card = owner, list(contacts), style_card
        self.blind_samples, self.rng, self._load_lock = list(blind_samples), random.Random(), threading.Lock()
        # "Real or twin?": the next round is made in the background while this one is judged (see new_round).
        self._next_round, self._round_lock = None, threading.Lock()
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="simme-blind")
        self._feedback_lock = threading.Lock()
        tok = twin.tokenizer
        decoder = getattr(tok, "added_tokens_decoder", None) or {}
        self.control_tokens = tuple(set(getattr(tok, "all_special_tokens", []))
                                    | {t.content for t in decoder.values() if getattr(t, "special", False)})

    def history(self, history) -> list[dict]:
        """A client-sent chat history within the caps (bubbles, characters), as plain-text messages."""
        cfg = self.settings
        return sc.cap_history(history, cfg.max_history_messages, 4 * cfg.max_message_chars, cfg.max_history_chars)[0]

    def title(self, title) -> str:
        """The group name within its cap."""
        return sc.clip_text(title, self.settings.max_title_chars)

    def context(self, history: list[dict], chat_type: str, others: list[str], title: str | None) -> list[dict]:
        """Training-format model input for `history`, trimmed from the front to the context budget."""
        others = [name for name in others if name != self.owner] or others
        messages = sc.build_app_messages(history, chat_type=chat_type, owner=self.owner, others=others,
                                         title=self.title(title), control_tokens=self.control_tokens)
        # Dropped a quarter of the budget at a time, so the next turns reuse the same KV prefix.
        budget = self.settings.max_context_tokens
        messages, dropped = sc.trim_context(messages, self.twin.count_tokens, budget, block_tokens=budget // 4)
        if dropped:
            gr.Warning(f"Long chat: the oldest {dropped} turn(s) no longer fit the {budget}-token context.")
        return messages

    def gen_kwargs(self, messages, temperature, auto_temp, top_p, repetition_penalty, max_new_tokens, seed) -> dict:
        """Sampling settings of one request, each clamped to its slider's range (auto temperature follows
        sc.auto_temperature's rule)."""
        if auto_temp is True:
            previous = [m["content"] for m in messages if m["role"] == "assistant"]
            temperature = sc.auto_temperature(previous, self.twin.count_tokens(messages))
        seed = int(sc.clip_number(seed, -1, 2**31 - 1, -1))
        cap = self.settings.max_new_tokens
        return dict(temperature=sc.clip_number(temperature, 0.0, 1.5, 0.7), top_p=sc.clip_number(top_p, 0.05, 1.0, 0.9),
                    repetition_penalty=sc.clip_number(repetition_penalty, 1.0, 2.0, 1.1),
                    max_new_tokens=int(sc.clip_number(max_new_tokens, 1, cap, min(96, cap))),
                    seed=None if seed < 0 else seed)  # -1: a fresh sample each time

    def refused(self, message) -> str:
        """A refused message, left in the box for the user to shorten (the echo is bounded too)."""
        return message[:10 * self.settings.max_message_chars] if isinstance(message, str) else ""

    def cache_options(self, gen: dict, request: gr.Request | None) -> dict:
        """Reply cache use of a request: this session's entries only, and none for a random seed (a fresh sample)."""
        return dict(use_cache=gen["seed"] is not None, cache_scope=session_of(request))

    def _start(self, message: str | None, history, mode, contact, members, sender):
        """Validate the message and add the user's bubble; None when it is refused (with a warning)."""
        message = message.strip() if isinstance(message, str) else ""
        if not message:
            return None
        limit = self.settings.max_message_chars
        if len(message) > limit:
            gr.Warning(f"Messages are limited to {limit:,} characters (this one has {len(message):,}).")
            return None
        chat_type, speaker, others = chat_setup(mode, contact, members, sender, self.settings)
        text = sc.neutralize_control_tokens(sc.format_user_turn(chat_type, speaker, message), self.control_tokens)
        return self.history(history) + [{"role": "user", "content": text}], chat_type, others

    def respond(self, message, history, mode, contact, members, sender, title, temperature, auto_temp, top_p,
                repetition_penalty, max_new_tokens, pace, seed, request: gr.Request = None):
        """Chat handler: show the user's bubble, then stream the twin's reply as bubbles (or a silent note)."""
        started = self._start(message, history, mode, contact, members, sender)
        if started is None:
            yield self.history(history), self.refused(message)
            return
        history, chat_type, others = started
        yield history, ""
        messages = self.context(history, chat_type, others, title)
        gen = self.gen_kwargs(messages, temperature, auto_temp, top_p, repetition_penalty, max_new_tokens, seed)
        gap = sc.typing_gap_seconds(self.style_card) if pace is True else None
        shown, last, reply = 0, time.monotonic(), ""
        for reply in self.twin.stream(messages, **gen, **self.cache_options(gen, request)):
            bubbles = sc.stream_bubbles(reply)
            if gap and shown and len(bubbles) > shown:  # a new bubble starts: wait as long as the owner would
                time.sleep(max(0.0, gap - (time.monotonic() - last)))
            if len(bubbles) > shown:
                shown, last = len(bubbles), time.monotonic()
            yield history + [{"role": "assistant", "content": b} for b in bubbles], ""
        yield history + as_bubbles(reply), ""

    def respond_ab(self, message, history, mode, contact, members, sender, title, temperature, auto_temp, top_p,
                   repetition_penalty, max_new_tokens, seed, request: gr.Request = None):
        """A/B handler: adapter A and B answer the same context; replies stream side by side in random order."""
        twins = (self.twin, self.twin_b)
        if twins[1] is None:
            gr.Warning("Load adapter B first (SIMME_ADAPTER_B or the field above).")
            yield self.history(history), self.refused(message), "", "", None
            return
        started = self._start(message, history, mode, contact, members, sender)
        if started is None:
            yield self.history(history), self.refused(message), "", "", None
            return
        history, chat_type, others = started
        messages = self.context(history, chat_type, others, title)
        gen = self.gen_kwargs(messages, temperature, auto_temp, top_p, repetition_penalty, max_new_tokens, seed)
        order = self.rng.sample([0, 1], 2)  # order[slot] = which twin (0 = A, 1 = B) is shown in that slot
        replies = ["", ""]
        for slot, which in enumerate(order):
            for replies[slot] in twins[which].stream(messages, **gen, **self.cache_options(gen, request)):
                yield history, "", replies[0], replies[1], None
        pending = {"history": history, "messages": messages, "replies": replies, "order": order}
        yield history, "", replies[0], replies[1], pending

    def pick(self, slot: int, pending: dict | None, history: list[dict]):
        """The owner prefers reply `slot`: it joins the chat; (prompt, chosen, rejected) is saved if enabled."""
        if not pending:
            gr.Warning("Send a message with “Send to A and B” first.")
            return history, "", "", None
        chosen, rejected = pending["replies"][slot], pending["replies"][1 - slot]
        n = self._save_feedback("preferences", {
            "prompt": pending["messages"], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "chosen_adapter": "AB"[pending["order"][slot]]})
        if n:
            gr.Info(f"Saved preference #{n}.")
        return pending["history"] + as_bubbles(chosen), "", "", None

    def like(self, history, mode, contact, members, sender, title, data: gr.LikeData):
        """👍/👎 on a twin reply: saved as (prompt, completion, label) when SIMME_FEEDBACK_DIR is set."""
        if not self.feedback_dir:
            gr.Info("Feedback is not stored: SIMME_FEEDBACK_DIR is not set.")
            return
        cfg = self.settings
        history, cut = sc.cap_history(history, cfg.max_history_messages, 4 * cfg.max_message_chars, cfg.max_history_chars)
        try:
            if cut:
                raise ValueError("over the caps")
            start, end = sc.reply_span(history, data.index)
        except (ValueError, TypeError):
            gr.Warning("This rating was not saved: it does not point at a twin reply of this chat.")
            return
        chat_type, _, others = chat_setup(mode, contact, members, sender, cfg)
        prompt = sc.build_app_messages(history[:start], chat_type=chat_type, owner=self.owner, others=others,
                                       title=self.title(title), control_tokens=self.control_tokens)
        completion = sc.flatten_history(history[start:end], chat_type)
        n = self._save_feedback("ratings", {
            "prompt": prompt, "completion": completion or [{"role": "assistant", "content": sc.SILENT_REPLY}],
            "label": data.liked in (True, "Like")})
        if n:
            gr.Info(f"Saved rating #{n}.")

    def _save_feedback(self, store: str, row: dict) -> int | None:
        """Append `row` to $SIMME_FEEDBACK_DIR/<store> within its quota (rows and bytes): its new length, or None
        with a warning when nothing is stored (no feedback dir, or the store is full)."""
        if not self.feedback_dir:
            return None
        cfg, path = self.settings, Path(self.feedback_dir) / store
        with self._feedback_lock:
            rows, size = sc.feedback_usage(path)
            if rows + 1 > cfg.feedback_max_rows or size + len(json.dumps(row).encode()) > cfg.feedback_max_bytes:
                gr.Warning("Feedback storage is full: this one was not saved.")
                return None
            return sc.append_to_disk_dataset(path, [row])

    def load_b(self, path: str):
        """Load adapter B for the A/B mode: a directory inside SIMME_ADAPTER_DIRS (or a Hub id when allowed), on the
        base of adapter A (an adapter's recorded base is never fetched); the previous B is freed."""
        text = sc.clip_text(path, 1000)
        try:
            source = sc.allowed_adapter_dir(text, self.settings) if text else None
        except sc.UserError as err:
            raise gr.Error(str(err)) from None
        with self._load_lock:
            try:
                new = load_twin(self.settings, source, base_model=self.twin.info()["base"]) if source else None
            except sc.UserError as err:
                raise gr.Error(sc.public_message(err)) from None
            except Exception as err:  # a broken or mismatched adapter: the details stay in the server log
                print(f"adapter B failed to load: {type(err).__name__}", file=sys.stderr, flush=True)
                raise gr.Error("Adapter B could not be loaded: it does not fit the base model.") from None
            old, self.twin_b = self.twin_b, new
            if old is not None and old is not self.twin:
                old.close()
        return f"Adapter B: `{text}`" if self.twin_b else "No adapter B."

    def _blind_pair(self) -> tuple[list[dict], str]:
        """A random held-out sample and the twin's reply to its context."""
        sample = self.rng.choice(self.blind_samples)
        return sample, self.twin.generate(sample[:-1], temperature=0.7, top_p=0.9, repetition_penalty=1.1,
                                          max_new_tokens=64, use_cache=False)

    def new_round(self):
        """A random held-out context with the real and the twin reply in random order.

        Held-out contexts are always cold (no KV prefix to reuse: ~1.3 s for 200 tokens + 64 new ones on 2 cores),
        so the reply for the next round is generated in the background while the user judges this one.
        """
        with self._round_lock:
            pending, self._next_round = self._next_round, None
        sample, twin = pending.result() if pending is not None else self._blind_pair()
        with self._round_lock:
            if self._next_round is None:
                self._next_round = self._prefetch.submit(self._blind_pair)
        context, real = sample[:-1], sample[-1]["content"]
        options, real_index = sc.new_blind_round(real, twin, self.rng)
        shown = [sc.BUBBLE_DELIMITER.join(sc.split_bubbles(o)) or sc.SILENT_NOTE for o in options]
        return sc.expand_turns(context), shown[0], shown[1], real_index, "Which reply did the owner really send?"

    def guess(self, slot: int, real_index: int | None, score: dict):
        """Score a guess; the running accuracy lives in this browser session's gr.State only."""
        if real_index is None:
            return None, score, "Start a **new round** first."
        score = sc.score_guess(score, slot, real_index)
        verdict = "Right!" if slot == real_index else "Wrong."
        return None, score, f"{verdict} Reply {real_index + 1} was real. Score: {sc.format_score(score)}"


def build_demo(app: TwinApp, plots: list[str] = ()) -> gr.Blocks:
    """The Gradio UI: Chat (with A/B), Insights and Real or twin? tabs. Blocks apps have no flagging."""
    cfg = app.settings
    with gr.Blocks(title="SimMe: chat with an AI twin", analytics_enabled=False) as demo:
        gr.Markdown(f"## SimMe\n**You are chatting with an AI twin**: a language model imitating how "
                    f"{app.owner} texts. It is not {app.owner}, and it can be wrong.")
        if app.banner:
            gr.Markdown(f"> ⚠️ {app.banner}")
        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=3):
                    # No "share" button (it posts the chat to a Hub discussion); copies are marked as AI-written.
                    chatbot = gr.Chatbot(label=f"{app.owner} (AI twin)", height=480, feedback_options=("Like", "Dislike"),
                                         buttons=["copy", "copy_all"], watermark="(written by an AI twin)")
                    msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, lines=1)
                    with gr.Row():
                        send = gr.Button("Send", variant="primary")
                        clear = gr.Button("Clear chat")
                with gr.Column(scale=2):
                    mode = gr.Radio([ONE_ON_ONE, GROUP], value=ONE_ON_ONE, label="Chat mode")
                    contact = gr.Dropdown(app.contacts or ["Friend"], value=(app.contacts or ["Friend"])[0],
                                          allow_custom_value=True, label="You are (pick a contact or type a name)")
                    with gr.Group(visible=False) as group_box:
                        members = gr.Textbox("Alex, Sam", label="Group members (comma-separated)")
                        sender = gr.Dropdown(["Alex", "Sam"], value="Alex", allow_custom_value=True, label="Send as")
                        title = gr.Textbox(label="Group name (optional)")
                    with gr.Accordion("Generation settings", open=True):
                        temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature")
                        auto_rule = " ".join((sc.auto_temperature.__doc__ or "").split())
                        auto_temp = gr.Checkbox(False, label="Auto temperature", info=auto_rule)
                        top_p = gr.Slider(0.1, 1.0, value=0.9, step=0.05, label="Top-p")
                        repetition_penalty = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
                        max_new_tokens = gr.Slider(8, cfg.max_new_tokens, value=min(96, cfg.max_new_tokens), step=8,
                                                   label="Max new tokens")
                        has_gaps = sc.typing_gap_seconds(app.style_card) is not None
                        pace = gr.Checkbox(False, label="Pace bubbles with the owner's typing gaps", interactive=has_gaps,
                                           info=None if has_gaps else f"needs {cfg.analysis_dir}/style_card.json")
                        seed = gr.Number(-1, precision=0, label="Seed (-1: random)")
                    with gr.Accordion("A/B: compare two adapters", open=False):
                        adapter_b = gr.Textbox(cfg.adapter_b or "", label="Adapter B (path or Hub id)")
                        load_b = gr.Button("Load adapter B")
                        status_b = gr.Markdown(f"Adapter B: `{cfg.adapter_b}`" if app.twin_b else "No adapter B.")
                        send_ab = gr.Button("Send to A and B", variant="primary")
                        with gr.Row():
                            reply_1 = gr.Textbox(label="Reply 1", interactive=False)
                            reply_2 = gr.Textbox(label="Reply 2", interactive=False)
                        with gr.Row():
                            pick_1, pick_2 = gr.Button("1 is better"), gr.Button("2 is better")
                        pending = gr.State(None)

            settings = [temperature, auto_temp, top_p, repetition_penalty, max_new_tokens]
            who = [mode, contact, members, sender, title]
            chat = dict(fn=client_errors(app.respond), inputs=[msg, chatbot, *who, *settings, pace, seed], outputs=[chatbot, msg],
                        concurrency_id="generate", concurrency_limit=cfg.concurrency)
            running = [msg.submit(**chat, api_name="chat"), send.click(**chat, api_visibility="private")]
            # Clearing or switching mode stops a reply still streaming, so it cannot repaint the old chat.
            clear.click(lambda: ([], None, "", ""), None, [chatbot, pending, reply_1, reply_2], cancels=running,
                        api_visibility="private")
            mode.change(lambda m: (gr.update(visible=m == GROUP), gr.update(visible=m != GROUP), None),
                        mode, [group_box, contact, chatbot], cancels=running, api_visibility="private")
            members.change(lambda m, s: sender_choices(m, s, cfg), [members, sender], sender, api_visibility="private")
            chatbot.like(client_errors(app.like), [chatbot, *who], None, api_visibility="private")
            load_b.click(client_errors(app.load_b), adapter_b, status_b, api_visibility="private")
            send_ab.click(client_errors(app.respond_ab), [msg, chatbot, *who, *settings, seed], [chatbot, msg, reply_1, reply_2, pending],
                          concurrency_id="generate", concurrency_limit=cfg.concurrency, api_name="chat_ab")
            for slot, button in enumerate((pick_1, pick_2)):
                button.click(client_errors(lambda p, h, s=slot: app.pick(s, p, h)), [pending, chatbot], [chatbot, reply_1, reply_2, pending],
                             api_visibility="private")

        with gr.Tab("Insights"):
            if plots:
                for pair in (plots[i:i + 2] for i in range(0, len(plots), 2)):
                    with gr.Row(equal_height=True):
                        for plot in pair:
                            gr.Image(plot, label=Path(plot).stem.replace("_", " "), interactive=False,
                                     buttons=["download", "fullscreen"])
            else:
                gr.Markdown(f"No plots in `{cfg.analysis_dir}`: run 02_analyze first (`accelerate launch 02_analyze.py`).")

        with gr.Tab("Real or twin?"):
            if not app.blind_samples:
                gr.Markdown(f"No held-out test split in `{cfg.prepared_dir}/dataset`: run 01_prepare first.")
            else:
                gr.Markdown("One reply is what the owner really sent, the other is the twin's. Which one is real?")
                context = gr.Chatbot(label="Held-out conversation", height=320, buttons=[])
                with gr.Row():
                    option_1 = gr.Textbox(label="Reply 1", interactive=False)
                    option_2 = gr.Textbox(label="Reply 2", interactive=False)
                with gr.Row():
                    guess_1, guess_2 = gr.Button("Reply 1 is real"), gr.Button("Reply 2 is real")
                    next_round = gr.Button("New round", variant="primary")
                verdict = gr.Markdown()
                real_index, score = gr.State(None), gr.State({"rounds": 0, "correct": 0})
                next_round.click(client_errors(app.new_round), None, [context, option_1, option_2, real_index, verdict],
                                 concurrency_id="generate", concurrency_limit=cfg.concurrency, api_visibility="private")
                for slot, button in enumerate((guess_1, guess_2)):
                    button.click(client_errors(lambda r, s, slot=slot: app.guess(slot, r, s)), [real_index, score], [real_index, score, verdict],
                                 api_visibility="private")
    return demo


def load_app(settings: sc.AppSettings) -> tuple[TwinApp, list[str]]:
    """Load the twin(s) and the pipeline's outputs named by the settings (missing pieces degrade politely)."""
    banner = None
    try:
        twin = load_twin(settings, settings.adapter)
    except sc.UserError as err:
        twin = load_twin(settings, None)
        banner = f"{str(err).rstrip('.')}. Running the base model without an adapter."
    twin_b = load_twin(settings, settings.adapter_b) if settings.adapter_b else None
    analysis, prepared = Path(settings.analysis_dir), Path(settings.prepared_dir)
    style_card = json.loads((analysis / "style_card.json").read_text()) if (analysis / "style_card.json").exists() else None
    owner, contacts, blind = (style_card or {}).get("owner"), [], []
    if (prepared / "messages").exists() or (prepared / "dataset").exists():
        from datasets import load_from_disk

        if (prepared / "messages").exists():
            rows = load_from_disk(str(prepared / "messages"))
            contacts, found = sc.rank_contacts(list(rows["sender"]), list(rows["is_owner"]))
            owner = owner or found
        if (prepared / "dataset").exists():
            test = load_from_disk(str(prepared / "dataset"))["test"]
            blind = [m for m in test[sc.MESSAGES] if sc.is_blind_testable(m)]
    plots = sorted(str(p) for p in analysis.glob("*.png"))
    app = TwinApp(twin, settings=settings, owner=owner or "Me", contacts=contacts[:50], style_card=style_card,
                  blind_samples=blind, twin_b=twin_b, banner=banner)
    return app, plots


def main() -> None:
    """Read the settings once, load the twin, build the UI and serve it."""
    started = time.perf_counter()
    settings = sc.AppSettings.from_env()
    login = sc.parse_auth(settings.auth)
    settings.check_exposure()
    private_environment(settings)  # before gradio builds anything and before any model is loaded
    host, port = settings.listen_address()
    app, plots = load_app(settings)
    demo = build_demo(app, plots)
    hub = "offline" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else "online"
    print(f"SimMe app ready in {time.perf_counter() - started:.1f} s (backend: {app.twin.backend}, Hub: {hub})", flush=True)
    # Never share=True: the twin speaks for a real person. No run history: it would keep chats in the browser.
    # Only the plot files are served; show_error=False keeps exception texts (paths) in the server log, while
    # gr.Error messages, written for users, still reach them.
    throttle = sc.LoginThrottle(*login) if login else None
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency).launch(
        server_name=host, server_port=port, auth=throttle.check if throttle else None, share=False,
        run_history=False, allowed_paths=list(plots), show_error=False, max_file_size=settings.max_upload_bytes)


if __name__ == "__main__":
    sc.run_main(main)
