"""Start the hmer desktop app: `python main.py`."""

import multiprocessing
import sys

from hmer_desktop.app import main

if __name__ == "__main__":
    # A packaged app's sympy process (hmer_desktop/math_reader.py) starts this executable:
    # there this runs the child's code and exits, before any window.
    multiprocessing.freeze_support()
    sys.exit(main())
