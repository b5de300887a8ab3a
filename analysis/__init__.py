"""Results of experiments: trial tables, exports, reports, and the AutoAttack audit.

    from analysis import evaluate_checkpoint, save_result
    save_result(evaluate_checkpoint("best.pt", examples=1000), "best.autoattack.json")
"""

from ._autoattack import (
    SCHEMA_VERSION,
    ResultError,
    RobustnessResult,
    check_attacks,
    evaluate_checkpoint,
    evaluate_robustness,
    load_result,
    save_result,
)
from ._confirmation import CONFIRM_DIR, SEED_MARK, Confirmation, load_confirmations
from ._export import EPOCHS_SCHEMA, TRIALS_SCHEMA, best_configs, export_experiment
from ._ranking import FLAG_LEGEND, Flag, RankedTrial, flags_of, rank_trials, worst_case
from ._report import markdown_table, pareto_front, write_report
from ._results import (
    FINAL_DIR,
    META_FILE,
    STUDY_FILE,
    WARM_START_DIR,
    Experiment,
    ExperimentError,
    ExperimentMeta,
    TrialRecord,
    load_experiment,
    read_meta,
    study_file,
    study_problem,
    study_url,
)
from ._tune_layout import TRIAL_STATE_FILE, search_state_problem

__all__ = [
    "CONFIRM_DIR", "Confirmation", "EPOCHS_SCHEMA", "Experiment", "ExperimentError",
    "ExperimentMeta", "FINAL_DIR", "FLAG_LEGEND", "Flag", "META_FILE", "RankedTrial",
    "ResultError", "RobustnessResult", "SCHEMA_VERSION", "SEED_MARK", "STUDY_FILE",
    "TRIALS_SCHEMA", "TRIAL_STATE_FILE", "TrialRecord", "WARM_START_DIR", "best_configs",
    "check_attacks", "evaluate_checkpoint", "evaluate_robustness", "export_experiment", "flags_of",
    "load_confirmations", "load_experiment", "load_result", "markdown_table", "pareto_front",
    "rank_trials", "read_meta", "save_result", "search_state_problem", "study_file",
    "study_problem", "study_url", "worst_case", "write_report",
]
