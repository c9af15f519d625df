"""`hmer-desktop` / `python main.py`: start the app.

`hmer-desktop --smoke-test INK.inkml --screenshot OUT.png` opens the window,
loads the ink, waits for the recognition, selects the token the model is least
sure of so its attention and alternatives show, saves a screenshot of the
window, prints the reading and how the decoder ran, and exits 0 (1 with a
message on any failure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hmer-desktop", description="Draw math, get LaTeX.")
    parser.add_argument("path", nargs="?", help="an .inkml file or an image to open")
    parser.add_argument("--checkpoint", help="model checkpoint (default: settings, else the bundled model)")
    parser.add_argument("--device", help="auto, cpu or cuda (default: settings)")
    parser.add_argument("--smoke-test", metavar="INK", help="load INK, recognize, screenshot, exit")
    parser.add_argument("--screenshot", metavar="PNG", help="with --smoke-test: where to save the screenshot")
    parser.add_argument("--timeout", type=float, default=300.0, help="with --smoke-test: seconds to wait")
    args = parser.parse_args(argv)

    from PySide6.QtWidgets import QApplication, QMessageBox

    from hmer_desktop.main_window import MainWindow
    from hmer_desktop.qt_binding import binding_problem
    from hmer_desktop.service import RecognitionService
    from hmer_desktop.settings import SettingsStore, data_dir
    from train.samples import SampleStore

    from PySide6.QtGui import QIcon

    from model.paths import asset_path

    app = QApplication.instance() or QApplication(sys.argv[:1])
    problem = binding_problem()
    if problem:  # a clear refusal now beats an abort later that loses the ink
        print(f"hmer-desktop: {problem}", file=sys.stderr)
        if not args.smoke_test:
            QMessageBox.critical(None, "hmer cannot start", problem)
        return 2
    app.setApplicationName("hmer")
    app.setDesktopFileName("io.github.hmer")
    app.setWindowIcon(QIcon(str(asset_path("hmer.svg"))))
    store = SettingsStore()
    settings = store.load()
    samples = SampleStore(data_dir() / "samples.db")
    checkpoint = args.checkpoint or _active_version(samples) or settings.checkpoint or None
    service = RecognitionService(Path(checkpoint) if checkpoint else None, args.device or settings.device)
    window = MainWindow(service, store, samples)
    window.results.rendered.connect(_freeze_once_loaded)
    window.show()
    if args.smoke_test:
        return _smoke_test(app, window, Path(args.smoke_test), args.screenshot, args.timeout)
    if args.path:
        window.open_path(Path(args.path))
    service.preload().add_done_callback(
        lambda f: f.exception() and window.bridge.done.emit(None, f.exception())
    )  # a missing or broken model shows up at start, not at the first stroke
    return app.exec()


_gc_frozen = False  # gc.get_freeze_count() walks every frozen object: 16-27 ms a result


def _freeze_once_loaded(latex: str) -> None:
    """Once the first result is shown, everything long-lived is loaded (torch, the model,
    Qt, matplotlib): hundreds of thousands of objects that every full garbage collection
    walks. Each result's work triggers such collections, which pause every thread, the
    GUI's too, up to 190 ms. Frozen, those objects are skipped: the GUI's longest pause
    while 20 results were shown went from 187 to 25 ms (model card, session 32, when sympy
    still read in this process)."""
    import gc

    global _gc_frozen
    if latex.strip() and not _gc_frozen:
        gc.freeze()
        _gc_frozen = True


def _active_version(samples) -> str | None:
    """The fine-tuned version the user chose last, if its file still exists."""
    active = samples.active_model()
    for version in samples.models():
        if version.id == active and Path(version.path).exists():
            return version.path
    return None


def _smoke_test(app, window, ink: Path, screenshot: str | None, timeout: float) -> int:
    from PySide6.QtCore import QEventLoop, QTimer

    outcome: dict[str, object] = {}
    loop = QEventLoop()

    def on_prediction(prediction) -> None:
        if prediction is not None:
            outcome["prediction"] = prediction
            loop.quit()

    def on_error(message: str) -> None:
        outcome["error"] = message
        loop.quit()

    window.prediction_shown.connect(on_prediction)
    window.error_shown.connect(on_error)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    window.settings.live = False  # one explicit request
    try:
        window.load_ink(ink)
    except Exception as e:  # any failure is reported, never a traceback
        print(f"hmer-desktop: cannot load {ink}: {e}", file=sys.stderr)
        window.close()
        return 1
    window.recognize_now()
    loop.exec()
    code = 0
    if "error" in outcome:
        print(f"hmer-desktop: {outcome['error']}", file=sys.stderr)
        code = 1
    elif "prediction" not in outcome:
        print(f"hmer-desktop: no recognition within {timeout:.0f} s", file=sys.stderr)
        code = 1
    else:
        prediction = outcome["prediction"]
        _wait_for_rendering(window, prediction.latex, timeout)
        # sympy's parser loads its parts by name, which a packaged app may lack (it did)
        check = window.results.math_reader.read("1 + 2")
        if check.value != "3":
            print(f"hmer-desktop: sympy cannot read '1 + 2' here: {check.error or check}", file=sys.stderr)
            code = 1
        if prediction.tokens:
            window.attention.select(int(prediction.token_probs.argmin()))  # the likeliest to need a fix
        for _ in range(3):  # new widgets take more than one round of layout requests to settle
            app.processEvents()
        print(prediction.latex)
        print(f"decoder: {window.last_result.decoder}")  # the build checks it is the compiled one
        if screenshot and not window.grab().save(str(screenshot)):
            print(f"hmer-desktop: could not write {screenshot}", file=sys.stderr)
            code = 1
    window.close()
    return code


def _wait_for_rendering(window, latex: str, timeout: float) -> None:
    """Until the typeset image and sympy's reading of `latex` are shown (they are made on a
    thread of their own), so that the screenshot has them."""
    from PySide6.QtCore import QEventLoop, QTimer

    if window.results.rendered_latex == latex:
        return
    loop = QEventLoop()
    window.results.rendered.connect(lambda shown: shown == latex and loop.quit())
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    if window.results.rendered_latex != latex:  # it may have come while connecting
        loop.exec()


if __name__ == "__main__":
    sys.exit(main())
