"""Re-preparing cumulative exports (continuous learning): overlapping exports count each message once, the same key
keeps every surrogate, and the report says how many messages are new since the previous prepared dataset."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]
BASE_MS = 1_700_000_000_000
PEOPLE = ["Ana Lima", "Ben Ode"]


@pytest.fixture(scope="module")
def prep():
    return sc.load_script(ROOT / "01_prepare.py")


def _message(i: int) -> dict:
    sender = PEOPLE[i % 2]
    text = f"day {i}: call me on 0912 345 {600 + i:03d} ok" if i % 3 == 0 else f"message {i} about Ana's trip"
    return {"sender_name": sender, "timestamp_ms": BASE_MS + i * 3_600_000, "content": text}


def _export_zip(path: Path, messages: list[dict], e2ee_tail: int = 0) -> Path:
    """A classic export zip of one thread (newest first, as Facebook writes it), plus an E2EE file repeating the last
    `e2ee_tail` messages (the same messages as the classic part of a newer download)."""
    with zipfile.ZipFile(path, "w") as z:
        thread = {"participants": [{"name": p} for p in PEOPLE], "title": "Ana Lima", "thread_type": "Regular",
                  "messages": sorted(messages, key=lambda m: -m["timestamp_ms"])}
        z.writestr("your_facebook_activity/messages/inbox/analima_1/message_1.json", json.dumps(thread))
        if e2ee_tail:
            tail = [{"senderName": m["sender_name"], "timestamp": m["timestamp_ms"], "text": m["content"], "type": "text",
                     "media": [], "reactions": [], "isUnsent": False} for m in messages[-e2ee_tail:]]
            z.writestr("Ana Lima_3.json", json.dumps({"participants": PEOPLE, "threadName": "Ana Lima_3", "messages": tail}))
    return path


def _prepare(prep, paths: list[Path], out: Path, tok: Path) -> dict:
    args = prep.PrepareArguments(export_path=[str(p) for p in paths], output_dir=str(out), model_name_or_path=str(tok),
                                 owner="Ben Ode", ner_model="")
    return prep.main(args)


def test_a_newer_export_with_the_old_one_counts_each_message_once_keeps_surrogates_and_reports_what_is_new(
        prep, tmp_path, tiny_model_dir):
    from datasets import load_from_disk

    old = _export_zip(tmp_path / "old.zip", [_message(i) for i in range(30)])
    new = _export_zip(tmp_path / "new.zip", [_message(i) for i in range(42)], e2ee_tail=5)
    out = tmp_path / "prepared"

    first = _prepare(prep, [old], out, tiny_model_dir)
    assert first["since_previous"] is None and first["messages_kept"] == 30
    before = load_from_disk(str(out / "messages")).to_list()

    second = _prepare(prep, [old, new], out, tiny_model_dir)
    after = load_from_disk(str(out / "messages")).to_list()
    # 30 messages in both zips and 5 repeated by the E2EE file: each kept once, the copies counted.
    assert second["messages_kept"] == 42 == len(after) and second["duplicates_removed"] == 30 + 5
    assert second["since_previous"] == {"previous_messages": 30, "new_messages": 12}
    # Same key: every earlier message comes out byte-identical (sender and PII surrogates, chat id, fingerprint).
    keep = ("chat_id", "sender", "text", "timestamp_ms", "fingerprint")
    assert [{k: r[k] for k in keep} for r in after[:30]] == [{k: r[k] for k in keep} for r in before]
    assert not any("0912 345" in r["text"] or "Ana" in r["text"] for r in after)
    # A re-run on the same input finds nothing new; the report holds counts, never fingerprints or text.
    third = _prepare(prep, [old, new], out, tiny_model_dir)
    assert third["since_previous"] == {"previous_messages": 42, "new_messages": 0}
    report = (out / "ingest_report.json").read_text()
    assert after[0]["fingerprint"] not in report and "message 1 " not in report
