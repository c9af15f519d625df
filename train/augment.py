"""Ink-level augmentation: transform the pen traces, then render them like any ink."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    scale: tuple[float, float] = (0.7, 1.4)  # the reference's scale augmentation
    rotate_deg: float = 0.0  # uniform in [-r, r], about the ink's center
    shear: float = 0.0  # horizontal shear factor, uniform in [-s, s] (slant)
    stroke_jitter: float = 0.0  # per-stroke shift, as a fraction of the symbol size
    line_width: tuple[float, float] = (1.0, 1.0)  # stroke thickness multiplier range
    elastic: float = 0.0  # smooth random warp: displacement amplitude as a fraction of the symbol size
    elastic_wavelength: float = 3.0  # the warp's wavelength, in symbol sizes

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentConfig":
        d = dict(d)
        for key in ("scale", "line_width"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def augment_strokes(
    strokes: list[np.ndarray], cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[list[np.ndarray], float, float]:
    """Returns augmented strokes, an image scale factor and a line-width factor."""
    scale = float(rng.uniform(*cfg.scale))
    line = float(rng.uniform(*cfg.line_width))
    if cfg.rotate_deg == 0 and cfg.shear == 0 and cfg.stroke_jitter == 0 and cfg.elastic == 0:
        return strokes, scale, line
    pts = np.concatenate(strokes)
    center = (pts.min(axis=0) + pts.max(axis=0)) / 2
    theta = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
    c, s = np.cos(theta), np.sin(theta)
    k = rng.uniform(-cfg.shear, cfg.shear)
    matrix = np.array([[c, -s], [s, c]]) @ np.array([[1.0, k], [0.0, 1.0]])
    extents = [np.ptp(st, axis=0).max() for st in strokes]
    size = float(np.median([e for e in extents if e > 0] or [1.0]))
    warp = _elastic_field(cfg, size, rng) if cfg.elastic else None
    out = []
    for st in strokes:
        moved = (st[:, :2] - center) @ matrix.T + center
        if cfg.stroke_jitter:
            moved = moved + rng.normal(0.0, cfg.stroke_jitter * size, size=2)
        if warp is not None:
            moved = moved + warp(moved)
        out.append(moved)
    return out, scale, line


def _elastic_field(cfg: AugmentConfig, size: float, rng: np.random.Generator):
    """A smooth displacement field: a few random plane waves, amplitude `elastic * size`."""
    waves = 4
    k = rng.normal(size=(waves, 2))
    k *= (2 * np.pi / (cfg.elastic_wavelength * size)) / np.linalg.norm(k, axis=1, keepdims=True)
    phase = rng.uniform(0, 2 * np.pi, size=(waves, 1))
    direction = rng.normal(size=(waves, 2))
    amp = cfg.elastic * size / np.sqrt(waves)

    def field(points: np.ndarray) -> np.ndarray:
        return amp * np.sin(points @ k.T + phase.T) @ direction  # [n, 2]

    return field
