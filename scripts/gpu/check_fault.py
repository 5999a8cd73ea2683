#!/usr/bin/env python3
"""An MPS fault through htex: a manager with three MPS slots (34/33/33 %) runs two bystander
tasks (matmul loops) and one faulter (a PTX kernel that stores to address 0). Expected: the
fault reaches every client of the GPU, so all three tasks end with GpuFault; the workers are
restarted and the slots serve again; no MPS daemon is left afterwards.

Run from the repository root with the htex binary in .device/htex. Writes $OUT/check-fault.json
and prints a summary.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

OUT = os.environ.get("OUT", ".")
HTEX = os.path.abspath(".device/htex")

BYSTANDER = r"""
import sys, time, torch
a = torch.randn(2048, 2048, device="cuda"); torch.cuda.synchronize()
end = time.time() + 12
while time.time() < end:
    try:
        b = a @ a; torch.cuda.synchronize()
    except Exception as e:
        print("bystander saw:", type(e).__name__, str(e).splitlines()[0], flush=True); sys.exit(1)
print("bystander finished cleanly", flush=True)
"""

FAULTER = r"""
import ctypes, sys, time, torch
torch.zeros(1, device="cuda"); torch.cuda.synchronize(); time.sleep(4)
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
m, f = ctypes.c_void_p(), ctypes.c_void_p()
cuda.cuModuleLoadData(ctypes.byref(m), ptx); cuda.cuModuleGetFunction(ctypes.byref(f), m, b"crash")
cuda.cuLaunchKernel(f, 1, 1, 1, 1, 1, 1, 0, None, None, None)
rc = cuda.cuCtxSynchronize()
print("faulter: cuCtxSynchronize returned", rc, flush=True)
time.sleep(2)
sys.exit(1)
"""


def main():
    work = tempfile.mkdtemp(prefix="htexfault")
    log = open(os.path.join(OUT, "check-fault.log"), "w")
    env = dict(os.environ, RUST_LOG="info")
    addresses = os.path.join(work, "addresses.json")
    procs = []
    report = {}
    try:
        ic = subprocess.Popen([HTEX, "interchange", "--addresses-file", addresses], stdout=log, stderr=log, env=env)
        procs.append(ic)
        for _ in range(100):
            if os.path.exists(addresses) and open(addresses).read().endswith("\n"):
                break
            time.sleep(0.05)
        ends = json.load(open(addresses))
        mport, cport = ends["manager"].rsplit(":", 1)[1], ends["client"].rsplit(":", 1)[1]
        mgr = subprocess.Popen([HTEX, "manager", "--port", mport, "--manager-id", "fault", "--mps", "0:34,33,33"], stdout=log, stderr=log, env=env)
        procs.append(mgr)
        time.sleep(2)
        tasks = os.path.join(work, "tasks.jsonl")
        with open(tasks, "w") as f:
            for i, code in enumerate([BYSTANDER, BYSTANDER, FAULTER]):
                name = "faulter" if i == 2 else f"bystander-{i}"
                f.write(json.dumps({"id": name, "command": [sys.executable, "-c", code], "timeout_s": 120}) + "\n")
        results = os.path.join(work, "results.jsonl")
        t0 = time.time()
        sub = subprocess.run([HTEX, "submit", "--quiet", "--port", cport, "--results", results, tasks], capture_output=True, text=True, timeout=240)
        report["submit_s"] = round(time.time() - t0, 2)
        report["submit_rc"] = sub.returncode
        report["results"] = [json.loads(l) for l in open(results)] if os.path.exists(results) else []
        mgr.send_signal(signal.SIGTERM)
        mgr.wait(timeout=30)
        ic.send_signal(signal.SIGTERM)
        ic.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        time.sleep(1)
        report["mps_left"] = subprocess.run(["pgrep", "-af", "nvidia-cuda-mps"], capture_output=True, text=True).stdout.strip()
        log.close()
    by_id = {r["id"]: r for r in report["results"]}
    verdict = {
        "all_gpufault": all(r.get("error") == "GpuFault" for r in report["results"]) and len(report["results"]) == 3,
        "no_daemon_left": not any("nvidia-cuda-mps-control" in l and "defunct" not in l for l in report["mps_left"].splitlines()),
    }
    report["verdict"] = verdict
    json.dump(report, open(os.path.join(OUT, "check-fault.json"), "w"), indent=1)
    for r in report["results"]:
        print(r["id"], r["outcome"], r.get("error"), "|", (r.get("message") or "")[:200], "|", (r.get("stdout") or "").strip()[:200], "| timings", r.get("timings_us"))
    print("submit took", report["submit_s"], "s; rc", report["submit_rc"])
    print("MPS processes left:", report["mps_left"] or "none")
    print("verdict:", verdict)


if __name__ == "__main__":
    main()
