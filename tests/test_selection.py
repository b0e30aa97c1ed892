"""Stage 01's consent and selection flags on the shared fixtures: sections left out by default (message requests,
filtered threads) and opted in, --include_chats / --exclude_chats by chat id and by title pattern, --since / --until,
--min_messages; every exclusion counted by reason in ingest_report.json, no pattern written anywhere.

Run: .venv/bin/python -m pytest -q tests/test_selection.py
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import pytest

import simme_common as sc
from simme_common.selection import ChatSelection, section_list

ROOT = Path(__file__).resolve().parents[1]
SIMPLE = "kenn-io__msgvault/internal/fbmessenger/testdata/json_simple"
ALICE = f"{SIMPLE}/your_activity_across_facebook/messages/inbox/alice_ABC123/message_1.json"


@pytest.fixture(scope="module")
def prep():
    return sc.load_script(ROOT / "01_prepare.py")


def run(prep, tmp_path: Path, paths, tok: Path, **kw) -> tuple[dict, Path]:
    """Run 01_prepare's main in-process; return (ingest report, output dir)."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    args = prep.PrepareArguments(export_path=[str(p) for p in paths], output_dir=str(out), model_name_or_path=str(tok),
                                 max_length=384, **kw)
    report = prep.main(args)
    assert report["messages_total"] == report["messages_kept"] + sum(report["dropped"].values())
    return report, out


def kept_rows(out: Path) -> dict[str, list]:
    from datasets import load_from_disk

    return load_from_disk(str(out / "messages")).to_dict()


def stranger_thread(src: Path, dst: Path, stranger: str, word: str) -> None:
    """Alice's fixture thread, rewritten as one from a stranger whose messages carry a marker word."""
    doc = json.loads(src.read_text())
    doc["participants"] = [{"name": "Test User"}, {"name": stranger}]
    doc["title"] = stranger
    for m in doc["messages"]:
        if m["sender_name"] != "Test User":
            m["sender_name"] = stranger
        if "content" in m:
            m["content"] = f"{word} {m['content']}"
    dst.parent.mkdir(parents=True)
    dst.write_text(json.dumps(doc))


@pytest.fixture
def export_with_strangers(tmp_path, fixtures_dir) -> Path:
    """json_simple (inbox + archived_threads) plus one message request, one filtered thread and, in the requests, a
    damaged file that must never be opened while that section is left out."""
    export = tmp_path / "export"
    shutil.copytree(fixtures_dir / SIMPLE, export)
    base = export / "your_activity_across_facebook" / "messages"
    stranger_thread(fixtures_dir / ALICE, base / "message_requests" / "req_1" / "message_1.json", "Rex Stranger", "REQWORD")
    stranger_thread(fixtures_dir / ALICE, base / "filtered_threads" / "spam_2" / "message_1.json", "Sam Spammer", "SPAMWORD")
    (base / "message_requests" / "bad_3").mkdir()
    (base / "message_requests" / "bad_3" / "message_1.json").write_text("{not json")
    return export


def test_message_requests_and_filtered_threads_are_left_out_by_default_and_read_when_listed(
        prep, tmp_path, tiny_model_dir, export_with_strangers):
    report, out = run(prep, tmp_path, [export_with_strangers], tiny_model_dir, owner="Test User")
    texts = " ".join(kept_rows(out)["text"])
    assert report["threads"] == 2 and "REQWORD" not in texts and "SPAMWORD" not in texts
    assert report["chats_excluded"] == {"section:filtered_threads": 1, "section:message_requests": 2}
    assert report["sections"] == ["inbox", "archived_threads", "e2ee_cutover"]
    assert not report["files_failed"]  # the damaged request was never opened
    assert set(kept_rows(out)["source"]) == {"inbox", "archived_threads"}

    # Opt in, comma-separated as on the command line: the request is read (and its damaged file reported).
    report, out = run(prep, tmp_path, [export_with_strangers], tiny_model_dir, owner="Test User",
                      include_sections=["inbox,archived_threads,e2ee_cutover,message_requests"])
    texts = " ".join(kept_rows(out)["text"])
    assert report["threads"] == 3 and "REQWORD" in texts and "SPAMWORD" not in texts
    assert report["chats_excluded"] == {"section:filtered_threads": 1}
    assert report["files_skipped"] == {"invalid_json": 1}
    report, _ = run(prep, tmp_path, [export_with_strangers], tiny_model_dir, owner="Test User",
                    include_sections=["filtered_threads"])
    assert report["threads"] == 1 and report["chats_excluded"] == {"section:archived_threads": 1,
                                                                    "section:inbox": 1, "section:message_requests": 2}
    with pytest.raises(sc.UserError, match="--include_sections takes some of inbox"):
        section_list(["inbox,requests"])


def test_chats_are_chosen_by_chat_id_or_title_pattern_and_patterns_are_never_written(
        prep, tmp_path, tiny_model_dir, fixtures_dir, capfd):
    report, out = run(prep, tmp_path, [fixtures_dir / SIMPLE], tiny_model_dir)
    rows = kept_rows(out)
    alice_id = rows["chat_id"][rows["source"].index("inbox")]
    zoe_id = rows["chat_id"][rows["source"].index("archived_threads")]
    assert report["threads"] == 2 and alice_id != zoe_id

    # A title pattern (case-insensitive regex over the original title), never echoed in any output or log line.
    report, out = run(prep, tmp_path, [fixtures_dir / SIMPLE], tiny_model_dir, exclude_chats=["^ZOE\\s+ARCHIVE$"])
    assert report["threads"] == 1 and set(kept_rows(out)["chat_id"]) == {alice_id}
    assert report["chats_excluded"] == {"exclude_chats": 1} and report["messages_excluded"] == {"exclude_chats": 1}
    logged = capfd.readouterr()
    for blob in [logged.out, logged.err, *(p.read_text() for p in out.glob("*.json"))]:
        assert "ZOE" not in blob and "ARCHIVE" not in blob
    assert "exclude_chats=['<pattern>']" in logged.out

    # A chat id as messages/ shows it (keyed: the same on every run with the same key).
    report, out = run(prep, tmp_path, [fixtures_dir / SIMPLE], tiny_model_dir, include_chats=[zoe_id])
    assert set(kept_rows(out)["chat_id"]) == {zoe_id} and report["chats_excluded"] == {"include_chats": 1}
    assert zoe_id in json.loads((out / "run_config.json").read_text())["args"]["PrepareArguments"]["include_chats"]
    report, out = run(prep, tmp_path, [fixtures_dir / SIMPLE], tiny_model_dir, include_chats=["alice", zoe_id],
                      exclude_chats=[zoe_id])
    assert set(kept_rows(out)["chat_id"]) == {alice_id} and report["chats_excluded"] == {"exclude_chats": 1}

    with pytest.raises(sc.UserError, match=r"--exclude_chats item 2 is not a valid regular expression") as err:
        run(prep, tmp_path, [fixtures_dir / SIMPLE], tiny_model_dir, exclude_chats=["ok", "Jane(Doe"])
    assert "Jane" not in str(err.value)
    with pytest.raises(sc.UserError, match="no chat left after the selection"):
        run(prep, tmp_path, [fixtures_dir / SIMPLE], tiny_model_dir, include_chats=["nobody has this title"])


def test_since_until_and_min_messages_keep_exactly_the_chosen_messages_and_count_the_rest(
        prep, tmp_path, tiny_model_dir, fixtures_dir):
    constructed = fixtures_dir / "_constructed" / "your_facebook_activity"
    owner = {"owner": "Trần Thị Bình"}
    _, out = run(prep, tmp_path, [constructed], tiny_model_dir, **owner)
    everything = kept_rows(out)
    stamps = everything["timestamp_ms"]
    day = datetime.datetime(2024, 5, 29, tzinfo=datetime.timezone.utc)
    lo, hi = int(day.timestamp() * 1000), int((day + datetime.timedelta(days=1)).timestamp() * 1000)
    assert any(t < lo for t in stamps) and any(lo <= t < hi for t in stamps) and any(t >= hi for t in stamps)

    report, out = run(prep, tmp_path, [constructed], tiny_model_dir, since="2024-05-29", until="2024-05-29",
                      **owner)
    assert sorted(kept_rows(out)["timestamp_ms"]) == sorted(t for t in stamps if lo <= t < hi)
    assert report["dropped"]["before_since"] == sum(t < lo for t in stamps)
    assert report["dropped"]["after_until"] == sum(t >= hi for t in stamps)

    # --min_messages: the chat with fewer usable messages than the bar is left out, its messages counted.
    per_chat = {c: everything["chat_id"].count(c) for c in set(everything["chat_id"])}
    small, large = sorted(per_chat, key=per_chat.get)
    assert per_chat[small] < per_chat[large]
    report, out = run(prep, tmp_path, [constructed], tiny_model_dir, min_messages=per_chat[large], **owner)
    assert set(kept_rows(out)["chat_id"]) == {large}
    assert report["chats_excluded"] == {"min_messages": 1} and report["messages_excluded"]["min_messages"] >= per_chat[small]


def test_dates_are_checked_and_a_yaml_date_is_accepted():
    sel = ChatSelection.from_flags([], [], datetime.date(2024, 5, 29), "2024-05-29T10:00+07:00", 1)
    assert sel.since_ms == int(datetime.datetime(2024, 5, 29, tzinfo=datetime.timezone.utc).timestamp() * 1000)
    assert sel.until_ms == int(datetime.datetime(2024, 5, 29, 3, tzinfo=datetime.timezone.utc).timestamp() * 1000) + 1
    with pytest.raises(sc.UserError, match="--since '29/05/2024' is not an ISO date"):
        ChatSelection.from_flags([], [], "29/05/2024", None, 1)
    with pytest.raises(sc.UserError, match="is not before --until"):
        ChatSelection.from_flags([], [], "2024-06-01", "2024-05-01", 1)


def test_selection_flags_are_yaml_keys_and_cli_flags(prep, tmp_path):
    import yaml
    from trl import TrlParser

    names = ["include_sections", "include_chats", "exclude_chats", "since", "until", "min_messages"]
    recipe = yaml.safe_load((ROOT / "configs" / "prepare.yaml").read_text())
    assert all(n in recipe for n in names)
    assert recipe["include_sections"] == list(prep.PrepareArguments().include_sections)
    config = tmp_path / "c.yaml"
    config.write_text("since: 2021-06-01\nmin_messages: 5\ninclude_chats: [alice]\n")
    (args,) = TrlParser((prep.PrepareArguments,)).parse_args_and_config(
        ["--config", str(config), "--include_sections", "inbox,message_requests", "filtered_threads",
         "--exclude_chats", "c0123456789ab", "^Bob", "--until", "2024-12-31"])
    assert section_list(args.include_sections) == ("inbox", "message_requests", "filtered_threads")
    assert args.min_messages == 5 and args.include_chats == ["alice"] and args.exclude_chats == ["c0123456789ab", "^Bob"]
    sel = ChatSelection.from_flags(args.include_chats, args.exclude_chats, args.since, args.until, args.min_messages)
    assert sel.since_ms < sel.until_ms and sel.exclude[0] == {"c0123456789ab"}
