"""Why the model read what it read: the predicted tokens as a strip colored by
confidence; selecting one shows where the decoder looked (on the model's input
here, and on the ink in the canvas); play, or the arrow keys, step through the
tokens. Below the strip, the selected token's alternatives (the model's next
choices at that position) correct it with one click or the keys 1-5."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor, QKeySequence, QPainter, QPixmap, QShortcut
from PySide6.QtWidgets import (QButtonGroup, QHBoxLayout, QLabel, QPushButton, QScrollArea, QSizePolicy,
                               QToolButton, QVBoxLayout, QWidget)  # fmt: skip

from hmer_desktop.widgets.heat import gray_qimage, heat_rgba, to_qimage, upsample_attention
from model.prediction import Prediction


class _TokenButton(QToolButton):
    """A token of the strip; hovering previews its attention."""

    hovered = Signal(int)  # the token's index, or -1 when the pointer leaves

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def enterEvent(self, event) -> None:  # noqa: N802 (Qt names)
        self.hovered.emit(self.index)
        super().enterEvent(event)

    def leaveEvent(self, event) -> None:  # noqa: N802
        self.hovered.emit(-1)
        super().leaveEvent(event)


def confidence_color(p: float) -> QColor:
    """Red (unsure) through amber to green (sure)."""
    p = float(np.clip(p, 0.0, 1.0))
    return QColor.fromHsvF(0.33 * p, 0.55, 0.95)


class FittedImage(QLabel):
    """Shows a pixmap as large as the label allows (aspect kept, at most `max_zoom`
    times its own size), rescaled whenever the label is resized."""

    def __init__(self, text: str, max_zoom: float = 4.0) -> None:
        super().__init__(text)
        self.max_zoom = max_zoom
        self._source: QPixmap | None = None
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        # the layout decides the size; a pixmap's own size hint would stop the panel shrinking
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)

    def set_image(self, pixmap: QPixmap) -> None:
        self._source = pixmap
        self._fit()

    def _fit(self) -> None:
        if self._source is None or self._source.isNull():
            return
        src = self._source
        zoom = min(self.width() / src.width(), self.height() / src.height(), self.max_zoom)
        size = src.size() * max(zoom, 0.05)
        self.setPixmap(src.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt names)
        super().resizeEvent(event)
        self._fit()


def _fit_text(button: QToolButton, text: str) -> None:
    """Show `text` on a token button, wide enough for it with the style sheet's padding."""
    button.setText(text)
    button.setMinimumWidth(max(button.sizeHint().width(), button.fontMetrics().horizontalAdvance(text) + 24))


def _percent(p: float) -> str:
    return "<1%" if p < 0.01 else f"{p:.0%}"


class AttentionPanel(QWidget):
    token_selected = Signal(int)  # -1 = none
    # (index, token): the user picked a replacement for a token; the owner applies it to the
    # reading it shows, then calls `apply_replacement` (or not, saying why)
    replacement_requested = Signal(int, str)
    MAX_REPLACEMENTS = 5

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.prediction: Prediction | None = None
        self.selected = -1
        self.replaced: dict[int, str] = {}  # token index -> the token the user put there
        self._buttons: list[_TokenButton] = []
        self._group = QButtonGroup(self)
        self._group.setExclusive(True)
        self._group.idClicked.connect(self.select)

        self._strip = QWidget()
        self._strip_layout = QHBoxLayout(self._strip)
        self._strip_layout.setContentsMargins(0, 0, 0, 0)
        self._strip_layout.setSpacing(2)
        self._strip_layout.addStretch(1)
        self.strip_scroll = QScrollArea()
        self.strip_scroll.setWidget(self._strip)
        self.strip_scroll.setWidgetResizable(True)
        self.strip_scroll.setFixedHeight(48)
        # Left/Right step through the tokens while focus is anywhere in the panel (the
        # token buttons would otherwise only move the focus frame, not the selection)
        for key, delta in ((Qt.Key.Key_Left, -1), (Qt.Key.Key_Right, 1)):
            shortcut = QShortcut(QKeySequence(key), self, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda delta=delta: self.step(delta))

        self.play_button = QPushButton("▶ Play")
        self.play_button.setCheckable(True)
        self.play_button.setToolTip("Step through the tokens, showing where the model looked for each")
        self.play_button.toggled.connect(self._toggle_play)
        self._timer = QTimer(self)
        self._timer.setInterval(700)
        self._timer.timeout.connect(self._advance)

        # the selected token's alternatives: "Instead of C:  [c 31%] [G 2%] ..."
        self.replace_label = QLabel("")
        self._replace_buttons: list[QPushButton] = []
        replace_widget = QWidget()
        replace_row = QHBoxLayout(replace_widget)
        replace_row.setContentsMargins(0, 0, 0, 0)
        replace_row.addWidget(self.replace_label)
        for k in range(self.MAX_REPLACEMENTS):
            b = QPushButton()
            b.clicked.connect(lambda _=False, k=k: self.request_replacement(k))
            replace_row.addWidget(b)
            self._replace_buttons.append(b)
            shortcut = QShortcut(QKeySequence(str(k + 1)), self, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda k=k: self.request_replacement(k))
        replace_row.addStretch(1)
        replace_widget.setFixedHeight(self._replace_buttons[0].sizeHint().height())  # no jump when it empties
        self._replacement_choices: list[str] = []

        self.input_view = FittedImage("The model's input and its attention appear here.")
        self.input_view.setMinimumHeight(120)
        self.caption = QLabel("")

        top = QHBoxLayout()
        top.addWidget(QLabel("Tokens:"))
        top.addWidget(self.strip_scroll, 1)
        top.addWidget(self.play_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(replace_widget)
        layout.addWidget(self.input_view, 1)
        layout.addWidget(self.caption)

    def show_prediction(self, prediction: Prediction | None) -> None:
        self.play_button.setChecked(False)
        # The strip's buttons are reused from one reading to the next: making, styling and
        # showing them anew, and deleting the old, took the GUI thread 57 ms a reading on
        # average while a person wrote, 145 ms at 60 tokens (now 6 and 8.5 ms; session 33).
        keep = len(prediction.tokens) if prediction is not None else 0
        for b in self._buttons[keep:]:
            self._group.removeButton(b)
            b.deleteLater()
        del self._buttons[keep:]
        self._group.setExclusive(False)  # an exclusive group cannot uncheck its checked button
        for b in self._buttons:
            b.setChecked(False)
        self._group.setExclusive(True)
        self.prediction = prediction
        self.selected = -1
        self.replaced = {}
        self._show_replacements(-1)
        if prediction is None:
            self.input_view.setText("The model's input and its attention appear here.")
            self.caption.setText("")
            return
        for i, (tok, p) in enumerate(zip(prediction.tokens, prediction.token_probs)):
            new = i == len(self._buttons)
            b = _TokenButton(i) if new else self._buttons[i]
            if new:
                b.hovered.connect(self._hover)
                b.setCheckable(True)
            elif b.font().italic():  # a correction of the previous reading
                font = b.font()
                font.setItalic(False)
                font.setUnderline(False)
                b.setFont(font)
            b.setToolTip(f"{tok}: p = {p:.3f}")
            style = (f"QToolButton {{ background: {confidence_color(p).name()}; color: black; padding: 3px 6px; }}"
                     "QToolButton:checked { border: 2px solid #1a4fd6; }")  # fmt: skip
            if b.styleSheet() != style:
                b.setStyleSheet(style)
                b.ensurePolished()  # apply the style sheet's padding before measuring
            _fit_text(b, tok)
            if new:
                self._group.addButton(b, i)
                self._strip_layout.insertWidget(i, b)
                b.show()  # now, not when the layout's queued show runs: the strip measures at once
                self._buttons.append(b)
        self._render(-1)

    def select(self, index: int) -> None:
        if self.prediction is None or not (-1 <= index < len(self.prediction.tokens)):
            return
        self.selected = index
        if index >= 0:
            self._buttons[index].setChecked(True)
            # Play and the keys scroll along; after the strip's pending relayout, which a new
            # prediction's buttons need before the scroll range knows their width
            QTimer.singleShot(0, self._scroll_to_selected)
        self._render(index)
        self._show_replacements(index)
        self.token_selected.emit(index)

    # --- one-click corrections ----------------------------------------------------------

    def current_tokens(self) -> list[str]:
        """The shown reading with the user's replacements."""
        if self.prediction is None:
            return []
        return [self.replaced.get(i, t) for i, t in enumerate(self.prediction.tokens)]

    def replacement_choices(self, index: int) -> list[tuple[str, float | None]]:
        """What token `index` can be changed to: the model's reading first when the user has
        replaced it (probability None: it is the model's own choice), then the model's
        alternatives at that position."""
        p = self.prediction
        if p is None or not (0 <= index < len(p.tokens)) or index >= len(p.token_alternatives):
            return []
        current = self.replaced.get(index, p.tokens[index])
        choices: list[tuple[str, float | None]] = [] if current == p.tokens[index] else [(p.tokens[index], None)]
        choices += [(t, prob) for t, prob in p.token_alternatives[index] if t != current]
        return choices[: self.MAX_REPLACEMENTS]

    def _show_replacements(self, index: int) -> None:
        choices = self.replacement_choices(index)
        self._replacement_choices = [t for t, _ in choices]
        if choices:
            current = self.current_tokens()[index]
            self.replace_label.setText(f"Instead of {current}:")
        else:
            self.replace_label.setText("")
        for k, b in enumerate(self._replace_buttons):
            if k < len(choices):
                token, prob = choices[k]
                b.setText(f"{token}  (the model's reading)" if prob is None else f"{token}  {_percent(prob)}")
                b.setToolTip(f"Replace token {index + 1} with {token} in the LaTeX (key {k + 1})")
            b.setVisible(k < len(choices))

    def clear_replacements(self) -> None:
        """Show the model's reading again (the LaTeX was replaced by another reading)."""
        if self.prediction is not None:
            for index in list(self.replaced):
                self.apply_replacement(index, self.prediction.tokens[index])

    def request_replacement(self, k: int) -> None:
        """Ask for the selected token to become its k-th choice (a button or the key k+1)."""
        if self.selected >= 0 and 0 <= k < len(self._replacement_choices):
            self.replacement_requested.emit(self.selected, self._replacement_choices[k])

    def apply_replacement(self, index: int, token: str) -> None:
        """Show token `index` as `token` (the owner has put it in the LaTeX)."""
        p = self.prediction
        if p is None or not (0 <= index < len(p.tokens)):
            return
        if token == p.tokens[index]:
            self.replaced.pop(index, None)
        else:
            self.replaced[index] = token
        b = self._buttons[index]
        font = b.font()
        font.setItalic(index in self.replaced)
        font.setUnderline(index in self.replaced)
        b.setFont(font)
        _fit_text(b, token)
        read = f"{p.tokens[index]}: p = {p.token_probs[index]:.3f}"
        b.setToolTip(f"{token}, corrected by you (the model read {read})" if index in self.replaced else read)
        if index == self.selected:
            self._show_replacements(index)

    def _scroll_to_selected(self) -> None:
        if 0 <= self.selected < len(self._buttons):
            self.strip_scroll.ensureWidgetVisible(self._buttons[self.selected], 24, 0)

    def step(self, delta: int) -> None:
        """Select the next (+1) or previous (-1) token, stopping at the ends."""
        if self.prediction is None or not self.prediction.tokens:
            return
        last = len(self.prediction.tokens) - 1
        if self.selected < 0:  # nothing selected: Right starts at the first token, Left at the last
            self.select(0 if delta > 0 else last)
        else:
            self.select(min(last, max(0, self.selected + delta)))

    def _hover(self, index: int) -> None:
        """Preview a hovered token; leaving shows the selected one again."""
        if self.prediction is None:
            return
        shown = index if index >= 0 else self.selected
        self._render(shown)
        self.token_selected.emit(shown)

    def heat_for(self, index: int) -> np.ndarray | None:
        """Attention of token `index` at the model input's resolution."""
        if self.prediction is None or index < 0:
            return None
        p = self.prediction
        return upsample_attention(p.attention[index], p.downsample, p.image.shape)

    def _render(self, index: int) -> None:
        p = self.prediction
        base = QPixmap.fromImage(gray_qimage(p.image))
        heat = self.heat_for(index)
        if heat is not None:
            painter = QPainter(base)
            painter.drawImage(0, 0, to_qimage(heat_rgba(heat)))
            painter.end()
            self.caption.setText(f"token {index + 1}/{len(p.tokens)}: {p.tokens[index]}  "
                                 f"(p = {p.token_probs[index]:.3f}) — bright = where the model looked")  # fmt: skip
        else:
            self.caption.setText("Select a token (or press Play, or ←/→) to see where the model looked.")
        self.input_view.set_image(base)

    def _toggle_play(self, on: bool) -> None:
        if on and self.prediction is not None and self.prediction.tokens:
            self.play_button.setText("■ Stop")
            self._timer.start()
            self._advance()
        else:
            self.play_button.setText("▶ Play")
            self._timer.stop()

    def _advance(self) -> None:
        if self.prediction is None or not self.prediction.tokens:
            self.play_button.setChecked(False)
            return
        self.select((self.selected + 1) % len(self.prediction.tokens))
