"""Messenger's system and pseudo messages (calls, reactions, membership, ...) in English and Vietnamese, and text
repair: Facebook's Latin-1-over-UTF-8 mojibake and NFC normalization."""

from __future__ import annotations

import re
import unicodedata


# A UTF-8 lead byte followed by a continuation byte, both read as Latin-1: mojibake left inside a mixed string.
_MOJIBAKE_PAIR_RE = re.compile("[\u00c2-\u00f4][\u0080-\u00bf]")


# System sentences written into `content`/`text`, English and (assumed localized) Vietnamese. They are only
# the fallback: structural tests (call_duration, users, is_unsent, attachments) run first.
_N = r".{1,80}"  # a display name


_SYSTEM_PATTERNS = {
    "call": [
        rf"(?:you|{_N}) called (?:you|{_N})\.", rf"{_N} missed your (?:video |audio )?call\.",
        rf"you missed an? (?:video |audio )?call from {_N}\.", r"the (?:video |audio )?call ended\.",
        rf"{_N} joined the (?:video |audio )?call\.", rf"{_N} started (?:a|the) (?:video|voice|audio) (?:call|chat)\.",
        r"you called a contact\.", rf"{_N} đã gọi(?: video)? cho {_N}\.", rf"bạn đã bỏ lỡ cuộc gọi(?: video| thoại)? (?:từ|của) {_N}\.?",
        rf"{_N} đã bỏ lỡ cuộc gọi(?: video| thoại)? của bạn\.?", r"cuộc gọi(?: video| thoại)? đã kết thúc\.?",
        rf"{_N} đã tham gia cuộc gọi(?: video| thoại)?\.?", rf"{_N} đã bắt đầu (?:một )?cuộc gọi(?: video| thoại)?\.?",
    ],
    "reaction_pseudo": [
        r"(?:.{1,80} )?reacted .{1,24} to your message\s*", r"liked a message\s*",
        r"đã bày tỏ cảm xúc .{1,24} về tin nhắn của bạn\s*", r"đã thả .{1,24} (?:vào|về|cho) tin nhắn của bạn\s*",
    ],
    "unsent": [rf"(?:you|{_N}) unsent a message\.?", rf"(?:bạn|{_N}) đã thu hồi (?:một )?tin nhắn\.?"],
    "attachment_placeholder": [
        rf"(?:you|{_N}) sent an? (?:attachment|photo|video|gif|sticker|voice message|audio clip|file|link|location)\.",
        rf"(?:bạn|{_N}) đã gửi (?:một )?(?:file đính kèm|tệp đính kèm|ảnh|video|nhãn dán|tin nhắn thoại|liên kết|vị trí|gif)\.",
        rf"{_N} shared a (?:story|post|reel)\.",
    ],
    "membership_event": [
        rf"{_N} added {_N} to the group\.", rf"{_N} (?:left|joined) the group\.", rf"{_N} named the group.{{0,200}}\.",
        rf"{_N} removed the group name\.", rf"{_N} created the group\.", rf"{_N} removed {_N} from the group\.",
        rf"{_N} changed the group photo\.", rf"{_N} (?:is|are) now an? admin\.", rf"{_N} set (?:the|your|his|her|their|a) nickname.*",
        rf"{_N} set the nickname for.*", rf"{_N} changed the (?:chat )?theme.*", rf"{_N} (?:set|changed) the (?:quick reaction|emoji).*",
        rf"{_N} pinned a message\.?", rf"{_N} đã thêm {_N} vào nhóm\.", rf"{_N} đã rời (?:khỏi )?nhóm\.", rf"{_N} đã tham gia nhóm\.",
        rf"{_N} đã đặt tên nhóm là.{{0,200}}\.", rf"{_N} đã đổi tên nhóm thành.{{0,200}}\.", rf"{_N} đã tạo nhóm\.?",
        rf"{_N} đã xóa {_N} khỏi nhóm\.", rf"{_N} đã (?:đổi|thay đổi) ảnh (?:đại diện )?(?:của )?nhóm\.", rf"{_N} đã đặt biệt danh.*",
        rf"{_N} đã (?:đổi|thay đổi) chủ đề.*", rf"{_N} (?:hiện )?là quản trị viên\.?", rf"{_N} đã ghim một tin nhắn\.?",
    ],
    "system_other": [
        r"you are now connected on messenger\.?", rf"{_N}'s poll has multiple updates\.", r"this poll is no longer available\.",
        rf"{_N} (?:created a poll|voted for|changed (?:his|her|their) vote).*", rf"{_N} waved at you!?", rf"you waved at {_N}!?",
        r"(?:các bạn|bạn) (?:hiện )?đã được kết nối trên messenger\.?", rf"{_N} đã vẫy tay chào bạn!?",
    ],
}


def _system_regex() -> re.Pattern:
    """One case-insensitive full-match regex over every system sentence; the matching group names the reason."""
    parts = [f"(?P<{reason}>{'|'.join(f'(?:{p})' for p in pats)})" for reason, pats in _SYSTEM_PATTERNS.items()]
    return re.compile("|".join(parts), re.IGNORECASE | re.DOTALL)


_SYSTEM_RE: re.Pattern | None = None


# Every system sentence above contains one of these words: one cheap search spares most real messages the
# full regex (which backtracks over its name wildcards).
# Plain substring tests on the lowercased text (C speed); an IGNORECASE alternation regex is ~20x slower here.
_SYSTEM_HINTS = (
    "call", "video chat", "audio chat", "voice chat", "react", "liked a", "unsent", "sent a", "shared a", "group",
    "admin", "nickname", "theme", "emoji", "pinned", "connected on", "poll", "vote", "waved", "gọi", "cảm xúc",
    "tin nhắn của bạn", "thu hồi", "đã gửi", "nhóm", "biệt danh", "chủ đề", "quản trị", "ghim", "kết nối", "vẫy",
)


_SYSTEM_HINTS_EN = tuple(h for h in _SYSTEM_HINTS if h.isascii() and h != "ghim")


# How every system sentence of _SYSTEM_PATTERNS begins when it does not begin with a person's name.
_SYSTEM_STARTERS = tuple(
    v for s in ("you ", "the ", "this ", "reacted ", "liked a", "user ", "a contact", "someone", "facebook user",
                "bạn ", "đã ", "cuộc gọi", "các bạn") for v in (s, s[0].upper() + s[1:])
)


def classify_system_text(text: str) -> str | None:
    """Drop reason of a system/pseudo sentence (EN or VI), or None for a real message."""
    global _SYSTEM_RE
    if len(text) > 400:
        return None
    low = text.lower()
    # Every Vietnamese system sentence has a non-ASCII letter, so ASCII text only needs the English hints.
    for hint in _SYSTEM_HINTS_EN if text.isascii() else _SYSTEM_HINTS:
        if hint in low:
            break
    else:
        return None
    if _SYSTEM_RE is None:
        _SYSTEM_RE = _system_regex()
    m = _SYSTEM_RE.fullmatch(text.strip())
    return m.lastgroup if m else None


# UTF-16 surrogate code points: JSON can spell them (`"\ud800"`) but they are not text, and tokenizers reject them.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    """Whether a string holds lone surrogate code points (invalid Unicode)."""
    return _SURROGATE_RE.search(text) is not None


def remove_surrogates(text: str) -> str:
    """The string without surrogate code points, so it encodes as UTF-8."""
    return _SURROGATE_RE.sub("", text)


def fix_mojibake(text: str) -> str:
    """Undo Facebook's Latin-1-over-UTF-8 encoding of one string (untouched if it is not mojibake), then NFC.
    Lone surrogates are removed first: the result is always valid Unicode."""
    if text.isascii():
        return text
    if has_surrogates(text):
        text = remove_surrogates(text)
    try:
        text = text.encode("latin-1").decode("utf-8")
    except UnicodeEncodeError:
        # Code points above U+00FF: native text, or a mixed string with some mojibake left in it (rare).
        if _MOJIBAKE_PAIR_RE.search(text):
            import ftfy

            text = ftfy.fix_text(text, normalization="NFC")
    except UnicodeDecodeError:
        pass
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def normalize_text(text: str) -> str:
    """NFC only (for native UTF-8 sources such as the E2EE export), lone surrogates removed."""
    if text.isascii():
        return text
    if has_surrogates(text):
        text = remove_surrogates(text)
    if unicodedata.is_normalized("NFC", text):
        return text
    return unicodedata.normalize("NFC", text)
