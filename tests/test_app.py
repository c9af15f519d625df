"""The desktop app driven like a user would, offscreen, with a tiny real model."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QEnterEvent, QGuiApplication, QMouseEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hmer_desktop.main_window import MainWindow  # noqa: E402
from hmer_desktop.service import RecognitionService  # noqa: E402
from hmer_desktop.settings import Settings, SettingsStore  # noqa: E402
from train.samples import SampleStore  # noqa: E402
from model.inkml import write_inkml  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.synthetic_ink import ink_for  # noqa: E402


def _no_worker_threads() -> bool:
    return not any(t.name.startswith(("hmer-recognition", "hmer-finetune")) for t in threading.enumerate())


@pytest.fixture
def make_window(qtbot, tmp_path, tiny_checkpoint):
    windows = []

    def make(loader=None, live=True) -> MainWindow:
        store = SettingsStore(tmp_path / f"settings{len(windows)}.json")
        store.save(Settings(beam_size=3, live=live, debounce_ms=0, device="cpu"))
        kwargs = {"loader": loader} if loader else {}
        service = RecognitionService(tiny_checkpoint, "cpu", **kwargs)
        window = MainWindow(service, store, SampleStore(tmp_path / f"samples{len(windows)}.db"))
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        return window

    yield make
    for w in windows:
        w.close()
    assert _no_worker_threads(), "a recognition thread outlived its window"


def _draw(canvas, stroke: np.ndarray) -> None:
    def send(kind, p, buttons):
        event = QMouseEvent(kind, QPointF(*p), QPointF(*p), Qt.MouseButton.LeftButton, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(canvas, event)

    send(QMouseEvent.Type.MouseButtonPress, stroke[0], Qt.MouseButton.LeftButton)
    for p in stroke[1:]:
        send(QMouseEvent.Type.MouseMove, p, Qt.MouseButton.LeftButton)
    send(QMouseEvent.Type.MouseButtonRelease, stroke[-1], Qt.MouseButton.NoButton)


def _draw_expression(window, latex: str) -> None:
    for stroke in ink_for(latex, size=80.0):
        _draw(window.canvas, stroke + (60.0, 80.0))


def _draw_and_settle(qtbot, window, latex: str) -> None:
    """Draw `latex` and wait for the beam search's reading: the greedy preview comes first,
    and which previews are shown depends on how fast the worker drops older ink."""
    _draw_expression(window, latex)
    qtbot.waitUntil(lambda: not window.debounce.isActive() and window.pending == 0 and window.prediction is not None,
                    timeout=30_000)  # fmt: skip


def test_drawing_strokes_produces_a_result_through_the_worker(qtbot, make_window):
    window = make_window()
    _draw_and_settle(qtbot, window, "x ^ { 2 } = y")
    assert len(window.document.strokes) == len(ink_for("x ^ { 2 } = y"))
    assert window.results.latex.text() == "x ^ { 2 } = y"
    assert window.results.alternatives.count() >= 1
    assert [b.text() for b in window.attention._buttons] == "x ^ { 2 } = y".split()
    assert window.structure.badge.text()
    assert window.status_device.text() == "CPU" and window.status_latency.text().endswith("ms")


def test_undo_and_redo_restore_the_ink(qtbot, make_window):
    window = make_window(live=False)
    strokes = ink_for("1 + 2", size=80.0)
    for s in strokes:
        _draw(window.canvas, s + 50)
    before = [s.copy() for s in window.document.strokes]
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(window.document.strokes) == len(strokes) - 1
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    after = window.document.strokes
    assert len(after) == len(before) and all(np.array_equal(a, b) for a, b in zip(after, before))
    window.act_clear.trigger()
    assert window.document.is_empty()
    window.act_undo.trigger()
    assert len(window.document.strokes) == len(strokes)


def test_the_beam_search_waits_while_the_pen_is_down(qtbot, make_window):
    # Between two strokes the pen is often up longer than the debounce; the beam search
    # starts only once the pen rests, not while the next stroke is being drawn.
    window = make_window()
    window.settings.debounce_ms = 10_000  # nothing fires during the test

    def send(kind, p, buttons):
        event = QMouseEvent(kind, QPointF(*p), QPointF(*p), Qt.MouseButton.LeftButton, buttons,
                            Qt.KeyboardModifier.NoModifier)  # fmt: skip
        QApplication.sendEvent(window.canvas, event)

    _draw(window.canvas, np.array([[100.0, 100.0], [140.0, 100.0]]))
    assert window.debounce.isActive()  # the pen rests: the beam search is due
    send(QMouseEvent.Type.MouseButtonPress, (200.0, 100.0), Qt.MouseButton.LeftButton)
    assert not window.debounce.isActive()  # the next stroke begins
    send(QMouseEvent.Type.MouseMove, (240.0, 120.0), Qt.MouseButton.LeftButton)
    assert not window.debounce.isActive()
    send(QMouseEvent.Type.MouseButtonRelease, (240.0, 120.0), Qt.MouseButton.NoButton)
    assert window.debounce.isActive() and len(window.document.strokes) == 2
    window.canvas.eraser = True  # an eraser press that hits nothing changes no ink ...
    send(QMouseEvent.Type.MouseButtonPress, (600.0, 300.0), Qt.MouseButton.LeftButton)
    assert not window.debounce.isActive()
    send(QMouseEvent.Type.MouseButtonRelease, (600.0, 300.0), Qt.MouseButton.NoButton)
    assert window.debounce.isActive() and len(window.document.strokes) == 2  # ... and the search is due again


def test_the_status_bar_says_whether_the_decoder_is_compiled_or_compiling(qtbot, make_window, tiny_checkpoint):
    # the first minutes of a first start read more slowly, while the decoder compiles
    from model.recognizer import Recognizer

    real = Recognizer.load(tiny_checkpoint, device="cpu")

    class Reporting:  # a recognizer whose decoder is said to be compiling, then compiled, then not
        device = real.device
        decoder_status = "preparing the compiled decoder in the background (/cache)"

        def recognize(self, strokes, beam_size=10, should_stop=None):
            return real.recognize(strokes, beam_size, should_stop=should_stop)

    recognizer = Reporting()
    window = make_window(loader=lambda path, device: recognizer, live=False)
    _draw_expression(window, "1 + 2")
    with qtbot.waitSignal(window.prediction_shown, timeout=20_000):
        window.recognize_now()
    assert window.status_device.text() == "CPU · compiling the decoder…"
    assert window.status_device.toolTip() == recognizer.decoder_status
    recognizer.decoder_status = "using the compiled decoder step and teacher-forced pass from /cache"
    with qtbot.waitSignal(window.prediction_shown, timeout=20_000):
        window.recognize_now()
    assert window.status_device.text() == "CPU · compiled"
    recognizer.decoder_status = "not compiled: no package at /cache/step-1.pt2"
    with qtbot.waitSignal(window.prediction_shown, timeout=20_000):
        window.recognize_now()
    assert window.status_device.text() == "CPU" and "no package" in window.status_device.toolTip()


def test_a_result_for_stale_ink_is_never_shown(qtbot, make_window, tiny_checkpoint):
    gate = threading.Event()

    def slow_loader(path, device):
        from model.recognizer import Recognizer

        real = Recognizer.load(path, device="cpu")

        class Slow:
            device = real.device

            def recognize(self, strokes, beam_size=10, should_stop=None):
                gate.wait(10)
                return real.recognize(strokes, beam_size)

        return Slow()

    window = make_window(loader=slow_loader, live=False)
    _draw_expression(window, "1 + 2")
    window.recognize_now()  # reads this ink ...
    _draw(window.canvas, np.array([[500.0, 300.0], [540.0, 300.0]]))  # ... which changes before the answer
    gate.set()
    qtbot.waitUntil(lambda: window.pending == 0, timeout=20_000)
    assert window.prediction is None and window.results.latex.text() == ""
    with qtbot.waitSignal(window.prediction_shown, timeout=20_000):
        window.recognize_now()
    assert window.prediction is not None


def test_selecting_a_token_changes_the_heatmap_overlay(qtbot, make_window):
    window = make_window()
    _draw_and_settle(qtbot, window, "\\frac { a } { b } - 3")
    assert not window.canvas.has_overlay()
    window.attention._buttons[0].click()
    assert window.canvas.has_overlay()
    first = window.canvas._overlay.copy()
    window.attention._buttons[2].click()
    assert window.canvas._overlay != first
    assert window.attention.selected == 2 and "token 3/" in window.attention.caption.text()
    selected_overlay = window.canvas._overlay.copy()
    button = window.attention._buttons[0]
    QApplication.sendEvent(button, QEnterEvent(QPointF(2, 2), QPointF(2, 2), QPointF(2, 2)))  # hover previews ...
    assert window.canvas._overlay == first and "token 1/" in window.attention.caption.text()
    QApplication.sendEvent(button, QEvent(QEvent.Type.Leave))  # ... and leaving restores the selection
    assert window.canvas._overlay == selected_overlay and window.attention.selected == 2
    main, aux = window.structure._columns[2]  # the structure panel outlines the same position
    assert "#1a4fd6" in main.styleSheet() and "#1a4fd6" in aux.styleSheet()
    assert not any("#1a4fd6" in m.styleSheet() for m, _ in window.structure._columns[:2])


def test_copy_buttons_put_the_right_text_on_the_clipboard(qtbot, make_window):
    window = make_window()
    _draw_and_settle(qtbot, window, "1 + 2")
    qtbot.waitUntil(lambda: window.results.rendered_latex == "1 + 2")  # typeset on a thread of its own
    clipboard = QGuiApplication.clipboard()
    window.results.copy_latex.click()
    assert clipboard.text() == "1 + 2"
    window.results.copy_dollar.click()
    assert clipboard.text() == "$1 + 2$"
    window.results.copy_mathml.click()
    assert clipboard.text().startswith("<math") and "<mn>1</mn>" in clipboard.text()
    window.results.copy_image.click()
    assert not clipboard.image().isNull()
    assert window.results.math.text().endswith("value: 3")


def test_a_failing_recognizer_shows_an_error_and_the_app_survives(qtbot, make_window):
    class Broken:
        device = "cpu"

        def recognize(self, strokes, beam_size=10, should_stop=None):
            raise RuntimeError("CPU out of memory")

    window = make_window(loader=lambda path, device: Broken())
    with qtbot.waitSignal(window.error_shown, timeout=20_000):
        _draw_expression(window, "1 + 2")
    assert "out of memory" in window.error_banner.text() and window.error_banner.isVisibleTo(window)
    window.act_undo.trigger()  # still responsive
    assert len(window.document.strokes) == len(ink_for("1 + 2")) - 1


def test_a_bad_checkpoint_is_reported_in_the_window(qtbot, make_window, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    from hmer_desktop.service import load_recognizer

    window = make_window(loader=lambda path, device: load_recognizer(tmp_path / "bad.pt", device))
    with qtbot.waitSignal(window.error_shown, timeout=20_000):
        _draw_expression(window, "1 + 2")
    assert "checkpoint" in window.error_banner.text()


def test_choosing_an_alternative_makes_it_the_result(qtbot, make_window):
    window = make_window()
    _draw_and_settle(qtbot, window, "y - x = 1")
    alts = window.prediction.alternatives
    if len(alts) < 2:
        pytest.skip("the model returned a single hypothesis")
    window.results.alternative_chosen.emit(1)
    assert window.results.latex.text() == alts[1].latex
    window.act_alternatives[0].trigger()  # Alt+1: back to the first reading
    assert window.results.latex.text() == alts[0].latex
    assert window.act_alternatives[1].shortcut().toString() == "Alt+2"
    if len(alts) < 9:
        window.act_alternatives[len(alts)].trigger()  # beyond the list: nothing changes
        assert window.results.latex.text() == alts[0].latex
    row = window.results.alternatives.item(1)
    assert row.text().startswith("2.  ") and alts[1].latex in row.text()
    window.results.alternatives.itemActivated.emit(row)  # Enter on a row
    assert window.results.latex.text() == alts[1].latex


def _smoke(*args: str, env_dir: Path) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen", "HMER_CONFIG_DIR": str(env_dir),
           "HMER_DATA_DIR": str(env_dir / "data")}
    return subprocess.run([sys.executable, "-m", "hmer_desktop.app", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip


def test_smoke_test_writes_a_screenshot(tmp_path, tiny_checkpoint):
    ink = tmp_path / "e.inkml"
    write_inkml(ink, ink_for("( a + b ) ^ { 2 }"), None)
    shot = tmp_path / "shot.png"
    done = _smoke("--smoke-test", str(ink), "--screenshot", str(shot), "--checkpoint", str(tiny_checkpoint),
                  env_dir=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    reading, decoder = done.stdout.strip().splitlines()
    assert reading == "( a + b ) ^ { 2 }"
    assert decoder.startswith("decoder: ")  # the packaged build checks it is the compiled one
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def test_smoke_test_fails_clearly_on_a_bad_checkpoint(tmp_path):
    ink = tmp_path / "e.inkml"
    write_inkml(ink, ink_for("1 + 2"), None)
    (tmp_path / "bad.pt").write_bytes(b"junk")
    done = _smoke("--smoke-test", str(ink), "--checkpoint", str(tmp_path / "bad.pt"), "--timeout", "60", env_dir=tmp_path)
    assert done.returncode == 1 and "checkpoint" in done.stderr and "Traceback" not in done.stderr


def test_save_as_sample_validates_the_label(qtbot, make_window):
    window = make_window()
    _draw_and_settle(qtbot, window, "1 + 2")
    window.results.latex.setText("1 + \\oint")  # a correction with a symbol the model cannot learn
    assert window.save_sample() is None
    assert "\\oint" in window.results.typeset_note.text() and "border" in window.results.latex.styleSheet()
    assert window.samples.count() == 0
    window.results.latex.setText("1 + 3")
    assert window.save_sample() is not None
    assert [s.latex for s in window.samples.samples()] == ["1 + 3"] and window.results.latex.styleSheet() == ""


def test_finetune_dialog_trains_a_version_and_switches_to_it(qtbot, make_window):
    from tests.helpers import synthetic_examples

    window = make_window(live=False)
    for ex in synthetic_examples(["3 + 1", "b - a"], copies=3, wobble=0.01):
        window.samples.add(ex.strokes, " ".join(ex.tokens))
    dialog = window.show_finetune()
    qtbot.addWidget(dialog)
    assert "no replay" in dialog.info.text()
    dialog.steps.setValue(12)
    dialog.whole_model.setChecked(True)
    with qtbot.waitSignal(dialog.relay.finished, timeout=120_000):
        dialog.start_button.click()
    assert "Held-out samples" in dialog.report.toPlainText()
    assert dialog.result[0].trainable == "all" and "the whole model" in dialog.report.toPlainText()
    assert dialog.bar.value() == dialog.bar.maximum() or "early" in dialog.report.toPlainText()
    report, version = dialog.result
    assert window.samples.models()[0].id == version and Path(report.output).exists()
    with qtbot.waitSignal(dialog.model_chosen):
        dialog.use_button.click()
    assert window.samples.active_model() == version and window.service.checkpoint == Path(report.output)
    dialog.versions.setCurrentIndex(0)  # roll back to the bundled model
    dialog.use_button.click()
    assert window.samples.active_model() is None


def test_the_finetune_dialog_limits_forgetting_only_when_it_can_check(qtbot, make_window, tmp_path):
    from dataclasses import replace

    from tests.conftest import SYNTHETIC_EXPRESSIONS
    from tests.helpers import synthetic_examples

    window = make_window(live=False)
    for ex in synthetic_examples(["3 + 1", "b - a"], copies=3, wobble=0.01):
        window.samples.add(ex.strokes, " ".join(ex.tokens))
    no_data = window.show_finetune()
    qtbot.addWidget(no_data)
    assert not no_data.keep_knowledge.isEnabled() and not no_data.keep_knowledge.isChecked()
    crohme = tmp_path / "crohme"
    for i, latex in enumerate(SYNTHETIC_EXPRESSIONS):
        for split in ("train", "2014"):
            write_inkml(crohme / split / f"{split}{i}.inkml", ink_for(latex), latex)
    window.settings = replace(window.settings, crohme_dir=str(crohme))
    dialog = window.show_finetune()
    qtbot.addWidget(dialog)
    assert dialog.keep_knowledge.isEnabled() and dialog.keep_knowledge.isChecked()  # on by default
    asked = []
    start = window.finetuning.start
    window.finetuning.start = lambda *a, **kw: asked.append(kw["max_forgetting"]) or start(*a, **kw)
    dialog.steps.setValue(10)
    dialog.keep_knowledge.setChecked(False)
    with qtbot.waitSignal(dialog.relay.finished, timeout=120_000):
        dialog.start_button.click()
    assert asked == [None] and dialog.result[0].mix == 0.5  # the default share, nothing checked
    assert "Kept 50% of the weight change" in dialog.report.toPlainText()
    # the tooltip names the share and the check size the fine-tune uses
    from train.finetune import CHECK_EXPRESSIONS, FinetuneConfig

    tip = dialog.keep_knowledge.toolTip()
    assert f"keeps {FinetuneConfig.keep:.0%}" in tip and f"on {CHECK_EXPRESSIONS} CROHME" in tip
    dialog.keep_knowledge.setChecked(True)
    with qtbot.waitSignal(dialog.relay.finished, timeout=120_000):
        dialog.start_button.click()
    assert asked == [None, 1.0] and dialog.result[0].base_before is not None  # checked on the 2014 folder


def test_cancelling_a_finetune_keeps_the_active_model(qtbot, make_window):
    from tests.helpers import synthetic_examples

    window = make_window(live=False)
    for ex in synthetic_examples(["3 + 1", "b - a"], copies=3):
        window.samples.add(ex.strokes, " ".join(ex.tokens))
    before = window.service.checkpoint
    dialog = window.show_finetune()
    qtbot.addWidget(dialog)
    dialog.steps.setValue(5000)
    dialog.start_button.click()
    qtbot.waitUntil(lambda: dialog.bar.value() >= 2, timeout=60_000)
    with qtbot.waitSignal(dialog.relay.finished, timeout=60_000):
        dialog.cancel_button.click()
    assert "unchanged" in dialog.status.text()
    assert window.samples.models() == [] and window.service.checkpoint == before


def test_sample_browser_edits_filters_and_deletes(qtbot, tmp_path):
    from hmer_desktop.widgets.learn import SampleBrowser

    store = SampleStore(tmp_path / "s.db")
    for latex in ["1 + 2", "x ^ { 2 } = y"]:
        store.add(ink_for(latex), latex)
    browser = SampleBrowser(store)
    qtbot.addWidget(browser)
    assert browser.list.count() == 2 and not browser.list.item(0).icon().isNull()
    browser.filter.setText("x")
    assert browser.list.count() == 1
    browser.list.setCurrentRow(0)
    browser.label.setText("x ^ { 2 } = \\oint")
    browser.save_label()
    assert "Not saved" in browser.message.text() and store.samples("x")[0].latex == "x ^ { 2 } = y"
    browser.label.setText("x ^ { 3 } = y")
    browser.save_label()
    assert store.samples("x")[0].latex == "x ^ { 3 } = y"
    browser.list.setCurrentRow(0)
    browser.delete_selected()
    assert store.count() == 1


def test_preferences_are_applied_and_remembered(qtbot, make_window, tmp_path, tiny_checkpoint):
    window = make_window(live=False)
    dialog = window.show_preferences()
    qtbot.addWidget(dialog)
    dialog.beam.setValue(4)
    dialog.exact.setChecked(True)
    dialog.device.setCurrentText("cpu")
    dialog.checkpoint.setText(str(tiny_checkpoint))
    dialog.accept()
    assert window.beam_spin.value() == 4 and window.service.checkpoint == tiny_checkpoint
    assert window.settings_store.load().beam_size == 4 and window.settings_store.load().exact_search
    # the recognizer that runs the next request searches exactly (prunes nothing)
    used = window.service.recognize(ink_for("1 + 2"), ink_version=0, beam_size=4).result(timeout=60)
    recognizer = window.service._model()
    assert used.prediction.alternatives and recognizer.exact_search and recognizer.prune is None
    dialog = window.show_preferences()
    qtbot.addWidget(dialog)
    dialog.show_values(Settings())  # "Restore defaults"
    dialog.accept()
    assert window.settings_store.load() == Settings() and window.service.checkpoint is None
    window.service.recognize(ink_for("1 + 2"), ink_version=0, beam_size=4).result(timeout=60)
    assert window.service._model().prune is not None  # the app's default: pruned


def test_a_greedy_preview_comes_first_then_the_beam_result(qtbot, make_window):
    window = make_window()
    window.settings.debounce_ms = 400
    shown = []
    window.prediction_shown.connect(lambda p: p is not None and shown.append(len(p.alternatives)))
    _draw_expression(window, "1 + 2")
    qtbot.waitUntil(lambda: len(shown) >= 2, timeout=30_000)
    assert shown[0] == 1  # the instant greedy reading has no alternatives
    assert shown[-1] > 1 and window.results.latex.text() == "1 + 2"


def test_a_corrupt_settings_file_is_reported_and_reset_is_the_way_out(qtbot, tmp_path, tiny_checkpoint):
    (tmp_path / "settings.json").write_text("{ broken")
    store = SettingsStore(tmp_path / "settings.json")
    service = RecognitionService(tiny_checkpoint, "cpu")
    window = MainWindow(service, store, SampleStore(tmp_path / "s.db"))
    qtbot.addWidget(window)
    assert "could not be read" in window.error_banner.text()
    window.reset_preferences()
    assert SettingsStore(tmp_path / "settings.json").load() == Settings() and window.service.checkpoint is None
    window.close()


def test_dropping_an_inkml_file_loads_its_ink(qtbot, make_window, tmp_path):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDropEvent

    path = tmp_path / "dropped.inkml"
    write_inkml(path, ink_for("1 + 2", size=0.01), None)  # tiny units: the canvas rescales them
    window = make_window(live=False)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)  # the handler; Qt's drag-and-drop dispatch needs a real drag
    assert not window.error_banner.text(), window.error_banner.text()
    assert len(window.document.strokes) == len(ink_for("1 + 2"))
    x0, y0, x1, y1 = window.document.bounds()
    assert y1 - y0 > 50  # drawn at a readable size


def _prediction_with(tokens: list[str]):
    from model.prediction import Prediction

    t = len(tokens)
    return Prediction(latex=" ".join(tokens), tokens=tokens, score=-1.0, token_probs=np.full(t, 0.9),
                      attention=np.random.default_rng(0).random((t, 2, 8)), image=np.zeros((32, 128), np.float32),
                      ink_to_image=None, downsample=16, structure=tokens, expected_structure=tokens, alternatives=[])  # fmt: skip


def _shown_attention_panel(qtbot, width: int, height: int):
    from hmer_desktop.widgets.attention import AttentionPanel

    panel = AttentionPanel()
    qtbot.addWidget(panel)
    panel.resize(width, height)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def test_arrow_keys_step_through_tokens_and_the_strip_follows(qtbot):
    panel = _shown_attention_panel(qtbot, 360, 240)
    tokens = [f"x_{i}" for i in range(30)]
    panel.show_prediction(_prediction_with(tokens))
    QApplication.processEvents()
    panel._buttons[0].setFocus()
    qtbot.keyClick(panel._buttons[0], Qt.Key.Key_Right)
    assert panel.selected == 0  # nothing selected yet: Right starts at the first token
    qtbot.keyClick(panel._buttons[0], Qt.Key.Key_Left)
    assert panel.selected == 0  # stops at the ends
    viewport = panel.strip_scroll.viewport()
    last = panel._buttons[-1]
    assert not viewport.rect().contains(last.mapTo(viewport, last.rect().center()))  # off-screen at first
    for _ in range(40):
        qtbot.keyClick(panel._buttons[0], Qt.Key.Key_Right)
    assert panel.selected == len(tokens) - 1 and last.isChecked()
    qtbot.waitUntil(lambda: viewport.rect().contains(last.mapTo(viewport, last.rect().center())), timeout=2000)
    assert "token 30/30: x_29" in panel.caption.text()


def test_token_labels_stay_readable_in_a_dark_theme(qtbot):
    from PySide6.QtGui import QColor, QPalette

    from hmer_desktop.widgets.attention import AttentionPanel

    app = QApplication.instance()
    before = app.palette()
    dark = QPalette(before)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.ButtonText, QPalette.ColorRole.Text):
        dark.setColor(role, QColor("white"))
    app.setPalette(dark)
    try:
        panel = AttentionPanel()
        qtbot.addWidget(panel)
        panel.show_prediction(_prediction_with(["W"]))
        panel.resize(300, 200)
        panel.show()
        qtbot.waitExposed(panel)
        image = panel._buttons[0].grab().toImage()
        darkest = min(image.pixelColor(x, y).lightness() for x in range(image.width()) for y in range(image.height()))
        assert darkest < 80  # the glyph is drawn dark on the light confidence color, not white on it
    finally:
        app.setPalette(before)


def test_each_reading_shows_its_own_tokens_on_the_reused_strip(qtbot):
    # the strip's buttons are reused between readings (making them cost 57 ms of the GUI
    # thread a reading on average, 145 ms at 60 tokens): nothing of the previous reading may stay
    from hmer_desktop.widgets.attention import confidence_color

    panel = _shown_attention_panel(qtbot, 500, 300)
    first = _prediction_with(["x", "+", "1", "=", "y"])
    panel.show_prediction(first)
    panel.select(2)
    panel.apply_replacement(0, "X")  # a correction: italic and underlined
    reused = panel._buttons[1]
    for tokens in (["a", "-", "b"], ["\\frac", "{", "a", "}", "{", "b", "}", "+", "c"]):
        second = _prediction_with(tokens)
        second.token_probs[:] = np.linspace(0.2, 0.99, len(tokens))
        panel.show_prediction(second)
        buttons = panel._buttons
        assert [b.text() for b in buttons] == tokens
        assert panel.selected == -1 and not any(b.isChecked() for b in buttons)
        assert not any(b.font().italic() or b.font().underline() for b in buttons)
        assert [b.toolTip() for b in buttons] == [f"{t}: p = {p:.3f}" for t, p in zip(tokens, second.token_probs)]
        assert confidence_color(second.token_probs[0]).name() in buttons[0].styleSheet()
        assert panel._group.buttons() == buttons and panel._group.checkedId() == -1
    assert panel._buttons[1] is reused
    panel._buttons[3].click()  # the group still selects, by the new index
    assert panel.selected == 3


def test_the_attention_view_grows_with_the_panel_and_keeps_the_input_shape(qtbot):
    panel = _shown_attention_panel(qtbot, 400, 300)
    panel.show_prediction(_prediction_with(["x", "+", "1"]))  # a 32 x 128 input
    panel.select(1)
    QApplication.processEvents()
    small = panel.input_view.pixmap().size()
    panel.resize(900, 600)
    qtbot.waitUntil(lambda: panel.input_view.pixmap().width() > small.width(), timeout=2000)
    big = panel.input_view.pixmap().size()
    view = panel.input_view.size()
    assert big.width() <= view.width() and big.height() <= view.height()  # fits the space it has
    assert abs(big.width() / big.height() - 128 / 32) < 0.05  # never stretched
    assert big.width() == min(view.width(), 4 * 128) or big.height() == view.height()  # as large as allowed


def test_about_the_model_renders_the_card_and_names_the_checkpoint_in_use(qtbot, make_window, tiny_checkpoint):
    from hmer_desktop.widgets.model_card import ModelCardDialog

    window = make_window(live=False)
    window.show_about()
    dialog = window.about_dialog
    assert dialog is not None and dialog.isVisible()
    text = dialog.card.toPlainText()
    # rendered, not the markdown source: a heading without '#', tables without '|---|', no '**'
    assert text.startswith("Model card") and "|---|" not in text and "**" not in text
    assert "≤ 1 error" in text  # a cell of the results table
    assert str(tiny_checkpoint) in dialog.active.text() and "not this file" in dialog.active.text()
    dialog.close()
    window.service.configure(None, "cpu")  # back to the bundled model: the same dialog says so
    window.show_about()
    assert window.about_dialog is dialog and dialog.isVisible() and "the bundled model" in dialog.active.text()
    dialog.close()

    bare = ModelCardDialog(None, None)
    qtbot.addWidget(bare)
    assert "bundled model" in bare.active.text() and "No model card" in bare.card.toPlainText()


def test_a_token_is_corrected_with_one_click_from_its_alternatives(qtbot, make_window):
    from model.prediction import Alternative

    window = make_window(live=False)
    panel = window.attention
    tokens = "C + x ^ { 2 }".split()
    prediction = _prediction_with(tokens)
    prediction.token_alternatives = [[("c", 0.3), ("G", 0.1)], [("t", 0.05)], [("X", 0.2), ("y", 0.004)],
                                     [("_", 0.2)], [], [("z", 0.1)], []]  # fmt: skip
    prediction.alternatives = [Alternative(" ".join(tokens), tokens, -1.0, 0.8),
                               Alternative("c + X ^ { 2 }", "c + X ^ { 2 }".split(), -2.0, 0.2)]  # fmt: skip
    window.show_prediction(prediction)
    QApplication.processEvents()

    def shown_choices() -> list[str]:
        return [b.text() for b in panel._replace_buttons if b.isVisibleTo(panel)]

    panel.select(4)  # a brace: nothing it could become keeps the reading well formed
    assert shown_choices() == [] and panel.replace_label.text() == ""
    panel.select(2)
    assert panel.replace_label.text() == "Instead of x:" and shown_choices() == ["X  20%", "y  <1%"]
    panel.select(0)
    assert shown_choices() == ["c  30%", "G  10%"]
    qtbot.mouseClick(panel._replace_buttons[0], Qt.MouseButton.LeftButton)
    assert window.results.latex.text() == "c + x ^ { 2 }"
    assert panel._buttons[0].text() == "c" and panel._buttons[0].font().italic()
    # the model's own reading is offered back first
    assert panel.replace_label.text() == "Instead of c:" and shown_choices() == ["C  (the model's reading)", "G  10%"]
    panel._buttons[0].setFocus()
    qtbot.keyClick(panel._buttons[0], Qt.Key.Key_1)  # keys 1-5 pick a choice of the selected token
    assert window.results.latex.text() == "C + x ^ { 2 }" and not panel._buttons[0].font().italic()
    panel.select(3)
    qtbot.keyClick(panel._buttons[3], Qt.Key.Key_1)
    assert window.results.latex.text() == "C + x _ { 2 }"

    # a hand edit is never overwritten: the strip's positions may no longer match the field
    window.results.latex.setText("C + x _ { 3 } + 1")
    panel.select(5)
    qtbot.mouseClick(panel._replace_buttons[0], Qt.MouseButton.LeftButton)
    assert window.results.latex.text() == "C + x _ { 3 } + 1"
    assert "Not replaced" in window.statusBar().currentMessage()

    # choosing a reading from the list shows the model's tokens again, and corrections resume
    window.choose_alternative(0)
    assert window.results.latex.text() == "C + x ^ { 2 }" and panel.current_tokens() == tokens
    assert panel._buttons[3].text() == "^"
    qtbot.mouseClick(panel._replace_buttons[0], Qt.MouseButton.LeftButton)  # token 6 still selected
    assert window.results.latex.text() == "C + x ^ { z }"
