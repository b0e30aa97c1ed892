"""The app's chat helpers: Gradio 6 history <-> training-format turns, login parsing, bubbles while streaming,
contacts, the blind test and the auto temperature."""

from __future__ import annotations

from typing import Any

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
    history: list[dict], *, chat_type: str, owner: str, others: list[str], title: str | None = None
) -> list[dict[str, str]]:
    """Model input for the app in the exact training format: 01's system prompt, then the flattened history."""
    system = build_system_prompt(chat_type, owner, others, title or None)
    return [{"role": "system", "content": system}] + flatten_history(history, chat_type)


def stream_bubbles(partial_reply: str) -> list[str]:
    """Bubbles to show while a reply streams: like split_bubbles, hiding a half-generated silent marker."""
    text = partial_reply.strip()
    if text and SILENT_REPLY.startswith(text):
        return []
    return split_bubbles(partial_reply)


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
