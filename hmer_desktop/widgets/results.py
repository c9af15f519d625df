"""The recognized expression: typeset, as editable LaTeX, as alternatives, and as
sympy reads it; with copy buttons for LaTeX, $...$, MathML and the image."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QGuiApplication, QImage, QPixmap
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)  # fmt: skip

from hmer_desktop.math_reader import MathReader, shared_reader
from hmer_desktop.mathinfo import LatestOnly, MathReading, Rendering, render
from model.prediction import Prediction


class ResultsPanel(QWidget):
    alternative_chosen = Signal(int)
    latex_edited = Signal(str)
    rendered = Signal(str)  # the LaTeX whose typeset image and sympy reading are now shown
    _arrived = Signal(object)  # a Rendering, from the typesetting thread

    def __init__(self, parent: QWidget | None = None, math_reader: MathReader | None = None) -> None:
        """`math_reader`: sympy's reader; by default the process's shared one."""
        super().__init__(parent)
        self.typeset = QLabel("Draw an expression on the canvas.")
        self.typeset.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.typeset.setMinimumHeight(90)
        self.typeset.setStyleSheet("background: white; border: 1px solid #ddd;")
        self.typeset_note = QLabel("")
        self.typeset_note.setStyleSheet("color: #8a4b00;")
        self.typeset_note.setWordWrap(True)
        self.latex = QLineEdit()
        self.latex.setPlaceholderText("LaTeX (editable)")
        self.latex.editingFinished.connect(self._edited)
        self.copy_latex = QPushButton("Copy LaTeX")
        self.copy_dollar = QPushButton("Copy $…$")
        self.copy_mathml = QPushButton("Copy MathML")
        self.copy_image = QPushButton("Copy image")
        self.copy_latex.clicked.connect(lambda: self._copy_text(self.latex.text()))
        self.copy_dollar.clicked.connect(lambda: self._copy_text(f"${self.latex.text()}$"))
        self.copy_mathml.clicked.connect(self._copy_mathml)
        self.copy_image.clicked.connect(self._copy_image)
        self.alternatives = QListWidget()
        self.alternatives.setToolTip("The n best readings; click one, press Enter on it, or Alt+1 to Alt+9 to use it")
        self.alternatives.itemClicked.connect(lambda item: self.alternative_chosen.emit(self.alternatives.row(item)))
        self.alternatives.itemActivated.connect(lambda item: self.alternative_chosen.emit(self.alternatives.row(item)))
        self.math = QLabel("")
        self.math.setWordWrap(True)
        self.math.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        buttons = QHBoxLayout()
        for b in (self.copy_latex, self.copy_dollar, self.copy_mathml, self.copy_image):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.typeset, 2)
        layout.addWidget(self.typeset_note)
        layout.addWidget(self.latex)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("Alternatives:"))
        layout.addWidget(self.alternatives, 1)
        layout.addWidget(QLabel("Math (sympy):"))
        layout.addWidget(self.math)
        self._png: bytes | None = None
        self._reading: MathReading | None = None
        # Typesetting and sympy's reading take 35 ms at the median and up to half a second:
        # on a thread of their own, so that neither the pen nor the window waits for them
        # while a person writes. sympy reads in a process of its own, which is stopped
        # where a reading has no end (`9^{9^{9}}`).
        self._typesetter = LatestOnly("hmer-typeset")
        self.math_reader = math_reader or shared_reader()
        self.destroyed.connect(self._typesetter.close)
        self._wanted = ""  # the LaTeX whose rendering is awaited or shown
        self.rendered_latex: str | None = None  # the LaTeX the typeset image and reading show
        self._arrived.connect(self._show_rendering)
        self.set_latex("")
        # Starting sympy's process and mathtext's first image take about a second, and
        # imports hold the interpreter: done now, while the model loads, instead of at the
        # first result, while the person is writing.
        self._typesetter.submit(lambda: render("x", self.math_reader.read))

    # --- content ----------------------------------------------------------------------

    def show_prediction(self, prediction: Prediction | None) -> None:
        self.alternatives.clear()
        if prediction is None:
            self.set_latex("")
            return
        for number, alt in enumerate(prediction.alternatives, 1):  # the number is its Alt+ shortcut
            QListWidgetItem(f"{number}.  {alt.latex}    ({alt.probability:.0%})", self.alternatives)
        if self.alternatives.count():
            self.alternatives.setCurrentRow(0)
        self.set_latex(prediction.latex)

    def set_latex(self, latex: str) -> None:
        self.latex.setText(latex)
        self._render(latex)

    def _edited(self) -> None:
        self._render(self.latex.text())
        self.latex_edited.emit(self.latex.text())

    def _render(self, latex: str) -> None:
        enabled = bool(latex.strip())
        for b in (self.copy_latex, self.copy_dollar):
            b.setEnabled(enabled)
        self._png = None
        self._reading = None
        self._wanted = latex
        self.typeset_note.setText("")
        self.copy_mathml.setEnabled(False)  # until this LaTeX's own image and reading arrive
        self.copy_image.setEnabled(False)
        if not enabled:
            self.typeset.setPixmap(QPixmap())
            self.typeset.setText("Draw an expression on the canvas.")
            self.math.setText("")
            self.rendered_latex = latex
            self.rendered.emit(latex)
            return
        # the previous image stays until this one arrives: no flicker between strokes
        self._typesetter.submit(lambda: self._render_if_wanted(latex))

    def _render_if_wanted(self, latex: str) -> None:
        """On the typesetting thread."""
        if latex != self._wanted:  # superseded while waiting
            return
        rendering = render(latex, self.math_reader.read)
        try:
            self._arrived.emit(rendering)
        except RuntimeError:  # the panel was deleted meanwhile (the window closed)
            pass

    def _show_rendering(self, rendering: Rendering) -> None:
        if rendering.latex != self._wanted:
            return  # a newer LaTeX is on its way
        self._png = rendering.png
        if self._png is not None:
            pixmap = QPixmap()
            pixmap.loadFromData(self._png, "PNG")
            self.typeset.setPixmap(pixmap)
        else:
            self.typeset.setPixmap(QPixmap())
            self.typeset.setText(rendering.latex)
            # a note set since the request (a sample refused on saving) stays above this one
            earlier = self.typeset_note.text()
            note = f"Shown as raw text: {rendering.typeset_error}"
            self.typeset_note.setText(f"{earlier}\n{note}" if earlier else note)
        self.copy_image.setEnabled(self._png is not None)
        self._reading = rendering.reading
        r = self._reading
        if r.ok and not r.error:
            lines = [f"parsed: {r.parsed}", f"simplified: {r.simplified}"]
            if r.value:
                lines.append(f"value: {r.value}")
            self.math.setText("\n".join(lines))
        else:
            self.math.setText(r.error or "sympy cannot read this")
        self.copy_mathml.setEnabled(bool(r.mathml))
        self.copy_mathml.setToolTip("" if r.mathml else "sympy cannot read this expression, so there is no MathML")
        self.rendered_latex = rendering.latex
        self.rendered.emit(rendering.latex)

    # --- clipboard --------------------------------------------------------------------

    def _copy_text(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)

    def _copy_mathml(self) -> None:
        if self._reading and self._reading.mathml:
            self._copy_text(f'<math xmlns="http://www.w3.org/1998/Math/MathML">{self._reading.mathml}</math>')

    def _copy_image(self) -> None:
        if self._png:
            QGuiApplication.clipboard().setImage(QImage.fromData(self._png, "PNG"))
