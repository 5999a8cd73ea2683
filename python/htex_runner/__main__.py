"""Entry point: ``python -m htex_runner MODULE [--path DIR]...``."""

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
