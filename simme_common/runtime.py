"""Run bookkeeping shared by every entry point: UserError and run_main, run_config.json, library versions,
CPU threads, the cache directory, peak memory and the numbered-script loader."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


_VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "gradio", "gguf")


def library_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str | None]:
    """Installed versions of the libraries that shape results (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git(args: list[str], cwd: str | Path | None) -> str | None:
    """stdout of `git <args>` in the project's checkout (None outside one or without git)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the project (None outside a checkout)."""
    out = _git(["rev-parse", "HEAD"], cwd)
    return (out or "").strip() or None


# Documentation changes don't change a result: they don't make a run's commit wrong.
_NOT_CODE = (":(exclude)*.md", ":(exclude)docs")


def git_changes(cwd: str | Path | None = None) -> list[str] | None:
    """Tracked files, documentation aside, that differ from the commit: a result then came from code no commit holds
    (None outside a checkout). Untracked files (data, outputs, a venv) don't count."""
    out = _git(["status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_CODE], cwd)
    return None if out is None else sorted(line[3:] for line in out.splitlines() if line.strip())


def git_dirty(cwd: str | Path | None = None) -> bool | None:
    """True when tracked files other than documentation differ from the commit (see git_changes)."""
    changes = git_changes(cwd)
    return None if changes is None else bool(changes)


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion of argument objects to JSON-serialisable values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # TrainingArguments.to_dict() hides tokens and handles enums; plain dataclasses use asdict.
        data = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        return {k: _jsonable(v) for k, v in data.items() if not k.endswith("_token") and k != "hub_token"}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def save_run_config(output_dir: str | Path, *args: Any) -> Path:
    """Write `run_config.json` (arguments, library versions, git commit and whether the tree differs from it,
    time) into `output_dir`.

    Args:
        output_dir: directory of the stage's output (created if missing).
        *args: the parsed argument dataclasses (or dicts) of the stage.
    Returns:
        The path of the written file.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    changed = git_changes()
    record = {
        "args": {type(a).__name__ if not isinstance(a, dict) else f"dict_{i}": _jsonable(a) for i, a in enumerate(args)},
        "versions": library_versions(),
        "git_commit": git_commit(),
        "git_dirty": bool(changed) if changed is not None else None,
        "git_changed": (changed or [])[:50],
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "created_unix": int(time.time()),
    }
    path = output_dir / "run_config.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


class UserError(Exception):
    """A mistake the user can fix (bad path, missing field, wrong flag): shown as one sentence, no traceback."""


def run_main(main_fn, *args: Any) -> None:
    """Run a stage's `main`, turning a UserError into a one-line message and exit code 2."""
    try:
        main_fn(*args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def cpu_threads(num_processes: int = 1, requested: int | None = None) -> int:
    """Torch threads for a CPU process: `accelerate launch` exports OMP_NUM_THREADS=1 unless --cpu is given, which
    would leave all but one core idle; this gives each process its share of the cores it may run on."""
    return requested or max(1, len(os.sched_getaffinity(0)) // max(1, num_processes))


def simme_cache_dir() -> Path:
    """Where converted models live: $SIMME_CACHE, else ~/.cache/simme; created, or narrowed, to mode 0700, because
    the merged twins cached under it carry the owner's style."""
    path = Path(os.environ.get("SIMME_CACHE") or Path.home() / ".cache" / "simme")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError:  # a cache another user owns and shares, or on a read-only disk: theirs to protect
            pass
    return path


def process_peak_memory_mb() -> float:
    """Peak resident set size of this process so far, MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def load_script(path: str | Path):
    """Import a numbered stage script (`01_prepare.py` cannot be imported by name) as a module, once per process.

    Registered in sys.modules before it runs, because its dataclasses look their module up there.
    """
    import importlib.util

    path = Path(path).resolve()
    name = "stage_" + path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
