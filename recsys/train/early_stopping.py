"""Early stopping: the typed state the loop keeps in :class:`~recsys.train.loop.TrainState`.

At each evaluation (``train.eval_every`` steps, or each epoch) the loop hands the watched
validation metric to :meth:`EarlyStopping.observe`; a value that beats the best so far by more than
``min_delta`` (in the metric's direction) is the new best, and its parameters go into a checkpoint
that Ray keeps (``results.json`` points at it); ``patience`` evaluations in a row without one stop
the run. The loop then loads the best checkpoint and computes the test metrics on it.

The state is plain data, saved in every checkpoint's ``train_state.json``: a resumed run continues
the same count (a run stopped mid-patience and resumed takes the same decision as one that never
stopped), and every rank holds the same state because it observes the same value (rank 0's,
broadcast by the loop).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class EarlyStopping:
    """What early stopping knows after each evaluation.

    Args:
        metric: the watched key (``val_auc``).
        higher_is_better: the direction (``mode: max``).
        patience: evaluations without improvement that stop the run.
        min_delta: the margin an improvement must exceed.
        best: the best value so far (``None`` before the first finite one).
        best_step: the step it was measured at.
        best_checkpoint: the checkpoint folder holding the parameters of ``best_step``.
        bad_evaluations: evaluations since the last improvement.
        curve: ``[step, value]`` of every evaluation, in order.
        stopped_at: the step the run stopped at for lack of improvement (``None``: it did not).
    """

    metric: str
    higher_is_better: bool
    patience: int
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    bad_evaluations: int = 0
    curve: list[list[float]] = field(default_factory=list)
    stopped_at: int | None = None

    def observe(self, step: int, value: float) -> bool:
        """Record the metric at ``step``; True if it is the new best. A non-finite value never is."""
        self.curve.append([step, value])
        finite = value is not None and math.isfinite(value)
        if finite and (self.best is None or self._beats(value)):
            self.best, self.best_step, self.bad_evaluations = float(value), step, 0
            return True
        self.bad_evaluations += 1
        return False

    def _beats(self, value: float) -> bool:
        assert self.best is not None
        return value > self.best + self.min_delta if self.higher_is_better else value < self.best - self.min_delta

    @property
    def exhausted(self) -> bool:
        """``patience`` evaluations in a row without a new best."""
        return self.bad_evaluations >= self.patience

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "EarlyStopping":
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

    def summary(self) -> dict[str, Any]:
        """The ``early_stopping`` entry of ``results.json``."""
        return {
            "metric": self.metric, "mode": "max" if self.higher_is_better else "min", "patience": self.patience,
            "min_delta": self.min_delta, "best": self.best, "best_step": self.best_step,
            "stopped_at": self.stopped_at, "best_checkpoint": self.best_checkpoint, "curve": self.curve,
        }
