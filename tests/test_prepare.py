"""Stage 1 (01_prepare.py + the 01 section of simme_common): every fixture, accounting, order, mojibake,
E2EE merge, owner, drop reasons, anonymization, sessions/bursts, windows, splits, bad input.

Run: .venv/bin/python -m pytest -q tests/test_prepare.py
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]
MSGVAULT = "kenn-io__msgvault/internal/fbmessenger/testdata"


@pytest.fixture(scope="module")
def prep():
    return sc.load_script(ROOT / "01_prepare.py")


@pytest.fixture(scope="module")
def sample_mod():
    return sc.load_script(ROOT / "examples" / "make_sample_export.py")


def run(prep, tmp_path: Path, paths, tok: Path, **kw) -> tuple[dict, Path]:
    """Run 01_prepare's main in-process; return (ingest report, output dir)."""
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    args = prep.PrepareArguments(export_path=[str(p) for p in paths], output_dir=str(out), model_name_or_path=str(tok), **kw)
    report = prep.main(args)
    assert json.loads((out / "ingest_report.json").read_text()) == report
    return report, out


def check_outputs(report: dict, out: Path, max_length: int) -> None:
    """Contract checks shared by every end-to-end run."""
    from datasets import load_from_disk

    assert report["messages_total"] == report["messages_kept"] + sum(report["dropped"].values())
    ds = load_from_disk(str(out / "dataset"))
    assert set(ds) == {"train", "validation", "test"}
    for split in ds.values():
        assert set(split.column_names) == {"messages", "chat_id", "chat_type", "session_start", "n_tokens"}
        for row in split:
            msgs = row["messages"]
            assert msgs[0]["role"] == "system" and msgs[-1]["role"] == sc.OWNER_ROLE
            assert all(m["content"].strip() and m["content"] != "nan" for m in msgs)
            assert row["n_tokens"] <= max_length and row["chat_type"] in sc.CHAT_TYPES
    msgs = load_from_disk(str(out / "messages"))
    assert len(msgs) == report["messages_kept"]
    assert (out / "run_config.json").exists()


def write_thread(root: Path, rel: str, people: list[str], messages: list[dict], n: int = 1, mojibake: bool = True) -> Path:
    """Write a classic message_N.json (messages given oldest-first, stored newest-first like Facebook)."""
    doc = {"participants": [{"name": p} for p in people], "messages": list(reversed(messages)), "title": people[0],
           "is_still_participant": True, "thread_path": rel}
    if mojibake:
        doc = json.loads(json.dumps(doc, ensure_ascii=False).encode("utf-8").decode("latin-1"))
    path = root / rel / f"message_{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=True), encoding="ascii")
    return path


def msg(sender: str, ts: int, content: str | None = None, **extra) -> dict:
    m = {"sender_name": sender, "timestamp_ms": ts, **extra}
    if content is not None:
        m["content"] = content
    return m


# ------------------------------------------------------------------------------------------------ fixtures


FIXTURE_RUNS = [
    (f"{MSGVAULT}/json_simple", None),
    (f"{MSGVAULT}/json_multifile", "Test User"),
    (f"{MSGVAULT}/json_nontext", "Test User"),
    (f"{MSGVAULT}/json_group", "Test User"),
    (f"{MSGVAULT}/json_with_media_alt", "Test User"),
    (f"{MSGVAULT}/e2ee_simple", "Test User"),
    ("_constructed", None),
    ("_constructed/e2ee_export", "Trần Thị Bình"),
    ("langchain-ai__langchain", "User 1"),
    ("joweich__chat-miner", "John Doe"),
]


@pytest.mark.parametrize("rel,owner", FIXTURE_RUNS, ids=[r.split("/")[-1] for r, _ in FIXTURE_RUNS])
def test_every_fixture_prepares_with_accounting_invariant(prep, tmp_path, fixtures_dir, tiny_model_dir, rel, owner):
    report, out = run(prep, tmp_path, [fixtures_dir / rel], tiny_model_dir, owner=owner, max_length=384)
    check_outputs(report, out, 384)
    assert report["messages_total"] > 0 and not report["files_failed"]


def test_corrupt_fixture_is_a_clear_error_naming_the_file(prep, tmp_path, fixtures_dir, tiny_model_dir):
    with pytest.raises(sc.UserError, match=r"message_1\.json: invalid JSON"):
        run(prep, tmp_path, [fixtures_dir / MSGVAULT / "corrupt"], tiny_model_dir, no_anonymize=True)


def test_all_fixtures_together_infer_the_constructed_owner_and_count_duplicates(prep, tmp_path, fixtures_dir, tiny_model_dir):
    # Every fixture at once: the corrupt file is listed and skipped, the rest is read.
    report, out = run(prep, tmp_path, [fixtures_dir], tiny_model_dir, owner="Test User", max_length=384)
    check_outputs(report, out, 384)
    assert len(report["files_failed"]) == 1 and "broken" not in json.dumps(report)  # thread folder name redacted
    assert report["threads"] >= 12


def test_messages_are_ascending_across_message_files_never_by_file_name(prep, tmp_path, fixtures_dir, tiny_model_dir):
    from datasets import load_from_disk

    report, out = run(prep, tmp_path, [fixtures_dir / MSGVAULT / "json_multifile"], tiny_model_dir, owner="Test User", no_anonymize=True)
    rows = load_from_disk(str(out / "messages"))
    assert rows["timestamp_ms"] == sorted(rows["timestamp_ms"]) and len(rows) == report["messages_kept"] == 4
    assert [t[-1] for t in rows["text"]] != [] and rows["text"][-1].startswith("Message D")


# ------------------------------------------------------------------------------------------------ mojibake


def test_mojibake_is_repaired_and_correct_text_is_left_untouched():
    broken = "Ch\u00c3\u00a0o b\u00e1\u00ba\u00a1n \u00f0\u009f\u0098\u0082 don\u00e2\u0080\u0099t"
    assert sc.fix_mojibake(broken) == "Chào bạn 😂 don’t"
    for good in ["Chào bạn 😂", "don’t", "Đà Lạt ☕ ❤️", "plain ascii", "Nguyễn Văn An"]:
        assert sc.fix_mojibake(good) == good
    # A string mixing real characters with leftover mojibake goes through ftfy.
    assert sc.fix_mojibake("😂 caf\u00c3\u00a9") == "😂 café"
    # Decomposed Vietnamese (some IMEs) comes out NFC.
    assert sc.fix_mojibake("Vie\u0302\u0323t") == "Việt"


def test_vietnamese_mojibake_fixed_end_to_end_and_e2ee_text_not_touched(prep, tmp_path, fixtures_dir, tiny_model_dir):
    from datasets import load_from_disk

    _, out = run(prep, tmp_path, [fixtures_dir / "_constructed"], tiny_model_dir, no_anonymize=True)
    texts = set(load_from_disk(str(out / "messages"))["text"])
    assert "Chào An! Dạo này khỏe không?" in texts  # classic mojibake repaired
    assert "xem nè" in texts and "Ừ đúng rồi, dạo này mình bận quá 😅" in texts  # E2EE native UTF-8 unchanged
    assert not any("Ã" in t or "á»" in t for t in texts)


# ------------------------------------------------------------------------------------------------ E2EE merge


def test_e2ee_export_merges_with_cutover_thread_and_exact_duplicates_are_removed(prep, tmp_path, tiny_model_dir):
    from datasets import load_from_disk

    root = tmp_path / "exp"
    base = 1_700_000_000_000
    classic = [msg("Ana Lima" if i % 2 else "Ben Ode", base + i * 30_000, f"classic {i} é") for i in range(6)]
    write_thread(root / "your_facebook_activity/messages", "e2ee_cutover/analima_1", ["Ana Lima", "Ben Ode"], classic)
    later = [{"senderName": m["sender_name"], "timestamp": m["timestamp_ms"], "text": m["content"], "type": "text",
              "media": [], "reactions": [], "isUnsent": False} for m in classic[-2:]]  # overlap: 2 duplicates
    later += [{"senderName": "Ana Lima" if i % 2 else "Ben Ode", "timestamp": base + (10 + i) * 30_000, "text": f"e2ee {i} ệ",
               "type": "text", "media": [], "reactions": [], "isUnsent": False} for i in range(4)]
    (root / "e2ee").mkdir(parents=True)
    (root / "e2ee" / "Ana Lima_3.json").write_text(json.dumps({"participants": ["Ben Ode", "Ana Lima"], "threadName": "Ana Lima_3",
                                                               "messages": later}, ensure_ascii=False), encoding="utf-8")
    report, out = run(prep, tmp_path, [root], tiny_model_dir, owner="Ben Ode", no_anonymize=True)
    rows = load_from_disk(str(out / "messages"))
    assert report["duplicates_removed"] == 2 == report["dropped"]["duplicate"]
    assert report["threads"] == 1 and len(set(rows["chat_id"])) == 1 and len(rows) == 10
    assert set(rows["source"]) == {"e2ee_cutover", "e2ee"} and rows["timestamp_ms"] == sorted(rows["timestamp_ms"])
    assert "e2ee 0 ệ" in rows["text"] and "classic 1 é" in rows["text"]


# ------------------------------------------------------------------------------------------------ owner


def test_owner_is_inferred_from_presence_and_ambiguity_lists_candidates(prep, tmp_path, tiny_model_dir):
    root = tmp_path / "exp"
    for i, other in enumerate(["Cy Dee", "Ed Fox", "Gil Ho"]):
        write_thread(root / "messages", f"inbox/t{i}_1", [other, "Al Bo"], [msg(other, 1000 + i, "hi"), msg("Al Bo", 2000 + i, "yo")])
    report, _ = run(prep, tmp_path, [root], tiny_model_dir, no_anonymize=True)
    assert report["owner"] == "Al Bo" and report["owner_inferred"] and "3/3 threads" in report["owner_evidence"]
    with pytest.raises(sc.UserError, match="--owner"):
        run(prep, tmp_path, [root / "messages/inbox/t0_1"], tiny_model_dir, no_anonymize=True)
    with pytest.raises(sc.UserError, match="appears in no thread"):
        run(prep, tmp_path, [root], tiny_model_dir, owner="Nobody Here")
    # A given --owner and the export path (facebook-<name>-….zip) are names too: absent from every output file.
    named = tmp_path / "facebook-albo-2025"
    root.rename(named)
    report, out = run(prep, tmp_path, [named, tmp_path / "facebook-albo-missing.zip"], tiny_model_dir, owner="Al Bo")
    assert report["owner"] != "Al Bo" and len(report["files_failed"]) == 1
    for path in [p for p in out.rglob("*") if p.is_file()]:
        assert b"Al Bo" not in path.read_bytes() and b"albo" not in path.read_bytes(), path.name


# ------------------------------------------------------------------------------------------------ drop reasons


DROP_CASES = {
    "unsent": [msg("B", 1, is_unsent=True), msg("A", 2, "B unsent a message"), msg("A", 3, "Bạn đã thu hồi một tin nhắn")],
    "taken_down": [msg("B", 4, "bad", is_taken_down=True)],
    "call": [msg("A", 5, "You called B.", call_duration=60), msg("B", 6, "B missed your call.", missed=True),
             msg("A", 7, "The video call ended."), msg("A", 8, "Cuộc gọi video đã kết thúc."), msg("B", 9, "B đã gọi cho bạn.")],
    "reaction_pseudo": [msg("B", 10, "Reacted 😂 to your message "), msg("B", 11, "Liked a message"),
                        msg("B", 12, "Đã bày tỏ cảm xúc ❤ về tin nhắn của bạn")],
    "membership_event": [msg("A", 13, "A added C to the group."), msg("C", 14, "C left the group.", users=[{"name": "C"}]),
                         msg("A", 15, "A named the group Trip."), msg("A", 16, "A đã thêm C vào nhóm."), msg("C", 17, "C đã rời khỏi nhóm.")],
    "attachment_placeholder": [msg("A", 18, "You sent an attachment.", share={"link": "https://x.example"}),
                               msg("B", 19, "B đã gửi một file đính kèm.")],
    "attachment_only": [msg("B", 20, photos=[{"uri": "p.jpg"}]), msg("A", 21, sticker={"uri": "s.png"})],
    "system_other": [msg("B", 22, "You are now connected on Messenger"), msg("B", 23, "This poll is no longer available.")],
    "empty": [msg("B", 24, ""), msg("A", 25, "   ")],
    "malformed": [{"sender_name": "B"}, {"timestamp_ms": 26, "content": "x"}],
}


def test_every_drop_reason_is_counted_in_english_and_vietnamese(prep, tmp_path, tiny_model_dir):
    root = tmp_path / "exp"
    rows = [m for case in DROP_CASES.values() for m in case]
    rows += [msg("A", 100 + i, f"real {i}") for i in range(3)] + [msg("B", 110, "real reply")]
    rows += [msg("B", 112, "It's called Lacrosse.")]  # looks like "X called Y." but starts with no name: kept
    dup = msg("B", 111, "same")
    write_thread(root / "messages", "inbox/ab_1", ["A", "B", "C"], rows + [dup, dict(dup)])
    report, _ = run(prep, tmp_path, [root], tiny_model_dir, owner="A", no_anonymize=True)
    for reason, case in DROP_CASES.items():
        assert report["dropped"][reason] == len(case), reason
    assert report["dropped"]["duplicate"] == 1 and report["messages_kept"] == 6
    assert any("timestamp_ms" in f["error"] for f in report["files_failed"])  # the malformed rows are named


# ------------------------------------------------------------------------------------------------ anonymization


def test_planted_pii_and_real_names_are_absent_from_every_output_file_and_log(prep, sample_mod, tmp_path, tiny_model_dir, capfd):
    from datasets import load_from_disk

    export = tmp_path / "sample"
    sample_mod.main(sample_mod.SampleArguments(output_dir=str(export), max_conversations=12, group_sessions=10))
    names = set()
    for f in export.rglob("*.json"):
        doc = json.loads(f.read_text(encoding="utf-8"))
        for p in doc.get("participants", []) if isinstance(doc, dict) else []:
            n = p["name"] if isinstance(p, dict) else p
            names.add(n.encode("latin-1").decode("utf-8") if isinstance(p, dict) else n)
    capfd.readouterr()
    report, out = run(prep, tmp_path, [export], tiny_model_dir, max_length=512)
    check_outputs(report, out, 512)
    logs = "".join(capfd.readouterr())
    secrets = list(sample_mod.PLANTED_PII.values()) + sorted(names)
    assert len(names) >= 5
    for path in [p for p in out.rglob("*") if p.is_file()]:
        blob = path.read_bytes()
        for s in secrets:
            assert s.encode() not in blob, f"a planted value leaked into {path.name}"
    assert not any(s in logs for s in secrets)
    assert sum(report["pii_replaced"].values()) >= len(sample_mod.PLANTED_PII)
    # Consistency: one surrogate per person; the owner's surrogate in every system prompt.
    msgs = load_from_disk(str(out / "messages"))
    owner_names = {s for s, o in zip(msgs["sender"], msgs["is_owner"]) if o}
    assert owner_names == {report["owner"]}
    ds = load_from_disk(str(out / "dataset"))
    assert all(f"You are {report['owner']}" in r["messages"][0]["content"] for s in ds.values() for r in s)
    # Silent group samples: others' turns only, then the silent marker.
    silent = [r for s in ds.values() for r in s if r["messages"][-1]["content"] == sc.SILENT_REPLY]
    assert silent and all(m["role"] == sc.OTHER_ROLE for r in silent for m in r["messages"][1:-1])
    assert report["samples_silent"] == len(silent)
    assert report["windows_too_long"] == 0  # every window of these short chats fits max_length


def test_anonymizer_is_consistent_and_keeps_the_kind_of_each_value():
    anon = sc.Anonymizer(["Nguyễn Văn An", "Jordan Smith"], key=bytes(range(32)))
    vi, en = anon.name("Nguyễn Văn An"), anon.name("Jordan Smith")
    assert vi != "Nguyễn Văn An" and sc.is_vietnamese_name(vi) and not sc.is_vietnamese_name(en)
    text = "An ơi, Jordan gọi +84 912 345 678 hoặc 0903 123 456, mail a.b@example.com, CCCD 079203001234"
    once, twice = anon.text(text), anon.text(text)
    assert once == twice
    for secret in ["An ơi", "Jordan", "912 345 678", "0903 123 456", "a.b@example.com", "079203001234"]:
        assert secret not in once
    assert once.startswith(vi.split()[-1] + " ơi") and "+84 " in once and "@" in once
    assert "1.500.000" in anon.text("giá 1.500.000 lúc 10:30 năm 2024")  # ordinary numbers stay


# ------------------------------------------------------------------------------------------------ sessions, windows, splits


def test_sessions_split_on_gaps_and_bursts_join_bubbles_with_newlines():
    ts = [0, 60_000, 61 * 60_000 + 60_001, 62 * 60_000 + 60_001]
    assert sc.split_sessions(ts, 60) == [0, 0, 1, 1]
    turns = sc.group_bursts([(0, "a", "hi"), (100_000, "a", "there"), (400_000, "a", "late"), (401_000, "b", "yo")], 120)
    assert [t["text"] for t in turns] == ["hi\nthere", "late", "yo"]


def test_windows_end_on_owner_turns_fit_the_budget_and_use_each_owner_turn_once():
    lengths = [30, 20, 50, 10, 40, 40, 40, 5, 60, 10]
    owner = [False, True, False, True, False, False, False, True, False, True]
    windows = sc.pack_windows(lengths, owner, budget=100)
    targets = [i for a, b in windows for i in range(a, b + 1) if owner[i]]
    assert sorted(targets) == [i for i, o in enumerate(owner) if o]  # every owner turn exactly once
    for a, b in windows:
        assert owner[b] and sum(lengths[a:b + 1]) <= 100
    assert sc.silent_cut_points([False] * 5, 4) == [(0, 4)]
    assert sc.silent_cut_points([False] * 9 + [True], 4) == [(0, 4)]
    assert sc.silent_cut_points([False, False, True], 4) == []


def test_samples_fit_max_length_and_splits_are_disjoint_by_time(prep, sample_mod, tmp_path, tiny_model_dir):
    from datasets import load_from_disk

    export = tmp_path / "sample"
    sample_mod.main(sample_mod.SampleArguments(output_dir=str(export), max_conversations=20, group_sessions=8))
    report, out = run(prep, tmp_path, [export], tiny_model_dir, max_length=400)
    check_outputs(report, out, 400)
    tok = sc.load_tokenizer(str(tiny_model_dir))
    ds = load_from_disk(str(out / "dataset"))
    keys = {}
    for name, split in ds.items():
        assert len(split) > 0
        for row in split:
            text = tok.apply_chat_template(row["messages"], tokenize=False)
            assert len(tok(text, add_special_tokens=False)["input_ids"]) == row["n_tokens"] <= 400
        keys[name] = {(r["chat_id"], r["session_start"]) for r in split}
    assert not (keys["train"] & keys["validation"]) and not (keys["train"] & keys["test"]) and not (keys["validation"] & keys["test"])
    assert max(ds["train"]["session_start"]) <= min(ds["test"]["session_start"])
    assert report["turns_truncated"] > 0  # the tiny tokenizer makes some turns too long: truncated, not dropped


# ------------------------------------------------------------------------------------------------ bad input, zips


def test_bad_inputs_are_listed_by_file_and_the_rest_continues(prep, tmp_path, tiny_model_dir):
    root = tmp_path / "exp"
    inbox = root / "messages" / "inbox"
    write_thread(root / "messages", "inbox/good_1", ["A", "B"], [msg("B", 1, "hi"), msg("A", 2, "hello")])
    (inbox / "badjson_2").mkdir()
    (inbox / "badjson_2" / "message_1.json").write_text('{"participants": [', encoding="utf-8")
    (inbox / "bom_3").mkdir()
    (inbox / "bom_3" / "message_1.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(
        {"participants": [{"name": "A"}, {"name": "C"}], "messages": [msg("C", 5, "bom ok"), msg("A", 6, "yes")]}).encode())
    (inbox / "nofield_4").mkdir()
    (inbox / "nofield_4" / "message_1.json").write_text(json.dumps({"participants": [{"name": "A"}]}), encoding="utf-8")
    (inbox / "empty_5").mkdir()
    (inbox / "empty_5" / "message_1.json").write_text(json.dumps({"participants": [{"name": "A"}], "messages": []}))
    good_zip = tmp_path / "part.zip"
    with zipfile.ZipFile(good_zip, "w") as zf:
        zf.writestr("messages/inbox/zz_9/message_1.json", json.dumps({"participants": [{"name": "A"}, {"name": "D"}], "messages": [msg("D", 9, "zip")]}))
    truncated = tmp_path / "broken.zip"
    truncated.write_bytes(good_zip.read_bytes()[:40])
    paths = [root, good_zip, truncated, tmp_path / "does_not_exist"]
    report, out = run(prep, tmp_path, paths, tiny_model_dir, owner="A", no_anonymize=True)
    errors = " | ".join(f["error"] for f in report["files_failed"])
    assert "badjson_2/message_1.json: invalid JSON" in errors
    assert "nofield_4/message_1.json: not a Messenger thread (missing field 'messages')" in errors
    assert "empty_5" in errors and "no messages" in errors
    assert "broken.zip" in errors and "does_not_exist" in errors
    assert report["threads"] == 3 and report["messages_kept"] == 5  # good + BOM file + zipped thread
    with pytest.raises(sc.UserError, match="--strict"):
        run(prep, tmp_path, paths, tiny_model_dir, owner="A", no_anonymize=True, strict=True)


def test_thread_parts_across_several_zips_are_one_thread(prep, tmp_path, tiny_model_dir):
    from datasets import load_from_disk

    parts = []
    for n, (lo, hi) in enumerate([(5, 10), (0, 5)], start=1):  # message_1 = newest, in the first zip
        z = tmp_path / f"facebook-part{n}.zip"
        doc = {"participants": [{"name": "A"}, {"name": "B"}],
               "messages": [msg("A" if i % 2 else "B", 1000 * i, f"m{i}") for i in reversed(range(lo, hi))]}
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr(f"your_activity_across_facebook/messages/inbox/ab_7/message_{n}.json", json.dumps(doc))
        parts.append(z)
    report, out = run(prep, tmp_path, parts, tiny_model_dir, owner="A", no_anonymize=True)
    rows = load_from_disk(str(out / "messages"))
    assert report["threads"] == 1 and rows["text"] == [f"m{i}" for i in range(10)]


def test_cli_config_and_export_path_list_parse_and_user_error_exits_2_without_traceback(prep, tmp_path, capsys):
    from trl import TrlParser

    argv = ["--config", str(ROOT / "configs" / "prepare.yaml"), "--export_path", "a.zip", "b.zip", "--max_length", "256"]
    (args,) = TrlParser((prep.PrepareArguments,)).parse_args_and_config(argv)
    assert args.export_path == ["a.zip", "b.zip"] and args.max_length == 256 and args.output_dir == sc.PREPARED_DIR
    args = prep.PrepareArguments(export_path=[str(tmp_path / "nope")], output_dir=str(tmp_path / "o"))
    with pytest.raises(SystemExit) as exit_info:
        sc.run_main(prep.main, args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and "nothing readable" in err


def test_old_instagram_messages_json_and_instagram_dyi_folders_are_read(prep, tmp_path, tiny_model_dir):
    from datasets import load_from_disk

    root = tmp_path / "ig"
    root.mkdir()
    convo = [{"sender": "ana.b", "created_at": "2019-03-01T10:00:00+00:00", "text": "hey ❤️"},
             {"sender": "me_me", "created_at": "2019-03-01T10:00:30+00:00", "text": "hi!"},
             {"sender": "ana.b", "created_at": "2019-03-01T10:01:00+00:00", "action": "Liked a message"}]
    (root / "messages.json").write_text(json.dumps([{"participants": ["ana.b", "me_me"], "conversation": convo}]), encoding="utf-8")
    write_thread(root / "your_instagram_activity/messages", "inbox/cy_5", ["cy", "me_me"], [msg("cy", 1_600_000_000_000, "yo é"), msg("me_me", 1_600_000_001_000, "sup")])
    report, out = run(prep, tmp_path, [root], tiny_model_dir, owner="me_me", no_anonymize=True)
    rows = load_from_disk(str(out / "messages"))
    assert report["threads"] == 2 and report["dropped"]["membership_event"] == 1
    assert set(rows["source"]) == {"instagram"} and "hey ❤️" in rows["text"] and "yo é" in rows["text"]
