"""What a recognition returns: plain data (numpy and Python types, no torch), so the
Qt layer and any other consumer can use it without importing the network."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Alternative:
    latex: str
    tokens: list[str]
    score: float  # forward + reverse length-normalized log-probability
    probability: float  # the sequence's probability relative to the n-best list's (they sum to 1)


@dataclass
class Prediction:
    latex: str  # tokens joined by spaces, e.g. "x ^ { 2 }"
    tokens: list[str]
    score: float
    token_probs: np.ndarray  # [T] probability the model gave each token (left-to-right)
    attention: np.ndarray  # [T, h, w] last decoder layer's attention over the encoder grid, per token
    image: np.ndarray  # [H, W] float32 model input, ink bright on 0
    ink_to_image: np.ndarray | None  # 3x3 affine map from ink coordinates to image pixels (None for images)
    downsample: int  # encoder stride: attention cell (i, j) covers pixels [i*s, (i+1)*s) x [j*s, (j+1)*s)
    structure: list[str]  # the auxiliary head's structure-only reading, one per token
    expected_structure: list[str]  # the structure-only form of `tokens`
    alternatives: list[Alternative]  # n-best, best first (the first is this prediction)
    # per token, the model's next choices at its position (token, probability), best first
    token_alternatives: list[list[tuple[str, float]]] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)  # per stage
    device: str = "cpu"

    @property
    def structure_agrees(self) -> bool:
        """True when the auxiliary head reads the same structure as the main prediction."""
        return self.structure == self.expected_structure

    @property
    def structure_mismatches(self) -> list[int]:
        n = max(len(self.structure), len(self.expected_structure))
        s = self.structure + [""] * (n - len(self.structure))
        e = self.expected_structure + [""] * (n - len(self.expected_structure))
        return [i for i in range(n) if s[i] != e[i]]

    def to_dict(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-ready."""
        return {
            "latex": self.latex,
            "tokens": self.tokens,
            "score": self.score,
            "token_probs": [round(float(p), 6) for p in self.token_probs],
            "structure": self.structure,
            "expected_structure": self.expected_structure,
            "structure_agrees": self.structure_agrees,
            "alternatives": [
                {"latex": a.latex, "score": a.score, "probability": a.probability} for a in self.alternatives
            ],
            "token_alternatives": [[[t, float(f"{p:.3g}")] for t, p in alts] for alts in self.token_alternatives],
            "timings_ms": self.timings_ms,
            "device": self.device,
            "image_shape": list(self.image.shape),
            "attention_shape": list(self.attention.shape),
        }
