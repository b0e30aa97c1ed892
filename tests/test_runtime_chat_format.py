"""Foundation: run config, chat format helpers, training template masks.

Run: .venv/bin/python -m pytest -q tests/test_runtime_chat_format.py
"""

import json
from dataclasses import dataclass

import simme_common as sc


@dataclass
class _Args:
    output_dir: str = "x"
    seed: int = 42


def test_save_run_config_records_args_versions_and_commit(tmp_path):
    path = sc.save_run_config(tmp_path / "out", _Args(), {"extra": 1})
    data = json.loads(path.read_text())
    assert data["args"]["_Args"] == {"output_dir": "x", "seed": 42}
    assert data["versions"]["torch"]
    assert "git_commit" in data and "git_dirty" in data and isinstance(data["git_changed"], list)


def test_git_dirty_marks_changed_tracked_code_only(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    assert sc.git_dirty(tmp_path) is None and sc.git_commit(tmp_path) is None  # not a checkout
    git("init", "-q")
    (tmp_path / "stage.py").write_text("x = 1\n")
    git("add", "stage.py")
    git("commit", "-qm", "first")
    assert sc.git_dirty(tmp_path) is False and len(sc.git_commit(tmp_path)) == 40
    (tmp_path / "outputs.json").write_text("{}")  # untracked outputs don't make a run irreproducible
    assert sc.git_dirty(tmp_path) is False
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("a\n")
    (tmp_path / "README.md").write_text("a\n")
    git("add", "docs", "README.md")
    git("commit", "-qm", "docs")
    (tmp_path / "docs" / "guide.md").write_text("b\n")  # documentation doesn't change a result
    (tmp_path / "README.md").write_text("b\n")
    assert sc.git_dirty(tmp_path) is False and sc.git_changes(tmp_path) == []
    (tmp_path / "stage.py").write_text("x = 2\n")
    assert sc.git_dirty(tmp_path) is True and sc.git_changes(tmp_path) == ["stage.py"]


def test_split_bubbles_splits_on_newlines_and_silence_gives_none():
    assert sc.split_bubbles("hey\n\n lol \nok") == ["hey", "lol", "ok"]
    assert sc.split_bubbles(f" {sc.SILENT_REPLY} ") == []


def test_group_user_turns_carry_the_speaker_name():
    assert sc.format_user_turn("group", "Minh", "hi") == "Minh: hi"
    assert sc.format_user_turn("one_on_one", "Minh", "hi") == "hi"
    assert "group chat" in sc.build_system_prompt("group", "Ann", ["Bo", "Cy"])


def test_training_template_masks_only_owner_turns_and_their_end_token(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = sc.ensure_training_template(AutoTokenizer.from_pretrained(tiny_model_dir))
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Bo: hi"},
            {"role": "assistant", "content": "yo\nok"}, {"role": "user", "content": "Cy: lol"},
            {"role": "assistant", "content": "haha"}]
    enc = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    kept = tok.decode([i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])
    assert kept == "yo\nok<|im_end|>haha<|im_end|>"
