#!/usr/bin/env python3
"""Probe one htex worker slot: what the slot's environment says and what CUDA actually gives.

Run inside a slot (as an htex command task). Prints ONE JSON line on stdout:
- the slot environment (HTEX_SLOT_*, CUDA_VISIBLE_DEVICES, CUDA_MPS_*),
- torch's view of device 0: SM count, total memory, torch.cuda.mem_get_info() before and at peak,
- a memory-limit check: with HTEX_SLOT_MEMORY_BYTES set, allocate 256 MiB chunks up to
  limit + 1 GiB and report how far it got and the first failure; without it, allocate 1 GiB.
Then it holds for --hold seconds (after printing) (so concurrently submitted probes land in distinct slots).

Exit status: 0 whenever the probe ran to the end, also when an allocation failed as expected
(the JSON says what happened); 3 when CUDA/torch could not be used at all (JSON still printed).
"""

import argparse
import json
import os
import socket
import sys
import time

MIB = 1 << 20
GIB = 1 << 30

ENV_KEYS = [
    "HTEX_SLOT_INDEX",
    "HTEX_SLOT_KIND",
    "HTEX_SLOT_GPU_UUID",
    "HTEX_SLOT_MPS_PERCENTAGE",
    "HTEX_SLOT_MEMORY_BYTES",
    "HTEX_SLOT_SM_COUNT",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
    "CUDA_DEVICE_ORDER",
]


def parse_int(text):
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def short(text, limit=600):
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "...[truncated]"


def pipe_dir_info(path):
    """Whether the MPS pipe directory exists and looks like a live daemon's (has `control`)."""
    if not path:
        return None
    info = {"exists": os.path.isdir(path)}
    if info["exists"]:
        try:
            info["entries"] = sorted(os.listdir(path))[:20]
        except OSError as e:
            info["entries_error"] = str(e)
    return info


def allocate(torch, target_bytes, chunk_bytes):
    """Allocate chunk_bytes at a time until target_bytes or the first failure."""
    chunks = []
    result = {
        "target_bytes": target_bytes,
        "chunk_bytes": chunk_bytes,
        "allocated_bytes": 0,
        "failed": False,
        "error": None,
    }
    started = time.monotonic()
    try:
        while result["allocated_bytes"] + chunk_bytes <= target_bytes:
            try:
                chunks.append(torch.empty(chunk_bytes, dtype=torch.uint8, device="cuda"))
            except Exception as e:  # torch.OutOfMemoryError, RuntimeError (CUDA error), ...
                result["failed"] = True
                result["error_type"] = type(e).__name__
                result["error"] = short(e)
                break
            result["allocated_bytes"] += chunk_bytes
        try:
            torch.cuda.synchronize()
            free, total = torch.cuda.mem_get_info()
            result["mem_get_info_at_peak"] = {"free": free, "total": total}
        except Exception as e:
            result["mem_get_info_at_peak_error"] = short(e)
    finally:
        del chunks
        try:
            torch.cuda.empty_cache()
        except Exception:
            pass
    result["allocated_gib"] = round(result["allocated_bytes"] / GIB, 3)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, default=3.0, help="seconds to stay alive at the end")
    parser.add_argument("--chunk-mib", type=int, default=256)
    parser.add_argument("--extra-gib", type=float, default=1.0, help="allocate this far past the limit")
    parser.add_argument("--no-limit-gib", type=float, default=1.0, help="allocation without a limit")
    args = parser.parse_args()

    t0 = time.time()
    out = {
        "probe": "htex-slot-probe",
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "started_unix": round(t0, 3),
        "env": {k: os.environ.get(k) for k in ENV_KEYS},
    }
    out["pipe_dir"] = pipe_dir_info(os.environ.get("CUDA_MPS_PIPE_DIRECTORY"))
    status = 0
    try:
        import torch

        out["torch_version"] = torch.__version__
        out["torch_cuda_version"] = torch.version.cuda
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False")
        out["device_count"] = torch.cuda.device_count()
        t_init = time.monotonic()
        # Create the context first: the MPS client limits apply to the context.
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        out["cuda_init_s"] = round(time.monotonic() - t_init, 3)
        props = torch.cuda.get_device_properties(0)
        out["device_name"] = props.name
        out["compute_capability"] = "%d.%d" % (props.major, props.minor)
        out["multi_processor_count"] = props.multi_processor_count
        out["total_memory"] = props.total_memory
        free, total = torch.cuda.mem_get_info()
        out["mem_get_info"] = {"free": free, "total": total}

        limit = parse_int(os.environ.get("HTEX_SLOT_MEMORY_BYTES"))
        chunk = args.chunk_mib * MIB
        if limit is not None and limit > 0:
            target = limit + int(args.extra_gib * GIB)
            alloc = allocate(torch, target, chunk)
            alloc["mode"] = "limit"
            alloc["limit_bytes"] = limit
            # The limit held if an allocation failed before we went past it.
            alloc["limit_held"] = bool(alloc["failed"] and alloc["allocated_bytes"] <= limit)
        else:
            alloc = allocate(torch, int(args.no_limit_gib * GIB), chunk)
            alloc["mode"] = "no-limit"
            alloc["limit_bytes"] = None
            alloc["limit_held"] = None
        out["alloc"] = alloc
        out["gpu_ok"] = not alloc["failed"] or alloc["mode"] == "limit"
    except Exception as e:  # no torch, no GPU, MPS connection failure (805), ...
        out["cuda_error_type"] = type(e).__name__
        out["cuda_error"] = short(e, 2000)
        out["gpu_ok"] = False
        status = 3

    out["hold_s"] = args.hold
    out["finished_unix"] = round(time.time(), 3)
    # Print before holding so a killed probe still leaves its line in the result.
    print(json.dumps(out, sort_keys=True), flush=True)
    if args.hold > 0:
        time.sleep(args.hold)
    return status


if __name__ == "__main__":
    sys.exit(main())
