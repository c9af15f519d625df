"""The one rasterizer: pen strokes -> the model's input image.

The app (live ink), the trainer (CROHME InkML) and every tool use this file,
so the model always sees ink drawn the same way.

Size normalization. CROHME sources write in units that differ by 1000x (HAMEX
expressions are about 1 unit tall, MathBrush ones thousands), and a person's
canvas has its own. Scaling by the expression's bounding box would make a
fraction tiny and a lone digit huge, so we scale by an estimate of the size of
one *symbol*: the median over strokes of each stroke's larger bounding-box side.
That median maps to `RasterConfig.symbol_px` pixels, which makes the image
independent of the ink's units (the same expression at 1, 10 or 1000 units per
symbol gives the same image). Images that would exceed max_h x max_w are scaled
down to fit. Strokes are drawn at a constant `line_px` thickness, antialiased
by drawing at 2x and averaging down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from model.config import RasterConfig

SUPERSAMPLE = 2
MAX_POINTS = 1_000_000  # more than any real expression; protects against runaway input


class InkError(ValueError):
    """Ink that cannot be turned into an image (e.g. no finite points)."""


@dataclass(frozen=True)
class InkTransform:
    """Affine map from ink coordinates to image pixels: p = scale * (q - origin) + pad."""

    scale: float
    origin_x: float
    origin_y: float
    pad: float

    def to_image(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return (points[..., :2] - (self.origin_x, self.origin_y)) * self.scale + self.pad

    def to_ink(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.asarray(pixels, dtype=np.float64)
        return (pixels[..., :2] - self.pad) / self.scale + (self.origin_x, self.origin_y)

    def as_matrix(self) -> np.ndarray:
        """3x3 homogeneous matrix of the ink -> pixel map."""
        s = self.scale
        return np.array(
            [[s, 0.0, self.pad - s * self.origin_x], [0.0, s, self.pad - s * self.origin_y], [0.0, 0.0, 1.0]]
        )


@dataclass(frozen=True)
class Raster:
    image: np.ndarray  # float32 [H, W] in [0, 1], ink bright on a 0 background
    transform: InkTransform  # ink coordinates -> pixels of `image`


def clean_strokes(strokes: Sequence[np.ndarray | Sequence[Sequence[float]]]) -> list[np.ndarray]:
    """Strokes as float64 [n, 2] arrays with non-finite points dropped.

    Raises InkError when nothing drawable remains.
    """
    return clean_strokes_indexed(strokes)[0]


def clean_strokes_indexed(
    strokes: Sequence[np.ndarray | Sequence[Sequence[float]]],
) -> tuple[list[np.ndarray], list[int]]:
    """`clean_strokes`, plus the input index of each stroke kept (strokes with no finite
    point are dropped), for callers that refer to strokes by index (symbol marks)."""
    if strokes is None or len(strokes) == 0:
        raise InkError("no strokes: the ink is empty")
    cleaned: list[np.ndarray] = []
    kept: list[int] = []
    total = 0
    for i, stroke in enumerate(strokes):
        arr = np.asarray(stroke, dtype=np.float64)
        if arr.size == 0:
            continue
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise InkError(f"stroke {i} must be an array of points with x and y, got shape {arr.shape}")
        arr = arr[:, :2]
        arr = arr[np.isfinite(arr).all(axis=1)]
        if len(arr):
            cleaned.append(arr)
            kept.append(i)
            total += len(arr)
    if not cleaned:
        raise InkError("the ink has no finite points")
    if total > MAX_POINTS:
        raise InkError(f"the ink has {total:,} points; at most {MAX_POINTS:,} are supported")
    return cleaned, kept


def symbol_size(strokes: Sequence[np.ndarray]) -> float:
    """Median over strokes of max(width, height): the size of a typical symbol, in ink units.

    Falls back to the expression's extent, then to 1, for ink made only of dots.
    """
    extents = np.array([np.ptp(s, axis=0).max() for s in strokes])
    positive = extents[extents > 0]
    if len(positive):
        return float(np.median(positive))
    everything = np.concatenate(strokes)
    span = float(np.ptp(everything, axis=0).max())
    return span if span > 0 else 1.0


def layout(strokes: list[np.ndarray], config: RasterConfig, scale_factor: float = 1.0) -> tuple[InkTransform, int, int]:
    """Where cleaned strokes land: the ink -> pixel map and the image's height and width."""
    points = np.concatenate(strokes)
    lo = points.min(axis=0)
    span = points.max(axis=0) - lo  # [w, h] in ink units
    scale = config.symbol_px / symbol_size(strokes) * scale_factor
    inner_w, inner_h = config.max_w - 2 * config.pad_px - 1, config.max_h - 2 * config.pad_px - 1
    if span[0] * scale > inner_w or span[1] * scale > inner_h:
        scale = min(inner_w / max(span[0], 1e-12), inner_h / max(span[1], 1e-12))
    transform = InkTransform(scale=float(scale), origin_x=float(lo[0]), origin_y=float(lo[1]), pad=float(config.pad_px))
    w = max(config.min_side, int(np.ceil(span[0] * scale)) + 2 * config.pad_px + 1)
    h = max(config.min_side, int(np.ceil(span[1] * scale)) + 2 * config.pad_px + 1)
    return transform, min(h, config.max_h), min(w, config.max_w)


def rasterize(
    strokes: Sequence[np.ndarray | Sequence[Sequence[float]]],
    config: RasterConfig,
    scale_factor: float = 1.0,
    line_factor: float = 1.0,
) -> Raster:
    """Draw strokes (each [n, 2+] of x, y[, pressure, ...], any units) as the model's input.

    `scale_factor` and `line_factor` are for augmentation: they scale the ink
    and the stroke thickness relative to the normalized size.
    """
    strokes = clean_strokes(strokes)
    transform, h, w = layout(strokes, config, scale_factor)

    ss = SUPERSAMPLE
    canvas = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1.0, config.line_px * line_factor * ss)
    radius = width / 2
    for stroke in strokes:
        px = transform.to_image(stroke) * ss + (ss - 1) / 2  # pixel centers at 2x
        px = _drop_close(px, min_dist=0.5)
        if len(px) == 1:
            x, y = px[0]
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
            continue
        draw.line([tuple(p) for p in px], fill=255, width=int(round(width)), joint="curve")
        for x, y in (px[0], px[-1]):  # round caps
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    image = canvas.reduce(ss) if ss > 1 else canvas
    return Raster(image=np.asarray(image, dtype=np.float32) / 255.0, transform=transform)


def _drop_close(px: np.ndarray, min_dist: float) -> np.ndarray:
    """Drop points closer than min_dist pixels to the previous kept one (dense pen samples)."""
    if len(px) < 3:
        return px
    step = np.linalg.norm(np.diff(px, axis=0), axis=1)
    if step.min() >= min_dist:
        return px
    keep = [0]
    acc = 0.0
    for i, d in enumerate(step, start=1):
        acc += d
        if acc >= min_dist:
            keep.append(i)
            acc = 0.0
    if keep[-1] != len(px) - 1:
        keep.append(len(px) - 1)
    return px[keep]
