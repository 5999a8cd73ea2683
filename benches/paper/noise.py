#!/usr/bin/env python3
"""Where the run-to-run spread of one completion's time comes from (GPU machine, one process).

    python3 benches/paper/noise.py [--per-phase 20] > noise.json

Builds the paper's model once (llama_model.py), then runs completions in phases that differ only
in how the process uses the CPU: default (torch's intra-op threads, any core), one intra-op
thread, one thread pinned to one core, and the default again (drift). Prints one JSON object:
per phase the mean, standard deviation, min and max of a completion's time, and the GPU's SM
clock and the host's load sampled during the phase. generate() at batch 1 launches thousands of
small kernels per completion, so its time follows the CPU that launches them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_model  # noqa: E402


class Sampler(threading.Thread):
    """Samples the SM clock (nvidia-smi) and the 1-minute load every second."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            clock = None
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5).stdout.strip().split(",")
                clock = [float(x) for x in out]
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self.samples.append({"t": time.time(), "sm_mhz_power_w_temp_c": clock, "load1": os.getloadavg()[0]})
            self.stop.wait(1.0)


def stats(xs):
    return {"n": len(xs), "mean": round(statistics.mean(xs), 4), "stdev": round(statistics.pstdev(xs), 4),
            "min": round(min(xs), 4), "max": round(max(xs), 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-phase", type=int, default=20)
    args = ap.parse_args()
    all_cpus = sorted(os.sched_getaffinity(0))
    llm = llama_model.Llama()
    torch = llm.torch
    default_threads = torch.get_num_threads()
    llm.generate()  # warm

    def one_thread():
        torch.set_num_threads(1)

    def pinned():
        torch.set_num_threads(1)
        os.sched_setaffinity(0, {all_cpus[len(all_cpus) // 2]})

    def default():
        os.sched_setaffinity(0, set(all_cpus))
        torch.set_num_threads(default_threads)

    phases = [("default", default), ("threads=1", one_thread), ("threads=1 pinned", pinned), ("default again", default)]
    sampler = Sampler()
    sampler.start()
    out = {"cpus": len(all_cpus), "default_threads": default_threads, "phases": []}
    for name, prepare in phases:
        prepare()
        llm.generate()
        t0 = time.time()
        times = []
        for _ in range(args.per_phase):
            t = time.perf_counter()
            llm.generate()
            times.append(time.perf_counter() - t)
        t1 = time.time()
        window = [s for s in sampler.samples if t0 <= s["t"] <= t1]
        clocks = [s["sm_mhz_power_w_temp_c"][0] for s in window if s["sm_mhz_power_w_temp_c"]]
        out["phases"].append({
            "phase": name, "completion_s": stats(times),
            "sm_mhz": stats(clocks) if clocks else None,
            "load1": round(statistics.mean(s["load1"] for s in window), 2) if window else None,
            "times": [round(x, 4) for x in times],
        })
        print("%-18s %s" % (name, out["phases"][-1]["completion_s"]), file=sys.stderr, flush=True)
    sampler.stop.set()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
