"""The app's chat helpers: Gradio 6 history <-> training-format turns, login parsing, bubbles while streaming,
contacts, the blind test and the auto temperature; and what keeps the app safe online: input caps, control-token
neutralizing, error scrubbing and the login throttle."""

from __future__ import annotations

import asyncio
import hmac
import math
import re
from collections.abc import Iterable
from typing import Any

from ..pii_detect import detect_pii
from ..chat_format import BUBBLE_DELIMITER, OTHER_ROLE, OWNER_ROLE, SILENT_REPLY, build_system_prompt, format_user_turn, split_bubbles
from ..runtime import UserError


def auto_temperature(previous_replies: list[str], context_tokens: int) -> float:
    """The "auto" temperature: 0.7, 0.6 while the chat is young (< 64 context tokens), + up to 0.4 when the
    twin's last three replies repeat each other's word bigrams (share of repeated bigrams), clamped to [0.3, 1.1].
    """
    temp = 0.6 if context_tokens < 64 else 0.7
    seen: set[tuple[str, str]] = set()
    repeated = total = 0
    for reply in previous_replies[-3:]:
        words = reply.lower().split()
        grams = set(zip(words, words[1:])) or ({(words[0], "")} if words else set())
        repeated += len(grams & seen)
        total += len(grams)
        seen |= grams
    if total:
        temp += 0.4 * repeated / total * (3 / 2)  # at most 2/3 of the bigrams can be repeats of earlier replies
    return round(min(1.1, max(0.3, temp)), 3)


SILENT_NOTE = "(stays silent)"  # shown in the chat when the twin answers SILENT_REPLY; never fed back to the model


def message_text(content: Any) -> str:
    """Plain text of a Gradio 6 message content: a str, {"type": "text", "text"} parts or a list of them; files give ""."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return BUBBLE_DELIMITER.join(t for t in (message_text(c) for c in content) if t)
    return ""


def flatten_history(history: list[dict], chat_type: str) -> list[dict[str, str]]:
    """Gradio 6 chat history (one message per bubble, structured content) -> training-format turns.

    Consecutive bubbles of one side become one turn joined by BUBBLE_DELIMITER, as 01 builds bursts. In groups a
    user bubble reads "Name: text" (format_user_turn) and bubbles merge only while the speaker stays the same.
    Silent notes, system messages and empty or file-only bubbles are dropped.
    """
    turns: list[tuple[str, str | None, list[str]]] = []  # (role, group speaker, bubbles)
    for msg in history:
        role, text = msg.get("role"), message_text(msg.get("content")).strip()
        if role not in (OWNER_ROLE, OTHER_ROLE) or not text or text in (SILENT_NOTE, SILENT_REPLY):
            continue
        speaker = None
        if role == OTHER_ROLE and chat_type == "group":
            name, sep, body = text.partition(": ")
            speaker, text = (name.strip(), body.strip()) if sep else ("", text)
        if turns and turns[-1][0] == role and turns[-1][1] == speaker:
            turns[-1][2].append(text)
        else:
            turns.append((role, speaker, [text]))
    out = []
    for role, speaker, bubbles in turns:
        text = BUBBLE_DELIMITER.join(bubbles)
        if role == OTHER_ROLE and chat_type == "group" and speaker:
            text = format_user_turn(chat_type, speaker, text)
        out.append({"role": role, "content": text})
    return out


def expand_turns(messages: list[dict]) -> list[dict[str, str]]:
    """Training-format turns -> Gradio chat history: system dropped, each owner turn split into bubbles."""
    out = []
    for msg in messages:
        if msg["role"] == OWNER_ROLE:
            bubbles = split_bubbles(msg["content"]) or [SILENT_NOTE]
            out += [{"role": OWNER_ROLE, "content": b} for b in bubbles]
        elif msg["role"] == OTHER_ROLE:
            out.append({"role": OTHER_ROLE, "content": msg["content"]})
    return out


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """SIMME_AUTH "user:password" -> (user, password) for Gradio's `auth=`; None when unset."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not (sep and user and password):
        raise UserError('SIMME_AUTH must look like "user:password" (both non-empty); unset it to run without a login')
    return user, password


def build_app_messages(
    history: list[dict], *, chat_type: str, owner: str, others: list[str], title: str | None = None,
    control_tokens: Iterable[str] = (),
) -> list[dict[str, str]]:
    """Model input for the app in the exact training format: 01's system prompt, then the flattened history.

    Every text from the client (history, names, title) goes through neutralize_control_tokens (`control_tokens`:
    the tokenizer's special tokens), so typed template tokens cannot open turns of their own.
    """
    specials = tuple(control_tokens)
    clean = lambda text: neutralize_control_tokens(text, specials)  # noqa: E731
    system = build_system_prompt(chat_type, clean(owner), [clean(o) for o in others], clean(title or "") or None)
    turns = flatten_history(history, chat_type)
    return [{"role": "system", "content": system}] + [{"role": t["role"], "content": clean(t["content"])} for t in turns]


# Chat-template control tokens of the families SimMe serves (ChatML, Llama 3, Llama 2, Gemma) and any <|...|> token.
CONTROL_TOKEN_RE = re.compile(r"<\|[^<>|\s]{1,64}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>")
ZERO_WIDTH_SPACE = "\u200b"


def neutralize_control_tokens(text: str | None, special_tokens: Iterable[str] = ()) -> str:
    """`text` with every chat-template control token broken by a zero-width space after its first character.

    The tokenizer turns a literal "<|im_start|>" in rendered text into the real control token, so a user could add
    turns (a fake system prompt) to the model input; broken, it is ordinary characters. Looks the same on screen,
    and applying it twice changes nothing.
    """
    text = text or ""
    specials = sorted({t for t in special_tokens if t and len(t) > 1}, key=len, reverse=True)
    pattern = CONTROL_TOKEN_RE.pattern + "".join("|" + re.escape(t) for t in specials)
    return re.sub(pattern, lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)


def clip_text(value: Any, limit: int) -> str:
    """A client-sent text field, stripped and at most `limit` characters (anything but a str gives "")."""
    return value.strip()[:limit].strip() if isinstance(value, str) else ""


def clip_number(value: Any, low: float, high: float, default: float) -> float:
    """A client-sent number clamped to [low, high]; `default` for anything not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return default if not math.isfinite(number) else min(max(number, low), high)


def cap_history(history: Any, max_messages: int, max_message_chars: int, max_total_chars: int) -> tuple[list[dict], bool]:
    """A client-sent chat history reduced to what the app needs, within the caps, and whether anything was cut.

    Keeps user/assistant messages as plain text (each at most `max_message_chars`), the last `max_messages` of
    them, dropping the oldest until all together hold at most `max_total_chars` characters.
    """
    if not isinstance(history, list):
        return [], bool(history)
    cut = len(history) > max_messages
    out: list[dict] = []
    for msg in history[-max_messages:]:
        if not isinstance(msg, dict) or msg.get("role") not in (OWNER_ROLE, OTHER_ROLE):
            cut = True
            continue
        text = message_text(msg.get("content"))
        cut |= len(text) > max_message_chars
        out.append({"role": msg["role"], "content": text[:max_message_chars]})
    total = sum(len(m["content"]) for m in out)
    while out and total > max_total_chars:
        total -= len(out.pop(0)["content"])
        cut = True
    return out, cut


_PATH_RE = re.compile(r"(?:[A-Za-z]:\\|~?/|\.{1,2}/)[^\s:;,'\"`]*")


def public_message(text: str) -> str:
    """An error for a client: its first sentence, any file path in it replaced by "…" (paths say how the server is laid out)."""
    first = re.split(r"(?<=[.!?])\s|;\s|\n", str(text).strip(), maxsplit=1)[0].rstrip(".;: ")
    first = _PATH_RE.sub("…", first)
    return (first[:1].upper() + first[1:] + ".") if first else "Something went wrong."


class LoginThrottle:
    """Gradio's `auth=` callable for one "user:password" login, comparing in constant time and slowing guessing.

    After the k-th failed attempt on a name, the next attempt on it waits min(max_delay, first_delay * 2**(k-1))
    seconds (5 s with the defaults from the 5th on: 50 wrong passwords take over 3 minutes); attempts on one name
    wait their turn, so parallel guesses gain nothing. Names other than the real one share a single entry, so
    rotating names does not start over. A success resets the name's count. Past `max_waiting` attempts queued on
    a name, more are refused at once, unchecked: a flood cannot queue the owner's own login behind minutes of waits.
    """

    def __init__(self, user: str, password: str, first_delay: float = 0.5, max_delay: float = 5.0,
                 max_waiting: int = 8):
        self._user, self._password = user.encode(), password.encode()
        self.first_delay, self.max_delay, self.max_waiting = first_delay, max_delay, max_waiting
        self._failures: dict[bool, int] = {True: 0, False: 0}
        self._waiting: dict[bool, int] = {True: 0, False: 0}
        self._locks: dict[bool, asyncio.Lock] = {}

    def delay(self, failures: int) -> float:
        """Seconds the next attempt waits after `failures` failed ones in a row."""
        return 0.0 if failures <= 0 else min(self.max_delay, self.first_delay * 2 ** (failures - 1))

    async def check(self, username: str, password: str) -> bool:
        """Whether (username, password) is the login; failures slow the next attempts on the same name."""
        known = hmac.compare_digest(str(username).encode(), self._user)
        if self._waiting[known] >= self.max_waiting:
            return False
        lock = self._locks.setdefault(known, asyncio.Lock())
        self._waiting[known] += 1
        try:
            async with lock:
                await asyncio.sleep(self.delay(self._failures[known]))
                ok = hmac.compare_digest(str(password).encode(), self._password) and known
                self._failures[known] = 0 if ok else self._failures[known] + 1
                return ok
        finally:
            self._waiting[known] -= 1


def stream_bubbles(partial_reply: str) -> list[str]:
    """Bubbles to show while a reply streams: like split_bubbles, hiding a half-generated silent marker."""
    text = partial_reply.strip()
    if text and SILENT_REPLY.startswith(text):
        return []
    return split_bubbles(partial_reply)


PII_MASKS = {"address_en": "[address]", "address_vi": "[address]", "url": "[link]", "dob": "[date of birth]"}


def mask_pii(text: str) -> str:
    """`text` with every PII-shaped string (pii_detect.detect_pii: phones, e-mails, links, handles, addresses, IDs,
    cards, plates, dates of birth) replaced by its kind, e.g. "[phone]". The twin was trained on surrogates only, so
    such a string in a reply is memorized or invented, and is not shown either way."""
    for start, end, kind in sorted(detect_pii(text), reverse=True):
        text = text[:start] + PII_MASKS.get(kind, f"[{kind}]") + text[end:]
    return text


# A word that may belong to PII still being generated: digits, "@", a dot inside a word, a spelled-out "at"/"dot".
_PII_START_RE = re.compile(r"\d|@|\w\.\w|^(?:at|dot|chấm|còng|a)$|^[(\[]?(?:at|dot)[)\]]?$|^\+", re.IGNORECASE)


def mask_pii_streaming(partial: str, window: int = 6) -> str:
    """What a client may see of a reply still streaming: mask_pii of it, less a tail that may be the start of PII
    (from the earliest suspicious word among the last `window` words, and the suspicious words just before it), so
    "call 0912 3" never shows digits that "call 0912 345 678" would have masked."""
    words = list(re.finditer(r"\S+", partial))
    hold = next((j for j in range(max(0, len(words) - window), len(words)) if _PII_START_RE.search(words[j].group())), None)
    if hold is None:
        return mask_pii(partial)
    while hold > 0 and _PII_START_RE.search(words[hold - 1].group()):
        hold -= 1
    return mask_pii(partial[:words[hold].start()])


def parse_names(text: str | None) -> list[str]:
    """Comma- or newline-separated names -> unique stripped names in order (colons removed: they mark the sender)."""
    names: list[str] = []
    for raw in (text or "").replace("\n", ",").split(","):
        name = raw.replace(":", " ").strip()
        if name and name not in names:
            names.append(name)
    return names


def rank_contacts(senders: list[str], is_owner: list[bool]) -> tuple[list[str], str | None]:
    """Non-owner senders by message count (most first) and the owner's name, from 01's `messages` columns."""
    from collections import Counter

    others = Counter(s for s, own in zip(senders, is_owner) if not own and s)
    owners = Counter(s for s, own in zip(senders, is_owner) if own and s)
    return [s for s, _ in others.most_common()], (owners.most_common(1)[0][0] if owners else None)


def typing_gap_seconds(style_card: dict | None, cap: float = 4.0) -> float | None:
    """The owner's median gap between bubbles (style_card typing_gap_s p50), clipped to [0.2, cap]; None if unknown."""
    try:
        p50 = float(style_card["typing_gap_s"]["quantiles"]["p50"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        return None
    return min(max(p50, 0.2), cap)


def reply_span(history: list[dict], index: int | list | tuple) -> tuple[int, int]:
    """[start, end) of the run of assistant bubbles (one twin reply) containing message `index` of a chat history."""
    if isinstance(index, (list, tuple)):
        index = index[0]
    if not 0 <= index < len(history) or history[index].get("role") != OWNER_ROLE:
        raise ValueError(f"message {index} is not a twin reply")
    start, end = index, index + 1
    while start > 0 and history[start - 1].get("role") == OWNER_ROLE:
        start -= 1
    while end < len(history) and history[end].get("role") == OWNER_ROLE:
        end += 1
    return start, end


def is_blind_testable(messages: list[dict]) -> bool:
    """A test sample usable in "Real or twin?": some context and a real (non-silent) owner reply at the end."""
    return (
        len(messages) >= 2
        and messages[-1]["role"] == OWNER_ROLE
        and bool(split_bubbles(messages[-1]["content"]))
        and any(m["role"] == OTHER_ROLE for m in messages[:-1])
    )


def new_blind_round(real: str, twin: str, rng) -> tuple[list[str], int]:
    """The real and the twin reply in random order (`rng`: a random.Random) and the index of the real one."""
    real_index = rng.randrange(2)
    options = [twin, twin]
    options[real_index] = real
    return options, real_index


def score_guess(score: dict, guess: int, real_index: int) -> dict:
    """Running blind-test score {"rounds", "correct"} after guessing that option `guess` is the real reply."""
    return {"rounds": score.get("rounds", 0) + 1, "correct": score.get("correct", 0) + int(guess == real_index)}


def format_score(score: dict) -> str:
    """"3/4 correct (75%)" or a prompt to play when no round was guessed yet."""
    rounds, correct = score.get("rounds", 0), score.get("correct", 0)
    return f"{correct}/{rounds} correct ({correct / rounds:.0%})" if rounds else "No guesses yet."
