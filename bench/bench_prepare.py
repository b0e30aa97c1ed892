"""Benchmark of 01_prepare's parse path on a >= 250k-message Messenger export built from chitchat-dataset.

python bench/bench_prepare.py                 # 266k-message export (built once, cached in --out_dir), 5 reps
python bench/bench_prepare.py --quick         # 20k messages (<= 40 s)
python bench/bench_prepare.py --end_to_end    # also time the whole stage (anonymization, samples) once

Project path = `simme_common.parse_export`: discovery, reading, JSON parsing, the per-file mojibake check and
per-string repair, drop classification and the stable sort, thread by thread. Baselines, alternating with it
on the same files: `json.load` of every file (the floor), and `json.load` + `ftfy.fix_text` on every string
(the common "just run ftfy on everything" repair). Targets: <= 4x the json.load time, >= 10x faster than ftfy.
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
    if args.end_to_end:
        result["end_to_end"] = end_to_end(export, args.out_dir)
    benchlib.write_result("prepare", result, args.quick, args.out_dir)
    print(f"parse: {result['messages_per_s']['project']:,.0f} msg/s | {result['time_ratio_vs_json_load']:.2f}x json.load time "
          f"(target <= 4) | {result['speedup_vs_ftfy_every_string']:.1f}x faster than ftfy on every string (target >= 10) | "
          f"peak RSS {benchlib.peak_rss_mb():,.0f} MiB for a {size_mb:,.0f} MB export")


if __name__ == "__main__":
    main()
