"""Faults at exact events of a real search, for tests (as ``optuna.testing`` ships Optuna's
test helpers); the product's code never imports this module.

    python -m search.testing search --config s.yaml ...   # clustune, with the driver fault
                                                           # of CLUSTUNE_DRIVER_FAULT armed

``CLUSTUNE_DRIVER_FAULT=EVENT:N:ACTION`` sends ACTION (sigint: a Ctrl-C; sigkill) to the
driver at the N-th EVENT (trial_result, checkpoint, trial_complete) of the search: e.g. a
Ctrl-C between a result and its checkpoint. Ray Tune keeps the callback with the search, so a
``clustune resume`` of it re-arms from the variable as it is then (unset: no fault).

:func:`crash_once` makes a Trainable that raises once at an epoch of one fixed point, for
``build_tuner(..., trainable=...)``: a crashed trial, retried from its last checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from ray import tune

from ._trainable import ClusteringTrainable

__all__ = ["DriverFault", "InjectedFault", "crash_once", "FAULT_ENV"]

FAULT_ENV = "CLUSTUNE_DRIVER_FAULT"  # EVENT:N:ACTION, e.g. trial_result:3:sigint
EVENTS = ("trial_result", "checkpoint", "trial_complete")
ACTIONS = {"sigint": signal.SIGINT, "sigkill": signal.SIGKILL}


class InjectedFault(RuntimeError):
    """Raised once by a :func:`crash_once` Trainable."""


class DriverFault(tune.Callback):
    """Sends ACTION to the driver itself at the N-th EVENT (``CLUSTUNE_DRIVER_FAULT``, read
    when the search starts or resumes)."""

    def __init__(self) -> None:
        self._arm()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._arm()

    def _arm(self) -> None:
        self.seen = 0
        self.event, self.count, self.action = None, 0, None
        spec = os.environ.get(FAULT_ENV)
        if spec:
            event, count, action = spec.split(":")
            if event not in EVENTS or action not in ACTIONS:
                raise ValueError(f"{FAULT_ENV}={spec}: EVENT:N:ACTION with EVENT in "
                                 f"{EVENTS} and ACTION in {tuple(ACTIONS)}")
            self.event, self.count, self.action = event, int(count), ACTIONS[action]

    def _event(self, name: str) -> None:
        if name == self.event:
            self.seen += 1
            if self.seen == self.count:
                os.kill(os.getpid(), self.action)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        self._event("trial_result")

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        self._event("checkpoint")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._event("trial_complete")


def crash_once(point: str, epoch: int) -> type[ClusteringTrainable]:
    """A Trainable whose trial at fixed point ``point`` raises :class:`InjectedFault` once,
    when it starts epoch ``epoch`` (a marker in the experiment's storage remembers it across
    the retry)."""

    class CrashOnce(ClusteringTrainable):
        def step(self) -> dict[str, Any]:
            due = self.config.get("point") == point and self.trainer.epoch + 1 == epoch
            marker = self.experiment / "faults" / f"{self.trial_id}-epoch{epoch}"
            if due and not marker.exists():
                marker.atomic_write_text("")
                raise InjectedFault(f"injected fault at epoch {epoch}")
            return super().step()

    return CrashOnce


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(sys.argv[1:], callbacks=[DriverFault()]))
