"""What the tests of 03_train.py share: the script, the smoke recipe, 01-style samples saved as a prepared
dataset, and 03 run in this process (its result, or its one-sentence error)."""

from __future__ import annotations

from pathlib import Path

import pytest

import simme_common as sc

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")

train03 = sc.load_script(ROOT / "03_train.py")


def sample_row(i: int, group: bool) -> dict:
    """One 01_prepare-style sample: system, users, owner turns (multi-bubble), group names and a silent reply."""
    if group:
        system = sc.build_system_prompt("group", "Ada", ["Bo", "Cy"], "trip")
        turns = [
            ("user", sc.format_user_turn("group", "Bo", f"where are we going tonight? {i}")),
            ("user", sc.format_user_turn("group", "Cy", "I don't know... maybe the usual place")),
            ("assistant", sc.BUBBLE_DELIMITER.join(["sounds good!!", "can't wait 🎉"])),
            ("user", sc.format_user_turn("group", "Bo", "lol ok")),
            ("assistant", sc.SILENT_REPLY if i % 4 == 1 else "ok see you tomorrow"),
        ]
    else:
        system = sc.build_system_prompt("one_on_one", "Ada", ["Bo"])
        turns = [
            ("user", f"hey how are you doing today {i}"),
            ("assistant", "im good thanks wbu"),
            ("user", "anh ơi mai đi cà phê không"),
            ("assistant", sc.BUBBLE_DELIMITER.join(["ừ được đó, mấy giờ", "haha ok em"])),
        ]
    messages = [{"role": "system", "content": system}] + [{"role": r, "content": c} for r, c in turns]
    return {
        "messages": messages, "chat_id": f"chat{int(group)}", "chat_type": "group" if group else "one_on_one",
        "session_start": 1_700_000_000_000 + i, "n_tokens": 64,
    }


def write_prepared(out_dir: Path, n: int = 12, rows: list[dict] | None = None) -> Path:
    """Save a DatasetDict in 01_prepare's contract format under out_dir/dataset."""
    from datasets import Dataset, DatasetDict

    rows = rows if rows is not None else [sample_row(i, group=i % 2 == 1) for i in range(n)]
    DatasetDict(
        train=Dataset.from_list(rows), validation=Dataset.from_list(rows[:2]), test=Dataset.from_list(rows[:2])
    ).save_to_disk(str(out_dir / "dataset"))
    return out_dir


def run_train(argv: list[str]):
    """Parse argv like the CLI and run 03_train.main in this process; returns the trainer."""
    return train03.main(*train03.parse_args(argv))


def user_error(argv: list[str], capsys) -> str:
    """03 run like the CLI on bad input: exit code 2 and one `error: ` line without a traceback; that line."""
    with pytest.raises(SystemExit) as exit_info:
        sc.run_main(lambda: run_train(argv))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in message
    return message
