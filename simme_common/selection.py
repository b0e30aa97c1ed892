"""Stage 01's selection: which export sections are read, which chats and which messages are kept (--include_sections,
--include_chats, --exclude_chats, --since, --until, --min_messages)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .export_paths import EXPORT_SECTIONS
from .runtime import UserError


_CHAT_ID_RE = re.compile(r"^c[0-9a-f]{12}$")


def is_chat_id(item: str) -> bool:
    """Whether a --include_chats / --exclude_chats item is a chat id (as in messages/) rather than a title pattern."""
    return bool(_CHAT_ID_RE.match(item))


def section_list(values: list[str]) -> tuple[str, ...]:
    """--include_sections as given (space- or comma-separated), checked against the export's sections."""
    sections = tuple(dict.fromkeys(v.strip().lower() for item in values for v in str(item).split(",") if v.strip()))
    unknown = [s for s in sections if s not in EXPORT_SECTIONS]
    if unknown or not sections:
        raise UserError(f"--include_sections takes some of {', '.join(EXPORT_SECTIONS)}; got {', '.join(unknown) or 'none'}")
    return sections


def _date_ms(value, flag: str, end: bool) -> int | None:
    """--since / --until as epoch ms (UTC unless an offset is given); a date alone covers its whole day."""
    from datetime import datetime, timedelta, timezone

    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()  # a YAML date arrives as a date object
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--{flag} {text!r} is not an ISO date (YYYY-MM-DD or YYYY-MM-DDTHH:MM[+07:00])") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if end:  # --until is inclusive: the whole day, or the given minute
        moment += timedelta(days=1) if len(text) == 10 else timedelta(milliseconds=1)
    return int(moment.timestamp() * 1000)


def _chat_patterns(items: list[str], flag: str) -> tuple[frozenset[str], tuple[re.Pattern, ...]]:
    """Chat ids (c + 12 hex digits, as in messages/) and regular expressions (case-insensitive) of a chat flag."""
    ids, patterns = set(), []
    for i, item in enumerate(items):
        if is_chat_id(item):
            ids.add(item)
            continue
        try:
            patterns.append(re.compile(item, re.IGNORECASE))
        except re.error as err:  # the pattern can hold a name: not repeated
            raise UserError(f"--{flag} item {i + 1} is not a valid regular expression ({err.msg})") from None
    return frozenset(ids), tuple(patterns)


@dataclass(frozen=True)
class ChatSelection:
    """Which chats and messages 01 keeps (its flags of the same names). Title patterns are matched in memory and
    never written: the report counts what was left out, by reason."""

    include: tuple[frozenset[str], tuple[re.Pattern, ...]] = (frozenset(), ())
    exclude: tuple[frozenset[str], tuple[re.Pattern, ...]] = (frozenset(), ())
    since_ms: int | None = None
    until_ms: int | None = None
    min_messages: int = 1

    @classmethod
    def from_flags(cls, include_chats: list[str], exclude_chats: list[str], since, until,
                   min_messages: int) -> ChatSelection:
        """Check and compile 01's selection flags (UserError naming the flag)."""
        sel = cls(_chat_patterns(include_chats, "include_chats"), _chat_patterns(exclude_chats, "exclude_chats"),
                  _date_ms(since, "since", end=False), _date_ms(until, "until", end=True), max(1, min_messages))
        if sel.since_ms is not None and sel.until_ms is not None and sel.since_ms >= sel.until_ms:
            raise UserError(f"--since {since} is not before --until {until}")
        return sel

    @staticmethod
    def _matches(rule: tuple[frozenset[str], tuple[re.Pattern, ...]], chat_id: str, title: str) -> bool:
        return chat_id in rule[0] or any(p.search(title) for p in rule[1])

    def apply(self, rec: dict, owner: str, chat_id: str) -> str | None:
        """Apply the selection to one merged thread: messages outside --since/--until are dropped in place (counted
        with its drops); returns why the whole chat is left out (include_chats, exclude_chats, min_messages) or None.
        A chat's title is its name, or for an untitled chat its other people's names."""
        if self.include[0] or self.include[1] or self.exclude[0] or self.exclude[1]:
            title = rec.get("title") or ", ".join(sorted({*rec["participants"], *rec.get("all_senders", ())} - {owner}))
            if (self.include[0] or self.include[1]) and not self._matches(self.include, chat_id, title):
                return "include_chats"
            if self._matches(self.exclude, chat_id, title):
                return "exclude_chats"
        if self.since_ms is not None or self.until_ms is not None:
            lo = self.since_ms if self.since_ms is not None else -1
            hi = self.until_ms if self.until_ms is not None else 1 << 62
            kept = [m for m in rec["messages"] if lo <= m[0] < hi]
            if len(kept) != len(rec["messages"]):
                early = sum(1 for m in rec["messages"] if m[0] < lo)
                dropped = Counter(rec["dropped"])
                dropped.update(before_since=early, after_until=len(rec["messages"]) - len(kept) - early)
                rec.update(messages=kept, dropped=dict(dropped))
        if 0 < len(rec["messages"]) < self.min_messages:
            return "min_messages"
        return None
