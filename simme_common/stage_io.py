"""The on-disk contract between the stages: default directories, loading 01's dataset, the feedback store."""

from __future__ import annotations

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

    Append-safe: under a file lock, old + new rows are written to a sibling directory that then replaces the old
    one by rename, so a crash never leaves a half-written dataset and concurrent writers never lose rows.
    """
    import shutil

    from datasets import Dataset, concatenate_datasets, load_from_disk
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        data = Dataset.from_list(rows)
        if (path / "dataset_info.json").exists():
            old = load_from_disk(str(path))
            data = concatenate_datasets([old, data.cast(old.features)])
        tmp, stale = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
        for leftover in (tmp, stale):
            shutil.rmtree(leftover, ignore_errors=True)
        data.save_to_disk(str(tmp))
        if path.exists():
            path.rename(stale)
        tmp.rename(path)
        shutil.rmtree(stale, ignore_errors=True)
        return len(data)
