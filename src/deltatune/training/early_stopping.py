"""Track the best evaluation metric and decide when to stop early."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional


@dataclass
class EarlyStopping:
    """Best-metric tracker with patience.

    An evaluation *improves* when the metric beats the best so far by more than ``threshold``
    (in the metric's own units), in the direction given by ``greater_is_better``. After
    ``patience`` evaluations in a row without improvement, :attr:`should_stop` is true
    (``patience=None`` never stops).
    """

    metric: str
    greater_is_better: bool
    patience: Optional[int] = None
    threshold: float = 0.0
    best_value: Optional[float] = None
    best_step: Optional[int] = None
    evals_without_improvement: int = 0

    def update(self, value: float, step: int) -> bool:
        """Record one evaluation; return True if it is the new best."""
        if self.best_value is None:
            better = True
        elif self.greater_is_better:
            better = value > self.best_value + self.threshold
        else:
            better = value < self.best_value - self.threshold
        if better:
            self.best_value, self.best_step, self.evals_without_improvement = value, step, 0
        else:
            self.evals_without_improvement += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evals_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k in ("best_value", "best_step", "evals_without_improvement"):
            setattr(self, k, state[k])
