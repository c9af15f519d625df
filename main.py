"""Start the hmer desktop app: `python main.py`."""

import sys

from hmer_desktop.app import main

if __name__ == "__main__":
    sys.exit(main())
