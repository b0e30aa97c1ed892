"""Benchmark of 02_analyze: the whole stage on the bundled sample and on a 250k-message messages/ dataset.

python bench/bench_analyze.py            # all 258k chitchat messages + the bundled sample (if data/01_prepared exists)
python bench/bench_analyze.py --quick    # 5k chitchat messages, one stage run (<= 40 s)

The large input is built here from chitchat-dataset (7,168 conversations, 258,145 messages; MIT), not from
01's bench, so this benchmark runs on its own: the first speaker of each conversation is the owner, each
conversation is one one-on-one session. The stage has no alternative implementation to race, so the
baseline is its costliest choice: `detect_language` (word lists, lingua only for undecided messages) against
lingua on every message, alternating on the same texts, plus how often the two agree.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

import simme_common as sc  # noqa: E402

ROOT = benchlib.ROOT


def build_chitchat_messages(out_dir: Path, max_messages: int | None = None) -> int:
    """Write a messages/ Dataset (01's contract) from chitchat-dataset; returns the number of rows."""
    from datetime import datetime

    import chitchat_dataset
    from datasets import Dataset

    rows: dict[str, list] = {k: [] for k in ("chat_id", "chat_type", "sender", "is_owner", "timestamp_ms", "text", "session_id", "source")}
    people: dict[str, str] = {}
    for n_conv, (conv_id, conv) in enumerate(chitchat_dataset.Dataset().items()):
        first = conv["messages"][0][0]["sender"] if conv["messages"] and conv["messages"][0] else None
        for turn in conv["messages"]:
            for m in turn:
                owner = m["sender"] == first
                rows["chat_id"].append(f"chat{n_conv}")
                rows["chat_type"].append("one_on_one")
                rows["sender"].append("Owner" if owner else people.setdefault(m["sender"], f"Friend {len(people) + 1}"))
                rows["is_owner"].append(owner)
                rows["timestamp_ms"].append(int(datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")).timestamp() * 1000))
                rows["text"].append(m["text"])
                rows["session_id"].append(f"chat{n_conv}:0")
                rows["source"].append("chitchat")
        if max_messages and len(rows["text"]) >= max_messages:
            break
    Dataset.from_dict(rows).save_to_disk(str(out_dir / "messages"))
    return len(rows["text"])


def lingua_everywhere(text: str) -> str:
    """Baseline detector: lingua on every message that has letters (no cheap shortcut)."""
    import re

    if not re.search(r"[^\W\d_]", text or ""):
        return "other"
    found = sc.text_features._lingua_detector().detect_language_of(text)
    return "other" if found is None else ("vi" if found.name == "VIETNAMESE" else "en")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5k messages, one stage run (<= 40 s)")
    parser.add_argument("--reps", type=int, default=None, help="stage runs per input (default 1: a full run takes minutes)")
    benchlib.add_out_dir_arg(parser)
    args = parser.parse_args()
    from datasets import disable_caching, load_from_disk

    disable_caching()  # every run recomputes the features, as a fresh `make demo` would
    stage = sc.load_script(ROOT / "02_analyze.py")
    tmp = Path(tempfile.mkdtemp(prefix="bench_analyze_"))
    reps = args.reps or 1
    t0 = time.perf_counter()
    n = build_chitchat_messages(tmp / "large", 5_000 if args.quick else None)
    print(f"built {n:,} chitchat messages in {time.perf_counter() - t0:.1f} s", flush=True)

    cpu_s: dict[str, list[float]] = {}

    def run(input_dir: Path, out: str) -> None:
        # CPU seconds (this process + its map workers) next to wall time: the shared machine makes wall time noisy.
        before = _cpu_seconds()
        stage.main(stage.AnalyzeArguments(input_dir=str(input_dir), output_dir=str(tmp / out)))
        cpu_s.setdefault(out, []).append(_cpu_seconds() - before)

    # Whole stage (the <= 5 min target); the language detector against its naive baseline on the same texts.
    stage_times = benchlib.alternate({"project": lambda: run(tmp / "large", "out_large")}, reps)["project"]
    texts = [t for t in load_from_disk(str(tmp / "large" / "messages"))["text"]]
    [(sc.detect_language(t), lingua_everywhere(t)) for t in texts[:200]]  # load word lists and lingua models
    labels: dict[str, list[str]] = {}
    detect = benchlib.alternate({"project": lambda: labels.__setitem__("project", [sc.detect_language(t) for t in texts]),
                                 "baseline": lambda: labels.__setitem__("baseline", [lingua_everywhere(t) for t in texts])},
                                3 if args.quick else 2)
    agree = sum(a == b for a, b in zip(labels["project"], labels["baseline"])) / len(texts)
    summary = [
        benchlib.summary_row(f"02_analyze on {n:,} chitchat messages", "s", stage_times, higher_is_better=False,
                             target="<= 300 s on 2 cores" if not args.quick else ""),
        benchlib.summary_row(f"detect_language on {n:,} messages vs lingua on all", "s", detect["project"], detect["baseline"],
                             higher_is_better=False),
    ]
    result = {"n_messages": n, "stage_s": benchlib.stats(stage_times), "stage_cpu_s": cpu_s["out_large"], "stage_msgs_per_s": n / benchlib.stats(stage_times)["median"],
              "detect_language_s": {k: benchlib.stats(v) for k, v in detect.items()}, "label_agreement_with_lingua": agree}
    sample = ROOT / "data" / "01_prepared"
    if (sample / "messages").exists() and not args.quick:
        t = benchlib.alternate({"project": lambda: run(sample, "out_sample")}, reps)["project"]
        result["sample_s"], result["sample_cpu_s"] = benchlib.stats(t), cpu_s["out_sample"]
        summary.append(benchlib.summary_row("02_analyze on the bundled sample", "s", t, higher_is_better=False, target="<= 60 s"))
    elif not args.quick:
        print(f"skipping the bundled sample: {sample}/messages not found (run `make pipeline` first)")
    result["summary"] = summary
    benchlib.write_result("analyze", result, args.quick, args.out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
