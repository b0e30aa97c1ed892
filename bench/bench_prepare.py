"""Benchmark of 01_prepare's parse path on a >= 250k-message Messenger export built from chitchat-dataset.

python bench/bench_prepare.py                 # 266k-message export (built once, cached in --out_dir), 5 reps
python bench/bench_prepare.py --quick         # 20k messages (<= 40 s)
python bench/bench_prepare.py --end_to_end    # also time the whole stage (anonymization, samples) once
python bench/bench_prepare.py --quick --anon_messages 0   # skip the anonymizer race

Project path = `simme_common.parse_export`: discovery, reading, JSON parsing, the per-file mojibake check and
per-string repair, drop classification and the stable sort, thread by thread. Baselines, alternating with it
on the same files: `json.load` of every file (the floor), and `json.load` + `ftfy.fix_text` on every string
(the common "just run ftfy on everything" repair). Targets: <= 4x the json.load time, >= 10x faster than ftfy.

Anonymizer race (the first --anon_messages message texts of the export, batched as `Anonymizer.texts`): with
person NER (spaCy en_core_web_sm behind its gate) against the lexicon only, and the NER pipeline one text at a
time (`Anonymizer.text`, as 01 calls it per message) on a tenth of them: what NER costs, reported, no target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402

ROOT = benchlib.ROOT


def build_export(n_messages: int, out_dir: Path) -> Path:
    """Build (once, cached in `out_dir`) the bench export of at least n_messages messages from all chitchat conversations."""
    out = out_dir / f"prepare_export_{n_messages}"
    if (out / ".complete").exists():
        return out
    mod = sc.load_script(ROOT / "examples" / "make_sample_export.py")
    mod.main(mod.SampleArguments(output_dir=str(out), n_messages=n_messages, messages_per_file=10_000))
    (out / ".complete").write_text("ok")
    return out


def parse_project(export: Path) -> int:
    """The project's parse path; returns raw messages seen."""
    return sum(item["total"] for kind, item in sc.parse_export([export], redact=True) if kind == "thread")


def _ftfy_walk(obj, fix):
    """ftfy on every string of a parsed document."""
    if isinstance(obj, str):
        return fix(obj)
    if isinstance(obj, list):
        return [_ftfy_walk(v, fix) for v in obj]
    if isinstance(obj, dict):
        return {k: _ftfy_walk(v, fix) for k, v in obj.items()}
    return obj


def json_only(files: list[Path]) -> int:
    """Baseline floor: json.load of every file; returns messages seen."""
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            doc = json.load(fh)
        n += len(doc.get("messages", [])) if isinstance(doc, dict) else 0
    return n


def ftfy_every_string(files: list[Path], fix) -> int:
    """Baseline repair: json.load + `fix` (ftfy.fix_text) on every string; returns messages seen."""
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            doc = _ftfy_walk(json.load(fh), fix)
        n += len(doc.get("messages", [])) if isinstance(doc, dict) else 0
    return n


def race(export: Path, files: list[Path], reps: int) -> dict:
    """The parse path against both baselines, alternating: the result's timings, rates, ratios and summary rows."""
    import ftfy

    n_msgs = parse_project(export)  # warm-up (imports, regex compilation) + message count
    assert json_only(files) == n_msgs, "the baselines must read the same messages"
    # Two alternating races, each with its own project samples: the cheap one gets more repetitions, the ftfy
    # baseline (~15x slower) fewer, so the run stays short and each ratio compares neighbouring measurements.
    vs_json = benchlib.alternate({"project": lambda: parse_project(export), "json_load": lambda: json_only(files)}, reps=reps)
    vs_ftfy = benchlib.alternate({"project": lambda: parse_project(export),
                                  "ftfy_every_string": lambda: ftfy_every_string(files, ftfy.fix_text)}, reps=max(1, reps // 2))
    times = {"project": vs_json["project"], "json_load": vs_json["json_load"],
             "project_vs_ftfy": vs_ftfy["project"], "ftfy_every_string": vs_ftfy["ftfy_every_string"]}
    rate = {k: [n_msgs / t for t in v] for k, v in times.items()}
    st = {k: benchlib.stats(v) for k, v in times.items()}
    return {
        "n_messages": n_msgs, "seconds": st, "messages_per_s": {k: benchlib.stats(v)["median"] for k, v in rate.items()},
        "time_ratio_vs_json_load": st["project"]["median"] / st["json_load"]["median"],
        "speedup_vs_ftfy_every_string": st["ftfy_every_string"]["median"] / st["project_vs_ftfy"]["median"],
        "summary": [
            benchlib.summary_row("parse vs json.load", "messages/s", rate["project"], rate["json_load"], target=">= 0.25 (<= 4x json.load time)"),
            benchlib.summary_row("parse vs ftfy on every string", "messages/s", rate["project_vs_ftfy"], rate["ftfy_every_string"], target=">= 10"),
        ],
    }


def message_texts(files: list[Path], n: int) -> list[str]:
    """The first `n` non-empty message texts of the export (its files in order)."""
    texts: list[str] = []
    for f in files:
        with open(f, "rb") as fh:
            doc = json.load(fh)
        texts += [m["content"] for m in doc.get("messages", []) if isinstance(m.get("content"), str) and m["content"].strip()]
        if len(texts) >= n:
            break
    return texts[:n]


def anonymizer_race(texts: list[str], reps: int) -> dict:
    """Anonymizer.texts with person NER vs the lexicon only (alternating), and NER one text at a time once."""
    from simme_common.ner import DEFAULT_NER_MODEL
    from simme_common.pii import Anonymizer

    names = ["Will Turner", "May Brown", "Hope Davis", "Grace Lee", "Nguyễn Thị An", "Jordan Smith"]
    key = bytes(range(32))
    # A fresh Anonymizer per run: its surrogate caches would make later runs cheaper than the first.
    runs = {"with_ner": lambda: Anonymizer(names, key=key).texts(texts),
            "lexicon_only": lambda: Anonymizer(names, key=key, ner_model=None).texts(texts)}
    ner = Anonymizer(names, key=key).ner
    if ner is None:
        return {"skipped": f"{DEFAULT_NER_MODEL} is not installed"}
    runs["with_ner"]()  # warm-up: spaCy import and model load, once per process
    times = benchlib.alternate(runs, reps=reps)
    tenth = texts[: max(1, len(texts) // 10)]
    one = Anonymizer(names, key=key)
    t0 = time.perf_counter()
    for t in tenth:
        one.text(t)
    one_s = time.perf_counter() - t0
    rate = {k: [len(texts) / t for t in v] for k, v in times.items()}
    gated = sum(map(ner.needs_ner, texts))
    return {
        "n_messages": len(texts), "ner_model": DEFAULT_NER_MODEL, "gated_share": round(gated / len(texts), 4),
        "messages_per_s": {k: round(benchlib.stats(v)["median"]) for k, v in rate.items()}
        | {"with_ner_one_text_at_a_time": round(len(tenth) / one_s)},
        "ner_cost_x": round(benchlib.stats(times["with_ner"])["median"] / benchlib.stats(times["lexicon_only"])["median"], 2),
        "summary": [benchlib.summary_row("anonymize: NER vs lexicon only", "messages/s", rate["with_ner"],
                                         rate["lexicon_only"], target="reported (NER cost)")],
    }


def end_to_end(export: Path, out_dir: Path) -> dict:
    """The whole 01 stage once on the export: seconds, messages/s and its samples count."""
    prep = sc.load_script(ROOT / "01_prepare.py")
    t1 = time.perf_counter()
    report = prep.main(prep.PrepareArguments(export_path=[str(export)], output_dir=str(out_dir / "prepare_e2e_out")))
    e2e = time.perf_counter() - t1
    return {"seconds": round(e2e, 1), "messages_per_s": round(report["messages_total"] / e2e), "samples": report["samples"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k messages (<= 40 s)")
    parser.add_argument("--n_messages", type=int, default=None, help="export size (default 260,000; quick 20,000)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions vs json.load (half as many vs ftfy)")
    parser.add_argument("--end_to_end", action="store_true", help="also run the whole 01 stage once on the export")
    parser.add_argument("--anon_messages", type=int, default=None,
                        help="messages in the anonymizer race (default 50,000; quick 5,000; 0 skips it)")
    benchlib.add_out_dir_arg(parser)
    args = parser.parse_args()
    n_target = args.n_messages or (20_000 if args.quick else 260_000)

    t0 = time.perf_counter()
    export = build_export(n_target, args.out_dir)
    build_s = time.perf_counter() - t0
    files = sorted(export.rglob("*.json"))
    size_mb = sum(f.stat().st_size for f in files) / 2**20

    raced = race(export, files, args.reps)
    result = {"n_messages": raced.pop("n_messages"), "n_files": len(files), "export_mb": round(size_mb, 1),
              "build_export_s": round(build_s, 1), **raced}
    n_anon = args.anon_messages if args.anon_messages is not None else (5_000 if args.quick else 50_000)
    if n_anon:
        anon = anonymizer_race(message_texts(files, n_anon), reps=max(1, args.reps // 2))
        result["summary"] += anon.pop("summary", [])
        result["anonymize"] = anon
    if args.end_to_end:
        result["end_to_end"] = end_to_end(export, args.out_dir)
    benchlib.write_result("prepare", result, args.quick, args.out_dir)
    print(f"parse: {result['messages_per_s']['project']:,.0f} msg/s | {result['time_ratio_vs_json_load']:.2f}x json.load time "
          f"(target <= 4) | {result['speedup_vs_ftfy_every_string']:.1f}x faster than ftfy on every string (target >= 10) | "
          f"peak RSS {benchlib.peak_rss_mb():,.0f} MiB for a {size_mb:,.0f} MB export")
    if "messages_per_s" in result.get("anonymize", {}):
        a = result["anonymize"]
        print(f"anonymize: {a['messages_per_s']['with_ner']:,} msg/s with NER ({100 * a['gated_share']:.1f} % of messages "
              f"reach it), {a['messages_per_s']['lexicon_only']:,} msg/s lexicon only ({a['ner_cost_x']:.2f}x the time), "
              f"{a['messages_per_s']['with_ner_one_text_at_a_time']:,} msg/s with NER one text at a time")


if __name__ == "__main__":
    main()
