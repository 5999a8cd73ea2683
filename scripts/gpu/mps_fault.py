#!/usr/bin/env python3
"""What an MPS fault does to its neighbours, without htex: the observation the manager's GPU
fault handling is built on.

A private MPS daemon (short private pipe/log directories, CUDA_VISIBLE_DEVICES=<GPU UUID>) serves
three clients at 34/33/33 %: two bystanders doing matmuls in a loop, reporting every result or
error with a timestamp, and one faulter that launches a PTX kernel storing to address 0 (an
illegal memory access, CUDA error 700). Recorded: what each bystander sees and when, the
daemon's `get_server_list` over time, the server and control logs, how long until a newcomer
client can run again, and that the daemon quits cleanly.

Writes $OUT/mps-fault.json and prints a summary. Never changes GPU settings.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

OUT = os.environ.get("OUT", ".")

BYSTANDER = r"""
import json, sys, time, torch
t0 = float(sys.argv[1]); seconds = float(sys.argv[2])
def say(**kw):
    kw["t"] = round(time.time() - t0, 3); print(json.dumps(kw), flush=True)
try:
    a = torch.randn(2048, 2048, device="cuda"); torch.cuda.synchronize()
    say(event="ready", sms=torch.cuda.get_device_properties(0).multi_processor_count)
except Exception as e:
    say(event="init_error", error=f"{type(e).__name__}: {e}"[:500]); sys.exit(3)
errors = 0; ok = 0; end = time.time() + seconds
while time.time() < end:
    try:
        b = a @ a; torch.cuda.synchronize(); ok += 1
        if ok % 200 == 0: say(event="ok", done=ok)
    except Exception as e:
        errors += 1; say(event="error", error=f"{type(e).__name__}: {e}"[:500], done=ok)
        if errors >= 3: say(event="exit_after_errors"); sys.exit(4)
        time.sleep(0.2)
say(event="finished", done=ok)
"""

FAULTER = r"""
import ctypes, json, sys, time, torch
t0 = float(sys.argv[1]); delay = float(sys.argv[2])
def say(**kw):
    kw["t"] = round(time.time() - t0, 3); print(json.dumps(kw), flush=True)
torch.zeros(1, device="cuda"); torch.cuda.synchronize(); say(event="ready")
time.sleep(delay)
ptx = b'''.version 7.0
.target sm_50
.address_size 64
.visible .entry crash()
{
  .reg .u64 %rd<2>;
  .reg .u32 %r<2>;
  mov.u64 %rd1, 0;
  mov.u32 %r1, 1;
  st.global.u32 [%rd1], %r1;
  ret;
}
'''
cuda = ctypes.CDLL("libcuda.so.1")
module, function = ctypes.c_void_p(), ctypes.c_void_p()
say(event="load", rc=cuda.cuModuleLoadData(ctypes.byref(module), ptx))
say(event="function", rc=cuda.cuModuleGetFunction(ctypes.byref(function), module, b"crash"))
say(event="launch", rc=cuda.cuLaunchKernel(function, 1, 1, 1, 1, 1, 1, 0, None, None, None))
say(event="synchronize", rc=cuda.cuCtxSynchronize())
try:
    torch.zeros(1, device="cuda"); torch.cuda.synchronize(); say(event="torch_after", ok=True)
except Exception as e:
    say(event="torch_after", error=f"{type(e).__name__}: {e}"[:500])
"""

NEWCOMER = r"""
import json, sys, time, torch
t0 = float(sys.argv[1])
try:
    a = torch.randn(512, 512, device="cuda"); (a @ a).sum().item()
    print(json.dumps({"t": round(time.time() - t0, 3), "event": "newcomer_ok"}), flush=True)
except Exception as e:
    print(json.dumps({"t": round(time.time() - t0, 3), "event": "newcomer_error", "error": f"{type(e).__name__}: {e}"[:500]}), flush=True)
    sys.exit(5)
"""


def gpu_uuid():
    out = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.split()[0]


def control(pipe, command):
    env = dict(os.environ, CUDA_MPS_PIPE_DIRECTORY=pipe)
    r = subprocess.run(["nvidia-cuda-mps-control"], input=command + "\n", capture_output=True, text=True, env=env, timeout=20)
    return {"rc": r.returncode, "out": r.stdout.strip(), "err": r.stderr.strip()}


def main():
    root = tempfile.mkdtemp(prefix="mpsf", dir="/tmp")
    pipe, logs = os.path.join(root, "p"), os.path.join(root, "l")
    os.makedirs(pipe); os.makedirs(logs)
    uuid = gpu_uuid()
    base = dict(os.environ, CUDA_VISIBLE_DEVICES=uuid, CUDA_MPS_PIPE_DIRECTORY=pipe, CUDA_MPS_LOG_DIRECTORY=logs, PYTHONUNBUFFERED="1")
    report = {"gpu": uuid, "events": {}, "server_list": [], "newcomers": []}
    subprocess.run(["nvidia-cuda-mps-control", "-d"], env=base, check=True)
    t0 = time.time()
    procs = {}
    try:
        for name, pct, code, args in [("bystander-a", 34, BYSTANDER, ["25"]), ("bystander-b", 33, BYSTANDER, ["25"]), ("faulter", 33, FAULTER, ["6"])]:
            env = dict(base, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=str(pct))
            procs[name] = subprocess.Popen([sys.executable, "-c", code, str(t0)] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline and any(p.poll() is None for p in procs.values()):
            report["server_list"].append({"t": round(time.time() - t0, 2), **control(pipe, "get_server_list")})
            time.sleep(1.0)
        for name, p in procs.items():
            if p.poll() is None:
                p.kill()
            out = p.communicate()[0]
            report["events"][name] = {"exit": p.returncode, "lines": out.strip().splitlines()[-40:]}
        # How soon does a new client run again?
        for attempt in range(20):
            env = dict(base, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="50")
            r = subprocess.run([sys.executable, "-c", NEWCOMER, str(t0)], env=env, capture_output=True, text=True, timeout=120)
            report["newcomers"].append({"rc": r.returncode, "out": (r.stdout + r.stderr).strip()[-600:]})
            if r.returncode == 0:
                break
            time.sleep(1.0)
        report["server_list_after"] = control(pipe, "get_server_list")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
        report["quit"] = control(pipe, "quit")
        time.sleep(1.0)
        left = subprocess.run(["pgrep", "-af", "nvidia-cuda-mps"], capture_output=True, text=True).stdout.strip()
        report["left_after_quit"] = left
        for log in ("control.log", "server.log"):
            path = os.path.join(logs, log)
            report[log] = open(path, errors="replace").read()[-6000:] if os.path.exists(path) else None
        shutil.rmtree(root, ignore_errors=True)
    with open(os.path.join(OUT, "mps-fault.json"), "w") as f:
        json.dump(report, f, indent=1)
    for name, e in report["events"].items():
        print(f"== {name} (exit {e['exit']})")
        for line in e["lines"]:
            print("  ", line)
    print("== server list over time:", [(s["t"], s["out"]) for s in report["server_list"]])
    print("== newcomers:", report["newcomers"])
    print("== server.log tail:\n", (report["server.log"] or "")[-2500:])
    print("== control.log tail:\n", (report["control.log"] or "")[-1500:])
    print("== left after quit:", report["left_after_quit"] or "nothing")


if __name__ == "__main__":
    main()
