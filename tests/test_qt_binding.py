"""The Qt binding must not lose references: PySide6 6.12.0 does, and on Python < 3.12 the
app then aborts at a random point (it did in CI, mid-test, exit 139)."""

from __future__ import annotations

import ctypes
import sys

import pytest

pytest.importorskip("PySide6")

from PySide6.QtCore import QObject, Signal  # noqa: E402
from PySide6.QtWidgets import QLabel  # noqa: E402

from hmer_desktop import app, qt_binding  # noqa: E402
from hmer_desktop.qt_binding import PROBE_CALLS, binding_problem, dropped_references  # noqa: E402


class _Relay(QObject):
    done = Signal(object, object)


def test_the_installed_qt_binding_keeps_its_reference_counts(qtbot):
    assert binding_problem() is None
    relay, label = _Relay(), QLabel()
    qtbot.addWidget(label)
    relay.done.connect(lambda result, error: None)
    # the calls the app makes most: a worker's result through a signal, labels updated
    for operation in (lambda: relay.done.emit(1, None), lambda: label.setText("x"), lambda: label.setEnabled(True)):
        assert max(dropped_references(operation, calls=200).values()) < PROBE_CALLS


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="True is immortal: its count never changes")
def test_a_call_that_drops_a_reference_is_counted():
    drop_true = lambda: ctypes.pythonapi.Py_DecRef(ctypes.py_object(True))  # noqa: E731
    try:
        assert dropped_references(drop_true, calls=PROBE_CALLS)["True"] == PROBE_CALLS
    finally:
        for _ in range(PROBE_CALLS):  # give back what the simulated leak took
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(True))
    assert dropped_references(lambda: None) == {"True": 0, "None": 0}


def test_the_app_refuses_to_start_on_a_leaking_binding(qapp, monkeypatch, capsys, tmp_path):
    shown = []
    monkeypatch.setattr(qt_binding, "binding_problem", lambda: "PySide6 9.9 loses a reference to True")
    monkeypatch.setattr("PySide6.QtWidgets.QMessageBox.critical", lambda parent, title, text: shown.append(text))
    # were the check gone, the app would open a window and wait for its user: it must not here
    monkeypatch.setattr("PySide6.QtWidgets.QApplication.exec", lambda self: 0)
    monkeypatch.setenv("HMER_CONFIG_DIR", str(tmp_path))  # nor touch the user's settings and samples
    monkeypatch.setenv("HMER_DATA_DIR", str(tmp_path / "data"))
    assert app.main(["--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert shown == ["PySide6 9.9 loses a reference to True"]
    assert "loses a reference to True" in capsys.readouterr().err
