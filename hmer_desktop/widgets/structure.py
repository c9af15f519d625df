"""The auxiliary head's structure-only reading beside the structure of the main
prediction; disagreements are highlighted, and a badge says whether they agree.
The column of the token selected in the attention panel is outlined."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from model.prediction import Prediction

PLACEHOLDER_SHOWN = "□"


def _shown(token: str) -> str:
    return PLACEHOLDER_SHOWN if token == "<space>" else token


class StructurePanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.badge = QLabel("")
        self.badge.setWordWrap(True)
        self._grid_host = QWidget()
        self._grid = QGridLayout(self._grid_host)
        self._grid.setHorizontalSpacing(4)
        self._grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.scroll = QScrollArea()
        self.scroll.setWidget(self._grid_host)
        self.scroll.setWidgetResizable(True)
        explain = QLabel(f"The auxiliary head predicts only the structure ({PLACEHOLDER_SHOWN} = any symbol). "
                         "When it disagrees with the main reading, the result may be wrong.")  # fmt: skip
        explain.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.badge)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(explain)
        self.mismatches: list[int] = []
        self.highlighted = -1
        self._columns: list[tuple[QLabel, QLabel]] = []  # (main, auxiliary) per position

    def show_prediction(self, prediction: Prediction | None) -> None:
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self._columns, self.highlighted = [], -1
        if prediction is None:
            self.badge.setText("")
            self.mismatches = []
            return
        self._grid.addWidget(QLabel("<b>main</b>"), 0, 0)
        self._grid.addWidget(QLabel("<b>auxiliary</b>"), 1, 0)
        self.mismatches = prediction.structure_mismatches
        n = max(len(prediction.structure), len(prediction.expected_structure))
        for i in range(n):
            exp = prediction.expected_structure[i] if i < len(prediction.expected_structure) else ""
            got = prediction.structure[i] if i < len(prediction.structure) else ""
            main, aux = QLabel(_shown(exp)), QLabel(_shown(got))
            for row, label in ((0, main), (1, aux)):
                label.setStyleSheet(self._style(i, outlined=False))
                self._grid.addWidget(label, row, i + 1)
            self._columns.append((main, aux))
        if prediction.structure_agrees:
            self.badge.setText("✔ structure agrees")
            self.badge.setStyleSheet("color: white; background: #2e7d32; padding: 4px; border-radius: 4px;")
        else:
            self.badge.setText(f"⚠ structure disagrees at {len(self.mismatches)} position(s): check the result")
            self.badge.setStyleSheet("color: black; background: #ffcc80; padding: 4px; border-radius: 4px;")

    def _style(self, i: int, outlined: bool) -> str:
        style = "padding: 2px 4px; border: 1px solid #ccc;"
        if i in self.mismatches:
            style += " background: #ffb3b3; color: black; font-weight: bold;"  # readable in dark themes too
        if outlined:
            style += " border: 2px solid #1a4fd6; padding: 1px 3px;"  # same outer size
        return style

    def highlight(self, index: int) -> None:
        """Outline position `index` (-1: none), the token selected elsewhere, and scroll to it."""
        for i in (self.highlighted, index):
            if 0 <= i < len(self._columns):
                for label in self._columns[i]:
                    label.setStyleSheet(self._style(i, outlined=i == index))
        self.highlighted = index if 0 <= index < len(self._columns) else -1
        if self.highlighted >= 0:
            self.scroll.ensureWidgetVisible(self._columns[index][1], 24, 0)
