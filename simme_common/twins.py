"""Versions of the twin, for continuous learning: each trained twin lives in `outputs/twins/<UTC timestamp>/` with its
adapter, run config and scorecard; `outputs/twins/current` names the promoted one and `outputs/03_adapter` is a link to
its adapter, so the app, 04 and the next `--init_adapter` all load the current twin. Promotion happens only on a passed
gate; rollback returns to the version promoted before.

    python -m simme_common.twins adopt                      # turn an existing outputs/03_adapter into version 1
    python -m simme_common.twins new                        # print a fresh version directory for 03's --output_dir
    python -m simme_common.twins promote DIR --scorecard S  # only if S's gate passed (04 --baseline_adapter)
    python -m simme_common.twins rollback | list
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

from .runtime import UserError, run_main

TWINS_DIR = "outputs/twins"
ADAPTER_LINK = "outputs/03_adapter"
CURRENT = "current"
HISTORY = "history.json"
ADAPTER = "adapter"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_version(twins_root: str | Path, now: dt.datetime | None = None) -> Path:
    """Create and return an empty, private version directory named by the UTC time (a suffix keeps names unique)."""
    root = Path(twins_root)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = (now or _now()).strftime("%Y%m%dT%H%M%SZ")
    for i in range(1000):
        path = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise UserError(f"{root}: could not create a new version directory for {stamp}")


def _swap_link(link: Path, target: str) -> None:
    """Point `link` at `target` atomically (a reader sees the old or the new twin, never none)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link} is a real directory, not a twin link; run `python -m simme_common.twins adopt` first")
    os.replace(tmp, link)


def _history(root: Path) -> list[dict]:
    path = root / HISTORY
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({err}); fix or remove it") from None


def _write_history(root: Path, rows: list[dict]) -> None:
    tmp = root / f".{HISTORY}.tmp"
    tmp.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    os.replace(tmp, root / HISTORY)


def current_version(twins_root: str | Path) -> Path | None:
    """The promoted version directory, or None before the first promotion."""
    link = Path(twins_root) / CURRENT
    return link.resolve() if link.is_symlink() else None


def _point_at(version: Path, twins_root: Path, adapter_link: Path) -> None:
    _swap_link(twins_root / CURRENT, version.name)
    _swap_link(adapter_link, os.path.relpath(version / ADAPTER, adapter_link.parent))


def adopt(adapter_dir: str | Path, twins_root: str | Path) -> Path | None:
    """Move a trained adapter directory (03's plain output) into a first version and link it back as current."""
    adapter_dir, root = Path(adapter_dir), Path(twins_root)
    if adapter_dir.is_symlink() or not adapter_dir.is_dir():
        return None
    version = new_version(root)
    shutil.move(str(adapter_dir), version / ADAPTER)
    if (version / ADAPTER / "run_config.json").exists():
        shutil.copy2(version / ADAPTER / "run_config.json", version / "run_config.json")
    _point_at(version, root, adapter_dir)
    _write_history(root, _history(root) + [{"version": version.name, "at": _now().isoformat(), "event": "adopted",
                                            "previous": None}])
    return version


def promote(version: str | Path, twins_root: str | Path, adapter_link: str | Path, scorecard: str | Path | None) -> bool:
    """Make `version` current if its scorecard's gate passed; return whether it was promoted."""
    version, root = Path(version).resolve(), Path(twins_root).resolve()
    if version.parent != root or not (version / ADAPTER).is_dir():
        raise UserError(f"{version} is not a twin version under {root} (it needs an {ADAPTER}/ directory)")
    if scorecard is not None:
        try:
            gate = json.loads(Path(scorecard).read_text(encoding="utf-8")).get("gate")
        except (OSError, ValueError) as err:
            raise UserError(f"--scorecard {scorecard} is not a readable scorecard.json ({err})") from None
        if not gate:
            raise UserError(f"{scorecard} has no gate: run 04_evaluate.py with --baseline_adapter (or --baseline)")
        shutil.copy2(scorecard, version / "scorecard.json")
        if not gate.get("passed"):
            _write_history(root, _history(root) + [{"version": version.name, "at": _now().isoformat(), "event": "refused"}])
            return False
    previous = current_version(root)
    _point_at(version, root, Path(adapter_link))
    _write_history(root, _history(root) + [{"version": version.name, "at": _now().isoformat(), "event": "promoted",
                                            "previous": previous.name if previous else None}])
    return True


def rollback(twins_root: str | Path, adapter_link: str | Path) -> Path:
    """Point current back at the version that was current before the current one was promoted."""
    root = Path(twins_root).resolve()
    current, rows = current_version(root), _history(root)
    # The latest promotion of the current version that was not already undone names what came before it.
    made_current = [i for i, r in enumerate(rows) if r["event"] in ("promoted", "adopted") and not r.get("undone")
                    and current is not None and r["version"] == current.name]
    previous = rows[made_current[-1]].get("previous") if made_current else None
    if not previous or not (root / previous / ADAPTER).is_dir():
        raise UserError(f"{root}: no earlier promoted twin to roll back to")
    rows[made_current[-1]] = {**rows[made_current[-1]], "undone": True}
    _point_at(root / previous, root, Path(adapter_link))
    _write_history(root, rows + [{"version": previous, "at": _now().isoformat(), "event": "rolled back to",
                                  "from": current.name}])
    return root / previous


def versions(twins_root: str | Path) -> list[dict]:
    """One row per version: name, whether current, and its scorecard's gate result if any."""
    root = Path(twins_root)
    current = current_version(root)
    rows = []
    for path in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()) if root.is_dir() else []:
        card = path / "scorecard.json"
        gate = json.loads(card.read_text(encoding="utf-8")).get("gate", {}) if card.exists() else {}
        rows.append({"version": path.name, "current": current is not None and path.resolve() == current,
                     "gate": None if not gate else ("passed" if gate.get("passed") else "failed")})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simme_common.twins", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["adopt", "new", "promote", "rollback", "list"])
    parser.add_argument("version", nargs="?", help="promote: the version directory to promote")
    parser.add_argument("--twins_dir", default=TWINS_DIR)
    parser.add_argument("--adapter_link", default=ADAPTER_LINK)
    parser.add_argument("--scorecard", default=None, help="promote: 04's scorecard.json; promote only if its gate passed")
    args = parser.parse_args(argv)
    if args.command == "adopt":
        version = adopt(args.adapter_link, args.twins_dir)
        print(f"adopted {args.adapter_link} as {version}" if version else f"{args.adapter_link}: nothing to adopt")
    elif args.command == "new":
        print(new_version(args.twins_dir))
    elif args.command == "promote":
        if not args.version:
            raise UserError("promote needs the version directory (python -m simme_common.twins promote DIR)")
        if promote(args.version, args.twins_dir, args.adapter_link, args.scorecard):
            print(f"promoted {args.version}: {args.adapter_link} now loads it")
        else:
            print(f"not promoted: the gate in {args.scorecard} failed; {args.adapter_link} still loads "
                  f"{current_version(args.twins_dir)}")
            sys.exit(1)
    elif args.command == "rollback":
        print(f"rolled back: {args.adapter_link} now loads {rollback(args.twins_dir, args.adapter_link)}")
    else:
        for row in versions(args.twins_dir):
            print(f"{'*' if row['current'] else ' '} {row['version']}  gate: {row['gate'] or '-'}")


if __name__ == "__main__":
    run_main(main)
