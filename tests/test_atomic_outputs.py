"""Atomic outputs: a crash or SIGKILL while stage 01 or the feedback store writes leaves the previous output intact
and no half-written one (the damaged-input corpus is in test_hostile_input.py).

Run: .venv/bin/python -m pytest -q tests/test_atomic_outputs.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import simme_common as sc
from test_hostile_input import DAY, ROOT, T0, damaged_thread, good_export, msg, run_prep, thread_doc


@pytest.fixture(scope="module")
def prep():
    return sc.load_script(ROOT / "01_prepare.py")


def test_a_crash_while_writing_leaves_the_previous_output_intact(prep, tmp_path, tiny_model_dir, monkeypatch):
    from datasets import Dataset, load_from_disk

    first = run_prep(prep, tmp_path, [good_export(tmp_path / "e1")], tiny_model_dir)
    second_export = good_export(tmp_path / "e2")
    damaged_thread(second_export, "more_2", thread_doc(["Al", "Cy"], [msg("Cy", T0 + 3 * DAY, "new"), msg("Al", T0 + 3 * DAY + 1, "run")]))

    def crash(self, *a, **k):  # the disk fills up while dataset/ is being written
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_to_disk", crash)
    with pytest.raises(OSError, match="disk full"):
        run_prep(prep, tmp_path, [second_export], tiny_model_dir)
    monkeypatch.undo()
    out = tmp_path / "out"
    assert json.loads((out / "ingest_report.json").read_text()) == first
    assert len(load_from_disk(str(out / "messages"))) == first["messages_kept"]
    assert sum(len(s) for s in load_from_disk(str(out / "dataset")).values()) == sum(first["samples"].values())
    assert not list(tmp_path.glob(".out.tmp-*"))
    second = run_prep(prep, tmp_path, [second_export], tiny_model_dir)
    assert second["messages_kept"] == first["messages_kept"] + 2


_KILL_01 = """
import os, signal, sys
sys.path.insert(0, {root!r})
import simme_common as sc
from datasets import Dataset
prep = sc.load_script(__import__("pathlib").Path({root!r}) / "01_prepare.py")
def killed(self, *a, **k):  # SIGKILL with the first split of dataset/ half-written
    os.makedirs(a[0], exist_ok=True)
    open(os.path.join(a[0], "data-00000-of-00001.arrow"), "wb").write(b"partial")
    os.kill(os.getpid(), signal.SIGKILL)
Dataset.save_to_disk = killed
prep.main(prep.PrepareArguments(export_path=[{export!r}], output_dir={out!r}, model_name_or_path={tok!r}, owner="Al",
                                max_length=256))
"""


def test_sigkill_during_01s_write_leaves_the_previous_output_intact(prep, tmp_path, tiny_model_dir):
    from datasets import load_from_disk

    first = run_prep(prep, tmp_path, [good_export(tmp_path / "e1")], tiny_model_dir)
    out = tmp_path / "out"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    export = good_export(tmp_path / "e2")
    damaged_thread(export, "more_2", thread_doc(["Al", "Cy"], [msg("Cy", T0 + 3 * DAY, "new"), msg("Al", T0 + 3 * DAY + 1, "r")]))
    script = _KILL_01.format(root=str(ROOT), export=str(export), out=str(out), tok=str(tiny_model_dir))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # byte for byte the previous run
    assert len(load_from_disk(str(out / "messages"))) == first["messages_kept"]
    assert list(tmp_path.glob(".out.tmp-*"))  # the killed run's half-written directory, beside the output
    run_prep(prep, tmp_path, [export], tiny_model_dir)
    assert not list(tmp_path.glob(".out.tmp-*"))  # removed by the next run


def test_atomic_output_dir_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "stage"
    with sc.atomic_output_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with sc.atomic_output_dir(final) as tmp:
            (tmp / "a.txt").write_text("two")
            (tmp / "b.txt").write_text("two")
            raise RuntimeError("crash")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"] and (final / "a.txt").read_text() == "one"
    # An interrupted two-step replace (old moved aside, new not yet in place) is undone on the next use.
    final.rename(tmp_path / ".stage.old")
    with sc.atomic_output_dir(final):
        assert (final / "a.txt").read_text() == "one"
        raise_nothing = True
    assert raise_nothing and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_replace_dir_carries_training_checkpoints_into_the_new_output(tmp_path):
    final, new = tmp_path / "adapter", tmp_path / ".adapter.staging"
    for d, text in ((final, "old"), (new, "new")):
        d.mkdir()
        (d / "adapter_config.json").write_text(text)
    (final / "checkpoint-5").mkdir()
    (final / "checkpoint-5" / "w").write_text("ckpt")
    sc.replace_dir(new, final, keep=("checkpoint-*",))
    assert (final / "adapter_config.json").read_text() == "new" and (final / "checkpoint-5" / "w").read_text() == "ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


FEEDBACK_ROW = {"history": "hi", "reply": "hey", "rating": 1}


def test_feedback_append_interrupted_never_loses_earlier_rows(tmp_path, monkeypatch):
    from datasets import Dataset, load_from_disk

    store = tmp_path / "feedback"
    for i in range(4):
        assert sc.append_to_disk_dataset(store, [{**FEEDBACK_ROW, "rating": i}]) == i + 1

    def crash(self, *a, **k):
        raise OSError("killed mid-write")

    monkeypatch.setattr(Dataset, "save_to_disk", crash)
    with pytest.raises(OSError):
        sc.append_to_disk_dataset(store, [FEEDBACK_ROW])
    monkeypatch.undo()
    assert load_from_disk(str(store))["rating"] == [0, 1, 2, 3]
    # A crash between moving the old rows aside and moving the new ones in (the older two-rename scheme).
    store.rename(tmp_path / "feedback.old")
    assert sc.append_to_disk_dataset(store, [{**FEEDBACK_ROW, "rating": 9}]) == 5
    assert load_from_disk(str(store))["rating"] == [0, 1, 2, 3, 9]


_KILL_FEEDBACK = """
import os, signal, sys
sys.path.insert(0, {root!r})
import simme_common as sc
from datasets import Dataset
original = Dataset.save_to_disk
def killed(self, path, *a, **k):
    original(self, path, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # the new rows are on disk, not yet in place
Dataset.save_to_disk = killed
sc.append_to_disk_dataset({store!r}, [{{"history": "x", "reply": "y", "rating": 7}}])
"""


def test_sigkill_during_a_feedback_append_keeps_every_earlier_row(tmp_path):
    from datasets import load_from_disk

    store = tmp_path / "feedback"
    for i in range(4):
        sc.append_to_disk_dataset(store, [{**FEEDBACK_ROW, "rating": i}])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILL_FEEDBACK.format(root=str(ROOT), store=str(store)))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert load_from_disk(str(store))["rating"] == [0, 1, 2, 3]
    assert sc.append_to_disk_dataset(store, [{**FEEDBACK_ROW, "rating": 5}]) == 5
