"""Finding and reading the files of a Messenger / Instagram export (folders and zips) without loading them all,
and display paths with every name-bearing component redacted."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


EXPORT_SECTIONS = ("inbox", "archived_threads", "filtered_threads", "message_requests", "e2ee_cutover")


_THREAD_FILE_RE = re.compile(r"^message(?:_(\d+))?\.json$")


# A classic file needs the mojibake repair only if it holds an escaped UTF-8 lead byte (\u00c2..\u00f4) or
# raw Latin-1-range characters: scanning the bytes is ~100x cheaper than decoding every string.
_MOJIBAKE_BYTES_RE = re.compile(rb"\\u00[cdefCDEF][0-9a-fA-F]|\xc3[\x80-\xbf]|\xc2[\x80-\xbf]")


def _source_of(parts: tuple[str, ...]) -> str:
    """Section of a file from its path components (inbox, archived_threads, ..., instagram)."""
    lowered = [p.lower() for p in parts]
    if any("instagram" in p for p in lowered):
        return "instagram"
    for p in reversed(lowered):
        if p in EXPORT_SECTIONS:
            return p
    return "inbox"


def discover_export(paths: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """List every JSON file under the given folders and .zip files without reading them.

    Args:
        paths: folders and/or .zip files (several zips of one download, or a folder holding them).
    Returns:
        (entries, failures): entries are dicts {origin, zip, member, parts, group, part, source}; classic
        `message_N.json` files of one thread folder share `group` (across sections and zips); failures are
        {path, error} for paths that do not exist or zips that cannot be opened.
    """
    import zipfile

    entries: list[dict] = []
    failures: list[dict] = []

    def add(origin: str, zip_path: str | None, member: str) -> None:
        parts = tuple(p for p in member.replace("\\", "/").split("/") if p)
        if not parts or not parts[-1].lower().endswith(".json") or parts[-1].startswith("._"):
            return
        m = _THREAD_FILE_RE.match(parts[-1])
        group = f"classic:{parts[-2]}" if m and len(parts) >= 2 else f"file:{origin}:{member}"
        entries.append({"origin": origin, "zip": zip_path, "member": member, "parts": parts, "group": group,
                        "part": int(m.group(1) or 0) if m else 0, "source": _source_of(parts)})

    def add_zip(zpath: Path) -> None:
        try:
            with zipfile.ZipFile(zpath) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        add(str(zpath), str(zpath), info.filename)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            failures.append({"path": str(zpath), "error": f"{zpath}: cannot open zip ({err}); re-download it or extract what you can"})

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            failures.append({"path": str(path), "error": f"{path}: path does not exist"})
        elif path.is_file() and path.suffix.lower() == ".zip":
            add_zip(path)
        elif path.is_file():
            add(str(path.parent), None, path.name)
        else:
            for dirpath, dirnames, filenames in os.walk(path):  # os.walk: exports hold ~100k media files
                dirnames.sort()
                rel = os.path.relpath(dirpath, path)
                for name in sorted(filenames):
                    low = name.lower()
                    if low.endswith(".zip"):
                        add_zip(Path(dirpath) / name)
                    elif low.endswith(".json"):
                        add(str(path), None, name if rel == "." else f"{rel}/{name}")
    return entries, failures


def read_entry_bytes(entry: dict) -> bytes:
    """Raw bytes of one discovered file (from disk or from inside its zip)."""
    if entry["zip"] is None:
        return (Path(entry["origin"]) / entry["member"]).read_bytes()
    import zipfile

    with zipfile.ZipFile(entry["zip"]) as zf:
        return zf.read(entry["member"])


def redact_path(path: str, kind: str = "file") -> str:
    """A stable placeholder for a path component that may hold a person's name (thread folder, zip, E2EE file)."""
    import hashlib

    return f"{kind}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def entry_display_path(entry: dict, redact: bool) -> str:
    """Path shown in errors and reports. When redacting, every component that can hold a name (the export folder or
    zip name, e.g. facebook-<name>-<date>.zip, thread folders, E2EE `<Name>_<n>.json`) is replaced by a hash."""
    parts = list(entry["parts"])
    if not redact:
        inner = "/".join(parts)
        return f"{entry['zip']}!{inner}" if entry["zip"] else str(Path(entry["origin"]) / inner)
    if _THREAD_FILE_RE.match(parts[-1]) and len(parts) >= 2:
        parts[-2] = redact_path(parts[-2], "thread")
    elif parts:
        parts[-1] = redact_path(parts[-1], "thread") + ".json"
    root = redact_path(entry["zip"] or entry["origin"], "zip" if entry["zip"] else "export")
    return f"<{root}>/" + "/".join(parts)


def detect_file_kind(doc: Any) -> str | None:
    """Shape of a parsed JSON file: "classic" (Messenger/Instagram DYI), "e2ee", "instagram_old" or None (not a thread)."""
    if isinstance(doc, list):
        return "instagram_old" if doc and all(isinstance(t, dict) and "conversation" in t for t in doc) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list) or "participants" not in doc:
        return None
    parts = doc["participants"]
    first = doc["messages"][0] if doc["messages"] else {}
    if "threadName" in doc or (parts and all(isinstance(p, str) for p in parts)) or (isinstance(first, dict) and "senderName" in first):
        return "e2ee"
    return "classic"


def load_json_document(raw: bytes, path: str) -> Any:
    """Parse JSON bytes (a UTF-8 BOM is tolerated); raise ValueError naming the file and the problem."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        raise ValueError(f"{path}: file is empty")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: invalid JSON ({err}); the file is damaged, re-download the export") from None


def instagram_old_to_documents(doc: list) -> list[dict]:
    """Convert the 2018-2019 Instagram `messages.json` (list of {participants, conversation}) to classic documents."""
    from datetime import datetime

    out = []
    for thread in doc:
        msgs = []
        for m in thread.get("conversation") or []:
            if not isinstance(m, dict):
                msgs.append(m)
                continue
            try:
                ts = int(datetime.fromisoformat(str(m.get("created_at")).replace("Z", "+00:00")).timestamp() * 1000)
            except ValueError:
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
        out.append({"participants": [{"name": p} for p in thread.get("participants") or []], "messages": msgs})
    return out


def read_thread_group(entries: list[dict], redact: bool) -> tuple[list[tuple[Any, str, str, bool]], list[dict], list[str]]:
    """Load and shape-check the files of one thread group: (docs for parse_thread_documents, failures, e2ee_flags)."""
    import zipfile
    import zlib

    docs, failures, kinds = [], [], []
    # Oldest part first (message_3, message_2, message_1); the final stable sort by timestamp decides anyway.
    for entry in sorted(entries, key=lambda e: -e["part"]):
        try:
            raw = read_entry_bytes(entry)
            doc = load_json_document(raw, "")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            shown = entry_display_path(entry, redact)  # built only on failure: it is not free
            msg = str(err).lstrip(": ") if isinstance(err, ValueError) else f"cannot read ({type(err).__name__}: {err})"
            failures.append({"path": shown, "error": f"{shown}: {msg}"})
            continue
        kind = detect_file_kind(doc)
        if kind is None:
            if _THREAD_FILE_RE.match(entry["parts"][-1]):
                shown = entry_display_path(entry, redact)
                field_name = "messages" if not isinstance(doc, dict) or "messages" not in doc else "participants"
                failures.append({"path": shown, "error": f"{shown}: not a Messenger thread (missing field '{field_name}')"})
            continue  # other JSON (settings, autofill, ...) is not a thread: ignored on purpose
        if kind == "instagram_old":
            for sub in instagram_old_to_documents(doc):
                docs.append((sub, "classic", "instagram", False))
            kinds.append(kind)
            continue
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
