"""htex_runner: serves a Python module's functions to an htex worker as a warm runner.

Run it as ``python -m htex_runner MODULE [--path DIR]...``; user code may read
``htex_runner.context`` (see ``htex_runner.runtime.Context``) to learn about the runner
it is running in. ``python/README.md`` describes the wire protocol.
"""

from .runtime import Context, context

__all__ = ["Context", "context"]
__version__ = "0.1.0"
