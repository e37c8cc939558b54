"""Training: the Ray Train loop, tasks, sharding, checkpoints, sweeps.

The package is also the notebook entry point: ``recsys.train(config, overrides)`` runs a training
as ``recsys train`` does and returns a :class:`recsys.api.RunResult` (see :func:`recsys.api.train`).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    """``recsys.train`` is both this package and the function: Python binds a subpackage to its
    parent's attribute on import, so a plain function named ``train`` in ``recsys`` would be
    replaced by the package the first time ``recsys.train.<module>`` is imported."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from recsys.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
