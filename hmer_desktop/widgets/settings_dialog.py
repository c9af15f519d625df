"""Preferences: beam size and search, live recognition, device, checkpoint, CROHME folder; reset to defaults."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QLineEdit, QPushButton, QSpinBox, QWidget)  # fmt: skip

from hmer_desktop.settings import Settings


def _path_row(edit: QLineEdit, choose) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    button = QPushButton("Choose…")
    button.clicked.connect(choose)
    layout.addWidget(edit, 1)
    layout.addWidget(button)
    return row


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.beam = QSpinBox()
        self.beam.setRange(1, 32)
        self.beam.setValue(settings.beam_size)
        self.exact = QCheckBox("Exact search: keep every beam and compute in fp32, as the reference does (slower)")
        self.exact.setToolTip("Off: beams far behind the best are dropped, and on CPUs with bf16 units the "
                              "coverage model's convolution computes in bf16; with the bundled model the reading "
                              "is the exact search's for over 99% of CROHME's test expressions.")
        self.exact.setChecked(settings.exact_search)
        self.live = QCheckBox("Recognize after every stroke")
        self.live.setChecked(settings.live)
        self.preview = QCheckBox("Greedy preview right after each stroke")
        self.preview.setChecked(settings.preview)
        self.debounce = QSpinBox()
        self.debounce.setRange(0, 5000)
        self.debounce.setSuffix(" ms")
        self.debounce.setValue(settings.debounce_ms)
        self.debounce.setToolTip("How long the pen must stay up before the beam search reads the ink. "
                                 "New ink stops a search that is still running.")  # fmt: skip
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(settings.device)
        self.checkpoint = QLineEdit(settings.checkpoint)
        self.checkpoint.setPlaceholderText("the bundled model")
        self.crohme = QLineEdit(settings.crohme_dir)
        self.crohme.setPlaceholderText("optional: CROHME folder for fine-tuning replay")
        form = QFormLayout(self)
        form.addRow("Beam size", self.beam)
        form.addRow("Search", self.exact)
        form.addRow("Live", self.live)
        form.addRow("Preview", self.preview)
        form.addRow("Beam search after", self.debounce)
        form.addRow("Device", self.device)
        form.addRow("Checkpoint", _path_row(self.checkpoint, self._choose_checkpoint))
        form.addRow("CROHME data", _path_row(self.crohme, self._choose_crohme))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
                                   | QDialogButtonBox.StandardButton.RestoreDefaults)  # fmt: skip
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults).clicked.connect(lambda: self.show_values(Settings()))
        form.addRow(buttons)

    def show_values(self, s: Settings) -> None:
        self.beam.setValue(s.beam_size)
        self.exact.setChecked(s.exact_search)
        self.live.setChecked(s.live)
        self.debounce.setValue(s.debounce_ms)
        self.preview.setChecked(s.preview)
        self.device.setCurrentText(s.device)
        self.checkpoint.setText(s.checkpoint)
        self.crohme.setText(s.crohme_dir)

    def values(self, base: Settings) -> Settings:
        return replace(base, beam_size=self.beam.value(), exact_search=self.exact.isChecked(), live=self.live.isChecked(),
                       debounce_ms=self.debounce.value(), preview=self.preview.isChecked(),
                       device=self.device.currentText(), checkpoint=self.checkpoint.text().strip(),
                       crohme_dir=self.crohme.text().strip()).validated()  # fmt: skip

    def _choose_checkpoint(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.pt)")
        if name:
            self.checkpoint.setText(name)

    def _choose_crohme(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "CROHME folder (with train/ and captions/)")
        if folder:
            self.crohme.setText(folder)
