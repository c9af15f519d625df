"""Attention maps as translucent color images (numpy -> QImage)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image
from PySide6.QtGui import QImage

_CMAP = colormaps["inferno"]


def upsample_attention(attention: np.ndarray, stride: int, shape: tuple[int, int]) -> np.ndarray:
    """[h, w] grid -> [H, W] pixels of the model input. Each cell covers stride x stride
    pixels; bilinear interpolation between cell centres avoids a blocky overlay."""
    h, w = attention.shape
    image = Image.fromarray(np.ascontiguousarray(attention, dtype=np.float32), mode="F")
    big = np.asarray(image.resize((w * stride, h * stride), Image.Resampling.BILINEAR))
    return np.clip(big[: shape[0], : shape[1]], 0.0, None)


def heat_rgba(values: np.ndarray, max_alpha: float = 0.75) -> np.ndarray:
    v = values / max(float(values.max()), 1e-12)
    rgba = (_CMAP(v) * 255).astype(np.uint8)
    rgba[..., 3] = (np.clip(v * 1.5, 0, 1) * max_alpha * 255).astype(np.uint8)  # faint where attention is low
    return rgba


def to_qimage(rgba: np.ndarray) -> QImage:
    rgba = np.ascontiguousarray(rgba)
    h, w = rgba.shape[:2]
    image = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
    return image.copy()  # own the pixels


def gray_qimage(gray: np.ndarray) -> QImage:
    """Model input (ink bright on 0) shown as dark ink on white."""
    g = np.ascontiguousarray(255 - np.clip(gray * 255, 0, 255).astype(np.uint8))
    h, w = g.shape
    return QImage(g.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
