"""budget.time_budget_s as a Ray Tune stopper.

Tune's own `time_budget_s` stops every trial when the time is up and returns from `fit()` just
as it does after a Ctrl-C, so the runner could not tell a sweep that ran out of time (done: its
stopped trials are results) from one that was interrupted (to be resumed). This stopper does the
same counting and says which it was.
"""

from __future__ import annotations

import time

from ray.tune import Stopper


class TimeBudget(Stopper):
    """Stop all trials once `seconds` of the sweep's time have passed (summed over resumes)."""

    ran_out = False  # set in the driver, where Tune runs stoppers; the runner resets it before each fit

    def __init__(self, seconds: float):
        self.seconds_left = seconds
        self._last_check = None  # counting starts at Tune's first check, after its set-up

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        now = time.monotonic()
        if self._last_check is not None:
            self.seconds_left -= now - self._last_check
        self._last_check = now
        if self.seconds_left <= 0:
            TimeBudget.ran_out = True
        return self.seconds_left <= 0

    def __setstate__(self, state: dict) -> None:
        state["_last_check"] = None  # restored in a later process: its clock starts again
        self.__dict__.update(state)
