"""Entry point of the desktop app.

The drawing canvas, live recognition and explanation views arrive with the app
issue; until then the window says so and `hmer-recognize` is the way to use
the recognizer.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hmer-desktop", description="Draw math, get LaTeX.")
    parser.add_argument("--quit-after", type=float, default=0.0, help="close after N seconds (for checks)")
    args = parser.parse_args(argv)

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = QMainWindow()
    window.setWindowTitle("hmer")
    label = QLabel(
        "The drawing canvas is not built yet (see the app issue).\n"
        "Meanwhile: hmer-recognize FILE.inkml prints the LaTeX of an InkML file."
    )
    label.setMargin(24)
    window.setCentralWidget(label)
    window.resize(640, 240)
    window.show()
    if args.quit_after:
        QTimer.singleShot(int(args.quit_after * 1000), app.quit)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
