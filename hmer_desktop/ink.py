"""The ink document: strokes with undo/redo. Qt-free; views subscribe to changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class _Edit:
    """One undoable change: strokes removed at indices, strokes added at the end or back in place."""

    removed: tuple[tuple[int, np.ndarray], ...] = ()  # (index, stroke) in ascending index order
    added: tuple[np.ndarray, ...] = ()  # appended strokes


class InkDocument:
    """Strokes are float arrays [n, 3]: x, y (pixels of the canvas) and pressure in [0, 1]."""

    def __init__(self) -> None:
        self._strokes: list[np.ndarray] = []
        self._undo: list[_Edit] = []
        self._redo: list[_Edit] = []
        self.version = 0  # bumps on every change; recognition results carry the version they read
        self._listeners: list[Callable[[], None]] = []

    # --- observation ------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _changed(self) -> None:
        self.version += 1
        for callback in list(self._listeners):
            callback()

    @property
    def strokes(self) -> list[np.ndarray]:
        return list(self._strokes)

    def is_empty(self) -> bool:
        return not self._strokes

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    # --- edits ------------------------------------------------------------------------

    def add_stroke(self, points: np.ndarray) -> None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or len(pts) == 0:
            return
        if pts.shape[1] == 2:
            pts = np.column_stack([pts, np.full(len(pts), 0.5)])
        self._apply(_Edit(added=(pts[:, :3].copy(),)))

    def erase(self, indices: list[int]) -> None:
        indices = sorted(set(i for i in indices if 0 <= i < len(self._strokes)))
        if indices:
            self._apply(_Edit(removed=tuple((i, self._strokes[i]) for i in indices)))

    def clear(self) -> None:
        self.erase(list(range(len(self._strokes))))

    def replace_all(self, strokes: list[np.ndarray]) -> None:
        """Load ink (one undoable step)."""
        removed = tuple(enumerate(self._strokes))
        added = tuple(np.column_stack([s[:, :2], s[:, 2] if s.shape[1] > 2 else np.full(len(s), 0.5)]) for s in
                      (np.asarray(s, dtype=np.float64) for s in strokes) if len(s))  # fmt: skip
        self._apply(_Edit(removed=removed, added=added))

    def undo(self) -> None:
        if self._undo:
            edit = self._undo.pop()
            self._revert(edit)
            self._redo.append(edit)
            self._changed()

    def redo(self) -> None:
        if self._redo:
            edit = self._redo.pop()
            self._do(edit)
            self._undo.append(edit)
            self._changed()

    def _apply(self, edit: _Edit) -> None:
        self._do(edit)
        self._undo.append(edit)
        self._redo.clear()
        self._changed()

    def _do(self, edit: _Edit) -> None:
        for i, _ in reversed(edit.removed):
            del self._strokes[i]
        self._strokes.extend(edit.added)

    def _revert(self, edit: _Edit) -> None:
        if edit.added:
            del self._strokes[len(self._strokes) - len(edit.added) :]
        for i, stroke in edit.removed:
            self._strokes.insert(i, stroke)

    # --- geometry ---------------------------------------------------------------------

    def strokes_near(self, x: float, y: float, radius: float) -> list[int]:
        """Indices of strokes passing within `radius` of (x, y) (the eraser)."""
        hits = []
        p = np.array([x, y])
        for i, s in enumerate(self._strokes):
            xy = s[:, :2]
            if len(xy) == 1:
                d = np.linalg.norm(xy[0] - p)
            else:
                a, b = xy[:-1], xy[1:]
                ab = b - a
                t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12), 0, 1)
                d = np.linalg.norm(a + ab * t[:, None] - p, axis=1).min()
            if d <= radius:
                hits.append(i)
        return hits

    def bounds(self) -> tuple[float, float, float, float] | None:
        if not self._strokes:
            return None
        pts = np.concatenate([s[:, :2] for s in self._strokes])
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)
