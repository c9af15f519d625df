"""The main window: wires the ink document and the recognition service to the views."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (QFileDialog, QLabel, QMainWindow, QScrollArea, QSpinBox, QSplitter,
                               QToolBar, QVBoxLayout, QWidget)  # fmt: skip

from hmer_desktop.finetune_service import FinetuneService
from hmer_desktop.ink import InkDocument
from hmer_desktop.service import RecognitionService, Result, Superseded
from hmer_desktop.settings import Settings, SettingsStore, data_dir
from hmer_desktop.widgets.attention import AttentionPanel
from hmer_desktop.widgets.canvas import InkCanvas
from hmer_desktop.widgets.heat import heat_rgba, to_qimage
from hmer_desktop.widgets.learn import FinetuneDialog, SampleBrowser
from hmer_desktop.widgets.model_card import ModelCardDialog
from hmer_desktop.widgets.results import ResultsPanel
from hmer_desktop.widgets.settings_dialog import SettingsDialog
from hmer_desktop.widgets.structure import StructurePanel
from model.inkml import InkMLError, read_inkml, write_inkml
from model.paths import BUNDLED_CHECKPOINT, asset_path
from model.prediction import Prediction
from train.samples import SampleError, SampleStore

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp)"


def device_label(device: str, decoder: str) -> str:
    """The status bar's word on where recognition runs, and whether the compiled decoder is
    in use or still being compiled (the first start's first minutes are slower: say why)."""
    if decoder.startswith("preparing"):
        return f"{device.upper()} · compiling the decoder…"
    if decoder.startswith("using the compiled decoder"):
        return f"{device.upper()} · compiled"
    return device.upper()


class FutureBridge(QObject):
    """Delivers a worker's future to the GUI thread as a signal."""

    done = Signal(object, object)  # (result or None, exception or None)

    def watch(self, future: Future) -> None:
        def finished(f: Future) -> None:
            if f.cancelled():
                return
            error = f.exception()
            self.done.emit(None if error else f.result(), error)

        future.add_done_callback(finished)


class MainWindow(QMainWindow):
    prediction_shown = Signal(object)  # Prediction | None, after the views were updated
    error_shown = Signal(str)

    def __init__(
        self,
        service: RecognitionService,
        settings_store: SettingsStore | None = None,
        sample_store: SampleStore | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("hmer — handwritten math to LaTeX")
        self.setAcceptDrops(True)  # InkML files and images
        self.service = service
        self.settings_store = settings_store or SettingsStore()
        self.settings: Settings = self.settings_store.load()
        self.service.exact_search = self.settings.exact_search
        self.document = InkDocument()
        self.samples = sample_store or SampleStore(data_dir() / "samples.db")
        self.finetuning = FinetuneService(self.samples, data_dir() / "models" if sample_store is None
                                          else Path(self.samples.path).parent / "models", self.service)  # fmt: skip
        self.prediction: Prediction | None = None
        self.image_input: np.ndarray | None = None  # set while showing an opened image instead of ink
        self.pending = 0  # requests in flight
        self.last_result: Result | None = None
        self.about_dialog: ModelCardDialog | None = None

        self.canvas = InkCanvas(self.document)
        scroll = QScrollArea()
        scroll.setWidget(self.canvas)
        scroll.setWidgetResizable(True)
        self.results = ResultsPanel()
        self.attention = AttentionPanel()
        self.structure = StructurePanel()
        self.error_banner = QLabel("")
        self.error_banner.setWordWrap(True)
        self.error_banner.setStyleSheet("background: #c62828; color: white; padding: 6px;")
        self.error_banner.hide()

        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.results)
        bottom.addWidget(self.attention)
        bottom.addWidget(self.structure)
        bottom.setSizes([420, 420, 300])
        main = QSplitter(Qt.Orientation.Vertical)
        main.addWidget(scroll)
        main.addWidget(bottom)
        main.setSizes([380, 420])
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.error_banner)
        layout.addWidget(main, 1)
        self.setCentralWidget(central)

        self.status_state = QLabel("idle")
        self.status_latency = QLabel("")
        self.status_device = QLabel("")
        for w in (self.status_state, self.status_latency, self.status_device):
            self.statusBar().addPermanentWidget(w)

        self.bridge = FutureBridge(self)
        self.bridge.done.connect(self._on_done)
        self.debounce = QTimer(self)
        self.debounce.setSingleShot(True)
        self.debounce.timeout.connect(lambda: self.recognize_now())
        self._beam_waits_for_pen = False
        self.canvas.pen_down.connect(self._on_pen_down)
        self.canvas.pen_up.connect(self._on_pen_up)
        self.document.subscribe(self._on_ink_changed)
        self.results.alternative_chosen.connect(self.choose_alternative)
        self.attention.token_selected.connect(self._on_token_selected)
        self.attention.replacement_requested.connect(self.replace_token)
        self._build_actions()
        if self.settings_store.problem:
            self.show_error(self.settings_store.problem)
        self.resize(1280, 860)

    # --- actions ----------------------------------------------------------------------

    def _build_actions(self) -> None:
        bar = QToolBar("Main")
        bar.setMovable(False)
        self.addToolBar(bar)
        menu = self.menuBar().addMenu("&File")

        def action(text: str, slot, shortcut=None, checkable=False, tip: str = "") -> QAction:
            a = QAction(text, self)
            if shortcut:
                a.setShortcut(shortcut)
            a.setCheckable(checkable)
            a.setToolTip(tip or text)
            a.triggered.connect(slot)
            return a

        self.act_open = action("Open…", self.open_dialog, QKeySequence.StandardKey.Open, tip="Open InkML or an image")
        self.act_save = action("Save ink…", self.save_dialog, QKeySequence.StandardKey.Save, tip="Save the ink as InkML")
        self.act_undo = action("Undo", self.document.undo, QKeySequence.StandardKey.Undo)
        self.act_redo = action("Redo", self.document.redo, QKeySequence("Ctrl+Shift+Z"))
        self.act_clear = action("Clear", self.clear, QKeySequence("Ctrl+Delete"))
        self.act_eraser = action("Eraser", self._toggle_eraser, QKeySequence("E"), checkable=True,
                                 tip="Eraser: removes whole strokes (the right mouse button erases too)")  # fmt: skip
        self.act_recognize = action("Recognize", lambda: self.recognize_now(), QKeySequence("Ctrl+Return"))
        self.act_live = action("Live", self._toggle_live, checkable=True, tip="Recognize after every stroke")
        self.act_live.setChecked(self.settings.live)
        self.act_quit = action("Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_prefs = action("Preferences…", self.show_preferences, QKeySequence.StandardKey.Preferences)
        for a in (self.act_open, self.act_save, self.act_prefs, self.act_quit):
            menu.addAction(a)
        edit = self.menuBar().addMenu("&Edit")
        for a in (self.act_undo, self.act_redo, self.act_clear, self.act_eraser):
            edit.addAction(a)
        # The right reading is often among the alternatives (for 65% of CROHME 2016 within the
        # first five, against 49% first): one key press picks it.
        use = edit.addMenu("Use alternative")
        self.act_alternatives = []
        for k in range(1, 10):
            a = action(f"Alternative {k}", lambda _=False, i=k - 1: self.choose_alternative(i), QKeySequence(f"Alt+{k}"))
            use.addAction(a)
            self.act_alternatives.append(a)
        for a in (self.act_open, self.act_save, self.act_undo, self.act_redo, self.act_clear, self.act_eraser,
                  self.act_recognize, self.act_live):  # fmt: skip
            bar.addAction(a)
        bar.addWidget(QLabel("  Beam "))
        self.beam_spin = QSpinBox()
        self.beam_spin.setRange(1, 32)
        self.beam_spin.setValue(self.settings.beam_size)
        self.beam_spin.setToolTip("Beam size (1 = greedy, fastest)")
        self.beam_spin.valueChanged.connect(self._beam_changed)
        bar.addWidget(self.beam_spin)
        learn = self.menuBar().addMenu("&Learn")
        self.act_sample = action("Save as sample", self.save_sample, QKeySequence("Ctrl+Shift+S"),
                                 tip="Keep this ink with its (corrected) LaTeX, to fine-tune on later")  # fmt: skip
        learn.addAction(self.act_sample)
        learn.addAction(action("Samples…", self.show_samples))
        learn.addAction(action("Fine-tune…", self.show_finetune))
        bar.addAction(self.act_sample)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(action("About the model", self.show_about))
        help_menu.addAction(action("Reset preferences", self.reset_preferences,
                                   tip="Back to the default settings and the bundled model"))  # fmt: skip
        self.addActions([self.act_undo, self.act_redo, self.act_clear, self.act_eraser, self.act_recognize])
        self._update_actions()

    def _update_actions(self) -> None:
        self.act_undo.setEnabled(self.document.can_undo())
        self.act_redo.setEnabled(self.document.can_redo())
        self.act_clear.setEnabled(not self.document.is_empty())
        self.act_save.setEnabled(not self.document.is_empty())
        if hasattr(self, "act_sample"):
            self.act_sample.setEnabled(not self.document.is_empty())

    def _toggle_eraser(self, on: bool) -> None:
        self.canvas.eraser = on
        self.canvas.setCursor(Qt.CursorShape.PointingHandCursor if on else Qt.CursorShape.CrossCursor)

    def _toggle_live(self, on: bool) -> None:
        self.settings.live = on
        self.settings_store.save(self.settings)
        if on:
            self.recognize_now()

    def _beam_changed(self, value: int) -> None:
        self.settings.beam_size = value
        self.settings_store.save(self.settings)

    # --- recognition ------------------------------------------------------------------

    def _on_ink_changed(self) -> None:
        self._update_actions()
        self.image_input = None
        self.canvas.set_overlay(None)
        if self.document.is_empty():
            self.debounce.stop()
            self.show_prediction(None)
            return
        if self.settings.live:
            if self.settings.preview and self.beam_spin.value() > 1:
                self.recognize_now(beam_size=1, keep_timer=True)  # instant greedy reading
            self.debounce.start(self.settings.debounce_ms)  # the beam search once the pen rests

    def _on_pen_down(self) -> None:
        # The beam search waits until the pen rests: the interval between two strokes
        # is often longer than the debounce, and a search started mid-stroke is wasted.
        if self.debounce.isActive():
            self.debounce.stop()
            self._beam_waits_for_pen = True

    def _on_pen_up(self) -> None:
        waited, self._beam_waits_for_pen = self._beam_waits_for_pen, False
        if waited and not self.debounce.isActive():  # the press changed nothing (an eraser miss)
            self.debounce.start(self.settings.debounce_ms)

    def recognize_now(self, beam_size: int | None = None, keep_timer: bool = False) -> None:
        if not keep_timer:
            self.debounce.stop()
        beam = beam_size or self.beam_spin.value()
        if self.image_input is not None:
            future = self.service.recognize_image(self.image_input, self.document.version, beam)
        elif self.document.is_empty():
            return
        else:
            future = self.service.recognize(self.document.strokes, self.document.version, beam)
        self.pending += 1
        self.status_state.setText("recognizing…")
        self.bridge.watch(future)

    @Slot(object, object)  # a declared slot: PySide6 >= 6.8 can crash on cross-thread calls to plain methods
    def _on_done(self, result: Result | None, error: BaseException | None) -> None:
        self.pending = max(0, self.pending - 1)
        if self.pending == 0:
            self.status_state.setText("idle")
        if isinstance(error, Superseded):
            return
        if error is not None:
            self.show_error(f"Recognition failed: {error}")
            return
        if result.ink_version != self.document.version:
            return  # the ink changed since: a newer request is coming
        self.hide_error()
        self.last_result = result
        self.status_latency.setText(f"{result.latency_ms:.0f} ms")
        self.status_device.setText(device_label(result.device, result.decoder))
        self.status_device.setToolTip(result.decoder)
        self.show_prediction(result.prediction)

    def show_prediction(self, prediction: Prediction | None) -> None:
        self.prediction = prediction
        self.canvas.set_overlay(None)
        self.results.show_prediction(prediction)
        self.attention.show_prediction(prediction)
        self.structure.show_prediction(prediction)
        self.prediction_shown.emit(prediction)

    def choose_alternative(self, index: int) -> None:
        if self.prediction and 0 <= index < len(self.prediction.alternatives):
            self.attention.clear_replacements()
            self.results.set_latex(self.prediction.alternatives[index].latex)

    def replace_token(self, index: int, token: str) -> None:
        """A one-click correction: token `index` of the reading in the token strip becomes
        `token` in the LaTeX field. Only while the field holds that reading: a hand edit or
        another alternative there would be overwritten or misaligned."""
        shown = self.attention.current_tokens()
        if self.results.latex.text().split() != shown:
            self.statusBar().showMessage(
                "Not replaced: the LaTeX field no longer holds the reading in the token strip (it was "
                "edited, or another alternative was chosen). Edit the LaTeX field instead.", 8000)  # fmt: skip
            return
        shown[index] = token
        self.results.set_latex(" ".join(shown))
        self.attention.apply_replacement(index, token)
        self.statusBar().showMessage(f"Token {index + 1} is now {token}", 4000)

    def _on_token_selected(self, index: int) -> None:
        self.structure.highlight(index)
        heat = self.attention.heat_for(index)
        p = self.prediction
        if heat is None or p is None or p.ink_to_image is None:
            self.canvas.set_overlay(None)
            return
        self.canvas.set_overlay(to_qimage(heat_rgba(heat, max_alpha=0.6)), InkCanvas.transform_from_matrix(p.ink_to_image))

    # --- errors -----------------------------------------------------------------------

    def show_error(self, message: str) -> None:
        self.error_banner.setText(message)
        self.error_banner.show()
        self.status_state.setText("error")
        self.error_shown.emit(message)

    def hide_error(self) -> None:
        self.error_banner.hide()

    # --- files ------------------------------------------------------------------------

    def clear(self) -> None:
        self.document.clear()

    def load_ink(self, path: Path) -> None:
        sample = read_inkml(path)
        strokes = _fit_to_canvas(sample.traces)
        self.document.replace_all(strokes)

    def load_image(self, path: Path) -> None:
        from PIL import Image

        with Image.open(path) as im:
            array = np.asarray(im.convert("RGBA"))
        self.document.clear()
        self.image_input = array
        self.recognize_now()

    def open_path(self, path: Path) -> None:
        try:
            if path.suffix.lower() == ".inkml":
                self.load_ink(path)
            else:
                self.load_image(path)
        except (InkMLError, OSError, ValueError) as e:
            self.show_error(f"Cannot open {path.name}: {e}")

    def open_dialog(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Open ink or image", "", f"InkML (*.inkml);;{IMAGE_FILTER}")
        if name:
            self.open_path(Path(name))

    def save_dialog(self) -> None:
        name, _ = QFileDialog.getSaveFileName(self, "Save ink", "expression.inkml", "InkML (*.inkml)")
        if name:
            try:
                write_inkml(Path(name), [s[:, :2] for s in self.document.strokes], self.results.latex.text() or None)
            except OSError as e:
                self.show_error(f"Could not save {name}: {e}")

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        for url in event.mimeData().urls():
            if url.isLocalFile():
                self.open_path(Path(url.toLocalFile()))
                break

    # --- learning ---------------------------------------------------------------------

    def save_sample(self) -> int | None:
        """Store the ink with the LaTeX in the result field; a bad label is highlighted, never stored."""
        latex = self.results.latex.text().strip()
        try:
            sample_id = self.samples.add([s[:, :2] for s in self.document.strokes], latex)
        except SampleError as e:
            self.results.latex.setStyleSheet("border: 2px solid #c62828; background: #ffebee; color: black;")
            self.results.typeset_note.setText(f"Not saved as a sample: {e}")
            return None
        self.results.latex.setStyleSheet("")
        self.statusBar().showMessage(f"Saved sample #{sample_id} ({self.samples.count()} in all)", 5000)
        return sample_id

    def show_samples(self) -> None:
        SampleBrowser(self.samples, self).exec()

    def base_checkpoint(self) -> Path:
        return self.service.checkpoint or asset_path(BUNDLED_CHECKPOINT)

    def show_finetune(self) -> FinetuneDialog:
        crohme = Path(self.settings.crohme_dir) if self.settings.crohme_dir else None
        dialog = FinetuneDialog(self.finetuning, self.base_checkpoint(), crohme, self)
        dialog.model_chosen.connect(self.use_model)
        dialog.show()
        return dialog

    def use_model(self, path: Path | None) -> None:
        self.service.configure(path, self.settings.device)
        self.statusBar().showMessage(f"Using {path.name if path else 'the bundled model'}", 5000)
        if not self.document.is_empty() or self.image_input is not None:
            self.recognize_now()

    def show_preferences(self) -> SettingsDialog:
        dialog = SettingsDialog(self.settings, self)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.values(self.settings)))
        dialog.show()
        return dialog

    def apply_settings(self, new: Settings) -> None:
        model_changed = (new.checkpoint, new.device) != (self.settings.checkpoint, self.settings.device)
        self.settings = new
        self.settings_store.save(new)
        self.service.exact_search = new.exact_search
        self.beam_spin.setValue(new.beam_size)
        self.act_live.setChecked(new.live)
        if model_changed:
            self.use_model(Path(new.checkpoint) if new.checkpoint else None)

    def reset_preferences(self) -> None:
        """The way out of a broken settings file or a checkpoint that no longer loads."""
        self.settings_store.reset()
        self.hide_error()
        self.apply_settings(Settings())
        self.use_model(None)

    def show_about(self) -> None:
        from model.paths import asset_path

        checkpoint = str(self.service.checkpoint) if self.service.checkpoint else None
        if self.about_dialog is None:  # one dialog, kept: the card is read and laid out once
            card = asset_path("MODEL_CARD.md")
            text = card.read_text(encoding="utf-8") if card.exists() else None
            self.about_dialog = ModelCardDialog(text, checkpoint, self)
        else:
            self.about_dialog.show_checkpoint(checkpoint)  # the model in use may have changed since
        # open(), not exec(): the window stays live (a recognition in flight still lands)
        self.about_dialog.open()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.debounce.stop()
        self.attention.play_button.setChecked(False)
        self.service.shutdown()
        self.finetuning.shutdown()
        super().closeEvent(event)


def _fit_to_canvas(traces: list[np.ndarray], height: float = 160.0, origin: float = 40.0) -> list[np.ndarray]:
    """Scale loaded ink (any units) to a comfortable size on the canvas."""
    pts = np.concatenate([t[:, :2] for t in traces if len(t)])
    lo = pts.min(axis=0)
    span = max(float(np.ptp(pts[:, 1])), float(np.ptp(pts[:, 0])) / 6, 1e-9)
    scale = height / span
    return [(t[:, :2] - lo) * scale + origin for t in traces if len(t)]
