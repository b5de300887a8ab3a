"""Results of experiments: trial tables, exports, reports, and the AutoAttack audit.

    from analysis import AttackOptions, evaluate_checkpoint, save_result
    save_result(evaluate_checkpoint("best.pt", examples=1000), "best.autoattack.json")

Names load on first use (``__init__.pyi`` lists them): reading an export does not wait for
PyTorch, AutoAttack or plotly.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
