"""Where a file of an export belongs (its section and source) and how its path is shown: every component that can
hold a person's name replaced by a keyed label."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from pathlib import Path


EXPORT_SECTIONS = ("inbox", "archived_threads", "filtered_threads", "message_requests", "e2ee_cutover")


# Message requests and filtered (spam) threads hold strangers' words: read only when asked (01's --include_sections).
DEFAULT_SECTIONS = ("inbox", "archived_threads", "e2ee_cutover")


# Path components of an export that never hold a name; every other folder or file name is redacted when shown.
_STRUCTURAL_PARTS = frozenset(EXPORT_SECTIONS) | {"messages", "your_facebook_activity", "your_activity_across_facebook",
                                                  "your_instagram_activity", "messages.json"}


_THREAD_FILE_RE = re.compile(r"^message(?:_(\d+))?\.json$")


def _source_of(parts: tuple[str, ...]) -> str:
    """Source of a file, as messages/ records it: instagram, or its section (inbox, archived_threads, ...)."""
    lowered = [p.lower() for p in parts]
    if any("instagram" in p for p in lowered):
        return "instagram"
    for p in reversed(lowered):
        if p in EXPORT_SECTIONS:
            return p
    return "inbox"


def _section_of(parts: tuple[str, ...]) -> str:
    """Export section of a file (inbox, message_requests, ...); files outside a section folder (the E2EE export,
    old Instagram's messages.json) count as inbox."""
    for p in reversed(parts[:-1]):
        if p.lower() in EXPORT_SECTIONS:
            return p.lower()
    return "inbox"


@functools.cache
def _process_key() -> bytes:
    """A random key for path labels when no key is given: stable within this process only."""
    return secrets.token_bytes(32)


def redact_path(path: str, kind: str = "file", key: bytes | None = None) -> str:
    """A stable label for a path component that may hold a person's name (export folder, zip, thread folder, E2EE
    file): a keyed hash, so nobody without the key can check a guessed name against it (`key` None: this process's)."""
    mac = hashlib.blake2b(str(path).encode("utf-8", "surrogatepass"), key=key or _process_key(), digest_size=5,
                          person=b"simme-path")
    return f"{kind}_{mac.hexdigest()}"


def _label_key(redact: bool | bytes) -> bytes | None:
    return redact if isinstance(redact, bytes) else None


def shown_export_path(path: str | Path, redact: bool | bytes) -> str:
    """An --export_path (folder, zip or single file) as errors, logs and run_config.json show it."""
    path = Path(path)
    if not redact:
        return str(path)
    if path.suffix.lower() == ".zip":
        return f"<{redact_path(str(path), 'zip', _label_key(redact))}>"
    if path.is_file():
        return entry_display_path({"zip": None, "origin": str(path.parent), "parts": (path.name,)}, redact)
    return f"<{redact_path(str(path), 'export', _label_key(redact))}>"


def entry_display_path(entry: dict, redact: bool | bytes) -> str:
    """Path shown in errors and reports. When redacting, every component that can hold a name (the export folder or
    zip, e.g. facebook-<name>-<date>.zip, thread folders, E2EE `<Name>_<n>.json`, any folder above the export's own)
    is replaced by a keyed label; only the export's structural names (messages, inbox, message_N.json) are kept."""
    parts = list(entry["parts"])
    if not redact:
        inner = "/".join(parts)
        return f"{entry['zip']}!{inner}" if entry["zip"] else str(Path(entry["origin"]) / inner)
    key = _label_key(redact)
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if part.lower() in _STRUCTURAL_PARTS or (i == last and _THREAD_FILE_RE.match(part)):
            continue
        if i == last:
            parts[i] = redact_path(part, "thread", key) + (".json" if part.lower().endswith(".json") else "")
        elif i == last - 1 and _THREAD_FILE_RE.match(parts[last]):
            parts[i] = redact_path(part, "thread", key)
        else:
            parts[i] = redact_path(part, "folder", key)
    root = redact_path(entry["zip"] or entry["origin"], "zip" if entry["zip"] else "export", key)
    return f"<{root}>/" + "/".join(parts)
