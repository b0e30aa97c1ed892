"""No side doors out of stage 01: name-bearing folder, zip and file names never reach a report, error or printed line
(keyed labels instead); outputs, the feedback store and the model cache are private (0600/0700); `make clean` removes
the cached twins; the raw spool is private and removed on an exception and on SIGTERM, and a SIGKILLed run's spool is
swept by the next run.

Run: .venv/bin/python -m pytest -q tests/test_side_doors.py
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import simme_common as sc
from simme_common.stage_io import make_private, private_spool, sweep_dead_spools

ROOT = Path(__file__).resolve().parents[1]
ALICE = "kenn-io__msgvault/internal/fbmessenger/testdata/json_simple/your_activity_across_facebook/messages/inbox/alice_ABC123/message_1.json"
# Names planted in folder, zip and file names (never in the messages): none may appear in any output or log line.
PLANTED = ["janedoe", "bobsmith", "carolwhite", "Carol White", "davidjones", "ericbrown", "frankmiller", "gracehopper",
           "henryford", "ivyking"]


@pytest.fixture(scope="module")
def prep():
    return sc.load_script(ROOT / "01_prepare.py")


def name_bearing_export(root: Path, fixtures_dir: Path) -> list[Path]:
    """An export whose every failure path carries a name; returns the --export_path list."""
    export = root / "facebook-janedoe-2024"  # passed through its parent: the folder name sits inside the paths
    inbox = export / "your_facebook_activity" / "messages" / "inbox"
    (inbox / "janedoe_10153").mkdir(parents=True)
    (inbox / "janedoe_10153" / "message_1.json").write_bytes((fixtures_dir / ALICE).read_bytes())
    for name, raw in [("bobsmith_222", b"{broken"), ("davidjones_444", b" " * 5000)]:
        (inbox / name).mkdir()
        (inbox / name / "message_1.json").write_bytes(raw)
    (inbox / "ericbrown_555").mkdir()
    (inbox / "ericbrown_555" / "message_1.html").write_text("<html></html>")
    (inbox / "frankmiller_666").mkdir()
    (root.parent / "outside.json").write_text("{}")
    (inbox / "frankmiller_666" / "message_1.json").symlink_to(root.parent / "outside.json")
    with zipfile.ZipFile(root / "facebook-janedoe-part2.zip", "w") as z:
        z.writestr("your_facebook_activity/messages/inbox/carolwhite_333/message_1.json", "{bad")
        z.writestr("Carol White_3.json", "[1,")
        z.writestr("../ivyking.json", "{}")
    (root / "messages_e2ee_henryford.zip").write_bytes(b"not a zip")
    return [root, root / "facebook-janedoe-part2.zip", root / "gracehopper_missing"]


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_no_name_from_a_path_reaches_any_output_file_or_printed_line(prep, tmp_path, fixtures_dir, tiny_model_dir,
                                                                     capfd, monkeypatch):
    paths = name_bearing_export(tmp_path / "in", fixtures_dir)

    def run(out: str, **kw) -> tuple[dict, str]:
        args = prep.PrepareArguments(export_path=[str(p) for p in paths], output_dir=str(tmp_path / out), owner="Test User",
                                     model_name_or_path=str(tiny_model_dir), max_file_bytes=4000, **kw)
        report = prep.main(args)
        logged = capfd.readouterr()
        return report, logged.out + logged.err

    report, log = run("out")
    reasons = report["files_skipped"]
    assert {"invalid_json", "file_too_large", "html_export", "symlink_outside_export", "zip_unsafe_path", "bad_zip",
            "missing_path"} <= set(reasons), reasons
    blob = all_bytes(tmp_path / "out").decode("utf-8", "replace") + log
    leaked = [n for n in PLANTED if n.lower() in blob.lower()]
    assert not leaked, leaked
    assert all(f["path"].startswith("<") and f["error"] in log for f in report["files_failed"])

    # Labels are keyed: the same key labels a file alike on every run, another key differently.
    again, _ = run("out_again")
    assert [f["path"] for f in again["files_failed"]] == [f["path"] for f in report["files_failed"]]
    monkeypatch.setenv("SIMME_KEY_FILE", str(tmp_path / "other.key"))
    other, _ = run("out_other")
    assert not {f["path"] for f in other["files_failed"]} & {f["path"] for f in report["files_failed"]}

    # The check can fail: with --no_anonymize the same run shows the real paths.
    _, log = run("out_plain", no_anonymize=True)
    assert "janedoe" in log and b"bobsmith" in all_bytes(tmp_path / "out_plain")


def modes(root: Path) -> set[tuple[str, int]]:
    return {("dir" if p.is_dir() else "file", stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]
            if not p.is_symlink()}


def test_outputs_the_feedback_store_and_the_model_cache_are_private(prep, tmp_path, fixtures_dir, tiny_model_dir,
                                                                     monkeypatch):
    old = os.umask(0o022)  # the usual umask: what datasets and json writes would leave world-readable
    try:
        args = prep.PrepareArguments(export_path=[str(fixtures_dir / ALICE).rsplit("/inbox/", 1)[0]],
                                     output_dir=str(tmp_path / "out"), model_name_or_path=str(tiny_model_dir))
        prep.main(args)
        assert modes(tmp_path / "out") == {("dir", 0o700), ("file", 0o600)}
        sc.append_to_disk_dataset(tmp_path / "feedback", [{"a": 1}])
        assert modes(tmp_path / "feedback") == {("dir", 0o700), ("file", 0o600)}
        loose = tmp_path / "loose"
        (loose / "sub").mkdir(parents=True)
        (loose / "sub" / "f.bin").write_bytes(b"x")
        (loose / "link").symlink_to("/etc/hostname")
        sc.replace_dir(loose, tmp_path / "final")
        assert modes(tmp_path / "final") == {("dir", 0o700), ("file", 0o600)}
        assert stat.S_IMODE(Path("/etc/hostname").stat().st_mode) & 0o044  # a symlink's target is left alone

        # The cache of converted models and merged twins (GGUF): created 0700, or narrowed to it.
        monkeypatch.setenv("SIMME_CACHE", str(tmp_path / "cache"))
        assert stat.S_IMODE(sc.simme_cache_dir().stat().st_mode) == 0o700
        (tmp_path / "cache").chmod(0o755)
        assert stat.S_IMODE(sc.simme_cache_dir().stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_make_clean_removes_the_cached_twins_and_keeps_the_rest_of_the_cache(tmp_path):
    cache = tmp_path / "cache"
    for rel in ["gguf/abc123/model-q8_0.gguf", "SmolLM2-135M-Instruct/config.json", "wheels/x.whl"]:
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_text("x")
    for rel in ["data/01_prepared/x", "outputs/03_adapter/x"]:
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_text("x")
    proc = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "clean"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "SIMME_CACHE": str(cache)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not (cache / "gguf").exists() and not (tmp_path / "data").exists() and not (tmp_path / "outputs").exists()
    assert (cache / "SmolLM2-135M-Instruct" / "config.json").exists() and (cache / "wheels" / "x.whl").exists()


def test_the_spool_is_private_and_removed_on_an_exception_with_the_signal_handlers_restored(prep, tmp_path,
                                                                                          fixtures_dir, tiny_model_dir,
                                                                                          monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = signal.getsignal(signal.SIGTERM)
    with private_spool("simme01_") as spool:
        assert stat.S_IMODE(spool.stat().st_mode) == 0o700 and spool.name.startswith(f"simme01_{os.getpid()}_")
        assert signal.getsignal(signal.SIGTERM) is not before
        assert sweep_dead_spools("simme01_") == 0 and spool.exists()  # a live run's spool is never swept
    assert not spool.exists() and signal.getsignal(signal.SIGTERM) is before
    args = prep.PrepareArguments(export_path=[str(fixtures_dir / ALICE).rsplit("/inbox/", 1)[0]], owner="Nobody Here",
                                 output_dir=str(tmp_path / "out"), model_name_or_path=str(tiny_model_dir))
    with pytest.raises(sc.UserError, match="appears in no thread"):
        prep.main(args)
    assert not list(tmp_path.glob("*simme01_*")) and signal.getsignal(signal.SIGTERM) is before


def big_export(root: Path, threads: int = 40, messages: int = 400) -> Path:
    """A classic export large enough that stage 01 runs for a while after its spool appears."""
    for t in range(threads):
        rows = [{"sender_name": "Al" if i % 2 else f"Friend {t}", "timestamp_ms": 1_600_000_000_000 + i * 30_000,
                 "content": f"message number {i} of thread {t}, with some words to tokenize"} for i in range(messages)]
        folder = root / "messages" / "inbox" / f"friend_{t}"
        folder.mkdir(parents=True)
        (folder / "message_1.json").write_text(json.dumps({"participants": [{"name": "Al"}, {"name": f"Friend {t}"}],
                                                           "messages": rows[::-1], "title": f"Friend {t}"}))
    return root


def start_run(export: Path, out: Path, tok: Path, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "01_prepare.py"), "--export_path", str(export), "--owner", "Al",
                             "--model_name_or_path", str(tok), "--output_dir", str(out)],
                            env={**os.environ, "TMPDIR": str(tmp), "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_spool(tmp: Path, proc: subprocess.Popen, skip: set[Path] = frozenset(), timeout: float = 120) -> Path:
    """The run's spool, once its raw threads file exists (the run is then mid-way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [p for p in tmp.glob(f"simme01_{proc.pid}_*") if (p / "threads.pkl").exists() and p not in skip]
        if found:
            return found[0]
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    raise AssertionError("no spool appeared")


# A process holding a spool the way 01 does, cheap to start: it is SIGKILLed with its spool open.
_HOLDER = """
import time
from simme_common.stage_io import private_spool
with private_spool("simme01_") as spool:
    (spool / "threads.pkl").write_bytes(b"raw")
    time.sleep(600)
"""


def test_sigterm_mid_run_removes_the_raw_spool_and_a_sigkilled_runs_spool_is_swept_by_the_next(tmp_path, tiny_model_dir):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    export = big_export(tmp_path / "export")
    # SIGKILL (or the OOM killer) cannot be caught: the spool stays behind ...
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)},
                              stderr=subprocess.PIPE, text=True)
    spool = wait_for_spool(tmp, holder)
    holder.kill()
    holder.wait(timeout=30)
    assert spool.exists() and stat.S_IMODE(spool.stat().st_mode) == 0o700
    # ... until the next run opens its own spool and sweeps it; SIGTERM mid-run then removes that run's spool.
    run = start_run(export, tmp_path / "out", tiny_model_dir, tmp)
    own = wait_for_spool(tmp, run)
    assert not spool.exists()
    run.send_signal(signal.SIGTERM)
    rc = run.wait(timeout=60)
    err = run.stderr.read()
    assert rc == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
    assert not own.exists() and not list(tmp.iterdir())
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))  # it was stopped mid-run
