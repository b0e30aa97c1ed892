"""From messages to training samples: sessions, bursts of bubbles, token-budget windows, silent samples, time split."""

from __future__ import annotations


from .chat_format import BUBBLE_DELIMITER


def split_sessions(timestamps: list[int], gap_minutes: float) -> list[int]:
    """Session index of each (ascending) timestamp: a new session starts after a gap > gap_minutes."""
    out, idx = [], 0
    for i, ts in enumerate(timestamps):
        if i and ts - timestamps[i - 1] > gap_minutes * 60_000:
            idx += 1
        out.append(idx)
    return out


def group_bursts(messages: list[tuple[int, str, str]], burst_seconds: float) -> list[dict]:
    """Merge consecutive bubbles of one sender (each within burst_seconds of the previous) into turns."""
    turns: list[dict] = []
    for ts, sender, text in messages:
        last = turns[-1] if turns else None
        if last and last["sender"] == sender and ts - last["end"] <= burst_seconds * 1000:
            last["bubbles"].append(text)
            last["end"] = ts
        else:
            turns.append({"sender": sender, "start": ts, "end": ts, "bubbles": [text]})
    for t in turns:
        t["text"] = BUBBLE_DELIMITER.join(t["bubbles"])
    return turns


def pack_windows(lengths: list[int], is_owner: list[bool], budget: int) -> list[tuple[int, int]]:
    """Non-overlapping [start, end] turn windows, each ending on an owner turn, each owner turn in exactly one.

    Greedy: from the first turn not yet used, take the next owner turn, drop the oldest context until it fits
    `budget` tokens, then extend to later owner turns while the window still fits. Turns longer than the
    budget must be truncated by the caller first.
    """
    windows: list[tuple[int, int]] = []
    owner_idx = [i for i, o in enumerate(is_owner) if o]
    i, j = 0, 0  # i: first unused turn; j: index into owner_idx
    while j < len(owner_idx):
        k = owner_idx[j]
        start, total = i, sum(lengths[i:k + 1])
        while total > budget and start < k:
            total -= lengths[start]
            start += 1
        while j + 1 < len(owner_idx):
            k2 = owner_idx[j + 1]
            extra = sum(lengths[k + 1:k2 + 1])
            if total + extra > budget:
                break
            total, k, j = total + extra, k2, j + 1
        windows.append((start, k))
        i, j = k + 1, j + 1
    return windows


def silent_cut_points(is_owner: list[bool], min_turns: int) -> list[tuple[int, int]]:
    """[start, end] stretches of others' turns after which a group sample teaches the owner to stay silent.

    Rate: one per maximal run of >= min_turns non-owner turns that is not followed by an owner turn in the
    session (owner-silent sessions and session tails), and one per run of >= 2*min_turns turns that is
    followed by an owner turn, cut min_turns turns before that reply.
    """
    out, n, i = [], len(is_owner), 0
    while i < n:
        if is_owner[i]:
            i += 1
            continue
        j = i
        while j < n and not is_owner[j]:
            j += 1
        run = j - i
        if j == n and run >= min_turns:
            out.append((i, j - 1))
        elif j < n and run >= 2 * min_turns:
            out.append((i, j - 1 - min_turns))
        i = j
    return out


def render_lengths(tokenizer, messages: list[dict]) -> list[int]:
    """Token count of each message rendered alone with the chat template (sums to the sample's length)."""
    if not messages:
        return []
    texts = [tokenizer.apply_chat_template([m], tokenize=False) for m in messages]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def truncate_to_tokens(tokenizer, text: str, max_tokens: int, keep_end: bool = False) -> str:
    """Cut a text to at most max_tokens tokens (its start, or its end when keep_end) at a clean boundary."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    ids = ids[-max_tokens:] if keep_end else ids[:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True).strip("\ufffd").strip() or text[:1]


def split_by_time(sessions: list[tuple[int, str, int]], fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict:
    """Assign sessions (start_ms, session_id, n_samples) to train/validation/test by time: test = most recent.

    Cuts fall on session boundaries at the cumulative sample fractions; with >= 3 sessions holding samples,
    validation and test get at least one session each.
    """
    order = sorted((s for s in sessions if s[2] > 0), key=lambda s: (s[0], s[1]))
    total = sum(s[2] for s in order)
    out: dict[str, str] = {}
    cum = 0
    for start, sid, n in order:
        frac = cum / total if total else 0
        out[sid] = "train" if frac < fractions[0] else "validation" if frac < fractions[0] + fractions[1] else "test"
        cum += n
    if len(order) >= 3:
        if "test" not in out.values():
            out[order[-1][1]] = "test"
        if "validation" not in out.values():
            ids = [s[1] for s in order if out[s[1]] == "train"]
            out[ids[-1]] = "validation"
    return out
