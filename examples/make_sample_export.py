"""Build the demo's bundled sample: a realistic Facebook Messenger export made from chitchat-dataset (MIT).

The most prolific chitchat sender becomes the export's owner; every partner gets an invented name (faker).
Classic DYI layout (`your_facebook_activity/messages/{inbox,archived_threads,e2ee_cutover}`) with Latin-1
mojibake and newest-first multi-file threads (message_1 = newest), a separate E2EE "secure storage" export
(flat `<Name>_<n>.json`, camelCase, native UTF-8, oldest-first) continuing a few threads with a handful of
overlapping duplicates, some noise (calls, reaction pseudo-messages, unsent, attachments), planted fake PII,
and a synthetic English/Vietnamese code-switching group thread. Deterministic for a given --seed.

python examples/make_sample_export.py --output_dir data/sample_export
python examples/make_sample_export.py --output_dir outputs/bench/export --n_messages 250000   # bench export
python examples/make_sample_export.py --output_dir data/sample_export_old --holdback_days 30  # the same, a month older

--holdback_days N writes the export as it was downloaded N days before the sample's last conversation: the same
seed gives the same messages, threads and thread paths, minus those newer than that day (an exact subset), so 01 on
both exports together counts every older message once (docs/continuous.md).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# Fake PII planted in the sample so the anonymizer is exercised; none of it may reach data/01_prepared.
PLANTED_PII = {
    "phone_vn_intl": "+84 912 345 678",
    "phone_vn": "0903 123 456",
    "phone_us": "(415) 555-0132",
    "email": "jordan.pii.sample@example.com",
    "address_en": "42 Maple Street",
    "address_vi": "số 12 đường Lê Lợi, phường Bến Nghé, quận 1",
    "cccd": "079203001234",
    "card": "4111 1111 1111 1111",
    "url": "https://my-private-site.example.org/jordan",
}
PII_LINES = [
    "my new number is {phone_vn_intl} btw",
    "text me at {phone_us} when you land",
    "send it to {email} pls",
    "I moved, I live at {address_en} now",
    "card ends up being {card} lol dont tell anyone",
    "here's my page {url}",
]
PII_LINES_VI = [
    "số mình nè {phone_vn} gọi nha",
    "nhà mình ở {address_vi} nha mọi người",
    "CCCD của mình là {cccd}, điền giùm với",
]

# Synthetic English/Vietnamese code-switching lines for the group thread (no real people).
GROUP_LINES = [
    "ê mọi người ơi, tối nay đi cafe không?", "ok let's go, mấy giờ?", "8pm nha, chỗ cũ", "deadline tuần này căng quá 😩",
    "same, meeting all day luôn", "haha ai rảnh thì đi ăn lẩu đi", "I'm in!! 🙌", "trời mưa quá, lười ra đường ghê",
    "có ai xem phim mới chưa? so good", "chưa, spoil là block nha 😤", "lol ok ok", "thứ 7 này đi Đà Lạt không mọi người",
    "nghe hấp dẫn đó, but I need to check my schedule", "book vé đi, để tui lo khách sạn", "mình bận rồi, next time nha",
    "ủa sao im lặng hết vậy", "sorry mới đọc tin nhắn", "chụp hình gửi group đi", "đẹp quá trời 😍", "ăn gì chưa mọi người?",
    "vừa ăn phở xong, no quá", "weekend này có plan gì chưa?", "ngủ nướng thôi 😴", "haha chuẩn luôn", "ai có charger iPhone không",
    "tui có nè, qua lấy đi", "thanks bro 🙏", "happy birthday nha!! 🎂🎉", "chúc mừng sinh nhật, tuổi mới vui vẻ", "cảm ơn mọi người nhiều ❤️",
    "traffic kẹt quá, trễ 15 phút nha", "no worries, tụi mình đợi", "ok tới rồi nè", "order trà sữa giùm mình 1 ly", "size L, ít đá nha",
    "mai đi làm sớm, ngủ đây. good night!", "g9 😘", "ê có ai biết quán bún bò nào ngon không", "quán đầu hẻm ngon lắm, cheap nữa",
    "để cuối tuần thử", "btw tháng sau họp lớp nha", "ok noted 👍", "hôm nay mệt ghê", "cố lên, sắp tới cuối tuần rồi",
]
GROUP_SYSTEM = [
    "{a} đã thêm {b} vào nhóm.", "{a} đã đặt tên nhóm là Hội Cà Phê ☕.", "{a} named the group Hội Cà Phê ☕.",
    "Cuộc gọi video đã kết thúc.", "{a} đã rời khỏi nhóm.", "{a} started a video chat.",
]


@dataclass
class SampleArguments:
    output_dir: str = field(default="data/sample_export", metadata={"help": "Where to write the export (replaced if it exists)."})
    seed: int = field(default=42, metadata={"help": "Seed of every random choice (names, noise, timestamps)."})
    n_messages: int | None = field(
        default=None,
        metadata={"help": "Build a bench export of at least N messages from ALL chitchat conversations (repeated if "
                          "needed) instead of the owner's conversations only."},
    )
    max_conversations: int | None = field(default=None, metadata={"help": "Use at most this many of the owner's conversations (tests)."})
    messages_per_file: int = field(default=1000, metadata={"help": "Messages per classic message_N.json (real exports: ~10,000)."})
    group_sessions: int = field(default=60, metadata={"help": "Sessions of the synthetic EN/VI group thread."})
    holdback_days: float = field(default=0, metadata={"help": "Leave out the messages of the last N days before the "
                                                               "sample's last conversation: the older export (a subset)."})


def _mojibake(obj):
    """Encode every string the way classic DYI JSON does: UTF-8 bytes read as Latin-1."""
    if isinstance(obj, str):
        return obj.encode("utf-8").decode("latin-1")
    if isinstance(obj, list):
        return [_mojibake(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _mojibake(v) for k, v in obj.items()}
    return obj


def _slug(name: str) -> str:
    """Facebook's thread folder slug: lowercase, no spaces or diacritics."""
    plain = unicodedata.normalize("NFKD", name.replace("đ", "d").replace("Đ", "D")).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]", "", plain.lower()) or "facebookuser"


def _vi_name(rng: random.Random) -> str:
    """A Vietnamese full name (family, middle, given) from faker's vi_VN lists."""
    from faker.providers.person.vi_VN import Provider as P

    given = list(P.first_names_male) + list(P.first_names_female)
    return f"{rng.choice(list(P.last_names))} {rng.choice(list(P.middle_names))} {rng.choice(given)}"


def _load_conversations(owner_only: bool, max_conversations: int | None) -> tuple[str, list[list[tuple[str, str, float]]]]:
    """Chitchat conversations as [(sender_id, text, unix_seconds)], plus the most prolific sender id."""
    import collections

    import chitchat_dataset

    data = chitchat_dataset.Dataset()
    counts = collections.Counter(u["sender"] for conv in data.values() for m in conv["messages"] for u in m)
    owner = counts.most_common(1)[0][0]
    convs = []
    for key in sorted(data):
        conv = data[key]
        rows = [(u["sender"], u["text"], datetime.fromisoformat(u["timestamp"].replace("Z", "+00:00")).timestamp())
                for m in conv["messages"] for u in m]
        if owner_only and not any(s == owner for s, _, _ in rows):
            continue
        if rows:
            convs.append(rows)
    convs.sort(key=lambda rows: rows[0][2])
    return owner, convs[:max_conversations] if max_conversations else convs


def _retime(convs: list, rng: random.Random, start_unix: float) -> list[list[tuple[str, str, int]]]:
    """Lay conversations one after another (hours..days apart), in their own order, with realistic gaps.

    chitchat stores one timestamp per turn, so its bubbles are milliseconds apart: each bubble gets a typing
    time (3-6 chars/s) plus a pause (0.5-4 s after one's own bubble, ~20 s median after the other's), or the
    conversation's own gap when that is longer (capped at 20 min, so a conversation stays one session).
    """
    out, t = [], start_unix
    for rows in convs:
        new, clock, prev = [], t, None
        for sender, text, ts in rows:
            if prev is not None:
                typing = len(text) / rng.uniform(3.0, 6.0)
                pause = rng.uniform(0.5, 4.0) if sender == prev[0] else min(rng.lognormvariate(3.0, 0.9), 600.0)
                clock += max(typing + pause, min(max(ts - prev[1], 0.0), 20 * 60))
            new.append((sender, text, int(clock * 1000)))
            prev = (sender, ts)
        out.append(new)
        t = clock + rng.choice([2, 3, 5, 8, 12, 20, 30, 48, 72]) * 3600 * rng.uniform(0.5, 1.0)
    return out


def _classic_msg(sender: str, ts: int, content: str | None = None, **extra) -> dict:
    """A 2024/2025-style classic message (no `type`, geoblock flags on every row)."""
    msg = {"sender_name": sender, "timestamp_ms": ts}
    if content is not None:
        msg["content"] = content
    msg.update(extra)
    msg["is_geoblocked_for_viewer"] = False
    msg["is_unsent_image_by_messenger_kid_parent"] = False
    return msg


def _noise(rng: random.Random, owner: str, other: str, ts: int, thread_dir: str) -> dict:
    """One system/noise row of a classic thread (the kinds a real export contains)."""
    kind = rng.choice(["call", "missed", "react", "unsent", "attach", "photo", "sticker", "connected"])
    if kind == "call":
        return _classic_msg(owner, ts, f"You called {other}.", call_duration=rng.randrange(20, 900))
    if kind == "missed":
        return _classic_msg(other, ts, f"{other} missed your call.", call_duration=0, missed=True)
    if kind == "react":
        return _classic_msg(other, ts, "Reacted 😂 to your message ")
    if kind == "unsent":
        return _classic_msg(rng.choice([owner, other]), ts, is_unsent=True)
    if kind == "attach":
        return _classic_msg(owner, ts, "You sent an attachment.", share={"link": "https://www.facebook.com/reel/123456789"})
    if kind == "photo":
        uri = f"your_facebook_activity/messages/inbox/{thread_dir}/photos/{rng.randrange(10**9)}.jpg"
        return _classic_msg(rng.choice([owner, other]), ts, photos=[{"uri": uri, "creation_timestamp": ts // 1000}])
    if kind == "sticker":
        return _classic_msg(other, ts, sticker={"uri": "your_facebook_activity/messages/stickers_used/369239263222822.png", "ai_stickers": []})
    return _classic_msg(other, ts, "You are now connected on Messenger")


def _write_classic(root: Path, section: str, thread_dir: str, title: str, participants: list[str], msgs: list[dict],
                   per_file: int, group: bool = False, until_ms: int | None = None) -> int:
    """Write a classic thread newest-first, split in message_N.json parts (message_1 = newest); return #files.
    With `until_ms` only the messages up to then (none: the thread is not in the export yet)."""
    if until_ms is not None:
        msgs = [m for m in msgs if m["timestamp_ms"] <= until_ms]
        if not msgs:
            return 0
    folder = root / "your_facebook_activity" / "messages" / section / thread_dir
    folder.mkdir(parents=True, exist_ok=True)
    newest_first = sorted(msgs, key=lambda m: m["timestamp_ms"], reverse=True)
    parts = [newest_first[i:i + per_file] for i in range(0, len(newest_first), per_file)] or [[]]
    for n, part in enumerate(parts, start=1):
        doc = {"participants": [{"name": p} for p in participants], "messages": part, "title": title,
               "is_still_participant": True, "thread_path": f"{section}/{thread_dir}", "magic_words": []}
        if group:
            doc["image"] = {"uri": f"your_facebook_activity/messages/{section}/{thread_dir}/photos/group.jpg", "creation_timestamp": 1700000000}
            doc["joinable_mode"] = {"mode": 1, "link": ""}
        # ensure_ascii + mojibake = every non-ASCII byte written as \u00XX, exactly like Facebook.
        (folder / f"message_{n}.json").write_text(json.dumps(_mojibake(doc), indent=2, ensure_ascii=True), encoding="ascii")
    return len(parts)


def _group_thread(rng: random.Random, owner: str, start_ms: int, end_ms: int, n_sessions: int, extra: list[str]) -> tuple[list[str], list[dict], int]:
    """Synthetic EN/VI group: several members, the owner silent in about a third of the sessions."""
    members = [_vi_name(rng) for _ in range(4)]
    people = [owner] + members
    msgs = [_classic_msg(members[0], start_ms, f"{members[0]} created the group."),
            _classic_msg(members[0], start_ms + 1000, GROUP_SYSTEM[0].format(a=members[0], b=owner))]
    t = start_ms + 60_000
    pii = [line.format(**PLANTED_PII) for line in PII_LINES_VI] + extra
    owner_silent = 0
    step = (end_ms - start_ms) / max(n_sessions, 1)
    for s in range(n_sessions):
        # Sessions spread evenly over the whole history, so every split (by time) holds some group chat.
        t = max(t + 2 * 3600 * 1000, start_ms + int((s + rng.uniform(0.0, 0.6)) * step))
        silent = rng.random() < 0.35
        owner_silent += silent
        speakers = members if silent else people
        for _ in range(rng.randrange(6, 26)):
            sender = rng.choice(speakers)
            text = pii.pop() if pii and rng.random() < 0.3 else rng.choice(GROUP_LINES)
            msgs.append(_classic_msg(sender, t, text))
            t += rng.choice([3, 8, 15, 30, 45, 90, 200]) * 1000 + rng.randrange(1000)
        if rng.random() < 0.3:
            line = rng.choice(GROUP_SYSTEM[1:]).format(a=rng.choice(members), b=owner)
            msgs.append(_classic_msg(rng.choice(members), t, line))
    for line in pii:  # every planted value must be in the export
        msgs.append(_classic_msg(members[1], t, line))
        t += 5000
    return people, msgs, owner_silent


def _conversations(args: SampleArguments, rng: random.Random) -> tuple[str, list[list[tuple[str, str, int]]]]:
    """The owner's chitchat id and the retimed conversations to export (bench: repeated up to n_messages)."""
    bench = args.n_messages is not None
    owner_id, convs = _load_conversations(owner_only=not bench, max_conversations=args.max_conversations)
    if bench:
        base, convs, total = convs, [], 0
        while total < args.n_messages:  # repeat the corpus (new timestamps) until big enough
            conv = base[len(convs) % len(base)]
            convs.append(conv)
            total += len(conv)
    return owner_id, _retime(convs, rng, datetime(2023, 1, 9, 18, tzinfo=timezone.utc).timestamp())


def _threads_by_partner(convs: list, owner_id: str) -> dict[str, list[tuple[str, str, int]]]:
    """All rows exchanged with each partner, keyed by the partner's chitchat id."""
    threads: dict[str, list[tuple[str, str, int]]] = {}
    for rows in convs:
        # In the bench export the first non-owner speaker is the partner; the other speaker plays the owner.
        others = [s for s, _, _ in rows if s != owner_id]
        partner = others[0] if others else "self"
        threads.setdefault(partner, []).extend(rows)
    return threads


class _ExportWriter:
    """Writes the threads of one export: holds the seeded generators, the invented names, the planted PII
    still to place and the counts for the summary line."""

    def __init__(self, out: Path, rng: random.Random, fake, owner_id: str, messages_per_file: int, until_ms: int | None):
        self.classic_root = out / "facebook-export-2025"
        self.e2ee_root = out / "secure_storage_messages"
        self.rng, self.fake, self.owner_id, self.per_file = rng, fake, owner_id, messages_per_file
        self.until_ms = until_ms  # the older export: messages after it are generated (same seeded draws), not written
        self.owner = fake.name()
        self.names: dict[str, str] = {}
        self.pii = [line.format(**PLANTED_PII) for line in PII_LINES]
        self.stats = {"threads": 0, "classic_files": 0, "e2ee_files": 0, "messages": 0, "noise": 0, "e2ee_duplicates": 0}

    def name_of(self, sender_id: str) -> str:
        """A partner's invented name, unique and never the owner's."""
        if sender_id not in self.names:
            name = self.fake.name()
            while name == self.owner or name in self.names.values():
                name = self.fake.name()
            self.names[sender_id] = name
        return self.names[sender_id]

    def partner_thread(self, i: int, partner: str, rows: list[tuple[str, str, int]], e2ee: bool) -> None:
        """Write the i-th one-on-one thread (largest first); with `e2ee` its last 30% goes to an E2EE file."""
        other = self.name_of(partner)
        thread_dir = f"{_slug(other)}_{10**15 + i * 7919}"
        msgs = self._classic_messages(sorted(rows, key=lambda r: r[2]), other, thread_dir)
        section = "archived_threads" if i % 10 == 9 else "inbox"
        if e2ee:
            msgs, section = self._split_e2ee(msgs, other, 10 + i), "e2ee_cutover"
        per_file = self.per_file if i != 0 else max(50, len(msgs) // 12)  # the top thread gets >= 10 parts
        files = _write_classic(self.classic_root, section, thread_dir, other, [other, self.owner], msgs, per_file,
                               until_ms=self.until_ms)
        self.stats["classic_files"] += files
        self.stats["threads"] += files > 0

    def _classic_messages(self, rows: list[tuple[str, str, int]], other: str, thread_dir: str) -> list[dict]:
        """Classic messages of one thread, with a few planted PII values, reactions and noise rows."""
        rng, owner, msgs = self.rng, self.owner, []
        for sender, text, ts in rows:
            who = owner if sender == self.owner_id else other
            if self.pii and sender == self.owner_id and rng.random() < 0.05:
                text = self.pii.pop()
            msg = _classic_msg(who, ts, text)
            if rng.random() < 0.03:
                msg["reactions"] = [{"reaction": rng.choice(["❤", "😂", "😮", "👍"]), "actor": owner if who != owner else other}]
            msgs.append(msg)
            if rng.random() < 0.02:
                msgs.append(_noise(rng, owner, other, ts + rng.randrange(1, 5000), thread_dir))
                self.stats["noise"] += 1
        return msgs

    def _split_e2ee(self, msgs: list[dict], other: str, n: int) -> list[dict]:
        """Write the thread's last 30% (and a few overlapping messages) as E2EE file n; return the classic part."""
        cut = int(len(msgs) * 0.7)
        classic, later = msgs[:cut], msgs[cut:]
        dup = [m for m in classic[-5:] if "content" in m][-3:]  # the two exports overlap by a few messages
        self.stats["e2ee_duplicates"] += len(dup)
        e2ee_msgs = [
            {"senderName": m["sender_name"], "timestamp": m["timestamp_ms"], "text": m.get("content", ""),
             "type": "text" if m.get("content") else ("placeholder" if m.get("is_unsent") else "media"),
             "media": [{"uri": f"./media/{self.rng.randrange(10**12):x}.jpeg"}] if "photos" in m else [],
             "reactions": [{"actor": r["actor"], "reaction": r["reaction"]} for r in m.get("reactions", [])],
             "isUnsent": bool(m.get("is_unsent"))}
            for m in dup + later
        ]
        for m in e2ee_msgs:
            if m["isUnsent"]:
                m["text"] = "User unsent a message"
        if self.until_ms is not None:
            e2ee_msgs = [m for m in e2ee_msgs if m["timestamp"] <= self.until_ms]
            if not e2ee_msgs:
                return classic
        doc = {"participants": [self.owner, other], "threadName": f"{other}_{n}", "messages": e2ee_msgs}
        (self.e2ee_root / f"{other}_{n}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
        self.stats["e2ee_files"] += 1
        return classic

    def group_thread(self, start_ms: int, end_ms: int, n_sessions: int) -> tuple[int, int]:
        """Write the synthetic EN/VI group (with the PII values not placed yet); return (#messages, #owner-silent sessions)."""
        people, gmsgs, silent = _group_thread(self.rng, self.owner, start_ms, end_ms, n_sessions, self.pii)
        gdir = f"hoicaphe_{10**15 + 424242}"
        self.stats["classic_files"] += _write_classic(self.classic_root, "inbox", gdir, "Hội Cà Phê ☕", people, gmsgs,
                                                      self.per_file, group=True, until_ms=self.until_ms)
        self.stats["threads"] += 1
        return len(gmsgs), silent


def main(args: SampleArguments) -> None:
    rng = random.Random(args.seed)
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(args.seed)
    out = Path(args.output_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "secure_storage_messages").mkdir(parents=True)

    # -- conversations, owner and partners ----------------------------------------------------------
    owner_id, convs = _conversations(args, rng)
    last_ts = max(r[2] for rows in convs for r in rows)
    until_ms = last_ts - int(args.holdback_days * 24 * 3600 * 1000) if args.holdback_days else None
    writer = _ExportWriter(out, rng, fake, owner_id, args.messages_per_file, until_ms)
    threads = _threads_by_partner(convs, owner_id)

    # -- classic threads (inbox / archived_threads / e2ee_cutover) + E2EE continuations ------------------
    order = sorted(threads, key=lambda p: (-len(threads[p]), p))
    e2ee_partners = set(order[1:7]) if args.n_messages is None else set(order[1:40])
    for i, partner in enumerate(order):
        writer.partner_thread(i, partner, threads[partner], e2ee=partner in e2ee_partners)

    # -- the synthetic EN/VI group thread -------------------------------------------------------------------
    first_ts = min(r[2] for rows in convs for r in rows)
    n_group, silent = writer.group_thread(first_ts + 3 * 24 * 3600 * 1000, last_ts, args.group_sessions)
    (writer.classic_root / "your_facebook_activity" / "messages" / "autofill_information.json").write_text('{"autofill_information_v2": {}}')
    stats = writer.stats
    stats["messages"] = sum(len(v) for v in threads.values()) + n_group + stats["noise"] + stats["e2ee_duplicates"]
    held_back = "" if until_ms is None else (f" | held back: the last {args.holdback_days:g} days (messages after "
                                             f"{datetime.fromtimestamp(until_ms / 1000, timezone.utc):%Y-%m-%d}; the "
                                             "message count is the full export's)")
    print(f"Sample export written to {out} | owner (invented): {len(writer.owner)} chars | "
          f"{stats['threads']:,} threads ({len(order):,} one-on-one + 1 group, {silent} owner-silent group sessions) | "
          f"{stats['classic_files']:,} classic files, {stats['e2ee_files']:,} E2EE files | ~{stats['messages']:,} messages "
          f"({stats['noise']:,} noise rows, {stats['e2ee_duplicates']:,} overlapping duplicates) | "
          f"planted PII values: {len(PLANTED_PII)}{held_back}")


if __name__ == "__main__":
    from trl import TrlParser

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    (sample_args,) = TrlParser((SampleArguments,)).parse_args_and_config()
    main(sample_args)
