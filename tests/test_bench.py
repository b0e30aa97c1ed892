"""The benchmark harness runs end to end in quick mode and writes the documented JSON schema (no speed asserts),
into a temporary folder: outputs/bench/ keeps the last `make bench`.

Run: .venv/bin/python -m pytest -q tests/test_bench.py
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_bench_harness_writes_results_json_with_one_key_per_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "bench/run_all.py", "--quick", "--out_dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("prepare", "train", "evaluate", "generate", "analyze"):
        res = results[key]
        assert res["quick"] is True and res["peak_rss_mb"] > 0, key
        assert res["summary"], f"{key} has no summary rows"
        for row in res["summary"]:
            assert {"metric", "unit", "project"} <= set(row), (key, row)
            if "ratio" in row:
                assert row["ratio"] > 0 and "baseline" in row, (key, row)
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") >= 5 and "FAILED" not in table
