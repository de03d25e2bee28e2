"""``python -m pytest_replay``: see pytest_replay.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
