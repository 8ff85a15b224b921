"""The one early-stopping rule of every trained model: keep the best validation score, stop after
``patience`` checks in a row without a better one.

The backbone trainer, the content-mapping baselines and the cold-row update all validate every few
epochs or steps; they differ only in what "keeping the best" means (a checkpoint on disk, a copy of
the weights in memory), so the rule is here once and the keeping is the caller's (``update``
returns whether the score improved) or, with ``state``, a deep copy held here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any


@dataclass
class EarlyStopping:
    patience: int
    # -1 is below every ranking metric; a resumed training passes the values it saved
    best_score: float = -1.0
    best_step: int = -1
    bad: int = 0  # checks in a row without a better score
    best_state: Any = None

    def update(self, score: float, step: int, state: Any = None) -> bool:
        """Record a check; True when ``score`` is the best so far (``state`` is then copied and kept)."""
        if score > self.best_score:
            self.best_score, self.best_step, self.bad = score, step, 0
            if state is not None:
                self.best_state = copy.deepcopy(state)
            return True
        self.bad += 1
        return False

    @property
    def done(self) -> bool:
        """``patience`` checks in a row did not improve: stop."""
        return self.bad >= self.patience
