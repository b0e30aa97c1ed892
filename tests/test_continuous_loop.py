"""The synthetic "older export" of the continuous-learning loop (bench/continuous_loop.py): make_sample_export.py
--holdback_days writes the same seeded sample minus its last days, an exact subset with the same thread paths, so 01
on both exports together counts every older message once.

.venv/bin/python -m pytest -q tests/test_continuous_loop.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("chitchat_dataset")
pytest.importorskip("faker")


def _sample_module():
    spec = importlib.util.spec_from_file_location("make_sample_export", ROOT / "examples" / "make_sample_export.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses resolve the string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _messages(export: Path) -> set[tuple]:
    """Every message of an export as (thread file's folder or E2EE file, sender, timestamp ms, text)."""
    rows = set()
    for path in (export / "facebook-export-2025").rglob("message_*.json"):
        doc = json.loads(path.read_text(encoding="ascii"))
        rows |= {(doc["thread_path"], m["sender_name"], m["timestamp_ms"], m.get("content")) for m in doc["messages"]}
    for path in (export / "secure_storage_messages").glob("*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        rows |= {(path.name, m["senderName"], m["timestamp"], m["text"]) for m in doc["messages"]}
    return rows


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The same small sample (40 conversations) written whole and with its last 20 days held back."""
    sample = _sample_module()
    root = tmp_path_factory.mktemp("exports")
    for name, days in (("new", 0), ("old", 20)):
        sample.main(sample.SampleArguments(output_dir=str(root / name), max_conversations=40, holdback_days=days))
    return root / "old", root / "new"


def test_older_export_is_a_strict_subset_of_the_newer_one(exports):
    old, new = (_messages(e) for e in exports)
    assert old and old < new


def test_older_export_holds_exactly_the_messages_up_to_its_cutoff(exports):
    old, new = (_messages(e) for e in exports)
    cutoff = max(ts for _, _, ts, _ in old)
    assert max(ts for _, _, ts, _ in new) - cutoff >= 20 * 24 * 3600 * 1000 - 1
    assert old == {m for m in new if m[2] <= cutoff}


def test_older_export_keeps_the_thread_paths_and_file_names(exports):
    old, new = exports
    old_threads = {p.parent.relative_to(old) for p in old.rglob("message_*.json")}
    new_threads = {p.parent.relative_to(new) for p in new.rglob("message_*.json")}
    assert old_threads and old_threads <= new_threads
    assert {p.name for p in (old / "secure_storage_messages").glob("*.json")} <= \
        {p.name for p in (new / "secure_storage_messages").glob("*.json")}


def test_same_seed_and_holdback_give_the_same_export(exports, tmp_path):
    sample = _sample_module()
    sample.main(sample.SampleArguments(output_dir=str(tmp_path / "again"), max_conversations=40, holdback_days=20))
    assert _messages(tmp_path / "again") == _messages(exports[0])


def test_preference_round_keeps_cpu_bf16_autocast_of_the_sft_config(tmp_path):
    """dtype auto turns bf16 on after SFTConfig's checks (precision.py); the loop's DPO config must accept it on CPU."""
    torch = pytest.importorskip("torch")
    from trl import SFTConfig

    from simme_common.preferences import preference_config

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only path")
    sft = SFTConfig(output_dir=str(tmp_path), use_cpu=False, bf16=False, report_to="none")
    sft.bf16 = True  # what apply_cpu_precision does on a CPU with native bf16
    dpo = preference_config("dpo", sft, beta=0.1)
    assert dpo.bf16 and dpo.use_cpu
