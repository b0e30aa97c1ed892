"""Privacy of stage 01: secret-keyed surrogates, recall per PII kind on planted EN/VI values, over-redaction on
ordinary chat text, and no original value or key in any output byte.

Run (prints the recall table and the over-redaction figure): .venv/bin/python -m pytest -q -s tests/test_privacy.py
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import random
import re
from pathlib import Path

import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]

PARTICIPANTS = ["Jane Doe", "Trần Văn Hùng", "Nguyễn Thị An", "Will Turner", "Lê Minh Tuấn"]
OWNER = "Jane Doe"
RECALL_MIN = 0.95
OVER_REDACTION_MAX = 0.005
N_PER_FORMAT = 8  # per sentence template; 160 phones in ten formats


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def planted_values(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """kind -> [(value, sentence holding it)], EN and VI, several formats per kind."""
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, str]]] = {}

    def add(kind: str, make, templates: list[str]) -> None:
        for tpl in templates:
            for _ in range(N_PER_FORMAT):
                v = make()
                out.setdefault(kind, []).append((v, tpl.format(v=v)))

    area = lambda: rng.choice(["212", "415", "646", "718", "312", "617", "206", "303", "512", "404"])  # noqa: E731
    exch = lambda: str(rng.randrange(201, 989))  # noqa: E731
    vn_mobile = lambda: rng.choice(["90", "91", "93", "94", "96", "97", "98", "86", "88", "70", "79", "77", "83", "35"])  # noqa: E731
    phone_formats = [
        lambda: f"{area()} {exch()} {_digits(rng, 4)}", lambda: f"{area()}{exch()}{_digits(rng, 4)}",
        lambda: f"({area()}) {exch()}-{_digits(rng, 4)}", lambda: f"{area()}-{exch()}-{_digits(rng, 4)}",
        lambda: f"+1 {area()} {exch()} {_digits(rng, 4)}",
        lambda: f"0{vn_mobile()}{_digits(rng, 1)} {_digits(rng, 3)} {_digits(rng, 3)}",
        lambda: f"0{vn_mobile()}{_digits(rng, 7)}", lambda: f"+84 {vn_mobile()}{_digits(rng, 1)} {_digits(rng, 3)} {_digits(rng, 3)}",
        lambda: f"+84{vn_mobile()}{_digits(rng, 7)}", lambda: f"0{vn_mobile()}.{_digits(rng, 3)}.{_digits(rng, 4)}",
    ]
    for make in phone_formats:
        add("phone", make, ["call me at {v} tonight", "số mình nè {v} gọi nha"])
    user = lambda: rng.choice(["jane", "hung", "tuan", "mike", "linh"]) + rng.choice([".", "_", ""]) + rng.choice(["doe", "nguyen", "tran", "smith"]) + _digits(rng, 2)  # noqa: E731
    add("email", lambda: f"{user()}@{rng.choice(['gmail.com', 'yahoo.com.vn', 'fpt.edu.vn'])}", ["mail {v} nhé", "send it to {v} pls"])
    add("email_obfuscated", lambda: f"{user().replace('.', ' dot ')} at gmail dot com", ["my email is {v}", "mail mình: {v}"])
    add("email_obfuscated", lambda: f"{user()}(at)yahoo.com", ["write to {v}"])
    add("email_obfuscated", lambda: f"{user()} a còng gmail chấm com", ["mail nè {v} nha"])
    add("social_link", lambda: f"{rng.choice(['facebook.com', 'instagram.com', 'tiktok.com'])}/{user()}", ["add me {v}", "follow tui {v} nha"])
    add("social_link", lambda: f"{re.sub(r'[._]', '', user())}.com", ["my site is {v}"])
    add("handle", lambda: "@" + user(), ["my ig is {v}", "follow mình {v} nha"])
    ssn = lambda: f"{rng.randrange(100, 666)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"  # noqa: E731
    add("ssn", ssn, ["my ssn is {v}", "SSN {v} for the form"])
    add("ssn", lambda: ssn().replace("-", ""), ["social security number: {v}"])
    add("passport", lambda: rng.choice("BCN") + _digits(rng, 7), ["passport no {v}", "số hộ chiếu của mình là {v}"])
    add("passport", lambda: _digits(rng, 9), ["passport number {v}"])
    add("plate_vn", lambda: f"{rng.randrange(11, 99)}{rng.choice('ABCDEFGH')}-{_digits(rng, 3)}.{_digits(rng, 2)}", ["xe mình biển {v} nha", "my bike is {v}"])
    add("plate_vn", lambda: f"{rng.randrange(11, 99)}{rng.choice('ABCDEFGH')}{rng.randrange(1, 9)}-{_digits(rng, 3)}.{_digits(rng, 2)}", ["biển số {v}"])
    add("plate_us", lambda: f"{rng.randrange(1, 9)}{rng.choice(['ABC', 'XYZ', 'KLM'])}{_digits(rng, 3)}", ["license plate {v}", "my plate is {v}"])
    add("plate_us", lambda: f"{rng.choice(['ABC', 'XYZ', 'KLM'])}-{_digits(rng, 4)}", ["the plate: {v}"])
    months = ["January", "March", "May", "July", "October", "December"]
    add("dob", lambda: f"{rng.randrange(1, 28):02d}/{rng.randrange(1, 12):02d}/{rng.randrange(1960, 2005)}",
        ["I was born on {v}", "ngày sinh {v}", "sinh ngày {v} nha"])
    add("dob", lambda: f"{rng.choice(months)} {rng.randrange(1, 28)}, {rng.randrange(1960, 2005)}", ["my birthday is {v}", "DOB: {v}"])
    add("dob", lambda: f"{rng.randrange(1, 28)} tháng {rng.randrange(1, 12)} năm {rng.randrange(1960, 2005)}", ["sinh nhật mình ngày {v} đó"])
    # Names of people who are not participants (a lexicon of given/family names; Vietnamese ones next to a cue).
    add("name_other", lambda: rng.choice(["Sarah", "Jessica", "Tommy", "Kevin", "Emily", "Brandon", "Megan", "Tyler"]),
        ["met {v} yesterday", "{v} said no lol", "did you see {v} at the party?"])
    add("name_other", lambda: rng.choice(["Miller", "Johnson", "Garcia", "Rodriguez", "Wilson"]),
        ["Jessica {v} called me", "ask Kevin {v} about it"])
    add("name_other", lambda: rng.choice(["Tuấn", "Linh", "Hương", "Quân", "Trang", "Dũng", "Thảo", "Huy"]),
        ["hôm qua gặp {v} ở quán", "anh {v} nói vậy đó", "{v} ơi đi chơi không", "nhắn {v} chưa"])
    # Names NER catches beyond the lists: capitalized names in no lexicon (spaCy NER + person cues).
    add("name_unlisted", lambda: rng.choice(["Priyanka", "Keanu", "Siobhan", "Oksana", "Dmitri", "Tariq", "Leilani",
                                             "Olumide", "Zainab", "Hiroshi"]),
        ["I met {v} at the gym yesterday", "my coworker {v} is so annoying", "{v} said she would come"])
    # What NER misses in chat: Vietnamese names in lowercase (family-name lexicon, or a person cue before a given
    # name), all-caps names, nicknames and vocatives.
    add("name_vi_lowercase", lambda: rng.choice(["nguyễn văn hùng", "trần thị mai", "phạm minh tuấn", "lê thị hương",
                                                 "hoàng anh dũng", "nguyen van nam", "tran thi lan", "đỗ quang huy"]),
        ["hôm qua gặp {v} ở quán", "{v} nhắn mình nè", "bạn của mình tên {v}"])
    add("name_vi_lowercase", lambda: rng.choice(["tuấn", "hương", "quân", "trang", "dũng", "thảo", "huy", "yến"]),
        ["anh {v} nói vậy đó", "chị {v} về chưa", "bạn mình tên là {v}"])
    add("name_allcaps", lambda: rng.choice(["SARAH", "KEVIN", "JESSICA", "NGUYỄN VĂN HÙNG", "TRẦN THỊ MAI"]),
        ["{v} said no lol", "hôm qua gặp {v}"])
    add("nickname_vocative", lambda: rng.choice(["tommy", "bin", "bống", "na", "jojo", "tin tin", "bi"]),
        ["{v} ơi đi chơi không", "hey {v} what's up"])
    # Lowercase street addresses, EN and VI.
    street = lambda: rng.choice(["main", "oak", "elm", "maple", "park", "lake view", "pine"])  # noqa: E731
    add("address_en_lower", lambda: f"{rng.randrange(1, 9999)} {street()} {rng.choice(['st', 'street', 'ave', 'avenue', 'rd', 'road', 'blvd'])}",
        ["i live at {v} now", "come to {v} at 7", "my address is {v} apt 4"])
    vi_street = lambda: rng.choice(["huế", "lê lợi", "nguyễn huệ", "trần hưng đạo", "hàng bạc", "lý thường kiệt"])  # noqa: E731
    add("address_vi_lower", lambda: f"số {rng.randrange(1, 300)} ngõ {rng.randrange(1, 99)} phố {vi_street()}",
        ["nhà mình ở {v} nha", "qua {v} đi"])
    add("address_vi_lower", lambda: f"{rng.randrange(1, 300)} đường {vi_street()}, quận {rng.randrange(1, 12)}",
        ["mình ở {v} nhé", "giao tới {v}"])
    add("address_vi_lower", lambda: f"hẻm {rng.randrange(1, 300)} {vi_street()}", ["nhà nó trong {v} đó"])
    # Participants' names in every casing, unaccented, and as vocatives ("An" and "Will" are also common words).
    for v, s in [("jane", "jane said hi"), ("JANE", "JANE!!"), ("Jane", "ok Jane"), ("hùng", "hùng ơi đi ăn"),
                 ("hung", "hung dau roi"), ("HÙNG", "HÙNG ƠI"), ("Hùng", "gặp Hùng chưa"), ("an", "an ơi mai rảnh không"),
                 ("An", "An ơi"), ("An", "hỏi chị An đi"), ("Will", "I told Will yesterday"), ("will", "will ơi"),
                 ("Will", "hi Will, how are you"), ("tuấn", "tuấn nói vậy đó"), ("tuan", "tuan oi"), ("TURNER", "TURNER lol"),
                 ("doe", "jane doe is here"), ("Minh", "anh Minh đâu rồi")]:
        out.setdefault("name", []).append((v, s))
    return out


def _kind_hit(kind: str, value: str, output: str) -> bool:
    """The planted value is gone from the anonymized sentence (names: as a whole word, any casing)."""
    if kind.startswith(("name", "nickname")):  # every word of the name, as a whole word
        return not any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", output) for w in value.split() if w.lower() not in
                       ("văn", "thị", "van", "thi"))  # gender markers are kept on purpose
    return value not in output


def test_recall_per_kind_on_planted_en_and_vi_values_is_at_least_95_percent(anonymizer_key_file):
    anon = sc.Anonymizer(PARTICIPANTS, key=sc.load_or_create_key(anonymizer_key_file))
    rows = []
    for kind, items in planted_values().items():
        outputs = anon.texts([s for _, s in items])
        misses = [(v, s, o) for (v, s), o in zip(items, outputs) if not _kind_hit(kind, v, o)]
        rows.append((kind, len(items), 1 - len(misses) / len(items), misses))
    print(f"\nrecall per kind (planted EN/VI values; NER: {anon.ner}):")
    for kind, n, recall, _ in rows:
        print(f"  {kind:<18} n={n:<3} recall={recall:.3f}")
    for kind, _, recall, misses in rows:
        assert recall >= RECALL_MIN, f"{kind}: recall {recall:.2f}; missed e.g. {misses[:3]}"
    # Each replaced value keeps its kind: a phone stays a phone, an e-mail an e-mail.
    assert re.fullmatch(r"\+84 9\d{2} \d{3} \d{3}", anon.text("+84 912 345 678"))
    assert "@" in anon.text("a.b@example.com") and anon.text("facebook.com/jane.doe").startswith("facebook.com/")
    assert anon.replaced["phone"] > 0 and anon.replaced["name"] > 0


def test_common_words_that_are_also_name_parts_are_left_alone():
    anon = sc.Anonymizer(["Will Turner", "May Brown", "Hope Davis", "Nguyễn Thị An", "Lê Minh"], key=bytes(range(32)))
    for text in ["I will call you, may I?", "I hope so", "an toàn là trên hết", "mình đi ăn nhé", "Will you come?",
                 "May the force be with you", "minh di an com nha"]:
        assert anon.text(text) == text


def _chitchat_messages(n: int) -> list[str]:
    import chitchat_dataset

    return [m for m in itertools.islice(iter(chitchat_dataset.MessageDataset()), n) if m.strip()]


def over_redaction(anon: sc.Anonymizer, texts: list[str]) -> tuple[int, int]:
    """(word tokens replaced, word tokens) over texts with no PII and no names: every replacement is wrong."""
    wrong = total = 0
    for text, out in zip(texts, anon.texts(texts)):  # batched, as 01 runs it (NER over nlp.pipe)
        words = re.findall(r"\w+", text)
        total += len(words)
        if out != text:
            sm = difflib.SequenceMatcher(a=words, b=re.findall(r"\w+", out), autojunk=False)
            wrong += len(words) - sum(b.size for b in sm.get_matching_blocks())
    return wrong, total


def test_over_redaction_on_ordinary_chat_text_is_at_most_half_a_percent():
    # Participants whose names are everyday words, so the figure includes name over-matching.
    anon = sc.Anonymizer(["Will Turner", "May Brown", "Hope Davis", "Grace Lee", "Nguyễn Thị An", "Jordan Smith"],
                         key=bytes(range(32)))
    texts = _chitchat_messages(20_000)
    wrong, total = over_redaction(anon, texts)
    rate = wrong / total
    print(f"\nover-redaction on {len(texts):,} chitchat messages: {wrong:,} of {total:,} word tokens replaced "
          f"({100 * rate:.3f} %); by kind {dict(anon.replaced)}")
    assert rate <= OVER_REDACTION_MAX


def test_key_is_created_once_private_and_random(tmp_path):
    path = tmp_path / "config" / "simme" / "anonymizer.key"
    key = sc.load_or_create_key(path)
    assert len(key) == sc.KEY_BYTES and sc.load_or_create_key(path) == key
    assert (path.stat().st_mode & 0o777) == 0o600 and (path.parent.stat().st_mode & 0o777) == 0o700
    assert sc.load_or_create_key(tmp_path / "other.key") != key
    (tmp_path / "short.key").write_bytes(b"x" * 5)
    with pytest.raises(sc.UserError, match="bytes"):
        sc.load_or_create_key(tmp_path / "short.key")
    assert "key" not in repr(sc.Anonymizer(["Jane Doe"], key=key)).lower().replace("anonymizer", "")


# ------------------------------------------------------------------------------------------------ end to end


def _write_export(root: Path) -> dict[str, str]:
    """A classic export with one thread per other participant, holding every planted value; returns secrets."""
    planted = planted_values(seed=1)
    lines = [s for items in planted.values() for _, s in items]
    # Names nobody listed are checked where they were written (recall test): their surrogates come from the same
    # name lists, so "Hương" can rightly appear as the surrogate of another name.
    secrets_ = {v for kind, items in planted.items() if not kind.startswith(("name", "nickname")) for v, _ in items}
    others = [p for p in PARTICIPANTS if p != OWNER]
    t = 1_700_000_000_000
    for i, other in enumerate(others):
        msgs = []
        for j, line in enumerate(lines[i::len(others)]):
            msgs.append({"sender_name": other if j % 2 else OWNER, "timestamp_ms": t, "content": line})
            t += 60_000
        doc = {"participants": [{"name": other}, {"name": OWNER}], "messages": list(reversed(msgs)), "title": other,
               "is_still_participant": True, "thread_path": f"inbox/{other.split()[0].lower()}_{i}"}
        path = root / "messages" / "inbox" / f"{_fold(other)}_{1000 + i}" / "message_1.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return {s for s in secrets_ if len(s) >= 5}


def _fold(name: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKD", name.replace("đ", "d")).encode("ascii", "ignore").decode().lower().replace(" ", "")


def _run(prep, export: Path, out: Path, key_file: Path, tok: Path) -> dict:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMME_KEY_FILE", str(key_file))
        return prep.main(prep.PrepareArguments(export_path=[str(export)], output_dir=str(out), owner=OWNER,
                                               model_name_or_path=str(tok), max_length=256))


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _without_fingerprint(rel: str, blob: bytes) -> bytes:
    """datasets writes a random `_fingerprint` (a cache id, no data) into each state.json; the rest must match."""
    if not rel.endswith("state.json"):
        return blob
    return json.dumps({k: v for k, v in json.loads(blob).items() if k != "_fingerprint"}).encode()


def test_key_decides_surrogates_same_key_is_byte_identical_and_no_output_holds_a_value_or_the_key(
        tmp_path, tiny_model_dir, capfd):
    prep = sc.load_script(ROOT / "01_prepare.py")
    export = tmp_path / "export"
    secrets_ = _write_export(export)
    # Fixed keys keep the test deterministic: with random ones a surrogate date or plate can, rarely, equal
    # another planted value.
    key_a, key_b = tmp_path / "keys" / "a.key", tmp_path / "keys" / "b.key"
    key_a.parent.mkdir()
    key_a.write_bytes(bytes(range(32)))
    key_b.write_bytes(bytes(range(100, 132)))
    capfd.readouterr()
    report = _run(prep, export, tmp_path / "a1", key_a, tiny_model_dir)
    _run(prep, export, tmp_path / "a2", key_a, tiny_model_dir)
    _run(prep, export, tmp_path / "b1", key_b, tiny_model_dir)
    logs = "".join(capfd.readouterr())

    a1, a2, b1 = _files(tmp_path / "a1"), _files(tmp_path / "a2"), _files(tmp_path / "b1")
    data = [k for k in a1 if k.startswith(("dataset", "messages"))]
    assert data and all(_without_fingerprint(k, a1[k]) == _without_fingerprint(k, a2[k]) for k in data), \
        "same key: byte-identical dataset and messages"
    # Another key: other surrogates for the same people and the same planted phone.
    msgs_a = (tmp_path / "a1" / "messages")
    from datasets import load_from_disk

    ta, tb = load_from_disk(str(msgs_a)), load_from_disk(str(tmp_path / "b1" / "messages"))
    assert set(ta["sender"]).isdisjoint(tb["sender"])
    line = next(i for i, t in enumerate(ta["text"]) if t.startswith("call me at"))
    assert ta["text"][line] != tb["text"][line]

    key_bytes = [key_a.read_bytes(), key_b.read_bytes()]
    key_texts = [k.hex() for k in key_bytes] + [str(key_a), str(key_b), "anonymizer.key"]
    # "Văn"/"Thị" mark gender only and are kept on purpose.
    names = [p for full in PARTICIPANTS for p in [full, *full.split()] if len(p) > 2 and p not in ("Văn", "Thị")]
    names += [_fold(p) for p in PARTICIPANTS]
    for files in (a1, b1):
        for rel, blob in files.items():
            for s in secrets_ | set(names):
                assert s.encode() not in blob, f"a planted value or a name leaked into {rel}"
            assert not any(k in blob for k in key_bytes) and not any(k.encode() in blob for k in key_texts), rel
    for s in secrets_ | set(names) | set(key_texts):
        assert s not in logs
    assert report["pii_replaced"]["phone"] > 0 and report["pii_replaced"]["name"] > 0
    assert all(isinstance(v, int) for v in report["pii_replaced"].values())  # counts by kind, never values
    assert os.environ.get("SIMME_KEY_FILE") != str(key_a)
