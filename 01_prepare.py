"""Stage 1: Facebook Messenger / Instagram export(s) (folders and .zip files) -> anonymized, session-split HF dataset.

accelerate launch 01_prepare.py --config configs/prepare.yaml --export_path data/sample_export
accelerate launch 01_prepare.py --export_path facebook-part1.zip facebook-part2.zip messages_e2ee.zip --owner "Full Name"

Writes to --output_dir (default data/01_prepared): dataset/ (DatasetDict train/validation/test of TRL
conversational samples), messages/ (every kept, anonymized message), ingest_report.json, run_config.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import simme_common as sc


@dataclass
class PrepareArguments:
    export_path: list[str] = field(
        default_factory=list,
        metadata={"help": "One or more export folders and/or .zip files (all parts of a split download, and the "
                          "separate E2EE `messages.zip`)."},
    )
    owner: str | None = field(default=None, metadata={"help": "Your display name as it appears in the export; inferred if omitted."})
    output_dir: str = field(default=sc.PREPARED_DIR, metadata={"help": "Where to write dataset/, messages/ and ingest_report.json."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer used to measure --max_length (default: the bundled SmolLM2-135M-Instruct)."}
    )
    max_length: int = field(default=200, metadata={"help": "Maximum tokens of one training sample (chat template applied)."})
    session_gap_minutes: float = field(default=60.0, metadata={"help": "A gap longer than this starts a new session."})
    burst_seconds: float = field(default=120.0, metadata={"help": "Bubbles of one sender this close together form one turn."})
    silent_min_turns: int = field(
        default=4, metadata={"help": "Group chats: others' turns without the owner before a '<silent>' sample is added."}
    )
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of samples (by time, before test) for validation."})
    test_fraction: float = field(default=0.1, metadata={"help": "Share of samples (the most recent sessions) for test."})
    no_anonymize: bool = field(default=False, metadata={"help": "Keep real names and PII (NOT recommended; never share the output)."})
    strict: bool = field(default=False, metadata={"help": "Exit non-zero if any file could not be read."})
    seed: int = field(default=42, metadata={"help": "Seed of surrogates and chat ids."})


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def main(args: PrepareArguments) -> dict:
    from accelerate import PartialState
    from tqdm.auto import tqdm
    from transformers import set_seed

    set_seed(args.seed)
    state = PartialState()
    if not state.is_main_process:  # one process does the (I/O-bound) work; the output is identical for any N
        state.wait_for_everyone()
        return {}
    t0 = time.time()
    if not args.export_path:
        raise sc.UserError("no input: pass --export_path PATH [PATH ...] (export folders and/or .zip files)")
    anonymize = not args.no_anonymize
    if not anonymize:
        _warn("--no_anonymize: real names, phone numbers, emails and addresses will be written to the output; never share it")
    # Paths (facebook-<name>-<date>.zip) and --owner are names: logged and saved redacted unless --no_anonymize.
    shown_args = args if not anonymize else dataclasses.replace(
        args, owner="<given>" if args.owner else None,
        export_path=[f"<{sc.redact_path(p, 'export')}>" for p in args.export_path])
    print(f"Script parameters {shown_args}")

    # ---------------------------------------------------------------- pass 1: parse every thread, spool to disk
    spool_dir = tempfile.TemporaryDirectory(prefix="simme01_")  # raw texts: deleted when the run ends
    spool_path = Path(spool_dir.name) / "threads.pkl"
    metas, failures = [], []
    with open(spool_path, "wb") as spool:
        for kind, item in tqdm(sc.parse_export(args.export_path, redact=anonymize), desc="Parsing threads", unit=" threads"):
            if kind == "failure":
                if anonymize and not item["path"].startswith("<"):  # a given path or zip name can hold a name
                    shown = f"<{sc.redact_path(item['path'], 'export')}>"
                    item = {"path": shown, "error": item["error"].replace(item["path"], shown)}
                failures.append(item)
                _warn(item["error"])
                continue
            offset = spool.tell()
            pickle.dump(item, spool, protocol=pickle.HIGHEST_PROTOCOL)
            metas.append({"key": item["key"], "kind": item["kind"], "offset": offset, "total": item["total"],
                          "people": set(item["participants"]) | set(item["all_senders"]),
                          "participants": frozenset(item["participants"]), "you_lines": item["you_lines"]})
    if not metas:
        shown = "; ".join(f["error"] for f in failures[:3]) or "no Messenger thread files found"
        redacted = " (file names redacted; --no_anonymize shows them)" if anonymize and failures else ""
        raise sc.UserError(f"nothing readable in {', '.join(map(str, args.export_path))}: {shown}{redacted}. "
                           "Pass the export folder or its .zip files (Settings > Download your information > JSON).")

    # E2EE files continue the classic (e2ee_cutover) thread with the same participants: merge them.
    by_people: dict[frozenset, int] = {}
    for i, m in enumerate(metas):
        if m["kind"] == "classic":
            by_people.setdefault(m["participants"], i)
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(metas):
        target = by_people.get(m["participants"], i) if m["kind"] == "e2ee" else i
        groups.setdefault(target, []).append(i)

    # Owner: given, or the person present in the most threads.
    you_lines: Counter = Counter()
    for m in metas:
        you_lines.update(m["you_lines"])
    people = [set().union(*(metas[i]["people"] for i in members)) for members in groups.values()]
    if args.owner:
        owner, inferred, evidence = sc.normalize_text(args.owner.strip()), False, "given with --owner"
        if not any(owner in p for p in people):
            hint = ""
            if not anonymize:
                try:
                    hint = f"; did you mean {sc.infer_owner(people, dict(you_lines))[0]!r}?"
                except sc.UserError:
                    pass
            raise sc.UserError(f"--owner {'(given name)' if anonymize else repr(owner)} appears in no thread{hint}. "
                               "Use the display name exactly as in the export, or omit --owner to infer it")
    else:
        owner, evidence = sc.infer_owner(people, dict(you_lines))
        inferred = True
    all_names = sorted(set().union(*people))
    anon = sc.Anonymizer(all_names, seed=args.seed) if anonymize else None
    owner_shown = anon.name(owner) if anon else owner
    print(f"Owner {'inferred' if inferred else 'given'}: {owner_shown!r} ({'surrogate' if anon else 'real name'}) | {evidence}")

    # ---------------------------------------------------------------- pass 2: merge, anonymize, sessions, samples
    tokenizer = sc.load_tokenizer(args.model_name_or_path)
    from datasets import Dataset, DatasetDict, Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    msg_features = Features({"chat_id": Value("string"), "chat_type": Value("string"), "sender": Value("string"),
                             "is_owner": Value("bool"), "timestamp_ms": Value("int64"), "text": Value("string"),
                             "session_id": Value("string"), "source": Value("string")})
    sample_features = Features({sc.MESSAGES: List({"role": Value("string"), "content": Value("string")}),
                                "chat_id": Value("string"), "chat_type": Value("string"),
                                "session_start": Value("int64"), "n_tokens": Value("int32")})
    msg_writer = ArrowWriter(path=str(Path(spool_dir.name) / "messages.arrow"), features=msg_features)
    sample_spool = open(Path(spool_dir.name) / "samples.jsonl", "w", encoding="utf-8")
    total, kept, dropped, duplicates = 0, 0, Counter(), 0
    sessions: list[tuple[int, str, int]] = []
    counters: Counter = Counter()
    with open(spool_path, "rb") as spool:
        for target, members in tqdm(sorted(groups.items()), desc="Building samples", unit=" threads"):
            records = []
            for i in members:
                spool.seek(metas[i]["offset"])
                records.append(pickle.load(spool))
            rec = sc.merge_thread_records(records)
            total += rec["total"]
            dropped.update(rec["dropped"])
            duplicates += rec["dropped"].get("duplicate", 0)
            counters["threads"] += 1
            if not rec["messages"]:
                continue
            n_kept, n_sessions = _build_thread(rec, owner, anon, tokenizer, args, msg_writer, sample_spool, sessions, counters)
            kept += n_kept
    msg_writer.finalize()
    msg_writer.close()
    sample_spool.close()

    # ---------------------------------------------------------------- split by time and save
    train_frac = 1.0 - args.validation_fraction - args.test_fraction
    split_of = sc.split_by_time(sessions, (train_frac, args.validation_fraction, args.test_fraction))
    writers = {s: ArrowWriter(path=str(Path(spool_dir.name) / f"{s}.arrow"), features=sample_features)
               for s in ("train", "validation", "test")}
    with open(Path(spool_dir.name) / "samples.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            writers[split_of[row.pop("session_id")]].write(row)
    for w in writers.values():
        w.finalize()
        w.close()
    dataset = DatasetDict({s: Dataset.from_file(str(Path(spool_dir.name) / f"{s}.arrow")) for s in writers})
    # One shard per split: datasets cannot reload an empty split saved with zero shards (tiny exports).
    dataset.save_to_disk(str(out_dir / "dataset"), num_shards={s: 1 for s in dataset})
    messages_ds = Dataset.from_file(str(Path(spool_dir.name) / "messages.arrow"))
    messages_ds.save_to_disk(str(out_dir / "messages"), num_shards=1)
    del dataset, messages_ds
    spool_dir.cleanup()

    # ---------------------------------------------------------------- report
    n_samples = {s: w._num_examples for s, w in writers.items()}
    report = {
        "owner": owner_shown, "owner_inferred": inferred, "owner_evidence": evidence, "anonymized": anonymize,
        "threads": counters["threads"], "threads_one_on_one": counters["one_on_one"], "threads_group": counters["group"],
        "messages_total": total, "messages_kept": kept,
        "dropped": {r: dropped.get(r, 0) for r in sc.DROP_REASONS}, "duplicates_removed": duplicates,
        "files_failed": failures, "sessions": len(sessions), "turns": counters["turns"],
        "turns_truncated": counters["truncated"], "samples": n_samples, "samples_silent": counters["silent"],
        "windows_too_long": counters["windows_too_long"],
        "max_length": args.max_length, "sources": {k[4:]: v for k, v in counters.items() if k.startswith("src:")},
        "pii_replaced": {k: len([1 for key in anon.pii_map if key[0] == k]) for k in ("phone", "email", "url", "address_en", "address_vi", "id", "card", "bank")} if anon else {},
        "elapsed_s": round(time.time() - t0, 1),
    }
    assert report["messages_total"] == report["messages_kept"] + sum(report["dropped"].values()), "accounting invariant"
    (out_dir / "ingest_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    config_path = sc.save_run_config(out_dir, shown_args)
    if anonymize:  # the recorded command line would repeat the paths and --owner
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["command"] = [Path(sys.argv[0]).name, "(arguments redacted; see args)"]
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    rows = [("owner", f"{owner_shown} ({'inferred' if inferred else 'given'})"), ("threads", report["threads"]),
            ("  one-on-one / group", f"{counters['one_on_one']:,} / {counters['group']:,}"),
            ("messages total", total), ("messages kept", kept)]
    rows += [(f"  dropped: {r}", n) for r, n in report["dropped"].items() if n]
    rows += [("files failed", len(failures)), ("sessions", len(sessions)), ("turns", counters["turns"]),
             ("turns truncated", counters["truncated"]),
             ("samples train / val / test", f"{n_samples['train']:,} / {n_samples['validation']:,} / {n_samples['test']:,}"),
             ("  of which <silent>", counters["silent"]), ("windows over max_length, skipped", counters["windows_too_long"]),
             ("anonymized", anonymize), ("elapsed (s)", report["elapsed_s"])]
    print(sc.print_table(rows, f"Ingest report -> {out_dir / 'ingest_report.json'}"))
    if args.strict and failures:
        raise sc.UserError(f"{len(failures)} file(s) could not be read (--strict); see files_failed in {out_dir / 'ingest_report.json'}")
    state.wait_for_everyone()
    return report


def _build_thread(rec, owner, anon, tokenizer, args, msg_writer, sample_spool, sessions, counters) -> tuple[int, int]:
    """Anonymize one merged thread, write its messages, and spool its training samples; return (#messages, #sessions)."""
    owner_name = anon.name(owner) if anon else owner
    name = anon.name if anon else (lambda s: s)
    text_of = anon.text if anon else (lambda s: s)
    chat_id = "c" + hashlib.sha1(f"{args.seed}:{rec['key']}".encode()).hexdigest()[:12]
    senders = Counter(s for _, s, _, _ in rec["messages"])
    ranked = sorted(senders, key=lambda s: (-senders[s], s)) + rec["participants"] + rec.get("all_senders", [])
    others = [p for p in dict.fromkeys(ranked) if p != owner and p != "Facebook user"]
    chat_type = "group" if len(others) >= 2 or rec.get("thread_type") == "RegularGroup" else "one_on_one"
    counters[chat_type] += 1
    msgs = [(ts, name(s), text_of(t), src, s == owner) for ts, s, t, src in rec["messages"]]
    sess = sc.split_sessions([m[0] for m in msgs], args.session_gap_minutes)
    for (ts, s, t, src, is_owner), k in zip(msgs, sess):
        msg_writer.write({"chat_id": chat_id, "chat_type": chat_type, "sender": s, "is_owner": is_owner, "timestamp_ms": ts,
                          "text": t, "session_id": f"{chat_id}-{k}", "source": src})
        counters[f"src:{src}"] += 1
    title = text_of(rec["title"]) if chat_type == "group" and rec.get("title") else None
    system = {"role": "system", "content": sc.build_system_prompt(chat_type, owner_name, [name(o) for o in others], title)}
    sys_len = sc.render_lengths(tokenizer, [system])[0]
    budget = args.max_length - sys_len
    if budget < 16:
        raise sc.UserError(f"--max_length {args.max_length} leaves no room after the {sys_len}-token system prompt; use at least {sys_len + 64}")
    silent_msg = {"role": sc.OWNER_ROLE, "content": sc.SILENT_REPLY}
    silent_len = sc.render_lengths(tokenizer, [silent_msg])[0]
    n_sessions = sess[-1] + 1
    start = 0
    for k in range(n_sessions):
        end = start
        while end < len(msgs) and sess[end] == k:
            end += 1
        part = msgs[start:end]
        start = end
        turns = sc.group_bursts([(ts, s, t) for ts, s, t, _, _ in part], args.burst_seconds)
        is_owner = [t["sender"] == owner_name for t in turns]
        turn_msgs = [{"role": sc.OWNER_ROLE if o else sc.OTHER_ROLE,
                      "content": t["text"] if o else sc.format_user_turn(chat_type, t["sender"], t["text"])}
                     for t, o in zip(turns, is_owner)]
        counters["turns"] += len(turns)
        lens = sc.render_lengths(tokenizer, turn_msgs)
        for i, n in enumerate(lens):
            if n > budget:  # one over-long turn: keep its start (owner target) or its end (context), never drop it
                overhead = n - len(tokenizer(turn_msgs[i]["content"], add_special_tokens=False)["input_ids"])
                turn_msgs[i]["content"] = sc.truncate_to_tokens(tokenizer, turn_msgs[i]["content"], budget - overhead - 2,
                                                                keep_end=not is_owner[i])
                lens[i] = sc.render_lengths(tokenizer, [turn_msgs[i]])[0]
                counters["truncated"] += 1
        sid = f"{chat_id}-{k}"
        n_samples = 0
        windows = [(a, b, None) for a, b in sc.pack_windows(lens, is_owner, budget)]
        if chat_type == "group":
            for a, b in sc.silent_cut_points(is_owner, args.silent_min_turns):
                total, first = silent_len, b + 1
                while first > a and total + lens[first - 1] <= budget:
                    first -= 1
                    total += lens[first]
                if first <= b:
                    windows.append((first, b, silent_msg))
        for a, b, extra in windows:
            sample = [system] + turn_msgs[a:b + 1] + ([extra] if extra else [])
            n_tokens = len(sc.chat_token_ids(tokenizer, sample))
            while n_tokens > args.max_length and len(sample) > 2:  # template merges can add a token or two
                sample = [system] + sample[2:]
                n_tokens = len(sc.chat_token_ids(tokenizer, sample))
            if sample[-1]["role"] != sc.OWNER_ROLE or n_tokens > args.max_length:
                counters["windows_too_long"] += 1  # the owner turn alone overflows max_length: reported, not trained
                continue
            counters["silent"] += extra is not None
            sample_spool.write(json.dumps({sc.MESSAGES: sample, "chat_id": chat_id, "chat_type": chat_type,
                                           "session_start": part[0][0], "n_tokens": n_tokens, "session_id": sid},
                                          ensure_ascii=False) + "\n")
            n_samples += 1
        sessions.append((part[0][0], sid, n_samples))
    return len(msgs), n_sessions


if __name__ == "__main__":
    from trl import TrlParser

    (prepare_args,) = TrlParser((PrepareArguments,)).parse_args_and_config()
    sc.run_main(main, prepare_args)
