"""Handwriting-like ink made from a few polyline glyphs, for tests that must not need CROHME.

`ink_for("\\frac { 1 } { x ^ { 2 } }")` lays out the tokens (sequences, ^, _,
\\frac) and returns strokes; `wobble` adds a writer's variation.
"""

from __future__ import annotations

import numpy as np

GLYPHS: dict[str, list[list[tuple[float, float]]]] = {
    "1": [[(0.3, 0.2), (0.55, 0.0), (0.55, 1.0)]],
    "2": [[(0.1, 0.25), (0.3, 0.02), (0.7, 0.02), (0.9, 0.25), (0.8, 0.5), (0.1, 1.0), (0.9, 1.0)]],
    "3": [[(0.1, 0.1), (0.8, 0.05), (0.4, 0.45), (0.9, 0.7), (0.6, 1.0), (0.1, 0.9)]],
    "+": [[(0.1, 0.5), (0.9, 0.5)], [(0.5, 0.15), (0.5, 0.85)]],
    "-": [[(0.1, 0.5), (0.9, 0.5)]],
    "=": [[(0.1, 0.35), (0.9, 0.35)], [(0.1, 0.65), (0.9, 0.65)]],
    "x": [[(0.1, 0.3), (0.9, 1.0)], [(0.9, 0.3), (0.1, 1.0)]],
    "y": [[(0.1, 0.3), (0.5, 0.75)], [(0.9, 0.3), (0.3, 1.3)]],
    "a": [[(0.8, 0.45), (0.5, 0.3), (0.15, 0.5), (0.2, 0.95), (0.6, 0.95), (0.8, 0.6), (0.8, 1.0)]],
    "b": [[(0.2, 0.0), (0.2, 1.0), (0.7, 0.95), (0.85, 0.65), (0.6, 0.45), (0.2, 0.6)]],
    "(": [[(0.7, 0.0), (0.35, 0.3), (0.35, 0.7), (0.7, 1.0)]],
    ")": [[(0.3, 0.0), (0.65, 0.3), (0.65, 0.7), (0.3, 1.0)]],
}


def _parse_group(tokens: list[str], i: int) -> tuple[list[str], int]:
    if tokens[i] != "{":
        return [tokens[i]], i + 1
    depth, j = 0, i
    while True:
        depth += {"{": 1, "}": -1}.get(tokens[j], 0)
        if depth == 0:
            return tokens[i + 1 : j], j + 1
        j += 1


def _layout(tokens: list[str], x: float, y: float, size: float) -> tuple[list[np.ndarray], float]:
    """Strokes of `tokens` with the baseline box top at y; returns (strokes, x after)."""
    strokes: list[np.ndarray] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("^", "_"):
            group, i = _parse_group(tokens, i + 1)
            dy = -0.35 * size if tok == "^" else 0.6 * size
            sub, x = _layout(group, x, y + dy, size * 0.6)
            strokes += sub
            continue
        if tok == "\\frac":
            num, i = _parse_group(tokens, i + 1)
            den, i = _parse_group(tokens, i)
            num_strokes, num_end = _layout(num, x + 0.2 * size, y - 0.7 * size, size * 0.8)
            den_strokes, den_end = _layout(den, x + 0.2 * size, y + 0.9 * size, size * 0.8)
            end = max(num_end, den_end) + 0.2 * size
            strokes += num_strokes + den_strokes + [np.array([[x, y + 0.5 * size], [end, y + 0.5 * size]])]
            x = end + 0.3 * size
            continue
        if tok not in GLYPHS:
            raise KeyError(f"no synthetic glyph for {tok!r}")
        for poly in GLYPHS[tok]:
            p = np.array(poly, dtype=np.float64)
            # densify like a pen sampling at regular intervals
            dense = [p[0]]
            for a, b in zip(p[:-1], p[1:]):
                for t in np.linspace(0, 1, 8)[1:]:
                    dense.append(a + (b - a) * t)
            strokes.append(np.array(dense) * size * np.array([0.7, 1.0]) + (x, y))
        x += 0.9 * size
        i += 1
    return strokes, x


def ink_for(latex: str, size: float = 100.0, wobble: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    strokes, _ = _layout(latex.split(), 0.0, 0.0, size)
    if wobble:
        rng = np.random.default_rng(seed)
        strokes = [s + rng.normal(0, wobble * size, size=2) + rng.normal(0, wobble * size * 0.1, size=s.shape) for s in strokes]
    return strokes
