"""Expression-level metrics: ExpRate and the rates within 1, 2, 3 token errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between token sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


@dataclass
class ExpRateCounter:
    n: int = 0
    within: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # errors <= 0, 1, 2, 3

    def add(self, prediction: Sequence[str] | None, truth: Sequence[str]) -> int:
        """Count one expression; a failed prediction (None) counts as wrong. Returns the distance."""
        self.n += 1
        dist = len(truth) if prediction is None else edit_distance(prediction, truth)
        if prediction is None:
            dist = max(dist, 4)
        for k in range(4):
            if dist <= k:
                self.within[k] += 1
        return dist

    def rate(self, k: int = 0) -> float:
        return 100.0 * self.within[k] / self.n if self.n else 0.0

    def summary(self) -> dict[str, float]:
        return {"exprate": self.rate(0), "le1": self.rate(1), "le2": self.rate(2), "le3": self.rate(3)}
