"""The runner's context object (``htex_runner.context``), readable by user code."""

import os
import time


def _env_int(name):
    """The integer in environment variable ``name``; its raw text if not an integer; else None."""
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _process_start_us():
    """This process's start time in µs since the epoch (from /proc where there is one)."""
    now_us = time.time_ns() // 1000
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        # Field 22 (starttime, in clock ticks since boot) counts from after the `(comm)` field,
        # which may itself hold spaces and parentheses.
        start_ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        started = btime * 1_000_000 + start_ticks * 1_000_000 // os.sysconf("SC_CLK_TCK")
        if 0 < started <= now_us:
            return started
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    return now_us


class Context:
    """What a runner knows about itself.

    spawned_at_us  when the worker spawned the runner (env HTEX_RUNNER_SPAWNED_US), else when
                   this process started, in µs since the epoch
    ready_at_us    when import + setup() finished (None before), µs since the epoch
    setup_s        seconds that import + setup() took (None before)
    calls          calls dispatched to a function so far, the one running now included
    slot           the worker slot's index (env HTEX_SLOT_INDEX, an int), or None
    name           the runner's name on the worker (env HTEX_RUNNER_NAME), or None
    module         the served module's name
    pid            this process's id
    """

    def __init__(self):
        spawned = _env_int("HTEX_RUNNER_SPAWNED_US")
        self.spawned_at_us = spawned if isinstance(spawned, int) else _process_start_us()
        self.ready_at_us = None
        self.setup_s = None
        self.calls = 0
        self.slot = _env_int("HTEX_SLOT_INDEX")
        self.name = os.environ.get("HTEX_RUNNER_NAME")
        self.module = None
        self.pid = os.getpid()

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"htex_runner.Context({fields})"


context = Context()
