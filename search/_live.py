"""The live view of a running search: how far it is, the best trial so far, time left.

A Ray Tune callback on the driver. On a terminal it is one status line redrawn in place; in a
log (output not a terminal) it writes a plain line per event: a trial finishing, stopping early,
diverging or failing, and a new best. Ray Tune's own output (a box per trial, status tables)
is shown only with ``--verbose``.
"""

from __future__ import annotations

import time
from typing import Any

from ray import tune
from rich.live import Live
from rich.text import Text

from ._console import console

__all__ = ["LiveView"]


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class LiveView(tune.Callback):
    """The counts come from Tune's own list of trials, which every event carries, so a resumed
    search (whose Tuner restores this callback) counts the trials it had already finished."""

    def __init__(self, total: int, metric: str, mode: str) -> None:
        self.total, self.metric, self.mode = total, metric, mode
        self._reset()

    def _reset(self) -> None:
        self.started = time.monotonic()
        self.ended_here = 0  # trials that ended in this run: the pace for the estimate
        self.text = f"trials 0/{self.total} done"
        self.best: tuple[str, float] | None = None  # from this run's results
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks with the search
        return {"total": self.total, "metric": self.metric, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # ------------------------------------------------------------------ the text
    def _better(self, value: float, than: tuple[str, float] | None) -> bool:
        return than is None or (value > than[1] if self.mode == "max" else value < than[1])

    def _best(self, trials: list) -> tuple[str, float] | None:
        """The best of this run's results and Tune's record of every trial (a resumed
        search's earlier ones included)."""
        stat = "max" if self.mode == "max" else "min"
        best = self.best
        for t in trials:
            value = t.metric_analysis.get(self.metric, {}).get(stat)
            if isinstance(value, (int, float)) and not (t.last_result or {}).get("diverged") \
                    and self._better(value, best):
                best = (t.trial_id, float(value))
        return best

    def line(self, trials: list, ending: Any = None, status: str = "") -> str:
        """``ending``: the trial this event ends, whose status Tune sets only afterwards."""
        counts = {"finished": 0, "stopped early": 0, "diverged": 0, "failed": 0}
        running = 0
        for t in trials:
            last = t.last_result or {}
            now = status if t is ending else t.status
            if now == "ERROR":
                counts["failed"] += 1
            elif now == "TERMINATED":
                counts["diverged" if last.get("diverged") else
                       "finished" if last.get("trial_complete") else "stopped early"] += 1
            elif now == "RUNNING":
                running += 1
        done = sum(counts.values())
        outcomes = ", ".join(f"{n} {what}" for what, n in counts.items()
                             if n or what == "finished")
        best = self._best(trials)
        best_text = f"best {self.metric} {best[1]:.4g} ({best[0]})" if best else \
            f"no {self.metric} yet"
        elapsed = time.monotonic() - self.started
        left = max(0, self.total - done)
        eta = "0s" if not left else "?" if not self.ended_here else \
            _duration(elapsed / self.ended_here * left)
        return (f"trials {done}/{self.total} done ({outcomes}), {running} running | "
                f"{best_text} | elapsed {_duration(elapsed)}, left ~{eta}")

    def _show(self, trials: list, event: str | None = None, ending: Any = None,
              status: str = "") -> None:
        self.text = self.line(trials, ending, status)
        if console.is_terminal:
            if self.live is None:
                self.live = Live(Text(self.text), console=console, auto_refresh=False)
                self.live.start()
            self.live.update(Text(self.text), refresh=True)
        elif event:
            console.print(f"{event}: {self.text}", markup=False, highlight=False)

    # ----------------------------------------------------------- Tune's events
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        value = result.get(self.metric)
        new_best = isinstance(value, (int, float)) and "diverged" not in result and \
            self._better(value, self._best(trials))
        if new_best:
            self.best = (trial.trial_id, float(value))
        self._show(trials, f"new best {trial.trial_id}" if new_best else None)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended_here += 1
        last = trial.last_result or {}
        outcome = "diverged" if last.get("diverged") else \
            "finished" if last.get("trial_complete") else "stopped early"
        self._show(trials, f"trial {trial.trial_id} {outcome}", trial, "TERMINATED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended_here += 1
        self._show(trials, f"trial {trial.trial_id} failed", trial, "ERROR")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._show(trials, "search ended")
        self.close()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
