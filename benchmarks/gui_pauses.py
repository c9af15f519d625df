"""How long the GUI thread waits while the app reads ink and shows its results.

A 5 ms timer ticks on the GUI thread (Qt, offscreen) and the longest gap between two ticks
is what a person would feel as a stall of the pen or the window:

* **readings**: the app's recognition service (its worker thread, and the compiled decoder
  where its packages are compiled, as the app starts it) reads the `--longest` longest
  expressions of the split with the beam search. Compiled calls let go of Python's
  interpreter where torch allows (`model/package_library.py`); through torch's loader
  one holds it for all of its duration, and the GUI waits for the longest.
* **results**: a results panel shows the truth of `--limit` expressions one after another
  (typeset and read by sympy on its own thread), and the app's garbage-collector freeze
  follows the first one, as in the app.

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_pauses.py --data ../shared/datasets/crohme --split 2016 --limit 20 --longest 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PySide6.QtCore import QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hmer_desktop.app import _freeze_once_loaded  # noqa: E402
from hmer_desktop.service import RecognitionService  # noqa: E402
from hmer_desktop.widgets.results import ResultsPanel  # noqa: E402
from model.vocab import Vocabulary  # noqa: E402
from train.data import load_split  # noqa: E402


class _Ticks:
    """A 5 ms timer on the GUI thread; `longest_ms` since `restart`."""

    def __init__(self, app: QApplication) -> None:
        self.app = app
        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(5)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))
        self.timer.start()

    def restart(self) -> None:
        self.times = [time.perf_counter()]  # the request itself: a synchronous stall counts from here

    def wait(self, done, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while not done() and time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.001)

    def longest_ms(self) -> float:
        return max(b - a for a, b in zip(self.times, self.times[1:])) * 1000 if len(self.times) > 1 else 0.0


def _summary(values: list[float]) -> dict:
    return {"p50_ms": float(np.median(values)), "max_ms": float(max(values))} if values else {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="2016")
    parser.add_argument("--limit", type=int, default=20, help="results shown, and expressions read from")
    parser.add_argument("--longest", type=int, default=6, help="how many of the longest expressions to read")
    parser.add_argument("--checkpoint", type=Path, help="default: the bundled model")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--wait-compiled", type=float, default=300.0, metavar="S",
                        help="wait this long for the compiled decoder the service prepares (0: read with what is ready)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    app = QApplication.instance() or QApplication([])
    examples, _ = load_split(args.data, args.split, Vocabulary.default(), limit=args.limit)
    ticks = _Ticks(app)

    service = RecognitionService(args.checkpoint, "cpu")
    try:
        decoder = service.preload().result(timeout=300).model.decoder
        ticks.wait(lambda: decoder.compiled_forward is not None, args.wait_compiled)
        readings = []
        for i, ex in enumerate(sorted(examples, key=lambda e: -len(e.tokens))[: args.longest]):
            ticks.restart()
            future = service.recognize(ex.strokes, ink_version=i, beam_size=args.beam)
            ticks.wait(future.done, 600)
            result = future.result()
            readings.append({"tokens": len(ex.tokens), "reading_ms": result.latency_ms, "longest_pause_ms": ticks.longest_ms(),
                             "compiled": decoder.compiled_step is not None})  # fmt: skip
            print(f"reading {len(ex.tokens)} tokens in {result.latency_ms:.0f} ms: GUI paused at most "
                  f"{readings[-1]['longest_pause_ms']:.0f} ms", file=sys.stderr)  # fmt: skip
    finally:
        service.shutdown()

    panel = ResultsPanel()
    panel.rendered.connect(_freeze_once_loaded)
    panel.show()
    ticks.wait(lambda: False, 2.0)  # the panel's warm-up (sympy's import) runs while the app loads its model
    results = []
    for ex in examples:
        latex = " ".join(ex.tokens)
        ticks.restart()
        panel.set_latex(latex)
        ticks.wait(lambda latex=latex: panel.rendered_latex == latex, 60)
        ticks.wait(lambda: False, 0.02)
        results.append(ticks.longest_ms())
    panel.close()

    report = {"split": args.split, "checkpoint": str(args.checkpoint or "bundled"), "beam": args.beam,
              "readings": {**_summary([r["longest_pause_ms"] for r in readings]), "expressions": readings},
              "results": {**_summary(results), "n": len(results)}}  # fmt: skip
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
