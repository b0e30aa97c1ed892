"""Stage 01's logic between parsing and saving: merging thread parts, the owner, the samples of one thread
and the ingest report's accounting."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat_format import MESSAGES, OTHER_ROLE, OWNER_ROLE, SILENT_REPLY, build_system_prompt, chat_token_ids, format_user_turn
from .export import DROP_REASONS, REPAIR_REASONS, infer_owner
from .export_paths import EXPORT_SECTIONS
from .pii import PII_KINDS, message_fingerprint
from .runtime import UserError
from .samples import group_bursts, pack_windows, render_lengths, silent_cut_points, split_sessions, truncate_to_tokens
from .system_text import normalize_text


def messages_schema():
    """datasets Features of messages/ (every kept, anonymized message)."""
    from datasets import Features, Value

    return Features({"chat_id": Value("string"), "chat_type": Value("string"), "sender": Value("string"),
                     "is_owner": Value("bool"), "timestamp_ms": Value("int64"), "text": Value("string"),
                     "session_id": Value("string"), "source": Value("string"), "fingerprint": Value("string")})


def samples_schema():
    """datasets Features of one split of dataset/ (TRL conversational samples)."""
    from datasets import Features, List, Value

    return Features({MESSAGES: List({"role": Value("string"), "content": Value("string")}),
                     "chat_id": Value("string"), "chat_type": Value("string"),
                     "session_start": Value("int64"), "n_tokens": Value("int32")})


def group_thread_parts(parts: list[dict]) -> dict[int, list[int]]:
    """Indices of parsed threads that form one conversation, keyed by the index of the first.

    E2EE files continue the classic (e2ee_cutover) thread with the same participants, so an E2EE part joins the
    first classic part whose `participants` equal its own; every other part stands alone.
    """
    by_people: dict[frozenset, int] = {}
    for i, m in enumerate(parts):
        if m["kind"] == "classic":
            by_people.setdefault(m["participants"], i)
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(parts):
        target = by_people.get(m["participants"], i) if m["kind"] == "e2ee" else i
        groups.setdefault(target, []).append(i)
    return groups


def resolve_owner(given: str | None, people: list[set[str]], you_lines: dict[str, int],
                  anonymize: bool) -> tuple[str, bool, str]:
    """The export's owner: the --owner name, checked against the threads, or the inferred one.

    Args:
        given: the --owner value (None: infer it).
        people: the people of each conversation.
        you_lines: "You ..." system lines per sender (owner evidence).
        anonymize: whether error messages must not repeat names.
    Returns:
        (owner, inferred, evidence sentence without names).
    """
    if not given:
        owner, evidence = infer_owner(people, you_lines)
        return owner, True, evidence
    owner = normalize_text(given.strip())
    if not any(owner in p for p in people):
        hint = ""
        if not anonymize:
            try:
                hint = f"; did you mean {infer_owner(people, you_lines)[0]!r}?"
            except UserError:
                pass
        raise UserError(f"--owner {'(given name)' if anonymize else repr(owner)} appears in no thread{hint}. "
                        "Use the display name exactly as in the export, or omit --owner to infer it")
    return owner, False, "given with --owner"


@dataclass(frozen=True)
class SampleSettings:
    """How one thread is cut into training samples (01's flags of the same names)."""

    max_length: int
    session_gap_minutes: float
    burst_seconds: float
    silent_min_turns: int
    seed: int


@dataclass
class ThreadSamples:
    """What one merged thread contributes: its message rows, its sample rows, its sessions and its counts.

    `sessions` holds (session_start_ms, session_id, n_samples); `counts` the report's counters (chat type,
    turns, truncated, silent, windows_too_long, src:<source>).
    """

    messages: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    sessions: list[tuple[int, str, int]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def thread_chat_id(key: str, anon, seed: int) -> str:
    """The chat_id of a thread. Its key is a folder name that can hold a name: keyed when anonymized, so it cannot
    be guessed back."""
    return anon.chat_id(key) if anon else "c" + hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()[:12]


def build_thread_samples(rec: dict, owner: str, anon, tokenizer, settings: SampleSettings) -> ThreadSamples:
    """Anonymize one merged thread (from merge_thread_records), split it into sessions and cut its samples.

    Args:
        rec: the merged thread; `rec["messages"]` is non-empty and ascending.
        owner: the owner's real name; anon: the Anonymizer, or None to keep real names.
        tokenizer: measures samples against `settings.max_length` with its chat template.
    Returns:
        ThreadSamples; sample rows carry `session_id` for the time split.
    """
    out = ThreadSamples()
    owner_name = anon.name(owner) if anon else owner
    name = anon.name if anon else (lambda s: s)
    text_of = anon.text if anon else (lambda s: s)
    chat_id = thread_chat_id(rec["key"], anon, settings.seed)
    others, chat_type = _thread_others(rec, owner)
    out.counts[chat_type] += 1
    # One call per thread: the NER model runs batched over its texts (3.5x faster than one text at a time).
    texts = anon.texts([t for _, _, t, _ in rec["messages"]]) if anon else [t for _, _, t, _ in rec["messages"]]
    msgs = [(ts, name(s), t, src, s == owner) for (ts, s, _, src), t in zip(rec["messages"], texts)]
    fingerprint = anon.fingerprint if anon else message_fingerprint
    prints = [fingerprint(ts, s, t) for ts, s, t, _ in rec["messages"]]
    sess = split_sessions([m[0] for m in msgs], settings.session_gap_minutes)
    for (ts, s, t, src, is_owner), k, fp in zip(msgs, sess, prints):
        out.messages.append({"chat_id": chat_id, "chat_type": chat_type, "sender": s, "is_owner": is_owner,
                             "timestamp_ms": ts, "text": t, "session_id": f"{chat_id}-{k}", "source": src,
                             "fingerprint": fp})
        out.counts[f"src:{src}"] += 1
    title = text_of(rec["title"]) if chat_type == "group" and rec.get("title") else None
    system = {"role": "system", "content": build_system_prompt(chat_type, owner_name, [name(o) for o in others], title)}
    sampler = _SessionSampler(tokenizer, settings, system, chat_type, owner_name)
    start = 0
    for k in range(sess[-1] + 1):
        end = start
        while end < len(msgs) and sess[end] == k:
            end += 1
        part = msgs[start:end]
        start = end
        sid = f"{chat_id}-{k}"
        samples = sampler.session_samples([(ts, s, t) for ts, s, t, _, _ in part], out.counts)
        out.samples += [{MESSAGES: sample, "chat_id": chat_id, "chat_type": chat_type, "session_start": part[0][0],
                         "n_tokens": n_tokens, "session_id": sid} for sample, n_tokens in samples]
        out.sessions.append((part[0][0], sid, len(samples)))
    return out


def new_since_previous(previous_dir: Path, current_dir: Path) -> dict | None:
    """How many messages of the 01 output in `current_dir` the previous one in `previous_dir` did not hold (None
    without one, or when it predates fingerprints). Fingerprints are keyed: with another key every message is new."""
    from datasets import load_from_disk

    try:
        previous = load_from_disk(str(Path(previous_dir) / "messages"))
    except (OSError, ValueError):
        return None
    if "fingerprint" not in previous.column_names:
        return None
    seen = set(previous["fingerprint"])
    current = load_from_disk(str(Path(current_dir) / "messages"))["fingerprint"]
    return {"previous_messages": len(previous), "new_messages": sum(fp not in seen for fp in current)}


def _thread_others(rec: dict, owner: str) -> tuple[list[str], str]:
    """The thread's other people (most active first) and its chat type."""
    senders = Counter(s for _, s, _, _ in rec["messages"])
    ranked = sorted(senders, key=lambda s: (-senders[s], s)) + rec["participants"] + rec.get("all_senders", [])
    others = [p for p in dict.fromkeys(ranked) if p != owner and p != "Facebook user"]
    chat_type = "group" if len(others) >= 2 or rec.get("thread_type") == "RegularGroup" else "one_on_one"
    return others, chat_type


class _SessionSampler:
    """Cuts the sessions of one thread into samples: holds the thread's system prompt and token budget."""

    def __init__(self, tokenizer, settings: SampleSettings, system: dict, chat_type: str, owner_name: str):
        self.tokenizer, self.settings, self.system = tokenizer, settings, system
        self.chat_type, self.owner_name = chat_type, owner_name
        sys_len = render_lengths(tokenizer, [system])[0]
        self.budget = settings.max_length - sys_len
        if self.budget < 16:
            raise UserError(f"--max_length {settings.max_length} leaves no room after the {sys_len}-token system prompt; "
                            f"use at least {sys_len + 64}")
        self.silent_msg = {"role": OWNER_ROLE, "content": SILENT_REPLY}
        self.silent_len = render_lengths(tokenizer, [self.silent_msg])[0]

    def session_samples(self, part: list[tuple[int, str, str]], counts: Counter) -> list[tuple[list[dict], int]]:
        """(messages, n_tokens) of each sample of one session's (ts, sender, text) messages; counts updated."""
        turn_msgs, is_owner, lens = self._turns(part, counts)
        samples = []
        for a, b, extra in self._windows(lens, is_owner):
            sample = [self.system] + turn_msgs[a:b + 1] + ([extra] if extra else [])
            sample, n_tokens = self._fit(sample)
            if sample[-1]["role"] != OWNER_ROLE or n_tokens > self.settings.max_length:
                counts["windows_too_long"] += 1  # the owner turn alone overflows max_length: reported, not trained
                continue
            counts["silent"] += extra is not None
            samples.append((sample, n_tokens))
        return samples

    def _turns(self, part: list[tuple[int, str, str]], counts: Counter) -> tuple[list[dict], list[bool], list[int]]:
        """Chat messages of the session's turns, which are the owner's, and their rendered token lengths."""
        tok = self.tokenizer
        turns = group_bursts(part, self.settings.burst_seconds)
        is_owner = [t["sender"] == self.owner_name for t in turns]
        turn_msgs = [{"role": OWNER_ROLE if o else OTHER_ROLE,
                      "content": t["text"] if o else format_user_turn(self.chat_type, t["sender"], t["text"])}
                     for t, o in zip(turns, is_owner)]
        counts["turns"] += len(turns)
        lens = render_lengths(tok, turn_msgs)
        for i, n in enumerate(lens):
            if n > self.budget:  # one over-long turn: keep its start (owner target) or its end (context), never drop it
                overhead = n - len(tok(turn_msgs[i]["content"], add_special_tokens=False)["input_ids"])
                turn_msgs[i]["content"] = truncate_to_tokens(tok, turn_msgs[i]["content"], self.budget - overhead - 2,
                                                             keep_end=not is_owner[i])
                lens[i] = render_lengths(tok, [turn_msgs[i]])[0]
                counts["truncated"] += 1
        return turn_msgs, is_owner, lens

    def _windows(self, lens: list[int], is_owner: list[bool]) -> list[tuple[int, int, dict | None]]:
        """[start, end] turn windows, each with the extra final message (the silent reply) or None."""
        windows = [(a, b, None) for a, b in pack_windows(lens, is_owner, self.budget)]
        if self.chat_type != "group":
            return windows
        for a, b in silent_cut_points(is_owner, self.settings.silent_min_turns):
            total, first = self.silent_len, b + 1
            while first > a and total + lens[first - 1] <= self.budget:
                first -= 1
                total += lens[first]
            if first <= b:
                windows.append((first, b, self.silent_msg))
        return windows

    def _fit(self, sample: list[dict]) -> tuple[list[dict], int]:
        """Drop the oldest turns until the rendered sample fits max_length (or only one turn is left)."""
        n_tokens = len(chat_token_ids(self.tokenizer, sample))
        while n_tokens > self.settings.max_length and len(sample) > 2:  # template merges can add a token or two
            sample = [self.system] + sample[2:]
            n_tokens = len(chat_token_ids(self.tokenizer, sample))
        return sample, n_tokens


@dataclass
class IngestTally:
    """Running accounting of stage 01: messages read, kept and dropped, and the sample counters."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    duplicates: int = 0
    counts: Counter = field(default_factory=Counter)
    sessions: list[tuple[int, str, int]] = field(default_factory=list)
    chats_excluded: Counter = field(default_factory=Counter)
    messages_excluded: Counter = field(default_factory=Counter)

    def exclude(self, reason: str, threads: int = 1, messages: int | None = None) -> None:
        """Count chats left out by the selection (and their messages, when they were read)."""
        self.chats_excluded[reason] += threads
        if messages is not None:
            self.messages_excluded[reason] += messages

    def add_record(self, rec: dict) -> None:
        """Count one merged thread's messages and drops."""
        self.total += rec["total"]
        self.dropped.update(rec["dropped"])
        self.repaired.update(rec.get("repaired", {}))
        self.duplicates += rec["dropped"].get("duplicate", 0)
        self.counts["threads"] += 1

    def add_samples(self, thread: ThreadSamples) -> None:
        """Count one thread's kept messages, sessions and sample counters."""
        self.kept += len(thread.messages)
        self.sessions += thread.sessions
        self.counts.update(thread.counts)


def ingest_report(tally: IngestTally, *, owner: str, inferred: bool, evidence: str, anonymized: bool,
                  failures: list[dict], n_samples: dict[str, int], max_length: int, anon, elapsed_s: float,
                  sections: tuple[str, ...] = EXPORT_SECTIONS, since_previous: dict | None = None) -> dict:
    """The ingest_report.json of stage 01 (owner is the name as shown: a surrogate when anonymized).

    `files_skipped` counts files_failed by named reason; `repaired` counts kept messages that were changed
    (lone surrogates removed, truncated to --max_message_chars). `chats_excluded` counts the chats the selection
    left out by reason (`section:<name>` never read; include_chats, exclude_chats, min_messages read, then left
    out, their messages in `messages_excluded`); totals count the selected chats only.
    `since_previous` compares with the output this run replaces (new_since_previous).

    Raises AssertionError if kept + dropped messages do not add up to the total read.
    """
    c = tally.counts
    report = {
        "owner": owner, "owner_inferred": inferred, "owner_evidence": evidence, "anonymized": anonymized,
        "threads": c["threads"], "threads_one_on_one": c["one_on_one"], "threads_group": c["group"],
        "messages_total": tally.total, "messages_kept": tally.kept,
        "dropped": {r: tally.dropped.get(r, 0) for r in DROP_REASONS}, "duplicates_removed": tally.duplicates,
        "files_failed": failures,
        "files_skipped": dict(Counter(f.get("reason", "unreadable") for f in failures)),
        "repaired": {r: tally.repaired.get(r, 0) for r in REPAIR_REASONS}, "sessions": len(tally.sessions), "turns": c["turns"],
        "turns_truncated": c["truncated"], "samples": n_samples, "samples_silent": c["silent"],
        "windows_too_long": c["windows_too_long"],
        "max_length": max_length, "sources": {k[4:]: v for k, v in c.items() if k.startswith("src:")},
        "pii_replaced": {k: anon.replaced[k] for k in PII_KINDS} if anon else {},  # counts by kind, never values
        "sections": list(sections), "chats_excluded": dict(sorted(tally.chats_excluded.items())),
        "messages_excluded": dict(sorted(tally.messages_excluded.items())),
        "since_previous": since_previous, "elapsed_s": elapsed_s,
    }
    assert report["messages_total"] == report["messages_kept"] + sum(report["dropped"].values()), "accounting invariant"
    return report


def ingest_summary_rows(report: dict) -> list[tuple[str, Any]]:
    """(label, value) rows of stage 01's printed summary."""
    n = report["samples"]
    rows = [("owner", f"{report['owner']} ({'inferred' if report['owner_inferred'] else 'given'})"),
            ("threads", report["threads"]),
            ("  one-on-one / group", f"{report['threads_one_on_one']:,} / {report['threads_group']:,}"),
            ("messages total", report["messages_total"]), ("messages kept", report["messages_kept"])]
    rows += [(f"  dropped: {r}", k) for r, k in report["dropped"].items() if k]
    rows += [(f"  repaired: {r}", k) for r, k in report.get("repaired", {}).items() if k]
    rows += [(f"chats excluded: {r}", k) for r, k in report.get("chats_excluded", {}).items()]
    rows += [("files failed", len(report["files_failed"]))]
    rows += [(f"  skipped: {r}", k) for r, k in report.get("files_skipped", {}).items()]
    if report.get("since_previous"):
        rows += [("new since the previous run", f"{report['since_previous']['new_messages']:,} (previous run: "
                                                f"{report['since_previous']['previous_messages']:,} messages)")]
    rows += [("sessions", report["sessions"]), ("turns", report["turns"]),
             ("turns truncated", report["turns_truncated"]),
             ("samples train / val / test", f"{n['train']:,} / {n['validation']:,} / {n['test']:,}"),
             ("  of which <silent>", report["samples_silent"]),
             ("windows over max_length, skipped", report["windows_too_long"]),
             ("anonymized", report["anonymized"]), ("elapsed (s)", report["elapsed_s"])]
    return rows
