"""Tests of 03_train.py: LoRA-only updates, owner-only labels, outputs, DDP, W&B offline, bad input, real model.

Run: .venv/bin/python -m pytest -q tests/test_train.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import simme_common as sc
from simme_common import training

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


train03 = sc.load_script(ROOT / "03_train.py")


def _sample(i: int, group: bool) -> dict:
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

    rows = rows if rows is not None else [_sample(i, group=i % 2 == 1) for i in range(n)]
    DatasetDict(
        train=Dataset.from_list(rows), validation=Dataset.from_list(rows[:2]), test=Dataset.from_list(rows[:2])
    ).save_to_disk(str(out_dir / "dataset"))
    return out_dir


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    """A small prepared dataset with one-on-one and group samples."""
    return write_prepared(tmp_path_factory.mktemp("prepared"))


def run_train(argv: list[str]):
    """Parse argv like the CLI and run 03_train.main in this process; returns the trainer."""
    return train03.main(*train03.parse_args(argv))


@pytest.fixture(scope="module")
def smoke_run(tiny_model_dir, prepared_dir, tmp_path_factory):
    """One smoke training run on the tiny model (with --merge); shared by several tests."""
    out = tmp_path_factory.mktemp("adapter")
    trainer = run_train([
        "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
        "--output_dir", str(out), "--merge", "true", "--max_length", "1024",  # no truncation: samples stay aligned
        "--max_train_minutes", "60",
    ])
    return trainer, out


@pytest.mark.slow
def test_smoke_run_updates_lora_weights_only_and_writes_outputs(smoke_run, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    trainer, out = smoke_run
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "run_config.json", "log_history.json", "merged/model.safetensors"):
        assert (out / name).exists(), name
    assert trainer.state.global_step == 2
    history = json.loads((out / "log_history.json").read_text())
    assert any("loss" in h for h in history)
    recorded = json.loads((out / "run_config.json").read_text())["args"]
    assert "SFTConfig" in recorded
    assert recorded["dict_3"]["precision"] == {"dtype": "float32", "bf16_autocast": False,
                                               "reason": "dtype float32 as requested",
                                               "native_bf16_flags": recorded["dict_3"]["precision"]["native_bf16_flags"]}
    budget = recorded["dict_3"]["time_budget"]  # a budget that max_steps fits in changes nothing
    assert budget["planned_steps"] == budget["steps"] == 2 and not budget["fitted"]

    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # lora_B starts at zero: nonzero means it trained

    base = load_file(tiny_model_dir / "model.safetensors")
    compared = 0
    for name, param in trainer.model.named_parameters():
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in name and key in base:
            assert not param.requires_grad and torch.equal(param.detach().cpu(), base[key]), key
            compared += 1
    assert compared == len(base)  # every base tensor is frozen and unchanged


@pytest.mark.slow
def test_labels_train_every_owner_turn_and_its_end_of_turn_and_nothing_else(smoke_run, prepared_dir):
    from datasets import load_from_disk

    trainer, _ = smoke_run
    tokenizer = trainer.processing_class
    eot = sc.end_of_turn_token(tokenizer)
    rows = load_from_disk(str(prepared_dir / "dataset"))["train"]
    assert len(rows) == len(trainer.train_dataset)
    seen = set()
    for row, prepared in zip(rows, trainer.train_dataset):
        owner = [m["content"] + eot for m in row["messages"] if m["role"] == sc.OWNER_ROLE]
        segments = sc.trained_segments(prepared["input_ids"], prepared["labels"], tokenizer)
        assert segments == owner, row["chat_type"]
        untrained = tokenizer.decode([t for t, lab in zip(prepared["input_ids"], prepared["labels"]) if lab == -100])
        for m in row["messages"]:
            if m["role"] != sc.OWNER_ROLE:
                assert m["content"] in untrained
        seen.add(row["chat_type"])
    assert seen == {"one_on_one", "group"}
    # The collator keeps the mask and adds -100 on padding.
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


@pytest.mark.slow
def test_generation_config_stops_on_the_training_end_of_turn_token(smoke_run):
    trainer, _ = smoke_run
    tokenizer = trainer.processing_class
    eot_id = tokenizer.convert_tokens_to_ids(sc.end_of_turn_token(tokenizer))
    stop = trainer.model.generation_config.eos_token_id
    assert eot_id == tokenizer.eos_token_id and eot_id in (stop if isinstance(stop, list) else [stop])


@pytest.mark.slow
def test_init_adapter_continues_training_a_previous_adapter(smoke_run, tiny_model_dir, prepared_dir, tmp_path):
    from safetensors.torch import load_file

    _, first = smoke_run
    trainer = run_train([
        "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
        "--output_dir", str(tmp_path), "--init_adapter", str(first), "--max_steps", "1",
    ])
    before, after = load_file(first / "adapter_model.safetensors"), load_file(tmp_path / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    assert any(not (before[k] == after[k]).all() for k in before)
    assert trainer.state.global_step == 1


def _cli(args: list[str], env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_two_process_cpu_ddp_run_trains_and_writes_once(tiny_model_dir, prepared_dir, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    proc = _cli([
        accelerate, "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "03_train.py", "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir),
        "--input_dir", str(prepared_dir), "--output_dir", str(tmp_path),
    ], timeout=600)  # two fresh interpreters: ~30 s on an idle machine, minutes on a busy one
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "run_config.json").exists()
    assert proc.stdout.count("03_train summary") == 1  # only the main process prints and writes
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert history[-1]["step"] == 2


@pytest.mark.slow
def test_wandb_offline_run_lives_outside_the_adapter_and_names_no_path(tiny_model_dir, prepared_dir, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("SIMME_CACHE", str(tmp_path / "cache"))
    adapter = tmp_path / "janedoe_10153" / "adapter"  # a folder name that carries a person's name
    monkeypatch.setenv("WANDB_DIR", str(adapter / "wandb_here"))  # inside the adapter folder: not honoured
    run_train([
        "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
        "--output_dir", str(adapter), "--report_to", "wandb", "--max_steps", "1",
    ])
    import wandb

    wandb.finish()
    assert (adapter / "adapter_model.safetensors").exists()
    assert not list(adapter.rglob("*wandb*")) and not list(adapter.rglob("*.wandb"))  # --push_to_hub uploads adapter/
    runs = list((tmp_path / "cache" / "wandb" / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
    recorded = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    assert b"learning_rate" in recorded and b"<redacted>" in recorded  # the config went in, redacted
    for private in ("janedoe", str(prepared_dir), str(tiny_model_dir)):
        assert private.encode() not in recorded, private


def test_wandb_config_redaction_and_folder_choice(tmp_path):
    config = {"output_dir": "outputs/03_adapter", "learning_rate": 1e-3, "lr_scheduler_type": "cosine",
              "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "logging_dir": None,
              "peft_config": {"default": {"base_model_name_or_path": "/home/jane/models/x", "r": 16}},
              "extra": ["/home/jane/data", "~/x", "C:\\Users\\jane", "fine"]}
    redacted = training.redact_private(config)
    assert redacted["output_dir"] == redacted["model_name_or_path"] == training.REDACTED
    assert redacted["learning_rate"] == 1e-3 and redacted["lr_scheduler_type"] == "cosine" and redacted["logging_dir"] is None
    assert redacted["peft_config"]["default"] == {"base_model_name_or_path": training.REDACTED, "r": 16}
    assert redacted["extra"] == [training.REDACTED] * 3 + ["fine"]
    out = tmp_path / "adapter"
    assert training.wandb_run_dir(str(out), None, tmp_path / "c") == tmp_path / "c" / "wandb"
    assert training.wandb_run_dir(str(out), str(out / "w"), tmp_path / "c") == tmp_path / "c" / "wandb"
    assert training.wandb_run_dir(str(out), str(out), tmp_path / "c") == tmp_path / "c" / "wandb"
    assert training.wandb_run_dir(str(out), str(tmp_path / "elsewhere"), tmp_path / "c") == tmp_path / "elsewhere"


def test_private_hub_repo_and_no_reporting_by_default(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "simme")  # W&B variables alone switch nothing on
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    _, sft, model_args = train03.parse_args(["--config", SMOKE])
    assert sft.hub_private_repo is True and sft.report_to == [] and sft.assistant_only_loss and model_args.use_peft
    _, sft, _ = train03.parse_args([])
    assert sft.output_dir == sc.ADAPTER_DIR and sft.bf16 is False  # no GPU here: fp32, not TRL's bf16 default


@pytest.mark.parametrize("recipe", ["llama31_8b_8bit.yaml", "qlora_4bit.yaml"])
def test_gpu_recipes_parse_and_build_a_trainer_on_cpu(recipe, tiny_model_dir, prepared_dir, tmp_path):
    """Config errors of the GPU recipes show here: the same YAML, a tiny model, CPU (bf16 through use_cpu)."""
    train_args, sft, model_args = train03.parse_args([
        "--config", str(ROOT / "configs" / recipe), "--model_name_or_path", str(tiny_model_dir),
        "--input_dir", str(prepared_dir), "--output_dir", str(tmp_path), "--use_cpu", "true",
    ])
    assert model_args.load_in_8bit or model_args.load_in_4bit
    trainer, info = train03.build_trainer(train_args, sft, model_args)
    assert trainer.args.bf16 and info["precision"]["bf16_autocast"] and info["supervised-only LM head"]
    assert trainer.args.lr_scheduler_type == "cosine" and trainer.model.peft_config["default"].r == 32
    quantized = [m for m in trainer.model.modules() if "bitsandbytes" in type(m).__module__]
    assert quantized, "the base's linear layers are bitsandbytes layers"


def test_dtype_auto_sets_the_trainers_autocast_from_this_cpus_flags(tiny_model_dir, prepared_dir, tmp_path):
    import torch

    from simme_common.precision import machine_cpu_flags, native_bf16_flags

    train_args, sft, model_args = train03.parse_args([
        "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
        "--output_dir", str(tmp_path), "--dtype", "auto",
    ])
    trainer, info = train03.build_trainer(train_args, sft, model_args)
    native = bool(native_bf16_flags(machine_cpu_flags()))
    assert info["precision"]["bf16_autocast"] is native and model_args.dtype == "float32"
    assert trainer.accelerator.mixed_precision == ("bf16" if native else "no")
    assert trainer.model.dtype == torch.float32  # master weights stay fp32; autocast computes in bf16


def _user_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        sc.run_main(lambda: run_train(argv))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in message
    return message


def test_bad_input_gives_one_sentence(tiny_model_dir, prepared_dir, tmp_path, capsys):
    base = ["--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]
    assert "run 01_prepare.py" in _user_error(base + ["--input_dir", str(tmp_path / "missing")], capsys)

    empty = write_prepared(tmp_path / "empty", rows=[])
    assert "empty" in _user_error(base + ["--input_dir", str(empty)], capsys)

    silent = _sample(0, group=False)
    silent["messages"] = [m for m in silent["messages"] if m["role"] != sc.OWNER_ROLE]
    no_owner = write_prepared(tmp_path / "no_owner", rows=[_sample(1, False), silent])
    assert "sample 1" in _user_error(base + ["--input_dir", str(no_owner)], capsys)

    unknown = ["--config", SMOKE, "--input_dir", str(prepared_dir), "--model_name_or_path", str(tmp_path / "nope")]
    assert "nope" in _user_error(unknown, capsys)

    assert "--fp16 needs a GPU" in _user_error(base + ["--input_dir", str(prepared_dir), "--fp16", "true"], capsys)
    assert "bf16" in _user_error(base + ["--input_dir", str(prepared_dir), "--bf16", "true"], capsys)
    for bad in ("0", "-1", "nan"):
        assert "--max_train_minutes must be above 0" in _user_error(
            base + ["--input_dir", str(prepared_dir), "--max_train_minutes", bad], capsys)
    for bad in ("0", "3"):  # the tiny model has 2 layers
        assert "--lora_top_layers must be between 1 and the model's 2 layers" in _user_error(
            base + ["--input_dir", str(prepared_dir), "--lora_top_layers", bad], capsys)
    assert "needs --use_peft true" in _user_error(
        base + ["--input_dir", str(prepared_dir), "--lora_top_layers", "1", "--use_peft", "false"], capsys)


def test_cli_reports_missing_dataset_without_traceback(tmp_path):
    proc = _cli([sys.executable, "03_train.py", "--config", SMOKE, "--input_dir", str(tmp_path)], timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error: no prepared dataset" in proc.stderr


@pytest.mark.slow
def test_real_default_model_trains_one_step(prepared_dir, tmp_path):
    trainer = run_train([
        "--config", SMOKE, "--input_dir", str(prepared_dir), "--output_dir", str(tmp_path),
        "--max_steps", "1", "--max_length", "256", "--per_device_train_batch_size", "1",
    ])
    assert trainer.state.global_step == 1
    assert (tmp_path / "adapter_model.safetensors").exists()
    tokenizer = trainer.processing_class
    assert sc.end_of_turn_token(tokenizer) == "<|im_end|>" == tokenizer.eos_token
    for i in (0, 1):  # one one-on-one and one group sample, under SmolLM2's own tokenizer
        example = trainer.train_dataset[i]
        owner = [m["content"] + "<|im_end|>" for m in _sample(i, group=i % 2 == 1)["messages"] if m["role"] == sc.OWNER_ROLE]
        assert sc.trained_segments(example["input_ids"], example["labels"], tokenizer) == owner


def test_gpu_check_child_runs_03_with_its_own_flags_and_stops_without_cuda(tiny_model_dir, prepared_dir, tmp_path):
    """gpu_check's training row is 03 in a child process: 03's flags (--model_name_or_path among them, a name the
    script also has) reach 03 untouched, and the row's JSON line carries what the table prints."""
    script = str(ROOT / "scripts" / "gpu_check.py")
    proc = subprocess.run([sys.executable, script, "--child", "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir),
                           "--input_dir", str(prepared_dir), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                           "--save_strategy", "no", "--disable_tqdm", "true"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith('{"tokens_per_s"')))
    assert row["tokens"] > 0 and row["tokens_per_s"] > 0
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr


def test_lora_top_layers_trains_the_top_layers_and_backpropagates_through_them_only(tiny_model_dir, prepared_dir,
                                                                                   tmp_path):
    """--lora_top_layers 1 on a 2-layer model: LoRA only in layer 1, and layer 0 runs outside autograd (its output
    needs no gradient), which is where a step saves its time."""
    train_args, sft, model_args = train03.parse_args([
        "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
        "--output_dir", str(tmp_path), "--max_steps", "1", "--lora_top_layers", "1",
    ])
    trainer, _ = train03.build_trainer(train_args, sft, model_args)
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" in n]
    assert trained and all(".layers.1." in n for n in trained)
    layers = trainer.model.get_base_model().model.layers
    needs_grad = {}

    def record(i):
        def hook(module, args, out):
            needs_grad.setdefault(i, (out[0] if isinstance(out, tuple) else out).requires_grad)
        return hook

    for i, layer in enumerate(layers):
        layer.register_forward_hook(record(i))
    trainer.train()
    assert needs_grad == {0: False, 1: True}
    assert all(p.grad is None for n, p in trainer.model.named_parameters() if ".layers.0." in n)


def _lora_b_after_one_step(tiny_model_dir, prepared_dir, tmp_path, extra: list[str]) -> float:
    """The largest LoRA B weight after one constant-rate step. B starts at zero and Adam's first step moves every
    weight with a gradient by about its learning rate, so this reads B's rate off the weights themselves."""
    train_args, sft, model_args = train03.parse_args([
        "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
        "--output_dir", str(tmp_path), "--max_steps", "1", "--learning_rate", "1e-3", "--warmup_steps", "0",
        "--lr_scheduler_type", "constant", "--weight_decay", "0", *extra,
    ])
    trainer, _ = train03.build_trainer(train_args, sft, model_args)
    trainer.train()
    return max(p.detach().abs().max().item() for n, p in trainer.model.named_parameters() if "lora_B" in n)


def test_loraplus_trains_the_b_matrices_at_ratio_times_the_learning_rate(tiny_model_dir, prepared_dir, tmp_path):
    plain = _lora_b_after_one_step(tiny_model_dir, prepared_dir, tmp_path / "plain", [])
    plus = _lora_b_after_one_step(tiny_model_dir, prepared_dir, tmp_path / "plus", ["--loraplus_lr_ratio", "4"])
    assert plain == pytest.approx(1e-3, rel=0.05)
    assert plus == pytest.approx(4e-3, rel=0.05)


def test_loraplus_refuses_a_ratio_below_one_and_a_model_without_lora(tiny_model_dir, prepared_dir, tmp_path, capsys):
    base = ["--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
            "--output_dir", str(tmp_path / "out")]
    for bad in ("0.5", "nan"):
        assert "--loraplus_lr_ratio must be at least 1" in _user_error(base + ["--loraplus_lr_ratio", bad], capsys)
    assert "needs trainable LoRA weights" in _user_error(
        base + ["--loraplus_lr_ratio", "4", "--use_peft", "false"], capsys)
    assert "drop one of them" in _user_error(
        base + ["--loraplus_lr_ratio", "4", "--preference_data", str(tmp_path / "feedback")], capsys)


def _cosine_20_step_trainer(tiny_model_dir, prepared_dir, tmp_path):
    """The time-budget tests' trainer: 20 steps of 1 sample, cosine from 1e-3 after 2 warmup steps."""
    train_args, sft, model_args = train03.parse_args([
        "--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir),
        "--output_dir", str(tmp_path), "--max_steps", "20", "--lr_scheduler_type", "cosine", "--warmup_steps", "2",
        "--per_device_train_batch_size", "1", "--learning_rate", "1e-3",
    ])
    return train03.build_trainer(train_args, sft, model_args)[0]


def test_time_budget_fits_the_lr_schedule_to_the_steps_that_fit(tiny_model_dir, prepared_dir, tmp_path):
    """A machine too slow for max_steps in the budget: the plan shrinks after the calibration steps and the cosine
    schedule still warms up and ends at zero on the last step that fits. A clock of 1 s per step makes it exact."""
    from simme_common.time_budget import CALIBRATION_STEPS, time_budget_callback

    trainer = _cosine_20_step_trainer(tiny_model_dir, prepared_dir, tmp_path)
    ticks = iter(range(10_000))
    budget = time_budget_callback(12 / 60, clock=lambda: float(next(ticks)))  # 12 s at 1 s per step
    trainer.add_callback(budget)
    trainer.train()

    # at step 5 it has spent 5 s of 12 at 1 s/step: 7 more fit -> 12 steps
    assert CALIBRATION_STEPS + 1 == 5 and budget.info == {
        "max_train_minutes": 0.2, "planned_steps": 20, "steps": 12, "s_per_step": 1.0, "fitted": True, "replans": 1}
    assert trainer.state.global_step == 12
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert len(lrs) == 12
    # each step logs the learning rate it trained with: warmup unchanged (the peak at step 3), then only decay,
    # and after step 12 the schedule stands where the 20-step one ends
    assert lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 5e-5
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_time_budget_grows_the_plan_back_when_the_pace_picks_up(tiny_model_dir, prepared_dir, tmp_path):
    """Length-grouped batches come longest first: 3 s per step at first shrinks a 20-step plan, 1 s per step
    afterwards grows it again within the budget, and the learning rate only decays after warmup, without a jump."""
    from simme_common.time_budget import time_budget_callback

    trainer = _cosine_20_step_trainer(tiny_model_dir, prepared_dir, tmp_path)
    times = iter([0.0] + [3.0 * k for k in range(1, 6)] + [15.0 + k for k in range(1, 100)])  # begin, steps 1..
    budget = time_budget_callback(30 / 60, clock=lambda: next(times))
    trainer.add_callback(budget)
    trainer.train()

    # step 5 at 15 s (3 s/step): 10 steps fit; the re-plans at 75 % of each plan find a faster pace:
    # 7 -> 12, 9 -> 14, 10 -> 15, 11 -> 16 steps, and step 16 ends at 26 s of 30
    info = budget.info
    assert info["steps"] == trainer.state.global_step == 16 and info["fitted"] and info["replans"] == 5
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 5e-5
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_stretched_schedule_keeps_warmup_and_goes_on_without_a_jump():
    from functools import partial

    from transformers.optimization import _get_cosine_schedule_with_warmup_lr_lambda

    from simme_common.time_budget import plan_position, steps_that_fit, stretched

    cosine = partial(_get_cosine_schedule_with_warmup_lr_lambda, num_warmup_steps=10, num_training_steps=100,
                     num_cycles=0.5)
    fitted = stretched(cosine, 100, 40, anchor=10)  # fit during warmup: the anchor is the warmup's end
    assert [fitted(s) for s in range(11)] == [cosine(s) for s in range(11)]
    assert fitted(25) == pytest.approx(cosine(55)) and fitted(40) == cosine(100) == 0.0
    assert stretched(cosine, 100, 100) is cosine
    # a second re-plan at step 25 (position 55) grows the plan to 70 steps: the rate goes on from cosine(55)
    grown = stretched(cosine, 100, 70, anchor=25, anchor_pos=plan_position(100, 40, 10)(25))
    assert grown(25) == fitted(25) and grown(70) == 0.0 and cosine(55) > grown(47) > cosine(79)
    assert steps_that_fit(60, 10, 5, 2.0, 100) == 30 and steps_that_fit(60, 70, 5, 2.0, 100) == 6
    assert steps_that_fit(600, 10, 5, 2.0, 100) == 100
