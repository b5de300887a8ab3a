"""Results of experiments: trial tables, exports, reports, and the AutoAttack audit.

    from analysis import evaluate_checkpoint, save_result
    save_result(evaluate_checkpoint("best.pt", examples=1000), "best.autoattack.json")
"""

from ._autoattack import (
    SCHEMA_VERSION,
    RobustnessResult,
    evaluate_checkpoint,
    evaluate_robustness,
    load_result,
    save_result,
)
from ._export import EPOCHS_SCHEMA, TRIALS_SCHEMA, best_configs, export_experiment
from ._report import write_report
from ._results import Experiment, ExperimentError, TrialRecord, load_experiment, resolve_config

__all__ = ["SCHEMA_VERSION", "Experiment", "ExperimentError", "RobustnessResult", "TrialRecord",
           "evaluate_checkpoint", "evaluate_robustness", "load_experiment", "load_result",
           "save_result"]
__all__ += ["EPOCHS_SCHEMA", "TRIALS_SCHEMA", "best_configs", "export_experiment",
            "resolve_config", "write_report"]
