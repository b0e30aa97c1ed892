"""A wall-clock budget for training: on a machine too slow for the recipe's steps in time, the schedule is fit to
the steps that do fit, so the learning rate still warms up and decays to its end instead of being cut mid-way."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

# Steps timed before the first plan (the first step also builds the optimizer state and is not timed).
CALIBRATION_STEPS = 4
# Re-plans after the first, at these fractions of the plan: batches of similar length come in groups, so the
# first few steps' pace can be off in either direction.
REPLAN_FRACTIONS = (0.25, 0.5, 0.75)


def stretched(lr_lambda: Callable[[int], float], warmup: int, planned: int, steps: int) -> Callable[[int], float]:
    """`lr_lambda` of a `planned`-step schedule played over `steps` steps: warmup unchanged, the rest compressed."""
    if steps >= planned or steps <= warmup:
        return lr_lambda if steps >= planned else (lambda step: lr_lambda(min(step, warmup)))
    scale = (planned - warmup) / (steps - warmup)

    def fitted(step: int) -> float:
        if step <= warmup:
            return lr_lambda(step)
        return lr_lambda(min(planned, warmup + round((step - warmup) * scale)))

    return fitted


def steps_that_fit(budget_s: float, elapsed_s: float, step: int, s_per_step: float, planned: int) -> int:
    """Total steps that end within the budget at `s_per_step` from `step` on (at least step + 1, at most planned)."""
    left = max(0.0, budget_s - elapsed_s)
    return max(step + 1, min(planned, step + math.floor(left / s_per_step)))


def time_budget_callback(max_minutes: float, clock: Callable[[], float] = time.perf_counter):
    """A TrainerCallback that keeps training within `max_minutes` of wall clock from the first step.

    After CALIBRATION_STEPS timed steps (and again at REPLAN_FRACTIONS of the plan) it projects the finish; when
    the recipe's max_steps would overrun, it shrinks the plan and fits the LR schedule (any LambdaLR schedule:
    cosine, linear, constant) to it. A step that ends past the budget stops training whatever the plan (a machine
    that slowed down). With several processes the main process's decisions are broadcast, so every rank stops at
    the same step. `info` records the plan, the steps trained and the pace.
    """
    from transformers import TrainerCallback

    budget_s = max_minutes * 60.0

    class TimeBudget(TrainerCallback):
        def __init__(self):
            self.info: dict = {"max_train_minutes": max_minutes, "planned_steps": None, "steps": None,
                               "s_per_step": None, "fitted": False}
            self._start = self._timed_from = self._first = None
            self._lambdas = None
            self._checks: set[int] = set()

        def on_train_begin(self, args, state, control, **kwargs):
            self._start = clock()
            self.info["planned_steps"] = self.info["steps"] = state.max_steps
            self._checks = {int(f * state.max_steps) for f in REPLAN_FRACTIONS}

        def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
            now, step = clock(), state.global_step
            if self._first is None:  # the first step (of this run: a resumed one starts later) is not timed
                self._first, self._timed_from = step, now
                return control
            elapsed, timed = now - self._start, step - self._first
            if timed == CALIBRATION_STEPS or (timed > CALIBRATION_STEPS and step in self._checks):
                pace = (now - self._timed_from) / timed
                fit = _agreed(steps_that_fit(budget_s, elapsed, step, pace, self.info["planned_steps"]))
                if fit < self.info["steps"]:
                    self._fit(args, state, lr_scheduler, fit, pace)
            if step >= self.info["steps"] or _agreed(elapsed >= budget_s):
                self.info["steps"] = step
                control.should_training_stop = True
            return control

        def _fit(self, args, state, lr_scheduler, steps: int, pace: float):
            planned = self.info["planned_steps"]
            if state.is_world_process_zero:
                print(f"note: {planned} steps would take ~{planned * pace / 60:.1f} min at {pace:.2f} s/step here; "
                      f"the LR schedule is fit to {steps} steps to stay within max_train_minutes {max_minutes:g}",
                      file=sys.stderr, flush=True)
            self.info.update(steps=steps, s_per_step=round(pace, 3), fitted=True)
            lambdas = getattr(lr_scheduler, "lr_lambdas", None)
            if lambdas is None:  # not a LambdaLR: keep its schedule, stop at the new plan
                return
            if self._lambdas is None:
                self._lambdas = list(lambdas)
            warmup = args.get_warmup_steps(planned)
            lr_scheduler.lr_lambdas = [stretched(f, warmup, planned, steps) for f in self._lambdas]
            step = lr_scheduler.last_epoch
            lrs = [base * f(step) for base, f in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
            for group, lr in zip(lr_scheduler.optimizer.param_groups, lrs):
                group["lr"] = lr
            lr_scheduler._last_lr = lrs

    return TimeBudget()


def _agreed(value):
    """The main process's value on every rank (each rank times its own steps; all must stop at the same one)."""
    from accelerate import PartialState

    if PartialState().num_processes <= 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]
