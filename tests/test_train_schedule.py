"""Tests of what 03 trains at which rate: LoRA on the top layers only, LoRA+ (the B matrices' rate), and the time
budget that fits the LR schedule to the steps that fit.

Run: .venv/bin/python -m pytest -q tests/test_train_schedule.py
"""

from __future__ import annotations

import pytest

from train_helpers import SMOKE, train03, user_error


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
        assert "--loraplus_lr_ratio must be at least 1" in user_error(base + ["--loraplus_lr_ratio", bad], capsys)
    assert "needs trainable LoRA weights" in user_error(
        base + ["--loraplus_lr_ratio", "4", "--use_peft", "false"], capsys)
    assert "drop one of them" in user_error(
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
