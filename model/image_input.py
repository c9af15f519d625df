"""Photos and scans -> the model's input image, sized like rasterized ink.

Ink drawn by `rasterize` has its typical symbol at `symbol_px`; here the same
size is estimated from the image's connected components (median of each
component's larger bounding-box side), and the image is resampled to match.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from model.config import RasterConfig
from model.rasterize import InkError


def to_gray(array: np.ndarray) -> np.ndarray:
    """Any uint8/float grayscale, RGB or RGBA image -> float32 [H, W] in [0, 1]."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = a[..., :3].astype(np.float32)
        if a.shape[2] == 4:  # transparent pixels count as background
            alpha = a[..., 3:4].astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
            full = 255.0 if a.dtype == np.uint8 else 1.0
            rgb = rgb * alpha + full * (1 - alpha)
        a = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise InkError(f"expected a grayscale or RGB image, got an array of shape {np.shape(array)}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise InkError("the image has non-finite pixel values")
    if a.max() > 1.0:
        a = a / 255.0
    return np.clip(a, 0.0, 1.0)


def image_to_input(array: np.ndarray, config: RasterConfig) -> np.ndarray:
    gray = to_gray(array)
    if gray.shape[0] < 2 or gray.shape[1] < 2:
        raise InkError(f"the image is too small ({gray.shape[1]}x{gray.shape[0]} pixels)")
    background = float(np.median(gray))
    ink = background - gray if background > 0.5 else gray - background  # ink bright, background ~0
    ink = np.clip(ink, 0.0, None)
    peak = float(np.percentile(ink, 99.9))
    if peak < 0.1:
        raise InkError("no ink found in the image (it is blank or has too little contrast)")
    ink = np.clip(ink / peak, 0.0, 1.0)
    binary = ink > 0.35
    labels, count = ndimage.label(binary)
    if count == 0:
        raise InkError("no ink found in the image")
    boxes = ndimage.find_objects(labels)
    # Pen strokes are measured along their centre line; a component also has the
    # stroke's thickness (about 2 * area / boundary length), so take it off.
    boundary = binary & ~ndimage.binary_erosion(binary)
    thickness = 2.0 * binary.sum() / max(1, boundary.sum())
    extents = np.array([max(s[0].stop - s[0].start, s[1].stop - s[1].start) for s in boxes]) - thickness
    big = extents[extents >= max(1, 0.05 * extents.max())]  # ignore specks
    ys, xs = np.nonzero(binary)
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    scale = config.symbol_px / float(np.median(big))
    h, w = crop.shape
    inner_h, inner_w = config.max_h - 2 * config.pad_px, config.max_w - 2 * config.pad_px
    scale = min(scale, inner_h / h, inner_w / w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = np.asarray(Image.fromarray(crop).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    out_h = max(config.min_side, new_h + 2 * config.pad_px)
    out_w = max(config.min_side, new_w + 2 * config.pad_px)
    out = np.zeros((out_h, out_w), dtype=np.float32)
    out[config.pad_px : config.pad_px + new_h, config.pad_px : config.pad_px + new_w] = np.clip(resized, 0, 1)
    return out
