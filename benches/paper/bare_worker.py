#!/usr/bin/env python3
"""One instance of the bare baseline (started by bare.py; no htex).

Builds the model (llama_model.py), runs one warm-up completion, then prints one JSON line
{"event": "ready", ...} with its cold start (spawn → model built, as htex_runner measures it) and
serves jobs: each stdin line {"id": I} runs one completion and answers
{"event": "done", "id": I, "tokens": 24, "exec_s": ...} (or {"event": "error", ...}). Ends at
EOF or on {"quit": true}. The protocol has the original stdout to itself: anything else that
writes to fd 1 (libraries) goes to stderr.
"""

import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_model  # noqa: E402


def main():
    # Keep the protocol channel clean: fd 1 becomes stderr, the protocol gets a private copy.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    slot = int(os.environ.get("BARE_SLOT_INDEX", "0"))
    spawned = os.environ.get("BARE_SPAWNED_AT_US")
    spawned = int(spawned) if spawned else llama_model.process_start_us()
    try:
        llm = llama_model.Llama()
        ready = llama_model.now_us()
        t = time.perf_counter()
        tokens = llm.generate()
        warm = time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 - reported to the driver
        traceback.print_exc()
        send({"event": "failed", "slot": slot, "pid": os.getpid(), "error": "%s: %s" % (type(e).__name__, e)})
        return 3
    send({
        "event": "ready",
        "slot": slot,
        "pid": os.getpid(),
        "spawned_at_us": spawned,
        "ready_at_us": ready,
        "cold_start_s": round((ready - spawned) / 1e6, 3) if spawned else None,
        "cold_start_source": "driver spawn time" if os.environ.get("BARE_SPAWNED_AT_US") else "/proc",
        **llm.reported_facts(),
        "warm_generate_s": round(warm, 3),
        "warm_tokens": tokens,
    })
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            job = json.loads(line)
        except ValueError:
            send({"event": "error", "id": None, "error": "bad job line %r" % line[:200]})
            continue
        if job.get("quit"):
            break
        t = time.perf_counter()
        try:
            tokens = llm.generate()
        except Exception as e:  # noqa: BLE001 - reported to the driver
            traceback.print_exc()
            send({"event": "error", "id": job.get("id"), "error": "%s: %s" % (type(e).__name__, e)})
            continue
        send({"event": "done", "id": job.get("id"), "tokens": tokens,
              "exec_s": round(time.perf_counter() - t, 6), "slot": slot, "pid": os.getpid()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
