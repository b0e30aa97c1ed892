"""A wall-clock budget for training: on a machine too slow for the recipe's steps in time, the schedule is fit to
the steps that do fit, so the learning rate still warms up and decays to its end instead of being cut mid-way."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

# Steps timed before the first plan (the first step also builds the optimizer state and is not timed).
CALIBRATION_STEPS = 4
# Re-plans after the first, at these fractions of the current plan: length-grouped batches come longest first
# within each group, so the first steps' pace overestimates the rest, and a machine can also slow down.
REPLAN_FRACTIONS = (0.25, 0.5, 0.75)


def plan_position(planned: int, steps: int, anchor: int = 0, anchor_pos: float | None = None) -> Callable[[int], float]:
    """step -> position in a `planned`-step schedule whose rest, from step `anchor` (at position `anchor_pos`,
    default `anchor`), is played over the steps up to `steps`: the position reaches `planned` on step `steps`.
    Steps before the anchor keep their offset. A plan that ends before its anchor (inside warmup) keeps the steps."""
    pos0 = float(anchor if anchor_pos is None else anchor_pos)
    if steps <= anchor:
        return float
    scale = (planned - pos0) / (steps - anchor)
    return lambda step: pos0 + (step - anchor) * (scale if step > anchor else 1.0)


def stretched(lr_lambda: Callable[[int], float], planned: int, steps: int, anchor: int = 0,
              anchor_pos: float | None = None) -> Callable[[int], float]:
    """`lr_lambda` of a `planned`-step schedule with its rest, from step `anchor` on, played over the steps up to
    `steps` (see plan_position): the learning rate goes on from where it is, without a jump, and the schedule
    ends on step `steps`. An anchor at or after the warmup's end keeps the warmup as planned."""
    if steps <= anchor or (steps == planned and (anchor_pos is None or anchor_pos == anchor)):
        return lr_lambda
    position = plan_position(planned, steps, anchor, anchor_pos)
    return lambda step: lr_lambda(min(planned, max(0, round(position(step)))))


def steps_that_fit(budget_s: float, elapsed_s: float, step: int, s_per_step: float, planned: int) -> int:
    """Total steps that end within the budget at `s_per_step` from `step` on (at least step + 1, at most planned)."""
    left = max(0.0, budget_s - elapsed_s)
    return max(step + 1, min(planned, step + math.floor(left / s_per_step)))


def time_budget_callback(max_minutes: float, clock: Callable[[], float] = time.perf_counter):
    """A TrainerCallback that keeps training within `max_minutes` of wall clock from the first step.

    After CALIBRATION_STEPS timed steps, and again at REPLAN_FRACTIONS of each plan, it projects the finish at the
    pace so far. When the recipe's max_steps would overrun, the plan shrinks to the steps that fit; a later, faster
    pace grows it again, never past max_steps. Each re-plan fits the rest of the LR schedule (any LambdaLR schedule:
    cosine, linear, constant) to the steps left: warmup as planned, the rate going on from where it is, the
    schedule's end on the last step. A step that ends past the budget stops training whatever the plan (a machine
    that slowed down). With several processes the main process's decisions are broadcast, so every rank stops at
    the same step. `info` records the plan, the steps trained, the pace and the number of re-plans.
    """
    from transformers import TrainerCallback

    budget_s = max_minutes * 60.0

    class TimeBudget(TrainerCallback):
        def __init__(self):
            self.info: dict = {"max_train_minutes": max_minutes, "planned_steps": None, "steps": None,
                               "s_per_step": None, "fitted": False, "replans": 0}
            self._start = self._timed_from = self._first = None
            self._lambdas = None
            self._position: Callable[[int], float] = float  # step -> position in the planned schedule
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
                if fit != self.info["steps"]:
                    self._fit(args, state, lr_scheduler, step, fit, pace)
            if step >= self.info["steps"] or _agreed(elapsed >= budget_s):
                self.info["steps"] = step
                control.should_training_stop = True
            return control

        def _fit(self, args, state, lr_scheduler, step: int, steps: int, pace: float):
            planned, before = self.info["planned_steps"], self.info["steps"]
            if state.is_world_process_zero:
                print(f"note: {planned} steps would take ~{planned * pace / 60:.1f} min at {pace:.2f} s/step here; "
                      f"the LR schedule is fit to {steps} steps (was {before}) to stay within max_train_minutes "
                      f"{max_minutes:g}", file=sys.stderr, flush=True)
            self.info.update(steps=steps, s_per_step=round(pace, 3), fitted=steps < planned,
                             replans=self.info["replans"] + 1)
            self._checks = {c for c in (int(f * steps) for f in REPLAN_FRACTIONS) if c > step}
            lambdas = getattr(lr_scheduler, "lr_lambdas", None)
            if lambdas is None:  # not a LambdaLR: keep its schedule, stop at the new plan
                return
            if self._lambdas is None:
                self._lambdas = list(lambdas)
            anchor = max(step, args.get_warmup_steps(planned))
            anchor_pos = self._position(anchor)
            self._position = plan_position(planned, steps, anchor, anchor_pos)
            lr_scheduler.lr_lambdas = [stretched(f, planned, steps, anchor, anchor_pos) for f in self._lambdas]
            now = lr_scheduler.last_epoch
            lrs = [base * f(now) for base, f in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
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
