"""Stage 1: Facebook Messenger / Instagram export(s) (folders and .zip files) -> anonymized, session-split HF dataset.

accelerate launch 01_prepare.py --config configs/prepare.yaml --export_path data/sample_export
accelerate launch 01_prepare.py --export_path facebook-part1.zip facebook-part2.zip messages_e2ee.zip --owner "Full Name"
accelerate launch 01_prepare.py --export_path export/ --include_sections inbox,archived_threads,e2ee_cutover,message_requests \
    --exclude_chats "^Work" --since 2021-01-01 --min_messages 20

Writes to --output_dir (default data/01_prepared): dataset/ (DatasetDict train/validation/test of TRL
conversational samples), messages/ (every kept, anonymized message), ingest_report.json, run_config.json, all
private (0600/0700). Message requests and filtered threads are left out unless --include_sections lists them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import simme_common as sc
from simme_common.export_paths import DEFAULT_SECTIONS, shown_export_path
from simme_common.prepare import thread_chat_id
from simme_common.selection import ChatSelection, is_chat_id, section_list
from simme_common.stage_io import private_spool


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
    ner_model: str = field(default=sc.DEFAULT_NER_MODEL, metadata={
        "help": "spaCy pipeline that finds names nobody listed ('' = the name lexicon and chat rules only)."})
    strict: bool = field(default=False, metadata={"help": "Exit non-zero if any file could not be read."})
    # Limits on untrusted input: a file over one is skipped (and listed in files_failed), never read whole.
    max_file_bytes: int = field(default=sc.IngestLimits.max_file_bytes,
                                metadata={"help": "Largest JSON file read, in bytes (larger ones are skipped)."})
    max_zip_bytes: int = field(default=sc.IngestLimits.max_zip_bytes,
                               metadata={"help": "Most uncompressed bytes of JSON read from one zip; later files are skipped."})
    max_zip_ratio: float = field(default=sc.IngestLimits.max_zip_ratio,
                                 metadata={"help": "Zip entries (over 1 MB) expanding more than this many times are skipped as zip bombs."})
    max_message_chars: int = field(default=sc.IngestLimits.max_message_chars,
                                   metadata={"help": "Longer messages are truncated to this many characters (and counted)."})
    max_json_depth: int = field(default=sc.IngestLimits.max_json_depth,
                                metadata={"help": "JSON files nested deeper than this are skipped (Messenger files nest ~6 deep)."})
    seed: int = field(default=42, metadata={"help": "Seed of non-secret choices (chat ids with --no_anonymize); surrogates "
                                                    "come from the secret key at $SIMME_KEY_FILE, never from the seed."})
    # Consent and selection: what is read and kept (every exclusion is counted in ingest_report.json, never named).
    include_sections: list[str] = field(
        default_factory=lambda: list(DEFAULT_SECTIONS),
        metadata={"help": "Export sections read, space- or comma-separated, from inbox, archived_threads, e2ee_cutover, "
                          "message_requests, filtered_threads. Message requests and filtered (spam) threads are "
                          "strangers' words: left out unless listed."})
    include_chats: list[str] = field(
        default_factory=list, metadata={"help": "Keep only these chats: chat ids (c + 12 hex digits, as in messages/) or "
                                                "regular expressions over the original chat title (matched in memory only)."})
    exclude_chats: list[str] = field(
        default_factory=list, metadata={"help": "Leave out these chats (chat ids or title regular expressions, as "
                                                "--include_chats)."})
    since: str | None = field(default=None, metadata={"help": "Keep messages from this ISO date or time on "
                                                               "(2021-06-01; UTC unless an offset is given)."})
    until: str | None = field(default=None, metadata={"help": "Keep messages up to this ISO date (the whole day) or time."})
    min_messages: int = field(default=1, metadata={"help": "Leave out chats with fewer usable messages than this "
                                                            "(after --since/--until)."})


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _anonymizer_key() -> bytes:
    """The secret surrogate key: $SIMME_KEY_FILE or ~/.config/simme/anonymizer.key, created on first use."""
    path = Path(os.environ.get("SIMME_KEY_FILE") or sc.DEFAULT_KEY_FILE).expanduser()
    new = not path.exists()
    key = sc.load_or_create_key(path)
    if new:  # the path can hold the user's name, so it is not printed
        print("Anonymizer key: created ($SIMME_KEY_FILE); back it up to keep the same surrogates (docs/privacy.md)")
    return key


def _shown_args(args: PrepareArguments, redact: bytes | bool) -> PrepareArguments:
    """The arguments as logged and saved: paths (facebook-<name>-<date>.zip), --owner and chat title patterns can
    hold names, so they are redacted (chat ids are not names)."""
    if not redact:
        return args

    def chats(items: list[str]) -> list[str]:
        return [c if is_chat_id(c) else "<pattern>" for c in items]

    return dataclasses.replace(args, owner="<given>" if args.owner else None,
                               export_path=[shown_export_path(p, redact) for p in args.export_path],
                               include_chats=chats(args.include_chats), exclude_chats=chats(args.exclude_chats))


def _spool_threads(args: PrepareArguments, redact: bytes | bool, sections: tuple[str, ...], spool_path: Path,
                   tally: sc.IngestTally) -> tuple[list[dict], list[dict]]:
    """Pass 1: parse every thread of the chosen sections and pickle it to `spool_path`; return (thread metas,
    failures); threads of other sections are counted in `tally`, never read."""
    from tqdm.auto import tqdm

    metas, failures = [], []
    with open(spool_path, "wb") as spool:
        limits = sc.IngestLimits(max_file_bytes=args.max_file_bytes, max_zip_bytes=args.max_zip_bytes,
                                 max_zip_ratio=args.max_zip_ratio, max_message_chars=args.max_message_chars,
                                 max_json_depth=args.max_json_depth)
        parsed = sc.parse_export(args.export_path, redact=redact, limits=limits, sections=sections)
        for kind, item in tqdm(parsed, desc="Parsing threads", unit=" threads"):
            if kind == "excluded":
                tally.exclude(item["reason"], item["threads"])
                continue
            if kind == "failure":
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
        redacted = " (file names redacted; --no_anonymize shows them)" if redact and failures else ""
        left_out = sum(tally.chats_excluded.values())
        hint = f"; {left_out} chat(s) of sections not in --include_sections were left out" if left_out else ""
        given = _shown_args(args, redact).export_path
        raise sc.UserError(f"nothing readable in {', '.join(map(str, given))}: {shown}{redacted}{hint}. "
                           "Pass the export folder or its .zip files (Settings > Download your information > JSON).")
    return metas, failures


def _read_conversations(spool_path: Path, metas: list[dict], groups: dict[int, list[int]]):
    """Yield each conversation of the spool, its parts merged (merge_thread_records)."""
    from tqdm.auto import tqdm

    with open(spool_path, "rb") as spool:
        for _, members in tqdm(sorted(groups.items()), desc="Building samples", unit=" threads"):
            records = []
            for i in members:
                spool.seek(metas[i]["offset"])
                records.append(pickle.load(spool))
            yield sc.merge_thread_records(records)


def _build_samples(args: PrepareArguments, tokenizer, conversations, owner: str, anon, spool_dir: Path,
                   selection: ChatSelection, tally: sc.IngestTally) -> None:
    """Pass 2: select, anonymize and sample each conversation into messages.arrow and samples.jsonl of `spool_dir`."""
    from datasets.arrow_writer import ArrowWriter

    settings = sc.SampleSettings(max_length=args.max_length, session_gap_minutes=args.session_gap_minutes,
                                 burst_seconds=args.burst_seconds, silent_min_turns=args.silent_min_turns, seed=args.seed)
    msg_writer = ArrowWriter(path=str(spool_dir / "messages.arrow"), features=sc.messages_schema())
    # closing(): on an error the progress bar ends before the error is printed
    with contextlib.closing(conversations), open(spool_dir / "samples.jsonl", "w", encoding="utf-8") as samples:
        for rec in conversations:
            left_out = selection.apply(rec, owner, thread_chat_id(rec["key"], anon, args.seed))
            if left_out:
                tally.exclude(left_out, messages=rec["total"])
                continue
            tally.add_record(rec)
            if not rec["messages"]:
                continue
            thread = sc.build_thread_samples(rec, owner, anon, tokenizer, settings)
            for row in thread.messages:
                msg_writer.write(row)
            for row in thread.samples:
                samples.write(json.dumps(row, ensure_ascii=False) + "\n")
            tally.add_samples(thread)
    msg_writer.finalize()
    msg_writer.close()


def _split_and_save(args: PrepareArguments, spool_dir: Path, sessions: list[tuple[int, str, int]], out_dir: Path) -> dict[str, int]:
    """Split the spooled samples by time, save dataset/ and messages/ to `out_dir`; return samples per split."""
    from datasets import Dataset, DatasetDict
    from datasets.arrow_writer import ArrowWriter

    train_frac = 1.0 - args.validation_fraction - args.test_fraction
    split_of = sc.split_by_time(sessions, (train_frac, args.validation_fraction, args.test_fraction))
    writers = {s: ArrowWriter(path=str(spool_dir / f"{s}.arrow"), features=sc.samples_schema())
               for s in ("train", "validation", "test")}
    with open(spool_dir / "samples.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            writers[split_of[row.pop("session_id")]].write(row)
    for w in writers.values():
        w.finalize()
        w.close()
    dataset = DatasetDict({s: Dataset.from_file(str(spool_dir / f"{s}.arrow")) for s in writers})
    # One shard per split: datasets cannot reload an empty split saved with zero shards (tiny exports).
    dataset.save_to_disk(str(out_dir / "dataset"), num_shards={s: 1 for s in dataset})
    Dataset.from_file(str(spool_dir / "messages.arrow")).save_to_disk(str(out_dir / "messages"), num_shards=1)
    return {s: w._num_examples for s, w in writers.items()}


def _save_run_config(out_dir: Path, shown_args: PrepareArguments, anonymize: bool) -> None:
    """Write run_config.json with the shown arguments (and no command line when anonymized)."""
    config_path = sc.save_run_config(out_dir, shown_args)
    if anonymize:  # the recorded command line would repeat the paths and --owner
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["command"] = [Path(sys.argv[0]).name, "(arguments redacted; see args)"]
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(args: PrepareArguments) -> dict:
    from accelerate import PartialState
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
    sections = section_list(args.include_sections)
    selection = ChatSelection.from_flags(args.include_chats, args.exclude_chats, args.since, args.until, args.min_messages)
    # The secret key also labels redacted paths: a file keeps its label from run to run, and no name can be tested.
    redact = _anonymizer_key() if anonymize else False
    shown_args = _shown_args(args, redact)
    print(f"Script parameters {shown_args}")
    out_dir = Path(args.output_dir)
    tally = sc.IngestTally()

    # Raw texts live in a private temporary directory, removed on every exit path (SIGTERM included; docs/prepare.md).
    with private_spool("simme01_") as spool_path:
        # ------------------------------------------------------------ pass 1: parse every thread, spool to disk
        metas, failures = _spool_threads(args, redact, sections, spool_path / "threads.pkl", tally)
        groups = sc.group_thread_parts(metas)
        # Owner: given, or the person present in the most conversations.
        you_lines: Counter = Counter()
        for m in metas:
            you_lines.update(m["you_lines"])
        people = [set().union(*(metas[i]["people"] for i in members)) for members in groups.values()]
        owner, inferred, evidence = sc.resolve_owner(args.owner, people, dict(you_lines), anonymize)
        anon = sc.Anonymizer(sorted(set().union(*people)), key=redact, ner_model=args.ner_model or None) if anonymize else None
        owner_shown = anon.name(owner) if anon else owner
        print(f"Owner {'inferred' if inferred else 'given'}: {owner_shown!r} ({'surrogate' if anon else 'real name'}) | {evidence}")

        # ------------------------------------------------------------ pass 2: select, merge, anonymize, sample
        tokenizer = sc.load_tokenizer(args.model_name_or_path)
        conversations = _read_conversations(spool_path / "threads.pkl", metas, groups)
        _build_samples(args, tokenizer, conversations, owner, anon, spool_path, selection, tally)
        if not tally.counts["threads"]:
            left_out = ", ".join(f"{r} {n}" for r, n in sorted(tally.chats_excluded.items()))
            raise sc.UserError(f"no chat left after the selection (chats left out: {left_out}); widen --include_chats, "
                               f"--exclude_chats, --since, --until or --min_messages. {out_dir} is left as it was")
        if tally.total == tally.dropped["malformed"]:  # valid rows that are all calls or photos are still an export
            raise sc.UserError(f"nothing usable: all {tally.total:,} message(s) read are malformed (see the warnings "
                               f"above); the previous output in {out_dir} is left as it was")
        if tally.repaired["message_truncated"]:
            _warn(f"{tally.repaired['message_truncated']} message(s) longer than {args.max_message_chars:,} characters "
                  "were truncated (--max_message_chars)")

        # ------------------------------------------------------------ split by time, report, and save atomically
        # Everything is written into a temporary directory beside out_dir that replaces it only when complete:
        # a crash or kill leaves the previous output whole.
        with sc.atomic_output_dir(out_dir) as tmp_out:
            n_samples = _split_and_save(args, spool_path, tally.sessions, tmp_out)
            report = sc.ingest_report(tally, owner=owner_shown, inferred=inferred, evidence=evidence,
                                      anonymized=anonymize, failures=failures, n_samples=n_samples,
                                      max_length=args.max_length, anon=anon, elapsed_s=round(time.time() - t0, 1),
                                      sections=sections, since_previous=sc.new_since_previous(out_dir, tmp_out))
            (tmp_out / "ingest_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                                        encoding="utf-8")
            _save_run_config(tmp_out, shown_args, anonymize)
    print(sc.print_table(sc.ingest_summary_rows(report), f"Ingest report -> {out_dir / 'ingest_report.json'}"))
    if args.strict and failures:
        raise sc.UserError(f"{len(failures)} file(s) could not be read (--strict); see files_failed in {out_dir / 'ingest_report.json'}")
    state.wait_for_everyone()
    return report


if __name__ == "__main__":
    from trl import TrlParser

    (prepare_args,) = TrlParser((PrepareArguments,)).parse_args_and_config()
    sc.run_main(main, prepare_args)
