"""sympy's reading runs in a child process that is stopped where a reading has no end, and
the app reads on where no process can be started."""

from __future__ import annotations

import threading
import time

from hmer_desktop import math_reader
from hmer_desktop.math_reader import MathReader


def test_a_reading_without_end_is_stopped_and_the_next_one_reads():
    reader = MathReader(time_limit_s=1.0)
    try:
        assert reader.read("1 + 2 \\times 3").value == "7"
        first = reader._process
        start = time.monotonic()
        stuck = reader.read("1 0 0 ! !")  # a double factorial sympy never finishes
        assert time.monotonic() - start < 3.0
        assert not stuck.ok and "within 1 s" in stuck.error
        assert not first.is_alive()  # killed, not left computing beside the app
        again = reader.read("x ^ { 2 } = y")
        assert again.ok and again.parsed == "Eq(x**2, y)"
    finally:
        reader.close()


def test_where_no_process_can_start_sympy_reads_in_this_one(monkeypatch):
    def no_processes(method):
        raise OSError("simulated: this sandbox forbids new processes")

    monkeypatch.setattr(math_reader.multiprocessing, "get_context", no_processes)
    reader = MathReader()
    assert reader.read("1 + 2 \\times 3").value == "7"
    assert reader.read("\\frac { 1 } { 2 }").value == "1/2"
    assert reader._process is None


def test_closing_stops_a_reading_under_way_at_once():
    reader = MathReader(time_limit_s=30.0)
    reader.read("x")  # started
    got = []
    worker = threading.Thread(target=lambda: got.append(reader.read("9 ^ { 9 ^ { 9 } }")))
    worker.start()
    time.sleep(0.3)  # sympy is computing
    start = time.monotonic()
    reader.close()  # as the window closes
    assert time.monotonic() - start < 1.0
    worker.join(timeout=10)
    assert got and not got[0].ok
    assert reader.read("x").error == "the app is closing"
