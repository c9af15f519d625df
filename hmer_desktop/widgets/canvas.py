"""The drawing surface: mouse, touch and stylus (pressure-sensitive) ink, an eraser,
and an optional attention overlay mapped back onto the ink."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPainterPath, QPen, QTabletEvent, QTransform
from PySide6.QtWidgets import QWidget

from hmer_desktop.ink import InkDocument

MARGIN = 400  # blank room kept right of and below the ink, so the canvas grows as you write


class InkCanvas(QWidget):
    pen_down = Signal()  # drawing or erasing begins: the person is still writing
    pen_up = Signal()  # it ends, whether or not the ink changed
    stroke_finished = Signal()

    def __init__(self, document: InkDocument, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document = document
        self.eraser = False
        self.pen_width = 3.0
        self._current: list[tuple[float, float, float]] = []
        self._pen_is_down = False
        self._overlay: QImage | None = None
        self._overlay_transform = QTransform()
        self.setAttribute(Qt.WidgetAttribute.WA_StaticContents)
        self.setMouseTracking(False)
        self.setMinimumSize(900, 360)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setToolTip("Draw with the mouse or a pen. Right button or the eraser tool removes whole strokes.")
        document.subscribe(self._on_document_changed)

    # --- overlay ----------------------------------------------------------------------

    def set_overlay(self, image: QImage | None, image_to_canvas: QTransform | None = None) -> None:
        self._overlay = image
        self._overlay_transform = image_to_canvas or QTransform()
        self.update()

    def has_overlay(self) -> bool:
        return self._overlay is not None

    @staticmethod
    def transform_from_matrix(ink_to_image: np.ndarray) -> QTransform:
        """QTransform mapping image pixels back to canvas (ink) coordinates."""
        inv = np.linalg.inv(ink_to_image)
        return QTransform(inv[0, 0], inv[1, 0], inv[0, 1], inv[1, 1], inv[0, 2], inv[1, 2])

    # --- input ------------------------------------------------------------------------

    def _begin(self, pos: QPointF, pressure: float, erase: bool) -> None:
        self._pen_is_down = True
        self.pen_down.emit()
        if erase or self.eraser:
            self._erase_at(pos)
            self._current = []
            self._erasing = True
            return
        self._erasing = False
        self._current = [(pos.x(), pos.y(), pressure)]
        self.update()

    def _extend(self, pos: QPointF, pressure: float) -> None:
        if getattr(self, "_erasing", False):
            self._erase_at(pos)
            return
        if self._current:
            self._current.append((pos.x(), pos.y(), pressure))
            self.update()

    def _end(self) -> None:
        if getattr(self, "_erasing", False):
            self._erasing = False
        elif self._current:
            points = np.array(self._current, dtype=np.float64)
            self._current = []
            self.document.add_stroke(points)
            self.stroke_finished.emit()
        if self._pen_is_down:
            self._pen_is_down = False
            self.pen_up.emit()

    def _erase_at(self, pos: QPointF) -> None:
        hits = self.document.strokes_near(pos.x(), pos.y(), radius=8.0)
        if hits:
            self.document.erase(hits)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt names)
        if event.button() in (Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton):
            self._begin(event.position(), 0.5, erase=event.button() == Qt.MouseButton.RightButton)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.buttons() & (Qt.MouseButton.LeftButton | Qt.MouseButton.RightButton):
            self._extend(event.position(), 0.5)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self._end()

    def tabletEvent(self, event: QTabletEvent) -> None:  # noqa: N802
        kind = event.type()
        erase = event.pointerType() == event.pointerType().Eraser
        if kind == QTabletEvent.Type.TabletPress:
            self._begin(event.position(), event.pressure(), erase)
        elif kind == QTabletEvent.Type.TabletMove:
            self._extend(event.position(), event.pressure())
        elif kind == QTabletEvent.Type.TabletRelease:
            self._end()
        event.accept()  # no synthesized mouse events

    # --- painting ---------------------------------------------------------------------

    def _on_document_changed(self) -> None:
        bounds = self.document.bounds()
        if bounds is not None:
            want = QSize(int(bounds[2]) + MARGIN, int(bounds[3]) + MARGIN // 2)
            if want.width() > self.minimumWidth() or want.height() > self.minimumHeight():
                self.setMinimumSize(max(want.width(), self.minimumWidth()), max(want.height(), self.minimumHeight()))
        self.update()

    def _paint_stroke(self, painter: QPainter, points: np.ndarray, color: QColor) -> None:
        if len(points) == 1:
            r = self.pen_width * (0.5 + points[0, 2])
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(color)
            painter.drawEllipse(QPointF(points[0, 0], points[0, 1]), r / 2, r / 2)
            return
        pressure_varies = np.ptp(points[:, 2]) > 1e-3
        if not pressure_varies:
            path = QPainterPath(QPointF(points[0, 0], points[0, 1]))
            for x, y, _ in points[1:]:
                path.lineTo(x, y)
            pen = QPen(color, self.pen_width * (0.5 + points[0, 2]), Qt.PenStyle.SolidLine,
                       Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)  # fmt: skip
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(path)
            return
        for (x0, y0, p0), (x1, y1, p1) in zip(points[:-1], points[1:]):  # width follows pen pressure
            pen = QPen(color, self.pen_width * (0.4 + 1.2 * (p0 + p1) / 2), Qt.PenStyle.SolidLine,
                       Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)  # fmt: skip
            painter.setPen(pen)
            painter.drawLine(QPointF(x0, y0), QPointF(x1, y1))

    def paintEvent(self, event) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("white"))
        ink = QColor(20, 20, 30)
        for stroke in self.document.strokes:
            self._paint_stroke(painter, stroke, ink)
        if self._current:
            self._paint_stroke(painter, np.array(self._current), QColor(30, 60, 160))
        if self._overlay is not None:
            painter.setTransform(self._overlay_transform)
            painter.drawImage(QRectF(0, 0, self._overlay.width(), self._overlay.height()), self._overlay)
            painter.resetTransform()
        painter.end()
