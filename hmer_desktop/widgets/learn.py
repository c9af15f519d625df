"""Learning from the user: the sample browser and the fine-tuning dialog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QSize, Qt, Signal, Slot
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QMessageBox, QProgressBar, QPushButton,
                               QSpinBox, QTextEdit, QVBoxLayout)  # fmt: skip

from hmer_desktop.finetune_service import FinetuneJob, FinetuneService, Progress
from hmer_desktop.widgets.heat import gray_qimage
from model.config import RasterConfig
from model.rasterize import InkError, rasterize
from train.samples import SampleError, SampleStore

THUMB = RasterConfig(symbol_px=20, line_px=2, max_h=64, max_w=256)


def thumbnail(strokes: list[np.ndarray]) -> QPixmap:
    try:
        return QPixmap.fromImage(gray_qimage(rasterize(strokes, THUMB).image))
    except InkError:
        return QPixmap()


class SampleBrowser(QDialog):
    """Thumbnails and labels of the saved samples: filter, edit, delete, import, export."""

    def __init__(self, store: SampleStore, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Your samples")
        self.store = store
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter by LaTeX…")
        self.filter.textChanged.connect(self.refresh)
        self.list = QListWidget()
        self.list.setIconSize(QSize(256, 64))
        self.label = QLineEdit()
        self.label.setPlaceholderText("Label of the selected sample")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        save = QPushButton("Save label")
        delete = QPushButton("Delete")
        import_button = QPushButton("Import InkML folder…")
        import_zip = QPushButton("Import zip…")
        import_zip.clicked.connect(self._import_zip_dialog)
        export_button = QPushButton("Export InkML…")
        save.clicked.connect(self.save_label)
        delete.clicked.connect(self.delete_selected)
        import_button.clicked.connect(self._import_dialog)
        export_button.clicked.connect(self._export_dialog)
        self.list.currentItemChanged.connect(lambda item, _: self.label.setText(item.data(Qt.ItemDataRole.UserRole + 1) if item else ""))
        row = QHBoxLayout()
        for w in (self.label, save, delete):
            row.addWidget(w)
        files = QHBoxLayout()
        files.addWidget(import_button)
        files.addWidget(import_zip)
        files.addWidget(export_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.list, 1)
        layout.addLayout(row)
        layout.addWidget(self.message)
        layout.addLayout(files)
        self.resize(560, 600)
        self.refresh()

    def refresh(self) -> None:
        self.list.clear()
        for s in self.store.samples(self.filter.text()):
            item = QListWidgetItem(QIcon(thumbnail(s.strokes)), s.latex)
            item.setData(Qt.ItemDataRole.UserRole, s.id)
            item.setData(Qt.ItemDataRole.UserRole + 1, s.latex)
            self.list.addItem(item)
        self.message.setText(f"{self.store.count()} samples")

    def selected_id(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def save_label(self) -> None:
        sid = self.selected_id()
        if sid is None:
            return
        try:
            self.store.update_label(sid, self.label.text())
        except SampleError as e:
            self.message.setText(f"Not saved: {e}")
            self.message.setStyleSheet("color: #b00020;")
            return
        self.message.setStyleSheet("")
        self.refresh()

    def delete_selected(self) -> None:
        sid = self.selected_id()
        if sid is not None:
            self.store.delete(sid)
            self.refresh()

    def import_from(self, source: Path) -> None:
        added, problems = self.store.import_inkml(source)
        self.refresh()
        text = f"Imported {added} samples."
        if problems:
            text += f" Skipped {len(problems)}: " + "; ".join(problems[:5])
        self.message.setText(text)

    def _import_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a folder of InkML files")
        if folder:
            self.import_from(Path(folder))

    def _import_zip_dialog(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Import a zip of InkML files", "", "Zip archives (*.zip)")
        if name:
            self.import_from(Path(name))

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export samples as InkML into")
        if folder:
            n = self.store.export_inkml(Path(folder))
            self.message.setText(f"Exported {n} samples to {folder}/samples (captions in {folder}/captions)")


class _ProgressRelay(QObject):
    progress = Signal(object)
    finished = Signal(object, object)  # (result, error)


class FinetuneDialog(QDialog):
    """Start, watch and cancel a fine-tune; compare before/after; switch or roll back model versions."""

    model_chosen = Signal(object)  # Path of the checkpoint to use, or None for the bundled model

    def __init__(self, service: FinetuneService, base: Path, crohme_dir: Path | None, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Learn from your samples")
        self.service = service
        self.base = base
        self.crohme_dir = crohme_dir
        self.job: FinetuneJob | None = None
        self.result = None
        self.relay = _ProgressRelay(self)
        self.relay.progress.connect(self._on_progress)
        self.relay.finished.connect(self._on_finished)
        n = service.store.count()
        replay = ("CROHME training data will be replayed so the model keeps what it knows."
                  if crohme_dir else "No CROHME folder is set: the model trains on your samples only (no replay).")  # fmt: skip
        self.info = QLabel(f"{n} samples; a fifth is held out to check the result. {replay}")
        self.info.setWordWrap(True)
        self.steps = QSpinBox()
        self.steps.setRange(10, 5000)
        self.steps.setValue(200)
        self.whole_model = QCheckBox("Retrain the decoder too")
        self.whole_model.setToolTip(
            "By default only the part that reads ink learns, which adapts to your handwriting and keeps "
            "what the model knows about formulas. Retraining the decoder also learns your formulas; "
            "with a few dozen samples it tends to memorize them."
        )
        self.keep_knowledge = QCheckBox("Lose at most 1 point on CROHME")
        self.keep_knowledge.setChecked(crohme_dir is not None)
        self.keep_knowledge.setEnabled(crohme_dir is not None)
        self.keep_knowledge.setToolTip(
            "After training, the new version (which keeps 50% of what it learned) is checked on 300 CROHME "
            "2014 expressions. If it reads them more than 1 point worse than before, beyond what chance "
            "explains on 300 expressions, a smaller part is kept (25% or none). Untick it to skip the "
            "check."
            if crohme_dir else "Needs a CROHME folder (Preferences) to check what the model forgot."
        )
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.start_button.setEnabled(n > 0)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.bar = QProgressBar()
        self.status = QLabel("")
        self.report = QTextEdit()
        self.report.setReadOnly(True)
        self.versions = QComboBox()
        self.use_button = QPushButton("Use this version")
        self.use_button.clicked.connect(self._use_selected)
        row = QHBoxLayout()
        row.addWidget(QLabel("Steps (at most):"))
        row.addWidget(self.steps)
        row.addWidget(self.whole_model)
        row.addWidget(self.keep_knowledge)
        row.addWidget(self.start_button)
        row.addWidget(self.cancel_button)
        versions = QHBoxLayout()
        versions.addWidget(QLabel("Model versions:"))
        versions.addWidget(self.versions, 1)
        versions.addWidget(self.use_button)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.info)
        layout.addLayout(row)
        layout.addWidget(self.bar)
        layout.addWidget(self.status)
        layout.addWidget(self.report, 1)
        layout.addLayout(versions)
        layout.addWidget(close)
        self.resize(640, 460)
        self.refresh_versions()

    def refresh_versions(self) -> None:
        self.versions.clear()
        self.versions.addItem("bundled model", None)
        active = self.service.store.active_model()
        for v in self.service.store.models():
            after = v.metrics.get("holdout_after")
            score = f", held-out {after:.0f}%" if after is not None else ""
            self.versions.addItem(f"#{v.id} {Path(v.path).name}{score}", v.id)
            if v.id == active:
                self.versions.setCurrentIndex(self.versions.count() - 1)

    def start(self) -> None:
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.report.clear()
        self.status.setText("starting…")
        trainable = "all" if self.whole_model.isChecked() else "encoder"
        limit = 1.0 if self.keep_knowledge.isChecked() else None
        self.job = self.service.start(self.base, self.crohme_dir, self.steps.value(), self.relay.progress.emit,
                                      trainable=trainable, max_forgetting=limit)  # fmt: skip
        self.job.future.add_done_callback(
            lambda f: self.relay.finished.emit(None if f.cancelled() or f.exception() else f.result(),
                                               None if f.cancelled() else f.exception())  # fmt: skip
        )

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("cancelling… (nothing will be written)")

    @Slot(object)  # called from the fine-tune thread: a declared slot (see MainWindow._on_done)
    def _on_progress(self, p: Progress) -> None:
        self.bar.setMaximum(p.total)
        self.bar.setValue(p.step)
        if p.stage is not None:
            self.status.setText(f"step {p.step}/{p.total}: {p.stage}…")
            return
        extra = f", held-out {p.holdout_exprate:.0f}%" if p.holdout_exprate is not None else ""
        self.status.setText(f"step {p.step}/{p.total}, loss {p.loss:.3f}{extra}, about {p.eta_s:.0f} s left")

    @Slot(object, object)
    def _on_finished(self, result, error) -> None:
        self.start_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if error is not None:
            self.status.setText(f"Fine-tuning failed: {error}")
            return
        if result is None:
            return
        report, version = result
        self.result = result
        if report.output is None:
            self.status.setText("Cancelled: the active model is unchanged.")
            return

        def pct(x):
            return "—" if x is None else f"{x:.1f}%"

        lines = [f"Held-out samples: {pct(report.holdout_before)} → {pct(report.holdout_after)} ({report.n_holdout} samples)",
                 f"Your training samples: {pct(report.train_before)} → {pct(report.train_after)}"]  # fmt: skip
        if report.base_before is not None:
            lines.append(f"CROHME 2014 subset: {pct(report.base_before)} → {pct(report.base_after)}")
        learned = {"encoder": "the ink reader (encoder)", "norm": "the ink reader's normalization layers",
                   "all": "the whole model"}.get(report.trainable, report.trainable)  # fmt: skip
        lines.append(f"{report.steps} steps, stopped by {report.stopped}, {report.seconds:.0f} s; trained {learned}")
        if report.mix < 1:  # the rest of the way back to the base keeps what it knew
            lines.append(f"Kept {report.mix:.0%} of the weight change the training found")
        lines += report.notes
        self.report.setPlainText("\n".join(lines))
        self.status.setText(f"New version #{version} saved. Use it below, or keep the current one.")
        self.refresh_versions()
        index = self.versions.findData(version)
        if index >= 0:
            self.versions.setCurrentIndex(index)

    def _use_selected(self) -> None:
        version = self.versions.currentData()
        self.service.store.set_active_model(version)
        path = None
        if version is not None:
            path = Path(next(v.path for v in self.service.store.models() if v.id == version))
            if not path.exists():
                QMessageBox.warning(self, "Missing model", f"{path} no longer exists.")
                return
        self.model_chosen.emit(path)
