"""Twin versions: promotion only on a passed gate, the previous twin still loaded after a refusal, rollback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from simme_common import twins
from simme_common.models import resolve_adapter

ROOT = Path(__file__).resolve().parents[1]


def _adapter(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"tag": tag}))
    return path


def _trained_version(twins_dir: Path, tag: str) -> Path:
    version = twins.new_version(twins_dir)
    _adapter(version / twins.ADAPTER, tag)
    return version


def _scorecard(path: Path, passed: bool) -> Path:
    path.write_text(json.dumps({"gate": {"passed": passed, "rows": []}}))
    return path


def _loaded_tag(link: Path) -> str:
    """What a loader of the current twin gets (04, the app and --init_adapter all resolve this link)."""
    ref = resolve_adapter(str(link))
    return json.loads((Path(ref.source) / "adapter_config.json").read_text())["tag"]


def test_adopt_promote_refuse_and_roll_back(tmp_path):
    twins_dir, link = tmp_path / "outputs" / "twins", tmp_path / "outputs" / "03_adapter"
    _adapter(link, "v1")
    first = twins.adopt(link, twins_dir)
    assert link.is_symlink() and _loaded_tag(link) == "v1" and twins.current_version(twins_dir) == first.resolve()
    assert (first.stat().st_mode & 0o777) == 0o700

    second = _trained_version(twins_dir, "v2")
    assert twins.promote(second, twins_dir, link, _scorecard(tmp_path / "pass.json", True))
    assert _loaded_tag(link) == "v2" and json.loads((second / "scorecard.json").read_text())["gate"]["passed"]

    third = _trained_version(twins_dir, "v3")
    assert not twins.promote(third, twins_dir, link, _scorecard(tmp_path / "fail.json", False))
    assert _loaded_tag(link) == "v2", "a refused twin must leave the previous one served"

    assert twins.rollback(twins_dir, link) == first.resolve()
    assert _loaded_tag(link) == "v1"
    with pytest.raises(twins.UserError, match="no earlier promoted twin"):
        twins.rollback(twins_dir, link)

    rows = {r["version"]: r for r in twins.versions(twins_dir)}
    assert rows[first.name]["current"] and rows[third.name]["gate"] == "failed" and rows[second.name]["gate"] == "passed"


def test_promote_needs_a_gate_and_a_version_under_the_twins_dir(tmp_path):
    twins_dir, link = tmp_path / "twins", tmp_path / "03_adapter"
    version = _trained_version(twins_dir, "v1")
    (tmp_path / "nogate.json").write_text("{}")
    with pytest.raises(twins.UserError, match="has no gate"):
        twins.promote(version, twins_dir, link, tmp_path / "nogate.json")
    stray = _adapter(tmp_path / "elsewhere" / twins.ADAPTER, "x").parent
    with pytest.raises(twins.UserError, match="not a twin version"):
        twins.promote(stray, twins_dir, link, None)


def test_the_command_line_refuses_with_exit_1_and_says_what_is_still_served(tmp_path):
    twins_dir, link = tmp_path / "twins", tmp_path / "03_adapter"
    _adapter(link, "v1")
    twins.adopt(link, twins_dir)
    candidate = _trained_version(twins_dir, "v2")
    run = subprocess.run([sys.executable, "-m", "simme_common.twins", "promote", str(candidate), "--twins_dir",
                          str(twins_dir), "--adapter_link", str(link), "--scorecard",
                          str(_scorecard(tmp_path / "fail.json", False))], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 1 and "not promoted" in run.stdout and _loaded_tag(link) == "v1"
    run = subprocess.run([sys.executable, "-m", "simme_common.twins", "rollback", "--twins_dir", str(twins_dir),
                          "--adapter_link", str(link)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error:") and "Traceback" not in run.stderr


def test_a_stage_writing_to_the_twin_link_replaces_the_link_and_keeps_the_version(tmp_path):
    from simme_common.stage_io import atomic_output_dir

    twins_dir, link = tmp_path / "twins", tmp_path / "03_adapter"
    _adapter(link, "v1")
    version = twins.adopt(link, twins_dir)
    with atomic_output_dir(link) as out:
        (Path(out) / "adapter_config.json").write_text(json.dumps({"tag": "fresh"}))
    assert not link.is_symlink() and _loaded_tag(link) == "fresh"
    assert json.loads((version / twins.ADAPTER / "adapter_config.json").read_text())["tag"] == "v1"
    assert twins.adopt(link, twins_dir) is not None and _loaded_tag(link) == "fresh"
