"""Help > About the model: the bundled model card, rendered, and which checkpoint is in use."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QTextBrowser, QVBoxLayout


def active_model_line(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "In use: the bundled model, which the card below describes."
    # a fine-tuned version or a file the user chose: the card is still the bundled one's
    return f"In use: {checkpoint}\nThe card below describes the bundled model, not this file."


class ModelCardDialog(QDialog):
    def __init__(self, card_markdown: str | None, checkpoint: str | None, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About the model")
        self.active = QLabel()
        self.active.setWordWrap(True)
        self.show_checkpoint(checkpoint)
        self.card = QTextBrowser()
        self.card.setOpenExternalLinks(True)
        if card_markdown:
            self.card.setMarkdown(card_markdown)  # tables and emphasis as the card's readers see them on the web
        else:
            self.card.setPlainText("No model card is bundled with this installation.")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.active)
        layout.addWidget(self.card, 1)
        layout.addWidget(buttons)
        self.resize(860, 640)

    def show_checkpoint(self, checkpoint: str | None) -> None:
        self.active.setText(active_model_line(checkpoint))
