"""The on-disk contract between the stages: default directories, loading 01's dataset, atomic and private (0600/0700)
outputs, the feedback store, and the private spool of raw data that is removed on every exit path."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from .chat_format import MESSAGES, OWNER_ROLE
from .runtime import UserError


# Default on-disk contract between the stages.
PREPARED_DIR = "data/01_prepared"


ANALYSIS_DIR = "data/02_analysis"


ADAPTER_DIR = "outputs/03_adapter"


EVAL_DIR = "outputs/04_eval"


def load_prepared_dataset(input_dir: str | Path, splits: tuple[str, ...] = ("train",)):
    """Load 01_prepare's `dataset/` DatasetDict from `input_dir`, or raise a UserError saying what to run.

    Args:
        input_dir: 01_prepare's output directory (holding `dataset/`).
        splits: splits that must exist and be non-empty.
    Returns:
        The DatasetDict.
    """
    from datasets import DatasetDict, load_from_disk

    path = Path(input_dir) / "dataset"
    if not path.exists():
        raise UserError(f"no prepared dataset at {path}: run 01_prepare.py first or pass --input_dir")
    try:
        data = load_from_disk(str(path))
    except IndexError:  # datasets cannot reload a split that was saved with 0 rows (0 shards)
        raise UserError(f"a split of {path} is empty: export more chats or lower 01's filters, then re-run 01_prepare.py") from None
    except (FileNotFoundError, ValueError) as err:
        raise UserError(f"{path} is not a saved DatasetDict ({err}); re-run 01_prepare.py") from None
    if not isinstance(data, DatasetDict):
        raise UserError(f"{path} holds a single Dataset, not the DatasetDict 01_prepare.py writes; re-run 01_prepare.py")
    for split in splits:
        if split not in data or len(data[split]) == 0:
            raise UserError(f"the {split!r} split of {path} is missing or empty: export more chats or lower 01's filters")
        if MESSAGES not in data[split].column_names:
            raise UserError(f"the {split!r} split of {path} has no {MESSAGES!r} column; re-run 01_prepare.py")
    return data


def check_owner_turns(dataset, name: str = "train") -> int:
    """Number of owner (assistant) turns in a conversational split; UserError naming the first sample without one."""
    n = 0
    for i, messages in enumerate(dataset[MESSAGES]):
        k = sum(1 for m in messages if m.get("role") == OWNER_ROLE and m.get("content"))
        if k == 0:
            raise UserError(
                f"sample {i} of the {name!r} split has no owner ({OWNER_ROLE!r}) turn: check --owner in 01_prepare.py"
            )
        n += k
    return n


def append_to_disk_dataset(path: str | Path, rows: list[dict]) -> int:
    """Append `rows` to the HF dataset saved at `path` (created if missing) and return its new length.

    Crash-safe: under a file lock, old + new rows are written to a sibling directory that then replaces the old
    one (replace_dir), so an interrupted append leaves the previous rows intact and concurrent writers never
    lose rows.
    """
    from datasets import Dataset, concatenate_datasets, load_from_disk
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        _recover_dir(path, legacy=True)
        data = Dataset.from_list(rows)
        if (path / "dataset_info.json").exists():
            old = load_from_disk(str(path))
            data = concatenate_datasets([old, data.cast(old.features)])
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        data.save_to_disk(str(tmp))
        n = len(data)
        del data  # its memory map points into tmp, which is moved next
        replace_dir(tmp, path)
        return n


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    return False


def _recover_dir(final: Path, legacy: bool = False) -> None:
    """Undo an interrupted two-step replace: `final` moved aside but its successor not yet moved in."""
    if final.exists():
        return
    # `<name>.old` (legacy) is where earlier versions of append_to_disk_dataset moved the old rows aside.
    stales = [final.with_name(f".{final.name}.old")] + ([final.with_name(f"{final.name}.old")] if legacy else [])
    for stale in stales:
        if stale.exists():
            stale.rename(final)
            return


def carry_entries(old: Path, final: Path, keep: tuple[str, ...]) -> None:
    """Move the entries of `old` matching the glob patterns `keep` (e.g. training checkpoints) into `final`,
    leaving any that `final` already has."""
    if not keep or not Path(old).is_dir():
        return
    Path(final).mkdir(parents=True, exist_ok=True)
    for pattern in keep:
        for entry in sorted(Path(old).glob(pattern)):
            if not (Path(final) / entry.name).exists():
                entry.rename(Path(final) / entry.name)


def replace_dir(new: Path, final: Path, keep: tuple[str, ...] = ()) -> None:
    """Put the finished directory `new` at `final` so that `final` is at every moment either the complete old
    or the complete new output (an atomic exchange; where the OS lacks one, a recoverable two-step rename).
    The new output is made private first (make_private): it holds the owner's messages or their twin.

    Entries of the old output matching `keep` (glob patterns) are moved into the new one after the exchange.
    """
    new, final = Path(new), Path(final)
    make_private(new)
    _recover_dir(final)
    if final.is_symlink():  # a link to a twin version (simme_common.twins): replace the link, keep the version whole
        if _exchange(new, final):
            new.unlink()
        else:
            final.unlink()
            new.rename(final)
        return
    if not final.exists():
        new.rename(final)
        return
    if _exchange(new, final):
        carry_entries(new, final, keep)  # `new` now holds the old output
        shutil.rmtree(new, ignore_errors=True)
        return
    stale = final.with_name(f".{final.name}.old")
    shutil.rmtree(stale, ignore_errors=True)
    final.rename(stale)
    new.rename(final)
    carry_entries(stale, final, keep)
    shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_output_dir(final: str | Path):
    """Yield a temporary directory beside `final` to write a stage's whole output into; on success it replaces
    `final` in one step (replace_dir), on any error or kill the previous `final` stays as it was.

    Leftover temporary directories of killed runs (`.<name>.tmp-*` beside it) are removed on the next use.
    """
    import tempfile

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _recover_dir(final)
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            pid = int(leftover.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)  # a run still writing it
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)


def make_private(root: str | Path) -> None:
    """Narrow a directory tree to its owner: directories 0700, files 0600 (symlinks are left as they are)."""
    root = Path(root)
    root.chmod(0o700)
    for dirpath, dirnames, filenames in os.walk(root):
        for name, mode in [(d, 0o700) for d in dirnames] + [(f, 0o600) for f in filenames]:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, mode)


_SPOOL_LOCK = ".lock"


def _exit_on_signal(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through every `finally`, which removes the spool


@contextmanager
def private_spool(prefix: str = "simme01_"):
    """A private (0700) temporary directory for raw, un-anonymized data, removed on every exit path: success, an
    exception, Ctrl-C, and SIGTERM or SIGHUP, which raise SystemExit while it is open (main thread only).

    SIGKILL and the OOM killer cannot be caught: a spool of such a run (`<prefix><pid>_*` in the temp dir) is
    recognized by its lock, which died with its process, and removed when the next spool of `prefix` opens.
    """
    import fcntl
    import signal
    import tempfile
    import threading

    sweep_dead_spools(prefix)
    # Made under a hidden name, locked, then renamed: a concurrent sweep never sees it unlocked.
    hidden = Path(tempfile.mkdtemp(prefix=f".{prefix}{os.getpid()}_"))
    lock = open(hidden / _SPOOL_LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    path = hidden.with_name(hidden.name[1:])
    hidden.rename(path)
    signals = (signal.SIGTERM, signal.SIGHUP) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in signals}
    try:
        yield path
    finally:
        for sig in signals:  # a second signal must not interrupt the removal
            signal.signal(sig, signal.SIG_IGN)
        try:
            shutil.rmtree(path, ignore_errors=True)
            lock.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def sweep_dead_spools(prefix: str = "simme01_", tmp_dir: str | Path | None = None) -> int:
    """Remove the spools of `prefix` (ours, in the temp dir) whose process died without removing them, e.g. killed
    by SIGKILL or for memory: nobody holds their lock. Returns how many were removed."""
    import fcntl
    import tempfile

    removed = 0
    for path in sorted(Path(tmp_dir or tempfile.gettempdir()).glob(f"{prefix}*")):
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            with open(path / _SPOOL_LOCK, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its run is alive
                shutil.rmtree(path, ignore_errors=True)
            removed += 1
        except OSError:
            continue
    return removed


def feedback_usage(path: Path) -> tuple[int, int]:
    """(rows, bytes on disk) of a feedback store; (0, 0) when it does not exist yet."""
    if not (path / "dataset_info.json").exists():
        return 0, 0
    from datasets import load_from_disk

    return len(load_from_disk(str(path))), sum(f.stat().st_size for f in path.iterdir() if f.is_file())
