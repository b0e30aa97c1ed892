"""Benchmark of 02_analyze: the whole stage on the bundled sample and on a 250k-message messages/ dataset.

python bench/bench_analyze.py            # sample (if data/01_prepared exists) + all 258k chitchat messages
python bench/bench_analyze.py --quick    # 20k messages, one repetition (<= 40 s)

The large input is built here from chitchat-dataset (7,168 conversations, 258,145 messages; MIT), not from
01's bench, so this benchmark runs on its own: the first speaker of each conversation is the owner, each
conversation is one one-on-one session. Baseline: the same stage with lingua run on every message (the naive
language detector) instead of the word-list shortcut with lingua only for undecided messages.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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


def load_stage():
    """Import 02_analyze.py as a module (its file name starts with a digit)."""
    spec = importlib.util.spec_from_file_location("stage_02_analyze", ROOT / "02_analyze.py")
    mod = sys.modules["stage_02_analyze"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def lingua_everywhere(text: str) -> str:
    """Baseline detector: lingua on every message that has letters (no cheap shortcut)."""
    import re

    if not re.search(r"[^\W\d_]", text or ""):
        return "other"
    found = sc._lingua_detector().detect_language_of(text)
    return "other" if found is None else ("vi" if found.name == "VIETNAMESE" else "en")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20k messages, one repetition")
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from datasets import disable_caching

    disable_caching()  # every run recomputes the features, as a fresh `make demo` would
    stage = load_stage()
    tmp = Path(tempfile.mkdtemp(prefix="bench_analyze_"))
    n_large = 20_000 if args.quick else None
    reps = 1 if args.quick else 3
    t0 = time.perf_counter()
    n = build_chitchat_messages(tmp / "large", n_large)
    build_s = time.perf_counter() - t0
    print(f"built {n:,} chitchat messages in {build_s:.1f} s", flush=True)

    def run(input_dir: Path, out: str) -> None:
        stage.main(stage.AnalyzeArguments(input_dir=str(input_dir), output_dir=str(tmp / out)))

    project_detector = sc.detect_language

    def run_baseline(input_dir: Path, out: str) -> None:
        sc.detect_language = lingua_everywhere
        try:
            run(input_dir, out)
        finally:
            sc.detect_language = project_detector

    times = benchlib.alternate({"project": lambda: run(tmp / "large", "out_p"), "baseline": lambda: run_baseline(tmp / "large", "out_b")}, reps)
    summary = [benchlib.summary_row(f"02 on {n:,} chitchat messages", "s", times["project"], times["baseline"],
                                    higher_is_better=False, target="<= 300 s (2 cores)")]
    result = {"n_messages": n, "build_s": build_s, "large": {k: benchlib.stats(v) for k, v in times.items()}}
    sample = ROOT / "data" / "01_prepared"
    if (sample / "messages").exists():
        t = benchlib.alternate({"project": lambda: run(sample, "out_sample")}, reps)
        result["sample"] = benchlib.stats(t["project"])
        summary.append(benchlib.summary_row("02 on the bundled sample", "s", t["project"], higher_is_better=False, target="<= 60 s"))
    else:
        print(f"skipping the bundled sample: {sample}/messages not found (run `make pipeline` first)")
    result["summary"] = summary
    benchlib.write_result("analyze", result, args.quick)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
