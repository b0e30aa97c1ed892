"""The app's handlers: what each Gradio event does with the twin(s), the caps on client input, the A/B and feedback
stores and the blind test. Imports gradio, so simme_common does not re-export it (app.py imports it)."""

from __future__ import annotations

import functools
import inspect
import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr

import simme_common as sc
from simme_common.serving.batch_decoder import TwinBusy
from simme_common.serving.chat_ui import mask_pii, mask_pii_streaming

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
        if isinstance(err, TwinBusy):  # one sentence, no path: the client may retry
            raise gr.Error(str(err)) from None
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


def load_twin(settings: sc.AppSettings, adapter: str | None, base_model: str | None = None):
    """A twin with the settings' base model (or `base_model`), backend, quantization and llama.cpp options."""
    return sc.load_twin(base_model or settings.base_model, adapter, backend=settings.backend,
                        quantization=settings.quant, llama=settings.llama_options())


def as_bubbles(reply: str) -> list[dict]:
    """A twin reply as assistant chat messages, one per bubble (a silent note when there is none)."""
    return [{"role": "assistant", "content": b} for b in sc.split_bubbles(reply) or [sc.SILENT_NOTE]]


def masked_stream(replies):
    """A twin's streamed reply texts as the client may see them: PII-shaped strings masked, and while streaming a
    tail that may be the start of one held back (chat_ui.mask_pii_streaming); the last text is masked whole."""
    reply = ""
    for reply in replies:
        yield mask_pii_streaming(reply)
    yield mask_pii(reply)


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

    def respond(self, message: str, history: list | None = None, mode: str = ONE_ON_ONE, contact: str | None = None,
                members: str | None = None, sender: str | None = None, title: str | None = None,
                temperature: float = 0.7, auto_temp: bool = False, top_p: float = 0.9, repetition_penalty: float = 1.1,
                max_new_tokens: int = 96, pace: bool = False, seed: int = -1, request: gr.Request = None):
        """Chat with the twin: stream its reply to `message` as chat bubbles (the whole chat, then "" for the box).

        Args:
            message: what you send (at most SIMME_MAX_MESSAGE_CHARS characters).
            history: the chat so far, as the Chatbot holds it; empty for a new chat.
            mode: "One-on-one" or "Group".
            contact: who you are in a one-on-one chat (default "Friend").
            members: group members, comma-separated (Group mode).
            sender: the member sending the message (Group mode; default the first member).
            title: the group's name (optional).
            temperature: sampling temperature, 0 (greedy) to 1.5.
            auto_temp: pick the temperature from the chat (overrides temperature).
            top_p: nucleus sampling, 0.05 to 1.
            repetition_penalty: 1 (none) to 2.
            max_new_tokens: longest reply, in tokens (capped by SIMME_MAX_NEW_TOKENS).
            pace: wait between bubbles as long as the owner types (streaming clients only).
            seed: -1 for a fresh sample, else a fixed seed (same request, same reply).
        """
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
        for reply in masked_stream(self.twin.stream(messages, **gen, **self.cache_options(gen, request))):
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
            for replies[slot] in masked_stream(twins[which].stream(messages, **gen, **self.cache_options(gen, request))):
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

    def _save_feedback(self, store: str, row: dict | list[dict]) -> int | None:
        """Append `row` (or rows) to $SIMME_FEEDBACK_DIR/<store> within its quota (rows and bytes): its new length,
        or None with a warning when nothing is stored (no feedback dir, or the store is full)."""
        if not self.feedback_dir:
            return None
        new = row if isinstance(row, list) else [row]
        cfg, path = self.settings, Path(self.feedback_dir) / store
        with self._feedback_lock:
            rows, size = sc.feedback_usage(path)
            if rows + len(new) > cfg.feedback_max_rows or size + len(json.dumps(new).encode()) > cfg.feedback_max_bytes:
                gr.Warning("Feedback storage is full: this one was not saved.")
                return None
            return sc.append_to_disk_dataset(path, new)

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
        return sample, mask_pii(self.twin.generate(sample[:-1], temperature=0.7, top_p=0.9, repetition_penalty=1.1,
                                                   max_new_tokens=64, use_cache=False))

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
        # Held-out samples carry surrogates shaped like phones or e-mails: masked like the twin's, so neither the
        # masks nor the surrogates tell the real reply apart.
        context = [dict(m, content=mask_pii(m["content"])) for m in sample[:-1]]
        options, real_index = sc.new_blind_round(mask_pii(sample[-1]["content"]), twin, self.rng)
        shown = [sc.BUBBLE_DELIMITER.join(sc.split_bubbles(o)) or sc.SILENT_NOTE for o in options]
        round_ = {"real": real_index, "round_id": uuid.uuid4().hex}
        return sc.expand_turns(context), shown[0], shown[1], round_, "Which reply did the owner really send?"

    def guess(self, slot: int, round_: dict | None, score: dict):
        """Score a guess (`round_`: new_round's {"real", "round_id"}); the running accuracy lives in this browser
        session's gr.State only. With SIMME_FEEDBACK_DIR set, the guess is saved to its blind_guesses store: one row
        per reply shown (what it was, what it was taken for), no text."""
        real_index = round_.get("real") if isinstance(round_, dict) else None
        if real_index not in (0, 1) or slot not in (0, 1):
            return None, score, "Start a **new round** first."
        score = sc.score_guess(score, slot, real_index)
        verdict = "Right!" if slot == real_index else "Wrong."
        if self.feedback_dir:
            round_id, now = str(round_.get("round_id") or uuid.uuid4().hex)[:64], time.time()
            self._save_feedback("blind_guesses", [
                {"round_id": round_id, "shown": "real" if i == real_index else "twin",
                 "guessed": "real" if i == slot else "twin", "timestamp": now} for i in (0, 1)])
        return None, score, f"{verdict} Reply {real_index + 1} was real. Score: {sc.format_score(score)}"
