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


def test_ablation_table_keeps_a_failed_variant_as_a_row():
    sys.path.insert(0, str(ROOT / "bench"))
    import ablate_train

    base = {"ppl": 60.0, "length_similarity": 0.4, "hits_at_1": 0.125}
    rows = [
        {"variant": "full_finetune", "overrides": "--use_peft false", "error": "03_train.py exited with an error"},
        {"variant": "recipe", "overrides": "", "ppl": 42.0, "length_similarity": 0.8, "train_s": 150.0,
         "tokens": 42336, "train_loss": 3.6, "hits_at_1": 0.15},
    ]
    lines = ablate_train.table(rows, base).splitlines()
    assert lines[0] == "Base model: validation perplexity 60.00, length similarity 0.40, Hits@1 0.125"
    assert lines[4].startswith("| recipe | `(recipe)` | 0.700 | 0.80 | 0.150 | 150 | 42,336 | 3.600 |")
    assert lines[5] == "| full_finetune | `--use_peft false` | failed: 03_train.py exited with an error | | | | | |"
