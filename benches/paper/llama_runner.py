"""htex warm runner of the paper experiment: `python -m htex_runner benches.paper.llama_runner`.

`setup()` builds the LLaMa-2-7B-shaped model once per slot (see llama_model.py); tasks then call
`generate` (one completion) or `warmup` (one completion, then a file barrier across n slots, and
this runner's cold start). Needs PYTHONPATH with the repository's `python/` (for htex_runner)
and the repository root (for this package).
"""

import os as _os
import time as _time

try:
    from benches.paper import llama_model as _llama_model
except ImportError:  # run from inside benches/paper
    import llama_model as _llama_model

__all__ = ["setup", "generate", "warmup"]

_STATE = {}


def setup():
    """Builds the model and prompt on this slot's GPU."""
    _STATE["setup_started_us"] = _llama_model.now_us()
    _STATE["llm"] = _llama_model.Llama()
    _STATE["setup_done_us"] = _llama_model.now_us()


def _llm():
    if "llm" not in _STATE:  # setup() not called (a runner host without setup support)
        setup()
    return _STATE["llm"]


def _context():
    """htex_runner.context as a dict (attributes or keys), {} where it cannot be had."""
    import sys

    candidates = []
    try:
        import htex_runner

        candidates.append(getattr(htex_runner, "context", None))
    except ImportError:
        pass
    main = sys.modules.get("__main__")
    candidates.append(getattr(main, "context", None))
    for ctx in candidates:
        if ctx is None:
            continue
        out = {}
        for key in ("spawned_at_us", "ready_at_us", "setup_s", "slot", "pid"):
            value = ctx.get(key) if isinstance(ctx, dict) else getattr(ctx, key, None)
            if value is not None:
                out[key] = value
        if out:
            return out
    return {}


def _slot(ctx):
    slot = ctx.get("slot")
    if slot is None:
        slot = _os.environ.get("HTEX_SLOT_INDEX")
    if isinstance(slot, str) and slot.isdigit():
        slot = int(slot)
    if not isinstance(slot, (int, str, type(None))):
        slot = str(slot)
    return slot


def generate(request_id=None):
    """One completion. Returns {"tokens", "slot", "pid", "exec_s", "request_id"}."""
    llm = _llm()
    t = _time.perf_counter()
    tokens = llm.generate()
    exec_s = _time.perf_counter() - t
    return {
        "tokens": tokens,
        "slot": _slot(_context()),
        "pid": _os.getpid(),
        "exec_s": round(exec_s, 6),
        "request_id": request_id,
    }


def warmup(barrier_dir, n, timeout_s=600.0):
    """One completion (so kernels are warm), then waits until n runners reached the barrier.

    Creates `barrier_dir/<pid>` and polls every 20 ms until n files are there; raises after
    timeout_s. n concurrent warmups therefore hold n distinct slots. Returns this runner's cold
    start: spawn → ready (setup done), as htex_runner.context reports it.
    """
    llm = _llm()
    t = _time.perf_counter()
    tokens = llm.generate()
    warm_generate_s = _time.perf_counter() - t

    n = int(n)
    _os.makedirs(barrier_dir, exist_ok=True)
    pid = _os.getpid()
    with open(_os.path.join(barrier_dir, str(pid)), "w") as f:
        f.write("%s\n" % _slot(_context()))
    t = _time.perf_counter()
    deadline = _time.monotonic() + float(timeout_s)
    while True:
        arrived = len([e for e in _os.listdir(barrier_dir) if not e.startswith(".")])
        if arrived >= n:
            break
        if _time.monotonic() > deadline:
            raise TimeoutError(
                "barrier %s: %d of %d runners arrived within %ss" % (barrier_dir, arrived, n, timeout_s)
            )
        _time.sleep(0.02)
    barrier_wait_s = _time.perf_counter() - t

    ctx = _context()
    spawned = ctx.get("spawned_at_us")
    source = "htex_runner.context"
    if spawned is None:
        spawned = _llama_model.process_start_us()
        source = "/proc (htex_runner.context missing)"
    ready = ctx.get("ready_at_us") or _STATE.get("setup_done_us")
    cold = (ready - spawned) / 1e6 if spawned and ready else None
    return {
        "slot": _slot(ctx),
        "pid": pid,
        "spawned_at_us": spawned,
        "ready_at_us": ready,
        "cold_start_s": None if cold is None else round(cold, 3),
        "setup_s": ctx.get("setup_s"),
        "cold_start_source": source,
        **llm.reported_facts(),
        "warm_generate_s": round(warm_generate_s, 3),
        "warm_tokens": tokens,
        "barrier_wait_s": round(barrier_wait_s, 3),
    }
