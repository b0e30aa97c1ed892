"""Tests of 03_train.py: LoRA-only updates, owner-only labels, outputs, DDP, W&B offline, bad input, real model
(what it trains at which rate: test_train_schedule.py).

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

from train_helpers import ROOT, SMOKE, run_train, sample_row, train03, user_error, write_prepared



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
    # The writing process re-ran itself on mimalloc under accelerate's launcher (where the wheel installs: Linux)
    recorded = json.loads((tmp_path / "run_config.json").read_text())["args"]["dict_3"]
    assert recorded["allocator"] == ("mimalloc" if sc.mimalloc_library() else "system")
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
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    # under autocast the frozen base weights are stored as autocast casts them (tests/test_precision.py)
    frozen = sum(p.numel() for n, p in trainer.model.named_parameters() if "base_layer" in n)
    assert info["frozen weights in bf16"] == (frozen if native else 0) and frozen > 0
    # and each activation is cast once (tests/test_bf16_step.py): norms, LoRA layers (2 tiny layers x 7), attention
    assert info["lean bf16 step"] == ("4 norm outputs cast once, 14 LoRA layers fused"
                                      + (", attention in bf16" if model_args.attn_implementation == "eager" else "")
                                      if native else None)


@pytest.mark.parametrize(("choice", "cpu_bf16", "compiles"), [
    ("true", False, True), ("false", True, False), ("auto", True, True), ("auto", False, False),
    (True, False, True), ("AUTO", True, True),  # a YAML bool, any casing
])
def test_compile_layers_auto_compiles_where_the_cpu_trains_in_bf16(choice, cpu_bf16, compiles):
    """The CPU recipes' `compile_layers: auto`: compiled bf16 steps pay back within the demo's budget, fp32 ones
    (CPUs without native bf16, ~4x slower) do not (docs/train.md, Efficiency 11)."""
    assert train03._compiles(choice, cpu_bf16) is compiles


def test_compile_layers_refuses_other_values():
    with pytest.raises(sc.UserError, match="true, false or auto"):
        train03._compiles("yes", True)


def test_bad_input_gives_one_sentence(tiny_model_dir, prepared_dir, tmp_path, capsys):
    base = ["--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]
    assert "run 01_prepare.py" in user_error(base + ["--input_dir", str(tmp_path / "missing")], capsys)

    empty = write_prepared(tmp_path / "empty", rows=[])
    assert "empty" in user_error(base + ["--input_dir", str(empty)], capsys)

    silent = sample_row(0, group=False)
    silent["messages"] = [m for m in silent["messages"] if m["role"] != sc.OWNER_ROLE]
    no_owner = write_prepared(tmp_path / "no_owner", rows=[sample_row(1, False), silent])
    assert "sample 1" in user_error(base + ["--input_dir", str(no_owner)], capsys)

    unknown = ["--config", SMOKE, "--input_dir", str(prepared_dir), "--model_name_or_path", str(tmp_path / "nope")]
    assert "nope" in user_error(unknown, capsys)

    assert "--fp16 needs a GPU" in user_error(base + ["--input_dir", str(prepared_dir), "--fp16", "true"], capsys)
    assert "bf16" in user_error(base + ["--input_dir", str(prepared_dir), "--bf16", "true"], capsys)
    for bad in ("0", "-1", "nan"):
        assert "--max_train_minutes must be above 0" in user_error(
            base + ["--input_dir", str(prepared_dir), "--max_train_minutes", bad], capsys)
    for bad in ("0", "3"):  # the tiny model has 2 layers
        assert "--lora_top_layers must be between 1 and the model's 2 layers" in user_error(
            base + ["--input_dir", str(prepared_dir), "--lora_top_layers", bad], capsys)
    assert "needs --use_peft true" in user_error(
        base + ["--input_dir", str(prepared_dir), "--lora_top_layers", "1", "--use_peft", "false"], capsys)
    # preference runs are never compiled, but a misspelt value is still refused
    assert "true, false or auto" in user_error(
        base + ["--input_dir", str(prepared_dir), "--compile_layers", "yes", "--preference_data", str(tmp_path)], capsys)


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
        owner = [m["content"] + "<|im_end|>" for m in sample_row(i, group=i % 2 == 1)["messages"] if m["role"] == sc.OWNER_ROLE]
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
