"""A check of the Qt binding the app runs on, before any window opens.

PySide6 6.12.0 drops a reference to `True` on every `Signal.emit` and to `None` on
every call that returns nothing. Where those objects are not immortal (Python < 3.12)
their count reaches zero after a few hundred calls and the interpreter aborts at a
random point: mid-fine-tune, mid-stroke, with the ink unsaved. The check finds such a
binding at start, while it can still say what to install instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

PROBE_CALLS = 16


def dropped_references(operation: Callable[[], object], calls: int = PROBE_CALLS) -> dict[str, int]:
    """How many references to True and None `calls` runs of `operation` lost (0 on a sound binding)."""
    before = {"True": sys.getrefcount(True), "None": sys.getrefcount(None)}
    for _ in range(calls):
        operation()
    after = {"True": sys.getrefcount(True), "None": sys.getrefcount(None)}
    return {name: before[name] - after[name] for name in before}


def binding_problem() -> str | None:
    """A message saying what is wrong with the installed PySide6, or None when it is sound.

    Needs nothing but QtCore; on Python >= 3.12 the counts of True and None never change,
    so a leaking binding is harmless there and passes."""
    import PySide6
    from PySide6.QtCore import QObject, Signal

    class Probe(QObject):
        ping = Signal()

    probe = Probe()
    lost = {"True": 0, "None": 0}
    for operation in (probe.ping.emit, lambda: probe.setObjectName("probe")):
        for name, n in dropped_references(operation).items():
            lost[name] += n
    # Other threads may hold or drop a reference meanwhile; a leak loses one per call.
    leaking = [name for name, n in lost.items() if n >= PROBE_CALLS]
    if not leaking:
        return None
    return (
        f"PySide6 {PySide6.__version__} loses a reference to {' and '.join(leaking)} on every call "
        f"(a bug in that release); on Python {sys.version_info.major}.{sys.version_info.minor} this "
        "crashes the app within minutes. Install another release, e.g. "
        "pip install 'PySide6-Essentials!=6.12.0'"
    )
