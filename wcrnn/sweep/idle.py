"""The moment a sweep's workers start running out of trials, as a Ray Tune callback.

From then on a CPU stays idle until the sweep ends, so work the driver has to do anyway (the
report's warm-up) takes nothing from a trial there: done at the start it delays the first trials,
and done during the trials it slows them.
"""

from __future__ import annotations

import threading

from ray.tune import Callback


class WhenTrialsRunOut(Callback):
    """Sets `event` when a trial ends and no trial of the sweep is left to start."""

    def __init__(self, num_trials: int, event: threading.Event | None):
        self.num_trials = num_trials  # the sweep's budget.num_trials
        self.event = event  # set once, in Tune's loop in the driver

    def __getstate__(self):  # Tune saves its callbacks with the sweep's state; an Event does not pickle
        return {"num_trials": self.num_trials, "event": None}

    def on_trial_complete(self, iteration, trials, trial, **info):
        # Tune creates trials as the search suggests them, so all of them exist only near the end
        if self.event is not None and len(trials) >= self.num_trials and all(t.status != "PENDING" for t in trials):
            self.event.set()

    on_trial_error = on_trial_complete
