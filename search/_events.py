"""What a running search tells whoever watches it. The search API never prints: it hands these
events to an ``on_event`` callback (the command line draws them; a notebook may log them), and
Ray Tune callbacks watch the trials themselves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analysis import Experiment
from trainable import StoragePath

__all__ = ["Event", "OnEvent", "SearchStarted", "WarmStartsStarted", "WarmStartsTrained",
           "TrialsEnded", "StopRequested", "FinalStageStarted", "EvaluationProgress",
           "EvaluationDone", "TrialSkipped", "ignore"]


@dataclass(frozen=True)
class SearchStarted:
    experiment: StoragePath
    study_storage: str  # the Optuna storage URL of its study
    dashboard: str | None  # Ray's dashboard, when there is one
    resumed: bool


@dataclass(frozen=True)
class WarmStartsStarted:
    """The driver trains the warm starts it can foresee before the first trial."""


@dataclass(frozen=True)
class WarmStartsTrained:
    count: int
    seconds: float
    folder: StoragePath


@dataclass(frozen=True)
class TrialsEnded:
    """Every trial ended, or the search stopped early (a Ctrl-C); the final stage, if any,
    comes next."""

    experiment: Experiment
    seconds: float
    stopped_early: bool


@dataclass(frozen=True)
class StopRequested:
    """A first Ctrl-C: the search stops once every running trial's epoch is checkpointed."""


@dataclass(frozen=True)
class FinalStageStarted:
    audit: str  # "standard", "plus" or the attacks joined by "+"
    examples: int
    evaluations: int
    folder: StoragePath


@dataclass(frozen=True)
class EvaluationProgress:
    name: str  # TRIAL-HEAD
    stage: str  # clean, an attack's name, adaptive
    done: int
    total: int


@dataclass(frozen=True)
class EvaluationDone:
    name: str
    done: int  # evaluations finished so far
    total: int


@dataclass(frozen=True)
class TrialSkipped:
    trial_id: str
    reason: str


Event = (SearchStarted | WarmStartsStarted | WarmStartsTrained | TrialsEnded | StopRequested
         | FinalStageStarted | EvaluationProgress | EvaluationDone | TrialSkipped)
OnEvent = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The default watcher: nobody."""
