"""Hostile and damaged exports: stage 01 never crashes or hangs, keeps the good thread beside the damage, names
each skipped file and field with a reason, exits non-zero only when nothing usable remains, and writes its output
atomically (as does the feedback store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]
DAY = 86_400_000
T0 = 1_600_000_000_000


@pytest.fixture(scope="module")
def prep():
    return sc.load_script(ROOT / "01_prepare.py")


def thread_doc(people: list[str], messages: list[dict], **extra) -> dict:
    """A classic thread document (messages given oldest-first, stored newest-first like Facebook)."""
    return {"participants": [{"name": p} for p in people], "messages": list(reversed(messages)), "title": people[-1],
            "thread_path": "inbox/x", **extra}


def msg(sender: str, ts, content=None, **extra) -> dict:
    m = {"sender_name": sender, "timestamp_ms": ts, **extra}
    if content is not None:
        m["content"] = content
    return m


GOOD = [msg("Bo", T0, "hey are you coming tonight"), msg("Al", T0 + 60_000, "yes see you at eight"),
        msg("Bo", T0 + DAY, "great, bring snacks"), msg("Al", T0 + DAY + 60_000, "sure thing")]


def write_json(path: Path, obj=None, raw: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw if raw is not None else json.dumps(obj).encode())
    return path


def good_export(root: Path) -> Path:
    """An export folder holding one good one-on-one thread (4 messages, 2 owned by 'Al')."""
    write_json(root / "messages" / "inbox" / "bo_1" / "message_1.json", thread_doc(["Al", "Bo"], GOOD))
    return root


def damaged_thread(root: Path, name: str, obj=None, raw: bytes | None = None) -> Path:
    return write_json(root / "messages" / "inbox" / name / "message_1.json", obj, raw)


def deep_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def bomb_zip(path: Path, mb: int = 24) -> Path:
    """A zip of well under 100 KB whose thread file expands to `mb` MB of whitespace-padded JSON."""
    body = b'{"participants": [{"name": "Al"}], "messages": []' + b" " * (mb * 2**20) + b"}"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("messages/inbox/bomb_1/message_1.json", body)
    return path


def good_zip(path: Path, thread: str = "cy_7", *, extra: dict | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"messages/inbox/{thread}/message_1.json", json.dumps(thread_doc(["Al", "Cy"], [
            msg("Cy", T0 + 5 * DAY, "zip hello"), msg("Al", T0 + 5 * DAY + 1000, "zip hi back")])))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


# ------------------------------------------------------------------------------------------------ the corpus
# Each case builds its damage beside the good export and returns (extra paths, kwargs, check on the report).
# `skipped`: a files_skipped reason that must be counted; `repaired`: a repair counter that must be > 0;
# `dropped`: a drop reason that must be > 0.

def case_deep_array_100k(tmp):
    damaged_thread(tmp, "deep_2", raw=deep_array(100_000))
    return [], {}, {"skipped": "json_too_deep"}


def case_deep_object_in_message(tmp):
    damaged_thread(tmp, "deep_3", raw=b'{"participants": [{"name": "Al"}], "messages": [{"x": '
                   + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}]}")
    return [], {}, {"skipped": "json_too_deep"}


def case_deep_under_recursion_limit_but_over_flag(tmp):
    damaged_thread(tmp, "deep_4", raw=deep_array(500))
    return [], {"max_json_depth": 32}, {"skipped": "json_too_deep"}


def case_lone_surrogate_text(tmp):
    damaged_thread(tmp, "surr_5", raw=json.dumps(thread_doc(["Al", "Di"], [
        msg("Di", T0 + 2 * DAY, "\ud800 oops"), msg("Al", T0 + 2 * DAY + 1000, "ok \udfff fine")])).encode())
    return [], {}, {"repaired": "lone_surrogates_removed", "kept_at_least": 6}


def case_lone_surrogate_sender_and_title(tmp):
    doc = thread_doc(["Al", "Di\ud83d"], [msg("Di\ud83d", T0 + 2 * DAY, "hello there"), msg("Al", T0 + 2 * DAY + 1, "yo")])
    doc["title"] = "group \udc00"
    damaged_thread(tmp, "surr_6", raw=json.dumps(doc).encode())
    return [], {}, {"repaired": "lone_surrogates_removed", "kept_at_least": 6}


def case_2m_char_message(tmp):
    damaged_thread(tmp, "long_7", thread_doc(["Al", "Ed"], [
        msg("Ed", T0 + 3 * DAY, "x" * 2_000_000), msg("Al", T0 + 3 * DAY + 1000, "y " * 1_000_000)]))
    return [], {}, {"repaired": "message_truncated", "kept_at_least": 6}


def case_2m_char_mojibake_message(tmp):
    damaged_thread(tmp, "long_8", raw=json.dumps(thread_doc(["Al", "Ed"], [
        msg("Ed", T0 + 3 * DAY, "caf\u00c3\u00a9 " * 400_000), msg("Al", T0 + 3 * DAY + 1000, "ok")])).encode())
    return [], {}, {"repaired": "message_truncated", "kept_at_least": 6}


def case_2m_char_e2ee_message(tmp):
    write_json(tmp / "e2ee" / "Fa Ge_1.json", {"participants": ["Al", "Fa"], "threadName": "Fa", "messages": [
        {"senderName": "Fa", "timestamp": T0 + 4 * DAY, "text": "ờ" * 2_000_000, "type": "text"},
        {"senderName": "Al", "timestamp": T0 + 4 * DAY + 5, "text": "ok", "type": "text"}]})
    return [], {}, {"repaired": "message_truncated", "kept_at_least": 6}


def _bad_ts_thread(tmp, name: str, raw_ts: str):
    text = json.dumps(thread_doc(["Al", "Gi"], [msg("Gi", "TS", "bad time"), msg("Al", T0 + 9 * DAY, "fine time")]))
    damaged_thread(tmp, name, raw=text.replace('"TS"', raw_ts).encode())


def case_nan_timestamp(tmp):
    _bad_ts_thread(tmp, "nan_9", "NaN")
    return [], {}, {"dropped": "malformed", "skipped": "malformed_message", "kept_at_least": 5}


def case_infinity_timestamp(tmp):
    _bad_ts_thread(tmp, "inf_10", "-Infinity")
    return [], {}, {"dropped": "malformed", "kept_at_least": 5}


def case_huge_float_timestamp(tmp):
    _bad_ts_thread(tmp, "huge_11", "1e300")
    return [], {}, {"dropped": "malformed", "kept_at_least": 5}


def case_huge_int_timestamp(tmp):
    _bad_ts_thread(tmp, "huge_12", "1" + "0" * 40)
    return [], {}, {"dropped": "malformed", "kept_at_least": 5}


def case_negative_and_string_and_bool_timestamps(tmp):
    damaged_thread(tmp, "ts_13", thread_doc(["Al", "Gi"], [
        msg("Gi", -5, "neg"), msg("Gi", "123", "str"), msg("Gi", True, "bool"), msg("Al", T0 + 9 * DAY, "fine")]))
    return [], {}, {"dropped": "malformed", "kept_at_least": 5}


def case_seconds_timestamp_nan(tmp):
    text = json.dumps(thread_doc(["Al", "Gi"], [{"sender_name": "Gi", "timestamp": "X", "content": "old"},
                                                msg("Al", T0 + 9 * DAY, "fine")]))
    damaged_thread(tmp, "ts_14", raw=text.replace('"X"', "Infinity").encode())
    return [], {}, {"dropped": "malformed", "kept_at_least": 5}


def case_participants_is_a_number(tmp):
    doc = thread_doc(["Al", "Hu"], [msg("Hu", T0 + 6 * DAY, "people 5"), msg("Al", T0 + 6 * DAY + 1, "ok")])
    doc["participants"] = 5
    damaged_thread(tmp, "p5_15", doc)
    return [], {}, {"skipped": "bad_field", "kept_at_least": 6}


def case_participants_of_wrong_items(tmp):
    doc = thread_doc(["Al", "Hu"], [msg("Hu", T0 + 6 * DAY, "odd people"), msg("Al", T0 + 6 * DAY + 1, "ok")])
    doc["participants"] = [1, None, {"name": 7}, {"name": "Hu"}, {"name": "Al"}]
    damaged_thread(tmp, "p6_16", doc)
    return [], {}, {"kept_at_least": 6}


def case_title_and_thread_type_wrong_types(tmp):
    doc = thread_doc(["Al", "Hu"], [msg("Hu", T0 + 6 * DAY, "titles"), msg("Al", T0 + 6 * DAY + 1, "ok")])
    doc.update(title=[1, 2], thread_type={"x": 1})
    damaged_thread(tmp, "t_17", doc)
    return [], {}, {"skipped": "bad_field", "kept_at_least": 6}


def case_messages_not_a_list(tmp):
    damaged_thread(tmp, "m_18", {"participants": [{"name": "Al"}], "messages": {"0": "x"}})
    return [], {}, {"skipped": "not_a_thread"}


def case_message_items_of_wrong_types(tmp):
    doc = thread_doc(["Al", "Iv"], [msg("Al", T0 + 7 * DAY, "fine one")])
    doc["messages"] += [5, "text", None, [1, 2]]
    damaged_thread(tmp, "m_19", doc)
    return [], {}, {"dropped": "malformed", "kept_at_least": 5}


def case_content_and_sender_wrong_types(tmp):
    damaged_thread(tmp, "c_20", thread_doc(["Al", "Iv"], [
        msg("Iv", T0 + 7 * DAY, {"a": 1}), msg("Iv", T0 + 7 * DAY + 1, 12), msg(7, T0 + 7 * DAY + 2, "who"),
        msg("Al", T0 + 7 * DAY + 3, "fine one")]))
    return [], {}, {"dropped": "malformed", "kept_at_least": 5}


def case_e2ee_wrong_types(tmp):
    write_json(tmp / "e2ee" / "Jo_1.json", {"participants": ["Al", "Jo"], "threadName": 5, "messages": [
        {"senderName": "Jo", "timestamp": float("nan"), "text": "nan"},
        {"senderName": "Jo", "timestamp": T0 + 8 * DAY, "text": 42},
        {"senderName": "Al", "timestamp": T0 + 8 * DAY + 1, "text": "real"}]})
    return [], {}, {"dropped": "malformed", "skipped": "bad_field", "kept_at_least": 5}


def case_old_instagram_wrong_types(tmp):
    write_json(tmp / "ig" / "messages.json", [{"participants": 5, "conversation": 5},
                                              {"participants": ["Al", "Ka"], "conversation": [
                                                  {"sender": "Ka", "created_at": "9999999-01-01", "text": "bad date"},
                                                  {"sender": "Ka", "created_at": "2019-01-01T10:00:00", "text": "hi al"},
                                                  {"sender": "Al", "created_at": "2019-01-01T10:00:05", "text": "hi ka"}]}])
    return [], {}, {"kept_at_least": 6}


def case_zip_bomb_ratio(tmp):
    return [bomb_zip(tmp / "bomb.zip")], {}, {"skipped": "zip_ratio"}


def case_zip_over_total_bytes(tmp):
    z = good_zip(tmp / "big.zip", extra={"messages/inbox/zz_big/message_1.json": json.dumps(
        thread_doc(["Al", "Zo"], [msg("Zo", T0 + 9 * DAY, "w" * 3000)]))})
    return [z], {"max_zip_bytes": 2000}, {"skipped": "zip_too_large"}


def case_file_over_max_bytes(tmp):
    damaged_thread(tmp, "big_21", thread_doc(["Al", "Lu"], [msg("Lu", T0 + 9 * DAY, "z" * 50_000)]))
    return [], {"max_file_bytes": 20_000}, {"skipped": "file_too_large"}


def case_truncated_zip(tmp):
    z = good_zip(tmp / "whole.zip")
    cut = tmp / "cut.zip"
    cut.write_bytes(z.read_bytes()[: len(z.read_bytes()) // 2])
    z.unlink()
    return [cut], {}, {"skipped": "bad_zip"}


def case_zip_with_traversal_entries(tmp):
    z = good_zip(tmp / "trav.zip", extra={"../../evil/message_1.json": "{}", "/abs/message_1.json": "{}",
                                          "messages/../../x/message_1.json": "{}"})
    return [z], {}, {"skipped": "zip_unsafe_path", "kept_at_least": 6}


def case_zip_not_a_zip(tmp):
    fake = tmp / "fake.zip"
    fake.write_bytes(b"this is not a zip at all" * 10)
    return [fake], {}, {"skipped": "bad_zip"}


def case_utf8_bom(tmp):
    damaged_thread(tmp, "bom_22", raw=b"\xef\xbb\xbf" + json.dumps(thread_doc(["Al", "Mo"], [
        msg("Mo", T0 + 10 * DAY, "bom"), msg("Al", T0 + 10 * DAY + 1, "bom ok")])).encode())
    return [], {}, {"kept_at_least": 6}


def case_utf16_with_bom(tmp):
    damaged_thread(tmp, "u16_23", raw=json.dumps(thread_doc(["Al", "Mo"], [
        msg("Mo", T0 + 10 * DAY, "sixteen"), msg("Al", T0 + 10 * DAY + 1, "bits")])).encode("utf-16"))
    return [], {}, {"kept_at_least": 6}


def case_not_utf8(tmp):
    damaged_thread(tmp, "l1_24", raw=json.dumps(thread_doc(["Al", "Ny"], [msg("Ny", T0, "caf_")])).encode()
                   .replace(b"caf_", b"caf\xe9\xff"))
    return [], {}, {"skipped": "not_utf8"}


def case_empty_file(tmp):
    damaged_thread(tmp, "e_25", raw=b"")
    return [], {}, {"skipped": "empty_file"}


def case_whitespace_file(tmp):
    damaged_thread(tmp, "e_26", raw=b" \n\t \r\n")
    return [], {}, {"skipped": "empty_file"}


def case_invalid_json(tmp):
    damaged_thread(tmp, "bad_27", raw=b'{"participants": [{"name": "Al"}], "messages": [{"sender_name": "Al", ')
    return [], {}, {"skipped": "invalid_json"}


def case_binary_garbage(tmp):
    damaged_thread(tmp, "bin_28", raw=bytes(range(256)) * 64)  # leading NULs: json guesses UTF-32 and fails
    return [], {}, {"skipped": "invalid_json"}


def case_json_scalar_top_level(tmp):
    damaged_thread(tmp, "s_29", raw=b'"just a string"')
    damaged_thread(tmp, "s_30", raw=b"42")
    return [], {}, {"skipped": "not_a_thread"}


def case_html_beside_json(tmp):
    html = tmp / "messages" / "inbox" / "ht_31" / "message_1.html"
    html.parent.mkdir(parents=True)
    html.write_text("<html><body><div>Al</div><div>hello</div></body></html>")
    return [], {}, {"kept_at_least": 4}


def case_duplicate_files(tmp):
    z1 = good_zip(tmp / "dup_a.zip")
    z2 = tmp / "dup_b.zip"
    z2.write_bytes(z1.read_bytes())
    # The same thread folder in two sections and the same zip twice: one conversation, duplicates removed.
    write_json(tmp / "messages" / "archived_threads" / "bo_1" / "message_1.json", thread_doc(["Al", "Bo"], GOOD))
    return [z1, z2, z1], {}, {"dropped": "duplicate", "kept_exactly": 6}


def case_symlinks_out_of_the_export(tmp):
    outside = tmp.parent / f"{tmp.name}_outside"
    write_json(outside / "secret" / "message_1.json", thread_doc(["Al", "Xx"], [msg("Xx", T0, "secret"), msg("Al", T0 + 1, "s")]))
    (tmp / "messages" / "inbox" / "link_32").mkdir(parents=True)
    os.symlink(outside / "secret" / "message_1.json", tmp / "messages" / "inbox" / "link_32" / "message_1.json")
    os.symlink(outside / "secret", tmp / "messages" / "inbox" / "linkdir_33")  # a folder: never entered
    os.symlink("/etc/passwd", tmp / "messages" / "inbox" / "passwd.json")
    return [], {}, {"skipped": "symlink_outside_export", "kept_exactly": 4}


def case_fifo_named_like_a_thread_file(tmp):
    fifo = tmp / "messages" / "inbox" / "fifo_35" / "message_1.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # opening it would block forever: not a regular file, so never opened
    return [], {}, {"kept_exactly": 4}


def case_many_malformed_rows(tmp):
    rows = [msg("Pa", "bad", "x") for _ in range(20_000)] + [msg("Al", T0 + 11 * DAY, "last one")]
    damaged_thread(tmp, "many_34", thread_doc(["Al", "Pa"], rows))
    return [], {}, {"dropped": "malformed", "kept_at_least": 5, "failure_lines_at_most": 1}


CASES = {name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_")}


def run_prep(prep, tmp: Path, paths, tok: Path, **kw) -> dict:
    out = tmp / "out"
    args = prep.PrepareArguments(export_path=[str(p) for p in paths], output_dir=str(out), model_name_or_path=str(tok),
                                 owner="Al", max_length=256, **kw)
    return prep.main(args)


def test_corpus_has_at_least_30_cases():
    assert len(CASES) >= 30, sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_damage_is_skipped_named_and_the_good_thread_kept(prep, tmp_path, tiny_model_dir, capfd, name):
    export = good_export(tmp_path / "export")
    extra, kw, expect = CASES[name](export)
    t0 = time.time()
    report = run_prep(prep, tmp_path, [export, *extra], tiny_model_dir, **kw)
    elapsed = time.time() - t0
    assert elapsed < 60, f"{name} took {elapsed:.1f} s"
    assert report["messages_total"] == report["messages_kept"] + sum(report["dropped"].values())
    assert report["messages_kept"] >= expect.get("kept_at_least", 4)  # the good thread survives
    if "kept_exactly" in expect:
        assert report["messages_kept"] == expect["kept_exactly"]
    if "skipped" in expect:
        reason = expect["skipped"]
        assert report["files_skipped"].get(reason), report["files_failed"]
        lines = [f for f in report["files_failed"] if f["reason"] == reason]
        assert all(f["error"].startswith(f["path"]) and len(f["error"]) > len(f["path"]) + 10 for f in lines)
        err = capfd.readouterr().err
        assert lines[0]["error"] in err  # said on the console, not only in the report
    if "repaired" in expect:
        assert report["repaired"][expect["repaired"]] > 0
    if "dropped" in expect:
        assert report["dropped"][expect["dropped"]] > 0
    if "failure_lines_at_most" in expect:
        assert len(report["files_failed"]) <= expect["failure_lines_at_most"]
    # Names in paths are redacted (the default): no thread folder name of the corpus reaches the report.
    assert "secret" not in json.dumps(report) and "/bo_1/" not in json.dumps(report)
    from datasets import load_from_disk

    texts = load_from_disk(str(tmp_path / "out" / "messages"))["text"]
    assert all(len(t) <= sc.IngestLimits.max_message_chars for t in texts)
    assert all(not sc.has_surrogates(t) for t in texts)
    assert not list(tmp_path.glob(".out.tmp-*"))  # no temporary output left behind


def test_nothing_usable_is_a_clear_error_naming_html_and_exits_2(tmp_path):
    html = tmp_path / "export" / "messages" / "inbox" / "ht_1" / "message_1.html"
    html.parent.mkdir(parents=True)
    html.write_text("<html></html>")
    damaged_thread(tmp_path / "export", "deep_2", raw=deep_array(100_000))
    proc = subprocess.run([sys.executable, str(ROOT / "01_prepare.py"), "--export_path", str(tmp_path / "export"),
                           "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "HTML export" in proc.stderr and "JSON format" in proc.stderr and "nested deeper" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_every_message_malformed_is_nothing_usable_and_keeps_the_previous_output(prep, tmp_path, tiny_model_dir):
    good = good_export(tmp_path / "good")
    first = run_prep(prep, tmp_path, [good], tiny_model_dir)
    bad = tmp_path / "bad"
    damaged_thread(bad, "t_1", thread_doc(["Al", "Bo"], [msg("Bo", float("inf"), "x"), msg("Al", 10**40, "y")]))
    with pytest.raises(sc.UserError, match="nothing usable"):
        run_prep(prep, tmp_path, [bad], tiny_model_dir)
    assert json.loads((tmp_path / "out" / "ingest_report.json").read_text()) == first


def test_limit_flags_are_yaml_keys_and_cli_flags(prep, tmp_path):
    from trl import TrlParser

    cfg = tmp_path / "c.yaml"
    cfg.write_text("export_path: [x]\nmax_file_bytes: 1000\nmax_zip_ratio: 5\nmax_json_depth: 9\n")
    (args,) = TrlParser((prep.PrepareArguments,)).parse_args_and_config(
        ["--config", str(cfg), "--max_message_chars", "77", "--max_zip_bytes", "123"])
    assert (args.max_file_bytes, args.max_zip_ratio, args.max_json_depth, args.max_message_chars, args.max_zip_bytes) == \
        (1000, 5, 9, 77, 123)


def test_json_depth_scan_is_exact_and_ignores_brackets_in_strings():
    assert sc.json_too_deep(deep_array(100_000), 64)
    assert not sc.json_too_deep(deep_array(64), 64) and sc.json_too_deep(deep_array(65), 64)
    tricky = json.dumps({"a": "[[[[[[[[[[\\\"{{{{{{{{{{", "b": [[["]]]]]"]]]}).encode()
    assert not sc.json_too_deep(tricky, 4) and sc.json_too_deep(tricky, 3)
    assert not sc.json_too_deep(b'{"messages": [{"a": 1}, {"b": [1]}', 3)  # unbalanced: left to json.loads


# ------------------------------------------------------------------------------------------------ atomic outputs
