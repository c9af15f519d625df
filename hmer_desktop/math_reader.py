"""sympy's reading of a result (`mathinfo.read_math`) in a child process, with a time limit.

sympy can take any time on what a person may well write: `9^{9^{9}}` is evaluated to an
integer of 370 million digits, `100!!` never ends either, `2^{1000000000}` takes 8 s. In
the app's typesetting thread such a reading never returned, and no result was typeset
again until the app was restarted. A process, unlike a thread, can be stopped: one still
reading after the time limit is killed, and the next reading starts a fresh one. sympy's
Python also no longer competes with the GUI thread for the interpreter. Qt-free.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from multiprocessing.connection import Connection
from typing import Any

from hmer_desktop.mathinfo import MathReading, read_math

log = logging.getLogger(__name__)

_READY = "ready"


def _serve(conn: Connection) -> None:
    """The child: import sympy, say so, then read each LaTeX string sent until the pipe closes."""
    import sympy  # noqa: F401  (the import is most of a first reading's time)

    read_math("x")  # and the parser's first use
    conn.send(_READY)
    while True:
        try:
            latex = conn.recv()
        except (EOFError, OSError):  # the app closed the pipe or ended
            return
        conn.send(read_math(latex))


class MathReader:
    """Reads LaTeX with sympy in a child process, one string at a time. A reading that takes
    longer than `time_limit_s` is abandoned with its process. Where no process can be
    started, it reads in the caller's thread, without a limit."""

    def __init__(self, time_limit_s: float = 3.0, start_timeout_s: float = 60.0) -> None:
        self.time_limit_s = time_limit_s
        self._start_timeout_s = start_timeout_s  # importing sympy: about a second, more on a busy machine
        self._process: Any = None
        self._conn: Connection | None = None
        self._in_process = True  # False once a process could not be started
        self._closed = False
        self._lock = threading.Lock()

    def read(self, latex: str) -> MathReading:
        with self._lock:
            if self._closed:
                return MathReading(ok=False, error="the app is closing")
            conn = self._started()
            if conn is None:
                return read_math(latex)
            try:
                conn.send(latex)
                if conn.poll(self.time_limit_s):
                    return conn.recv()
                reason = f"sympy could not read this within {self.time_limit_s:g} s"
            except (OSError, EOFError) as e:  # the child died (out of memory) or the app closed it
                reason = f"sympy's process ended while reading this ({type(e).__name__})"
            self._stop()  # the next reading starts a fresh process
            return MathReading(ok=False, error=reason)

    def _started(self) -> Connection | None:
        """The pipe to a running child, started if need be; None where none can be."""
        if not self._in_process:
            return None
        if self._conn is not None and self._process.is_alive():
            return self._conn
        self._stop()
        try:  # spawn: never fork a process that runs Qt and torch threads
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(child,), name="hmer-sympy", daemon=True)
            process.start()
            child.close()
            self._process, self._conn = process, parent
            if parent.poll(self._start_timeout_s) and parent.recv() == _READY:
                return parent
            problem = f"it did not start within {self._start_timeout_s:g} s"
        except Exception as e:  # no processes here (a sandbox; a packaged app without freeze_support)
            problem = f"{type(e).__name__}: {e}"
        log.warning("sympy reads in the app's own process, without a time limit: %s", problem)
        self._stop()
        self._in_process = False
        return None

    def _stop(self) -> None:
        conn, process = self._conn, self._process
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            process.kill()
            process.join(timeout=5)

    def close(self) -> None:
        """End the child process at once, even mid-reading (whose caller then gets an error
        reading); readings from now on say the app is closing. Never waits for a reading."""
        self._closed = True
        process = self._process
        if process is not None:
            process.kill()
        if self._lock.acquire(blocking=False):  # no reading under way: tidy up here
            try:
                self._stop()
            finally:
                self._lock.release()


_shared: MathReader | None = None
_shared_lock = threading.Lock()


def shared_reader() -> MathReader:
    """The process's one reader, made on first use: each reader holds a child process of
    about 90 MB, and the app needs one whatever the number of panels (a test suite makes
    dozens). Its child ends with the app (a daemon process)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = MathReader()
        return _shared
