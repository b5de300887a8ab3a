"""Search spaces and presets, Tune/Optuna assembly, launching, the final stage, the CLI.

    from search import load_search_config, run_search
    outcome = run_search(load_search_config("quick"), "experiments/mine")
    print(outcome.stopped_early, len(outcome.experiment.trials))

Names load on first use (``__init__.pyi`` lists them), so that ``clustune --help`` does not
wait for Ray, Optuna and PyTorch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
