"""Run every SimMe benchmark one after another and collect outputs/bench/results.json + results.md.

python bench/run_all.py            # full run (minutes; numbers for the README)
python bench/run_all.py --quick    # <= 3 minutes: checks the harness end to end
python bench/run_all.py --quick --out_dir /tmp/bench   # anywhere but outputs/bench/ (the tests do this)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, add_out_dir_arg, machine_info  # noqa: E402

import simme_common as sc  # noqa: E402

# results.json has one top-level key per benchmark (analyze is the 02 stage's own target).
BENCHES = {"prepare": "bench_prepare.py", "analyze": "bench_analyze.py", "train": "bench_train.py",
           "evaluate": "bench_evaluate.py", "generate": "bench_generate.py"}


def _fmt(v: object) -> str:
    """Compact number formatting for the table (3 significant digits, blank for None)."""
    return sc.format_number(v, digits=3, none="")


def render_markdown(results: dict) -> str:
    """The Markdown table of every benchmark's summary rows."""
    lines = ["| bench | metric | project | baseline | ratio (× better) | spread p/b | target | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for key, res in results.items():
        if key == "machine":
            continue
        if not isinstance(res, dict) or "error" in res:
            lines.append(f"| {key} | FAILED: {res.get('error', '?') if isinstance(res, dict) else res} | | | | | | |")
            continue
        for row in res.get("summary", []):
            spread = f"{_fmt(row.get('project_spread'))} / {_fmt(row.get('baseline_spread'))}"
            lines.append(
                f"| {key} | {row['metric']} ({row.get('unit', '')}) | {_fmt(row.get('project'))} | "
                f"{_fmt(row.get('baseline'))} | {_fmt(row.get('ratio'))} | {spread} | {row.get('target', '')} | "
                f"{_fmt(res.get('peak_rss_mb'))} |"
            )
    m = results.get("machine", {})
    head = (f"Machine: {m.get('processor')} × {m.get('cpus')} cores ({' '.join(m.get('cpu_flags') or []) or 'flags unknown'}), "
            f"torch {m.get('torch')}, {m.get('date_utc')}, commit {str(m.get('commit') or 'unknown')[:10]}; "
            f"command: make bench")
    return head + "\n\n" + "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs, few repetitions (<= 3 min in all)")
    parser.add_argument("--only", nargs="*", choices=list(BENCHES), help="run only these benchmarks")
    add_out_dir_arg(parser)
    args = parser.parse_args()
    out_dir = args.out_dir.resolve()

    out_dir.mkdir(parents=True, exist_ok=True)
    # --only reruns some benchmarks and keeps the others' results.
    previous = out_dir / "results.json"
    results: dict = json.loads(previous.read_text()) if args.only and previous.exists() else {}
    results["machine"] = machine_info()
    failed = []
    for key, script in BENCHES.items():
        if args.only and key not in args.only:
            continue
        t0 = time.time()
        cmd = [sys.executable, str(ROOT / "bench" / script), "--out_dir", str(out_dir)] + (["--quick"] if args.quick else [])
        print(f"== {key}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT)
        out = out_dir / f"{key}.json"
        if proc.returncode != 0 or not out.exists():
            results[key] = {"error": f"exit code {proc.returncode}"}
            failed.append(key)
        else:
            results[key] = json.loads(out.read_text())
        print(f"== {key}: {time.time() - t0:.1f} s", flush=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    table = render_markdown(results)
    (out_dir / "results.md").write_text(table)
    print(table)
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
