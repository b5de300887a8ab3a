"""Everything that happens inside one trial: data, models, clusters, losses, heads, training.

The clustering core is public so researchers can use it directly::

    from trainable import MagnetLoss, ClusterSampler, ClusterHead, fit_clusters

Names load on first use (``__init__.pyi`` lists them), so that reading a config does not wait
for PyTorch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
