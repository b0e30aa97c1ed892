"""Parsing an export into threads: classic Messenger, E2EE and old Instagram files, drop reasons, merging the
records of one conversation, and inferring the export's owner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .export_files import IngestLimits, discover_export, entry_display_path, iter_thread_groups, read_thread_group
from .runtime import UserError
from .system_text import _SYSTEM_STARTERS, classify_system_text, fix_mojibake, has_surrogates, normalize_text


_ATTACHMENT_KEYS = ("photos", "videos", "audio_files", "gifs", "files", "sticker")


DROP_REASONS = (
    "unsent", "taken_down", "call", "reaction_pseudo", "membership_event", "attachment_placeholder",
    "attachment_only", "system_other", "empty", "malformed", "duplicate", "before_since", "after_until",
)


# Repairs counted in the ingest report: the message is kept, changed.
REPAIR_REASONS = ("lone_surrogates_removed", "message_truncated")


# Timestamps (ms) outside 1970..2100 cannot be real messages: such a row is malformed.
_TS_MAX = 4_102_444_800_000


def _valid_ts(ts: Any) -> bool:
    """A finite millisecond timestamp in range (bool, NaN, Infinity, strings and huge numbers are not)."""
    return type(ts) in (int, float) and 0 <= ts <= _TS_MAX


# Keys that send a classic message through the full structural classifier instead of the text fast path.
_SLOW_PATH_KEYS = frozenset(("is_unsent", "is_taken_down", "call_duration", "missed", "type", "users", "share") + _ATTACHMENT_KEYS)


def _classify_classic_message(m: Any) -> tuple[str | None, str | None, int | None, str | None, str]:
    """(drop_reason, sender, timestamp_ms, text, missing_field) of one raw classic message; text repaired later."""
    if not isinstance(m, dict):
        return "malformed", None, None, None, "message"
    sender = m.get("sender_name")
    ts = m.get("timestamp_ms")
    if ts is None and type(m.get("timestamp")) in (int, float):
        ts = m["timestamp"] * 1000  # early-2018 exports: seconds
    if not isinstance(sender, str):
        return "malformed", None, None, None, "sender_name"
    if not _valid_ts(ts):
        return "malformed", sender, None, None, "timestamp_ms"
    content = m.get("content")
    if content is not None and not isinstance(content, str):
        return "malformed", sender, None, None, "content"
    if m.get("is_unsent"):
        return "unsent", sender, int(ts), content, ""
    if m.get("is_taken_down"):
        return "taken_down", sender, int(ts), content, ""
    if "call_duration" in m or "missed" in m or m.get("type") == "Call":
        return "call", sender, int(ts), content, ""
    if "users" in m or m.get("type") in ("Subscribe", "Unsubscribe"):
        return "membership_event", sender, int(ts), content, ""
    if not isinstance(content, str) or not content.strip():
        reason = "attachment_only" if any(k in m for k in _ATTACHMENT_KEYS) or "share" in m else "empty"
        return reason, sender, int(ts), None, ""
    return None, sender, int(ts), content, ""


def parse_thread_documents(docs: list[tuple[Any, str, str, bool]], limits: IngestLimits | None = None) -> dict:
    """Turn the parsed files of one thread into cleaned, ascending messages plus drop counts.

    Args:
        docs: (document, kind, source, needs_mojibake_fix) per file; classic files are newest-first,
            E2EE files oldest-first, in any file order.
    Returns:
        {title, participants, thread_type, messages: [(ts, sender, text, source)], total, dropped, repaired,
        you_lines, senders, problems}: `you_lines` counts "You ..." system lines per sender (owner evidence);
        `repaired` counts kept messages that were changed (REPAIR_REASONS); `problems` has one line per
        malformed field.
    """
    thread = _ThreadParse(limits or IngestLimits())
    for doc, kind, source, fix in docs:
        thread.add_document(doc, kind, source, fix)
    return thread.result()


class _ThreadParse:
    """The state of parse_thread_documents while it reads the files of one thread."""

    def __init__(self, limits: IngestLimits):
        from collections import Counter

        self.max_chars = limits.max_message_chars
        self.repaired: Counter = Counter()
        self.malformed: dict[str, list[int]] = {}  # field -> [count, first position, file length]
        self.dropped: Counter = Counter()
        self.you_lines: Counter = Counter()
        self.problems: list[str] = []
        self.rows: list[tuple[int, int, str, str, str]] = []  # (ts, seq, sender, text, source) for a stable sort
        self.participants: list[str] = []
        self.everyone: set[str] = set()
        self.title, self.thread_type, self.total = None, None, 0

    def add_document(self, doc: Any, kind: str, source: str, fix: bool) -> None:
        """Read one file's header (title, type, participants) and its messages."""
        fix_fn = fix_mojibake if fix else normalize_text
        if kind == "classic":
            raw_msgs = list(reversed(doc["messages"]))  # newest-first -> ascending; ties keep chronological order
            names = [p.get("name") if isinstance(p, dict) else p for p in doc.get("participants") or []]
            self.title = self.title or (fix_fn(doc["title"]) if isinstance(doc.get("title"), str) else None)
            self.thread_type = self.thread_type or doc.get("thread_type")
        else:
            raw_msgs = doc["messages"]
            names = list(doc.get("participants") or [])
            self.title = self.title or (fix_fn(doc["threadName"]) if isinstance(doc.get("threadName"), str) else None)
            source = "e2ee"
        for n in names:
            if isinstance(n, str) and n.strip() and fix_fn(n) not in self.participants:
                self.participants.append(fix_fn(n))
        self.total += len(raw_msgs)
        self._add_messages(raw_msgs, kind == "classic", fix_fn, source)

    def _add_messages(self, raw_msgs: list, classic: bool, fix_fn, source: str) -> None:
        """Classify, repair and keep or count as dropped each message of one file (the hot loop: locals only)."""
        rows, dropped, you_lines, everyone = self.rows, self.dropped, self.you_lines, self.everyone
        max_chars, ts_max = self.max_chars, _TS_MAX
        seq = len(rows)
        cache: dict[str, str] = {}
        # System sentences start with a person's name (participant or sender) or a fixed word ("You", "The", ...):
        # one C-level startswith spares ~all real messages the keyword scan and the full regex.
        prefixes = _SYSTEM_STARTERS + tuple(v for p in self.participants if p for v in (p, p.lower()))
        for m in raw_msgs:
            # Fast path (most rows): a plain text message; anything unusual goes through the full classifier.
            if classic and type(m) is dict and _SLOW_PATH_KEYS.isdisjoint(m):
                text, sender, ts = m.get("content"), m.get("sender_name"), m.get("timestamp_ms")
                fast = type(text) is str and type(sender) is str and type(ts) is int and 0 <= ts <= ts_max
            else:
                fast = False
            if fast:
                reason = None
            else:
                reason, sender, ts, text, missing = (_classify_classic_message if classic else _classify_e2ee_message)(m)
                if reason == "malformed":
                    self._count_malformed(raw_msgs, m, classic, missing)
                    continue
            fixed = cache.get(sender)
            if fixed is None:
                if not sender.isascii() and has_surrogates(sender):
                    self.repaired["lone_surrogates_removed"] += 1
                fixed = cache[sender] = fix_fn(sender)
                everyone.add(fixed)
                if fixed:
                    prefixes += (fixed, fixed.lower())
            sender = fixed
            if text is not None:
                if len(text) > max_chars:
                    text = self._truncate(text, fix_fn)
                elif not text.isascii():
                    if has_surrogates(text):  # fix_fn removes them; counted here
                        self.repaired["lone_surrogates_removed"] += 1
                    text = fix_fn(text)
                if reason is None:
                    text = text.strip("\r\n")
                    if not text or text.isspace():
                        reason = "empty"
                    elif text.startswith(prefixes):  # names as displayed or lowercased; starters in both cases
                        reason = classify_system_text(text)
            if reason is not None:
                dropped[reason] += 1
                if text and reason != "reaction_pseudo" and text.lstrip()[:4].lower() in ("you ", "bạn"):
                    you_lines[sender] += 1
                continue
            rows.append((ts, seq, sender, text, source))
            seq += 1

    def _truncate(self, text: str, fix_fn) -> str:
        """Cut an over-long message to max_message_chars (counted); the raw text is cut first so repair stays cheap."""
        self.repaired["message_truncated"] += 1
        text = text[:4 * self.max_chars]  # mojibake spends up to 4 characters per real one
        if has_surrogates(text):
            self.repaired["lone_surrogates_removed"] += 1
        return fix_fn(text)[:self.max_chars]

    def _count_malformed(self, raw_msgs: list, m: Any, classic: bool, missing: str) -> None:
        """Count a malformed message per missing/invalid field; the first one of each field is located in the file."""
        self.dropped["malformed"] += 1
        seen = self.malformed.get(missing)
        if seen is not None:
            seen[0] += 1
            return
        index = next(i for i, x in enumerate(raw_msgs) if x is m)
        index = len(raw_msgs) - 1 - index if classic else index  # position in the file
        self.malformed[missing] = [1, index, len(raw_msgs)]

    def result(self) -> dict:
        """The parsed thread, messages sorted by (timestamp, arrival order)."""
        from collections import Counter

        for name, (n, index, size) in self.malformed.items():
            self.problems.append(f"{n} message(s) with no valid '{name}' skipped (first: message #{index} of a "
                                 f"{size}-message file)")
        self.rows.sort()  # (timestamp, arrival order): a stable sort by time
        messages = [(ts, sender, text, src) for ts, _, sender, text, src in self.rows]
        senders = Counter(r[2] for r in self.rows)
        thread_type = self.thread_type
        if thread_type is None:
            # Members who left are missing from `participants` but their (even system) messages remain.
            thread_type = "RegularGroup" if len(set(self.participants) | self.everyone) > 2 else None
        return {"title": self.title, "participants": self.participants, "thread_type": thread_type,
                "messages": messages, "all_senders": sorted(self.everyone),
                "total": self.total, "dropped": dict(self.dropped), "repaired": dict(self.repaired),
                "you_lines": dict(self.you_lines),
                "senders": dict(senders), "problems": self.problems}


def _classify_e2ee_message(m: Any) -> tuple[str | None, str | None, int | None, str | None, str]:
    """(drop_reason, sender, timestamp_ms, text, missing_field) of one E2EE ("secure storage") message."""
    if not isinstance(m, dict):
        return "malformed", None, None, None, "message"
    sender, ts, text = m.get("senderName"), m.get("timestamp"), m.get("text")
    if not isinstance(sender, str):
        return "malformed", None, None, None, "senderName"
    if not _valid_ts(ts):
        return "malformed", sender, None, None, "timestamp"
    if text is not None and not isinstance(text, str):
        return "malformed", sender, None, None, "text"
    if m.get("isUnsent") or m.get("type") == "placeholder":
        return "unsent", sender, int(ts), text, ""
    if not isinstance(text, str) or not text.strip():
        return ("attachment_only" if m.get("media") or m.get("type") == "media" else "empty"), sender, int(ts), None, ""
    return None, sender, int(ts), text, ""


def parse_export(paths: list[str | Path], redact: bool | bytes = True, limits: IngestLimits | None = None,
                 sections: tuple[str, ...] | None = None):
    """Yield one parsed thread at a time (dict from parse_thread_documents + key, kind, sources) and failures.

    Streams: only one thread's files are in memory at once. Yields ("thread", record), ("failure", {path, error,
    reason}) and, when `sections` is given, ("excluded", {"reason": "section:<name>", "threads": n}) for the threads
    of other sections, which are never read. `redact` as in discover_export. Nothing in the export raises: damaged
    files, fields and messages are failures or counted drops.
    """
    from collections import Counter

    limits = limits or IngestLimits()
    entries, failures = discover_export(paths, limits, redact)
    for f in failures:
        yield "failure", f
    left_out: Counter = Counter()
    for group in iter_thread_groups(entries):
        if sections is not None:  # a thread folder found in several sections is read from the chosen ones only
            chosen = [e for e in group if e["section"] in sections]
            if not chosen:
                left_out[group[0]["section"]] += 1
                continue
            group = chosen
        docs, fails, kinds = read_thread_group(group, redact, limits)
        for f in fails:
            yield "failure", f
        if not docs:
            continue
        if "instagram_old" in kinds:  # one file holding many threads
            for i, d in enumerate(docs):
                rec = parse_thread_documents([d], limits)
                rec.pop("problems")
                rec.update(key=f"{group[0]['group']}#{i}", kind="classic")
                yield "thread", rec
            continue
        rec = parse_thread_documents(docs, limits)
        rec.update(key=group[0]["group"], kind="e2ee" if kinds and all(k == "e2ee" for k in kinds) else "classic")
        problems = rec.pop("problems")
        if rec["total"] == 0 or problems:
            shown = entry_display_path(group[0], redact)
            if rec["total"] == 0:
                yield "failure", {"path": shown, "error": f"{shown}: thread has no messages (empty 'messages' list)",
                                  "reason": "empty_thread"}
                continue
            for p in problems:
                yield "failure", {"path": shown, "error": f"{shown}: {p}", "reason": "malformed_message"}
        yield "thread", rec
    for section, n in sorted(left_out.items()):
        yield "excluded", {"reason": f"section:{section}", "threads": n}


def merge_thread_records(records: list[dict]) -> dict:
    """Merge records of one conversation (classic/e2ee_cutover + E2EE export): ascending, exact duplicates removed."""
    from collections import Counter

    if len(records) == 1 and not _has_duplicates(records[0]["messages"]):
        return records[0]
    dropped: Counter = Counter()
    repaired: Counter = Counter()
    for r in records:
        dropped.update(r["dropped"])
        repaired.update(r.get("repaired", {}))
    rows = sorted((m for r in records for m in r["messages"]), key=lambda m: m[0])
    seen, kept = set(), []
    for m in rows:
        key = (m[0], m[1], m[2])  # same sender, timestamp and text
        if key in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(key)
        kept.append(m)
    base = dict(records[0])
    base.update(
        messages=kept, dropped=dict(dropped), repaired=dict(repaired), total=sum(r["total"] for r in records),
        participants=list(dict.fromkeys(p for r in records for p in r["participants"])),
        senders=dict(sum((Counter(r["senders"]) for r in records), Counter())),
        all_senders=sorted(set().union(*(r.get("all_senders", []) for r in records))),
        you_lines=dict(sum((Counter(r["you_lines"]) for r in records), Counter())),
        title=next((r["title"] for r in records if r["kind"] == "classic" and r["title"]), base["title"]),
    )
    return base


def _has_duplicates(messages: list[tuple]) -> bool:
    """Whether a thread holds exact (timestamp, sender, text) duplicates."""
    return len({(m[0], m[1], m[2]) for m in messages}) != len(messages)


def infer_owner(thread_people: list[set[str]], you_lines: dict[str, int]) -> tuple[str, str]:
    """The export's owner: the person present in the most threads ("You ..." system lines break ties).

    Returns (owner, evidence sentence without names). Raises UserError listing the top candidates if ambiguous.
    """
    from collections import Counter

    presence = Counter(p for people in thread_people for p in people if p and p != "Facebook user")
    if not presence:
        raise UserError("could not infer the owner: no participant names found; pass --owner \"Full Name\"")
    ranked = sorted(presence, key=lambda p: (-presence[p], -you_lines.get(p, 0), p))
    best = ranked[0]
    n = len(thread_people)
    if len(ranked) > 1:
        second = ranked[1]
        tie = presence[second] == presence[best] and you_lines.get(second, 0) == you_lines.get(best, 0)
        if tie:
            top = ", ".join(f"{p!r} ({presence[p]}/{n} threads)" for p in ranked[:3])
            raise UserError(f"cannot tell who owns this export; top candidates: {top}. Pass --owner \"Full Name\"")
    evidence = (f"present in {presence[best]}/{n} threads (next: {presence[ranked[1]] if len(ranked) > 1 else 0}), "
                f"{you_lines.get(best, 0)} 'You ...' system lines")
    return best, evidence
