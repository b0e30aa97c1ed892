"""Finding and reading the files of a Messenger / Instagram export (folders and zips) without loading them all."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .export_paths import (  # noqa: F401 (EXPORT_SECTIONS, redact_path: the package imports them from here)
    EXPORT_SECTIONS, _THREAD_FILE_RE, _section_of, _source_of, entry_display_path, redact_path, shown_export_path,
)


_HTML_THREAD_RE = re.compile(r"^message(?:_\d+)?\.html?$", re.IGNORECASE)


@dataclass(frozen=True)
class IngestLimits:
    """Caps on what ingest reads from an untrusted export (01's flags of the same names). A file over a cap is
    skipped with a message naming the flag; a message over `max_message_chars` is truncated and counted."""

    max_file_bytes: int = 256 * 2**20
    max_zip_bytes: int = 4 * 2**30
    max_zip_ratio: float = 100.0
    max_message_chars: int = 20_000
    max_json_depth: int = 64


# Members this small are never treated as zip bombs: a short, repetitive JSON file can compress very well.
_RATIO_MIN_BYTES = 2**20


def _failure(path: str, error: str, reason: str) -> dict:
    """One files_failed entry: the (possibly redacted) path, a sentence for the user and a named reason."""
    return {"path": path, "error": error, "reason": reason}


def _mb(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


# A classic file needs the mojibake repair only if it holds an escaped UTF-8 lead byte (\u00c2..\u00f4) or
# raw Latin-1-range characters: scanning the bytes is ~100x cheaper than decoding every string.
_MOJIBAKE_BYTES_RE = re.compile(rb"\\u00[cdefCDEF][0-9a-fA-F]|\xc3[\x80-\xbf]|\xc2[\x80-\xbf]")


def discover_export(paths: list[str | Path], limits: IngestLimits | None = None,
                    redact: bool | bytes = False) -> tuple[list[dict], list[dict]]:
    """List every JSON file under the given folders and .zip files without reading them.

    Args:
        paths: folders and/or .zip files (several zips of one download, or a folder holding them).
        limits: caps checked here from sizes alone (file bytes, zip total and compression ratio).
        redact: whether failure messages hide name-bearing path components: False shows them, True labels them
            with a key of this process, bytes with that key (the same labels on every run; see redact_path).
    Returns:
        (entries, failures): entries are dicts {origin, zip, member, parts, group, part, source, section, size}; classic
        `message_N.json` files of one thread folder share `group` (across sections and zips); failures are
        {path, error, reason} for paths that do not exist, zips that cannot be opened and files over a limit.
        Symlinks are never followed out of an export folder, and zip entries that climb out of the zip (`../`,
        absolute paths) are skipped.
    """
    import zipfile

    limits = limits or IngestLimits()
    entries: list[dict] = []
    failures: list[dict] = []
    html_files: Counter = Counter()

    def entry_of(origin: str, zip_path: str | None, member: str, size: int) -> dict | None:
        parts = tuple(p for p in member.replace("\\", "/").split("/") if p)
        if not parts or not parts[-1].lower().endswith(".json") or parts[-1].startswith("._"):
            if parts and _HTML_THREAD_RE.match(parts[-1]):
                html_files[zip_path or origin] += 1
            return None
        m = _THREAD_FILE_RE.match(parts[-1])
        group = f"classic:{parts[-2]}" if m and len(parts) >= 2 else f"file:{origin}:{member}"
        return {"origin": origin, "zip": zip_path, "member": member, "parts": parts, "group": group,
                "part": int(m.group(1) or 0) if m else 0, "source": _source_of(parts), "section": _section_of(parts),
                "size": size}

    def add(entry: dict | None) -> None:
        if entry is None:
            return
        if entry["size"] > limits.max_file_bytes:
            shown = entry_display_path(entry, redact)
            failures.append(_failure(shown, f"{shown}: file is {_mb(entry['size'])}, over the {_mb(limits.max_file_bytes)} "
                                            "limit (--max_file_bytes); skipped", "file_too_large"))
            return
        entries.append(entry)

    def add_zip(zpath: Path) -> None:
        shown_zip = shown_export_path(zpath, redact)
        try:
            with zipfile.ZipFile(zpath) as zf:
                total = 0
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    name = info.filename.replace("\\", "/")
                    if name.startswith("/") or ".." in name.split("/") or re.match(r"^[A-Za-z]:", name):
                        failures.append(_failure(shown_zip, f"{shown_zip}: entry with an unsafe path (absolute or '..') "
                                                            "skipped; the zip was not made by Facebook", "zip_unsafe_path"))
                        continue
                    entry = entry_of(str(zpath), str(zpath), info.filename, info.file_size)
                    if entry is None:
                        continue
                    if info.file_size > _RATIO_MIN_BYTES and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1):
                        shown = entry_display_path(entry, redact)
                        failures.append(_failure(shown, f"{shown}: expands {info.file_size / max(info.compress_size, 1):,.0f}x "
                                                        f"(over the --max_zip_ratio {limits.max_zip_ratio:g}); skipped as a "
                                                        "possible zip bomb", "zip_ratio"))
                        continue
                    total += info.file_size
                    if total > limits.max_zip_bytes:
                        shown = entry_display_path(entry, redact)
                        failures.append(_failure(shown, f"{shown}: the zip's JSON files exceed {_mb(limits.max_zip_bytes)} "
                                                        "uncompressed (--max_zip_bytes); this and later files skipped",
                                                 "zip_too_large"))
                        break
                    add(entry)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
            failures.append(_failure(shown_zip, f"{shown_zip}: cannot open zip ({type(err).__name__}); re-download it or "
                                                "extract what you can", "bad_zip"))

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            shown = shown_export_path(path, redact)
            failures.append(_failure(shown, f"{shown}: path does not exist", "missing_path"))
        elif path.is_file() and path.suffix.lower() == ".zip":
            add_zip(path)
        elif path.is_file():
            add(entry_of(str(path.parent), None, path.name, path.stat().st_size))
        else:
            root = path.resolve()
            # followlinks=False: a symlinked folder is listed but never entered.
            for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
                dirnames.sort()
                rel = os.path.relpath(dirpath, path)
                for name in sorted(filenames):
                    low = name.lower()
                    if not (low.endswith(".zip") or low.endswith(".json") or _HTML_THREAD_RE.match(name)):
                        continue
                    full = Path(dirpath) / name
                    member = name if rel == "." else f"{rel}/{name}"
                    if full.is_symlink():
                        target = full.resolve()
                        if not target.is_relative_to(root) or not target.is_file():
                            entry = entry_of(str(path), None, member, 0) or {"zip": None, "origin": str(path), "parts": (name,)}
                            shown = entry_display_path(entry, redact)
                            failures.append(_failure(shown, f"{shown}: symlink pointing outside the export; not followed",
                                                     "symlink_outside_export"))
                            continue
                    try:
                        if not full.is_file():  # a FIFO or device would block or never end
                            continue
                        size = full.stat().st_size
                    except OSError:
                        continue
                    if low.endswith(".zip"):
                        add_zip(full)
                    else:
                        add(entry_of(str(path), None, member, size))
    for origin, n in html_files.items():
        shown = shown_export_path(origin, redact)
        failures.append(_failure(shown, f"{shown}: {n} HTML message file(s) skipped (an HTML export): SimMe reads only the "
                                        "JSON format; download your information again choosing JSON",
                                 "html_export"))
    return entries, failures


def json_too_deep(raw: bytes, max_depth: int) -> bool:
    """Whether a JSON text nests arrays/objects deeper than max_depth, without recursion and at C speed.

    Escaped backslashes and quotes are dropped, everything but brackets and quotes is deleted, strings are removed,
    then each round removes the innermost `[]`/`{}` pairs: nesting deeper than max_depth needs more rounds.
    Unbalanced text (damaged JSON) stops changing and is left to json.loads to report.
    """
    if len(raw) <= 2 * max_depth:
        return False
    skeleton = _ESCAPE_RE.sub(b"", raw).translate(None, _NON_STRUCTURAL)
    # Nearly every string holds no bracket and is left as `""`: a plain replace removes those (and keeps the quote
    # parity of the rest), so the regex only sees the rare strings with brackets in them.
    skeleton = skeleton.replace(b'""', b"")
    if b'"' in skeleton:
        skeleton = _JSON_STRING_RE.sub(b"", skeleton)
    for _ in range(max_depth):
        shorter = _EMPTY_PAIR_RE.sub(b"", skeleton)  # one level per round: a regex pass does not chain
        if len(shorter) == len(skeleton):
            return False
        skeleton = shorter
    return _EMPTY_PAIR_RE.search(skeleton) is not None


# A backslash escape that can hide a quote or a backslash; a regex pass is ~10x faster than bytes.replace here.
_ESCAPE_RE = re.compile(rb'\\[\\"]')


_NON_STRUCTURAL = bytes(b for b in range(256) if b not in b'[]{}"')


_JSON_STRING_RE = re.compile(rb'"[^"]*"')


_EMPTY_PAIR_RE = re.compile(rb"\[\]|\{\}")


def read_entry_bytes(entry: dict, max_bytes: int | None = None) -> bytes:
    """Raw bytes of one discovered file (from disk or from inside its zip), streamed with a cap.

    Raises ValueError when the file holds more than `max_bytes` (sizes on disk and in zip headers can change or lie).
    """
    cap = IngestLimits().max_file_bytes if max_bytes is None else max_bytes
    # read(n) allocates n bytes up front: ask for the known size, and read on (up to the cap) only if it grew.
    expected = min(cap, entry.get("size", cap)) + 1
    if entry["zip"] is None:
        with open(os.path.join(entry["origin"], entry["member"]), "rb") as f:
            raw = f.read(expected)
            if len(raw) == expected and expected <= cap:
                raw += f.read(cap + 1 - expected)
    else:
        import zipfile

        with zipfile.ZipFile(entry["zip"]) as zf, zf.open(entry["member"]) as f:
            raw = f.read(expected)
            if len(raw) == expected and expected <= cap:
                raw += f.read(cap + 1 - expected)
    if len(raw) > cap:
        raise ValueError(f"file is over the {_mb(cap)} limit (--max_file_bytes); skipped")
    return raw


def detect_file_kind(doc: Any) -> str | None:
    """Shape of a parsed JSON file: "classic" (Messenger/Instagram DYI), "e2ee", "instagram_old" or None (not a thread)."""
    if isinstance(doc, list):
        return "instagram_old" if doc and all(isinstance(t, dict) and "conversation" in t for t in doc) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list) or "participants" not in doc:
        return None
    parts = doc["participants"] if isinstance(doc["participants"], list) else []
    first = doc["messages"][0] if doc["messages"] else {}
    if "threadName" in doc or (parts and all(isinstance(p, str) for p in parts)) or (isinstance(first, dict) and "senderName" in first):
        return "e2ee"
    return "classic"


# Header fields of a thread file and the type each must have; a field of another type is dropped and reported.
_HEADER_TYPES = {"participants": list, "title": str, "threadName": str, "thread_type": str}


def sanitize_header(doc: dict) -> list[str]:
    """Drop header fields of the wrong type from a thread document in place; return the names of those dropped."""
    bad = [k for k, t in _HEADER_TYPES.items() if k in doc and doc[k] is not None and not isinstance(doc[k], t)]
    for k in bad:
        del doc[k]
    if "participants" not in doc:
        doc["participants"] = []
    return bad


class DocumentError(ValueError):
    """A file that cannot be used as JSON; `reason` names why (empty_file, not_utf8, invalid_json, json_too_deep)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def load_json_document(raw: bytes, path: str, max_depth: int = IngestLimits.max_json_depth) -> Any:
    """Parse JSON bytes (a UTF-8 BOM is tolerated); raise DocumentError naming the file, the problem and its reason."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise DocumentError(f"{path}: file is empty", "empty_file")
    if json_too_deep(raw, max_depth):
        raise DocumentError(f"{path}: JSON nested deeper than {max_depth} levels (--max_json_depth); skipped", "json_too_deep")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise DocumentError(f"{path}: not UTF-8 text; the file is damaged or not from Facebook, re-download the export",
                            "not_utf8") from None
    except RecursionError:
        raise DocumentError(f"{path}: JSON nested too deeply; skipped", "json_too_deep") from None
    except ValueError as err:
        raise DocumentError(f"{path}: invalid JSON ({err}); the file is damaged, re-download the export", "invalid_json") from None


def instagram_old_to_documents(doc: list) -> list[dict]:
    """Convert the 2018-2019 Instagram `messages.json` (list of {participants, conversation}) to classic documents."""
    from datetime import datetime

    out = []
    for thread in doc:
        msgs = []
        conversation = thread.get("conversation")
        for m in conversation if isinstance(conversation, list) else []:
            if not isinstance(m, dict):
                msgs.append(m)
                continue
            try:
                ts = int(datetime.fromisoformat(str(m.get("created_at")).replace("Z", "+00:00")).timestamp() * 1000)
            except (ValueError, OverflowError):
                ts = None
            row = {"sender_name": m.get("sender"), "timestamp_ms": ts}
            if isinstance(m.get("text"), str):
                row["content"] = m["text"]
            if m.get("action"):
                row["users"] = []  # an action row ("… liked a message") is a system event
            if m.get("media") or m.get("media_share_url") or m.get("story_share"):
                row["photos"] = [{}]
            msgs.append(row)
        msgs.sort(key=lambda r: r.get("timestamp_ms") or 0 if isinstance(r, dict) else 0, reverse=True)
        people = thread.get("participants")
        out.append({"participants": [{"name": p} for p in people if isinstance(p, str)] if isinstance(people, list) else [],
                    "messages": msgs})
    return out


def read_thread_group(entries: list[dict], redact: bool | bytes,
                      limits: IngestLimits | None = None) -> tuple[list[tuple[Any, str, str, bool]], list[dict], list[str]]:
    """Load and shape-check the files of one thread group: (docs for parse_thread_documents, failures, e2ee_flags).

    A file that cannot be read or parsed is a failure with a named reason; a header field of the wrong type
    (e.g. `"participants": 5`) is dropped and reported while the file's messages are still read.
    """
    import zipfile
    import zlib

    limits = limits or IngestLimits()
    docs, failures, kinds = [], [], []
    # Oldest part first (message_3, message_2, message_1); the final stable sort by timestamp decides anyway.
    for entry in sorted(entries, key=lambda e: -e["part"]):
        try:
            raw = read_entry_bytes(entry, limits.max_file_bytes)
            doc = load_json_document(raw, "", limits.max_json_depth)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as err:
            shown = entry_display_path(entry, redact)  # built only on failure: it is not free
            if isinstance(err, DocumentError):
                msg, reason = str(err).lstrip(": "), err.reason
            elif isinstance(err, ValueError) and "--max_file_bytes" in str(err):
                msg, reason = str(err), "file_too_large"
            else:
                msg, reason = f"cannot read ({type(err).__name__}); the file or zip is damaged", "unreadable"
            failures.append(_failure(shown, f"{shown}: {msg}", reason))
            continue
        kind = detect_file_kind(doc)
        if kind is None:
            if _THREAD_FILE_RE.match(entry["parts"][-1]):
                shown = entry_display_path(entry, redact)
                field_name = "messages" if not isinstance(doc, dict) or "messages" not in doc else "participants"
                failures.append(_failure(shown, f"{shown}: not a Messenger thread (missing field '{field_name}')",
                                         "not_a_thread"))
            continue  # other JSON (settings, autofill, ...) is not a thread: ignored on purpose
        if kind == "instagram_old":
            for sub in instagram_old_to_documents(doc):
                docs.append((sub, "classic", "instagram", False))
            kinds.append(kind)
            continue
        for name in sanitize_header(doc):
            shown = entry_display_path(entry, redact)
            failures.append(_failure(shown, f"{shown}: field '{name}' has the wrong type; ignored, messages still read",
                                     "bad_field"))
        needs_fix = kind == "classic" and bool(_MOJIBAKE_BYTES_RE.search(raw))
        docs.append((doc, kind, entry["source"], needs_fix))
        kinds.append(kind)
    return docs, failures, kinds


def iter_thread_groups(entries: list[dict]) -> list[list[dict]]:
    """Group discovered files into threads: all parts of a classic thread folder together, other files alone."""
    groups: dict[str, list[dict]] = {}
    for e in entries:
        groups.setdefault(e["group"], []).append(e)
    return [groups[k] for k in sorted(groups)]
