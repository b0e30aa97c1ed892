"""03 and 04 re-run themselves on mimalloc where it is installed, once, without passing it on to subprocesses.

Run: .venv/bin/python -m pytest -q tests/test_allocator.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]
# Prints what the process runs on, and what a subprocess it starts runs on; a second print would mean it ran twice
# in one process's output (exec replaces the process, so the first run never gets to print).
PROBE = """
import json, os, subprocess, sys
import simme_common as sc
in_use = sc.reexec_with_allocator(sys.argv[1])
child = subprocess.run([sys.executable, "-c", "import simme_common as sc; print(sc.allocator_in_use())"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(json.dumps({"in_use": in_use, "mapped": sc.allocator_in_use(), "child": child,
                  "preload": os.environ.get("LD_PRELOAD"), "purge": os.environ.get("MIMALLOC_PURGE_DELAY"),
                  "argv": sys.argv[1:]}))
"""
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")


def _probe(choice: str, *extra: str, env: dict | None = None) -> dict:
    import os

    proc = subprocess.run([sys.executable, "-c", PROBE, choice, *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@linux_only
def test_requirements_install_mimalloc_here():
    assert sc.mimalloc_library() is not None, "cmeel-mimalloc is in requirements.txt for Linux"


@linux_only
def test_auto_reexecs_once_on_mimalloc_and_keeps_it_from_subprocesses():
    got = _probe("auto", "--flag", "value with spaces")
    assert got["in_use"] == got["mapped"] == "mimalloc"
    assert got["argv"] == ["auto", "--flag", "value with spaces"]  # the same command line ran again
    # The preload and the purge setting were taken back out: a subprocess starts on its own allocator
    assert got["preload"] is None and got["purge"] is None and got["child"] == "system"


@linux_only
def test_a_users_own_preload_is_kept_for_subprocesses():
    own = str(sc.mimalloc_library())  # any loadable library would do; this one is at hand
    got = _probe("auto", env={"LD_PRELOAD": own, "MIMALLOC_PURGE_DELAY": "5"})
    # Already mapped: no re-exec, and what the user set is theirs (only SimMe's own setting is taken back)
    assert got["in_use"] == "mimalloc" and got["purge"] == "5"


def test_system_stays_on_the_system_allocator():
    got = _probe("system")
    assert got["in_use"] == got["mapped"] == got["child"] == "system"


def test_an_unknown_allocator_is_a_user_error():
    with pytest.raises(sc.UserError, match="--allocator must be one of auto, mimalloc, system"):
        sc.reexec_with_allocator("jemalloc")


def test_the_choice_is_read_before_the_heavy_imports_like_trl_parser_reads_it(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("learning_rate: 1.0e-3\nallocator: system\n")
    assert sc.allocator_choice(["--config", str(config)]) == "system"  # the YAML key
    assert sc.allocator_choice(["--config", str(config), "--allocator", "mimalloc"]) == "mimalloc"  # CLI wins
    assert sc.allocator_choice(["--allocator=mimalloc", "--config", str(config)]) == "mimalloc"
    assert sc.allocator_choice(["--config", str(ROOT / "configs" / "cpu_demo.yaml")]) == "auto"  # not set: auto
    assert sc.allocator_choice(["--config", str(tmp_path / "missing.yaml")]) == "auto"  # 03's parser reports it
    (tmp_path / "bad.yaml").write_text("allocator: [unclosed\n")
    assert sc.allocator_choice(["--config", str(tmp_path / "bad.yaml")]) == "auto"
    assert sc.allocator_choice(["--learning_rate", "1e-3"]) == "auto"
