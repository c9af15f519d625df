"""The typeset image and sympy's reading of a result are made off the GUI thread, newest
first, and never shown for a LaTeX string that is no longer the panel's."""

from __future__ import annotations

import threading
import time

import pytest

from hmer_desktop.math_reader import MathReader, shared_reader
from hmer_desktop.mathinfo import LatestOnly, render

pytest.importorskip("pytestqt")
from PySide6.QtCore import QTimer  # noqa: E402

import hmer_desktop.widgets.results as results_module  # noqa: E402
from hmer_desktop.widgets.results import ResultsPanel  # noqa: E402


def test_latest_only_drops_what_was_superseded_while_waiting_and_survives_a_failing_job():
    ran, gate = [], threading.Event()
    worker = LatestOnly("test-latest-only")
    worker.submit(lambda: (gate.wait(5), ran.append("first")))
    time.sleep(0.05)  # the first job is running, holding the thread
    for name in ("second", "third"):
        worker.submit(lambda name=name: ran.append(name))
    gate.set()
    deadline = time.monotonic() + 5
    while "third" not in ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["first", "third"]
    worker.submit(lambda: 1 / 0)
    worker.submit(lambda: ran.append("after a failure"))
    deadline = time.monotonic() + 5
    while len(ran) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran[-1] == "after a failure"
    worker.close()
    worker.thread.join(timeout=5)
    assert not worker.thread.is_alive()


def test_rendering_reports_what_cannot_be_typeset_instead_of_raising():
    good, bad = render("1 + 2 \\times 3"), render("x ^ { 2")
    assert good.png.startswith(b"\x89PNG") and good.reading.value == "7" and not good.typeset_error
    assert bad.png is None and "cannot typeset" in bad.typeset_error


def test_a_slow_rendering_never_blocks_the_gui_and_only_the_newest_latex_is_shown(qtbot, monkeypatch):
    threads = []

    def slow_render(latex, read):  # as sympy's simplify of a long expression (up to half a second)
        threads.append(threading.current_thread().name)
        time.sleep(0.3)
        return render(latex, read)

    monkeypatch.setattr(results_module, "render", slow_render)
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.show()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    shown: list[str] = []
    panel.rendered.connect(shown.append)
    try:
        for latex in ("1", "1 +", "1 + 2"):  # the readings of three strokes in a row
            panel.set_latex(latex)
            assert not panel.copy_mathml.isEnabled()  # nothing of an older string can be copied
            qtbot.wait(20)
        qtbot.waitUntil(lambda: panel.rendered_latex == "1 + 2", timeout=10_000)
    finally:
        timer.stop()
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) < 0.1, f"longest GUI gap {max(gaps) * 1000:.0f} ms"
    assert threads and all(name == "hmer-typeset" for name in threads)
    # "1" was rendered but had been replaced by then; "1 +" was superseded while waiting
    assert shown == ["1 + 2"] and len(threads) == 2
    assert panel.math.text().endswith("value: 3")
    assert panel.copy_mathml.isEnabled() and panel.copy_image.isEnabled()


def test_the_app_freezes_what_it_loaded_once_the_first_result_is_shown(monkeypatch):
    import gc

    from hmer_desktop import app

    def walks_every_frozen_object():  # 16-27 ms at every result shown (session 33)
        raise AssertionError("counting the frozen objects pauses the GUI thread")

    frozen = []
    monkeypatch.setattr(app, "_gc_frozen", False)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(gc, "get_freeze_count", walks_every_frozen_object)
    app._freeze_once_loaded("")  # an empty canvas: the model may not even be loaded yet
    assert frozen == []
    app._freeze_once_loaded("x ^ { 2 }")
    app._freeze_once_loaded("x ^ { 3 }")
    assert frozen == [True]


def test_the_panel_warms_the_typesetter_up_before_the_first_result(qtbot, monkeypatch):
    calls = []

    def warm_up(latex, read):
        calls.append((threading.current_thread().name, read(latex).ok))

    monkeypatch.setattr(results_module, "render", warm_up)
    reader = MathReader()
    panel = ResultsPanel(math_reader=reader)
    qtbot.waitUntil(lambda: calls == [("hmer-typeset", True)], timeout=60_000)  # sympy's process started
    assert reader._process.is_alive()
    thread = panel._typesetter.thread
    panel.deleteLater()  # the window closed: its typesetting thread ends with it
    qtbot.waitUntil(lambda: not thread.is_alive(), timeout=5_000)
    reader.close()


def test_panels_share_one_sympy_process(qtbot):
    # a child of about 90 MB each: one for the app, whatever the number of panels
    first, second = ResultsPanel(), ResultsPanel()
    qtbot.addWidget(first)
    qtbot.addWidget(second)
    assert first.math_reader is second.math_reader is shared_reader()


def test_after_a_reading_sympy_cannot_finish_the_next_results_are_still_read(qtbot):
    # sympy evaluates 9^(9^9), an integer of 370 million digits, without end: in the
    # typesetting thread that reading never returned, and no result was shown again
    panel = ResultsPanel(math_reader=MathReader(time_limit_s=1.0))
    qtbot.addWidget(panel)
    start = time.monotonic()
    panel.set_latex("9 ^ { 9 ^ { 9 } }")
    qtbot.waitUntil(lambda: panel.rendered_latex == "9 ^ { 9 ^ { 9 } }", timeout=30_000)
    assert "could not read this within 1 s" in panel.math.text()
    assert panel.copy_image.isEnabled() and not panel.copy_mathml.isEnabled()  # typeset, not read
    panel.set_latex("1 + 2 \\times 3")
    qtbot.waitUntil(lambda: panel.rendered_latex == "1 + 2 \\times 3", timeout=30_000)
    assert panel.math.text().endswith("value: 7") and panel.copy_mathml.isEnabled()
    assert time.monotonic() - start < 20
    panel.math_reader.close()
