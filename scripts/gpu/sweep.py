#!/usr/bin/env python3
"""MPS facts on this GPU, without htex: SM count per active-thread percentage, and how
CUDA_MPS_PINNED_DEVICE_MEM_LIMIT may be keyed.

1. Starts a private MPS control daemon (`nvidia-cuda-mps-control -d`, pipe and log directories in
   a short private directory under /tmp, CUDA_VISIBLE_DEVICES=<GPU UUID>).
2. For p in 1..100 runs a child python (at most --parallel at a time) with
   CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=p that prints torch's multi_processor_count, and compares
   it with sms(p) = 2*floor(floor(N*p/100)/2) (N = SMs without MPS, 132 on an H100 SXM).
3. Children with CUDA_MPS_PINNED_DEVICE_MEM_LIMIT = <UUID>=2G, 0=2G, <UUID>=2048M (and a control
   without a limit) each try to allocate 3 GiB in 256 MiB chunks: did the limit hold, and what
   does torch.cuda.mem_get_info() say.
4. `quit`s the daemon and checks that no daemon or server it started is left.

Writes $OUT/sweep.json (all raw data) and $OUT/sweep.md (tables); prints the tables.
Never changes GPU settings (compute mode, MIG). Exit 0 when it ran to the end (mismatches are
reported, not fatal), 1 when a daemon was left behind, 2 when it could not run.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_SMS = 132
MPS_VARS = [
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_CLIENT_PRIORITY",
    "CUDA_MPS_ENABLE_PER_CTX_DEVICE_MULTIPROCESSOR_PARTITIONING",
]

# A child: CUDA context first (MPS limits apply to the context), then the device's view.
CHILD_SM = r"""
import json, sys, time
t = time.monotonic()
try:
    import torch
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    out = {"sm_count": p.multi_processor_count, "name": p.name, "total_memory": p.total_memory,
           "free": free, "total": total, "device_count": torch.cuda.device_count(),
           "torch": torch.__version__, "init_s": round(time.monotonic() - t, 3)}
    try:
        out["uuid"] = "GPU-" + str(p.uuid)
    except Exception:
        pass
    print(json.dumps(out))
except Exception as e:
    print(json.dumps({"error": (type(e).__name__ + ": " + str(e))[:2000]}))
    sys.exit(3)
"""

CHILD_MEM = r"""
import json, sys, time
target, chunk = int(sys.argv[1]), int(sys.argv[2])
out = {"target_bytes": target, "chunk_bytes": chunk, "allocated_bytes": 0, "failed": False, "error": None}
try:
    import torch
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    out["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
    free, total = torch.cuda.mem_get_info()
    out["mem_get_info_before"] = {"free": free, "total": total}
    chunks = []
    while out["allocated_bytes"] + chunk <= target:
        try:
            chunks.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
        except Exception as e:
            out["failed"] = True
            out["error_type"] = type(e).__name__
            out["error"] = str(e)[:1000]
            break
        out["allocated_bytes"] += chunk
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    out["mem_get_info_at_peak"] = {"free": free, "total": total}
    del chunks
    print(json.dumps(out))
except Exception as e:
    out["init_error"] = (type(e).__name__ + ": " + str(e))[:2000]
    print(json.dumps(out))
    sys.exit(3)
"""


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def log(msg):
    print("[sweep %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def predicted(n_sms, p):
    return 2 * ((n_sms * p // 100) // 2)


def mps_procs():
    """Every nvidia-cuda-mps-* process (daemon, server, zombies): list of dicts."""
    found = []
    for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
        try:
            with open("/proc/%s/comm" % pid) as f:
                comm = f.read().strip()
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open("/proc/%s/stat" % pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            uid = os.stat("/proc/%s" % pid).st_uid
        except (OSError, IndexError):
            continue
        argv0 = os.path.basename(argv[0]) if argv else ""
        if comm.startswith("nvidia-cuda-mps") or argv0.startswith("nvidia-cuda-mps"):
            found.append({"pid": int(pid), "uid": uid, "state": state,
                          "cmdline": " ".join(argv) or "[%s]" % comm})
    return found


INTERRUPTED = []  # the signal that stopped us, if any
RUNNING = set()  # children in flight, killed when we are stopped
STOPPING = threading.Event()


def run(cmd, env=None, timeout=30, stdin=None):
    """Runs a command; never raises. Returns a dict with rc/stdout/stderr."""
    if STOPPING.is_set():
        return {"rc": None, "stdout": "", "stderr": "skipped: stopping"}
    try:
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        return {"rc": None, "stdout": "", "stderr": str(e)}
    RUNNING.add(p)
    try:
        out, err = p.communicate(stdin, timeout=timeout)
        return {"rc": p.returncode, "stdout": out, "stderr": err}
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return {"rc": None, "timeout": True, "stdout": out or "", "stderr": err or ""}
    finally:
        RUNNING.discard(p)


def stop_children():
    STOPPING.set()
    for p in list(RUNNING):
        try:
            p.kill()
        except OSError:
            pass


def last_json(text):
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in MPS_VARS}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def tail(path, limit=20000):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError as e:
        return "(unreadable: %s)" % e
    return text if len(text) <= limit else "...[%d bytes cut]...\n" % (len(text) - limit) + text[-limit:]


def gpu_info(py):
    """Name, UUID, driver from nvidia-smi (GPU 0); UUID from torch as a fallback."""
    info = {}
    fields = "index,name,uuid,driver_version,memory.total,compute_mode,mig.mode.current"
    r = run(["nvidia-smi", "--query-gpu=" + fields, "--format=csv,noheader"], timeout=30)
    info["nvidia_smi"] = r
    lines = [l for l in (r.get("stdout") or "").splitlines() if l.strip()]
    if r.get("rc") == 0 and lines:
        parts = [x.strip() for x in lines[0].split(",")]
        info.update(dict(zip(fields.split(","), parts)))
        info["gpu_count"] = len(lines)
    u = run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"], timeout=30)
    ulines = [l.strip() for l in (u.get("stdout") or "").splitlines() if l.strip()]
    if u.get("rc") == 0 and ulines:
        info["uuid"] = ulines[0]
    return info


class Daemon:
    """A private MPS control daemon for one GPU."""

    def __init__(self, uuid):
        # Short path: the sockets inside must fit AF_UNIX's ~107 bytes.
        self.root = tempfile.mkdtemp(prefix="mps", dir="/tmp")
        self.pipe = os.path.join(self.root, "p")
        self.logs = os.path.join(self.root, "l")
        os.makedirs(self.pipe)
        os.makedirs(self.logs)
        self.uuid = uuid
        self.pid = None
        self.started = False

    def env(self):
        return clean_env(CUDA_VISIBLE_DEVICES=self.uuid, CUDA_MPS_PIPE_DIRECTORY=self.pipe,
                         CUDA_MPS_LOG_DIRECTORY=self.logs)

    def ctl(self, command, timeout=30):
        r = run(["nvidia-cuda-mps-control"], env=self.env(), stdin=command + "\n", timeout=timeout)
        r["command"] = command
        return r

    def start(self):
        r = run(["nvidia-cuda-mps-control", "-d"], env=self.env(), timeout=30)
        self.started = r.get("rc") == 0
        deadline = time.time() + 15
        pidfile = os.path.join(self.pipe, "nvidia-cuda-mps-control.pid")
        while self.started and time.time() < deadline:
            try:
                with open(pidfile) as f:
                    self.pid = int(f.read().strip())
                break
            except (OSError, ValueError):
                time.sleep(0.1)
        r["pid"] = self.pid
        return r

    def quit(self):
        """`quit`, then wait for the daemon and the servers it started to go. Returns a record."""
        record = {"quit": self.ctl("quit", timeout=30)}
        deadline = time.time() + 30
        while time.time() < deadline:
            if not self.alive():
                break
            time.sleep(0.25)
        record["daemon_gone"] = not self.alive()
        return record

    def alive(self):
        if self.pid is None:
            return False
        try:
            with open("/proc/%d/stat" % self.pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False


def sm_child(py, env, p, timeout):
    e = dict(env)
    if p is not None:
        e["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(p)
    t = time.monotonic()
    r = run([py, "-c", CHILD_SM], env=e, timeout=timeout)
    out = {"p": p, "rc": r.get("rc"), "wall_s": round(time.monotonic() - t, 3)}
    data = last_json(r.get("stdout"))
    if data:
        out.update(data)
    if r.get("rc") != 0:
        out["stderr_tail"] = (r.get("stderr") or "")[-1500:]
        if r.get("timeout"):
            out["error"] = "timeout after %ss" % timeout
    return out


def mem_child(py, env, label, limit, target, chunk, timeout):
    e = dict(env)
    if limit is not None:
        e["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = limit
    r = run([py, "-c", CHILD_MEM, str(target), str(chunk)], env=e, timeout=timeout)
    out = {"variant": label, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": limit, "rc": r.get("rc")}
    data = last_json(r.get("stdout"))
    if data:
        out.update(data)
    if r.get("rc") != 0:
        out["stderr_tail"] = (r.get("stderr") or "")[-1500:]
    if limit is not None:
        out["limit_held"] = bool(out.get("failed") and out.get("allocated_bytes", 0) <= 2 * GIB)
    else:
        out["limit_held"] = None
    return out


def compare(data):
    """Sorts the sweep and fills `predicted`, `mismatches`, `failed_percentages`."""
    n = data.get("n_sms") or DEFAULT_SMS
    data["sm_sweep"].sort(key=lambda r: r["p"])
    data["mismatches"], data["failed_percentages"] = [], []
    for r in data["sm_sweep"]:
        want = predicted(n, r["p"])
        r["predicted"] = want
        if r.get("sm_count") is None:
            data["failed_percentages"].append(r["p"])
        elif r["sm_count"] != want:
            data["mismatches"].append({"p": r["p"], "seen": r["sm_count"], "predicted": want})


def fmt_gib(b):
    return "-" if b is None else "%.2f GiB" % (b / GIB)


def markdown(data):
    n = data["n_sms"]
    lines = ["# MPS sweep", ""]
    if data.get("interrupted") or data.get("fatal"):
        lines += ["**Incomplete: %s**" % (data.get("fatal") or "stopped by signal %s" % data["interrupted"]), ""]
    g = data["gpu"]
    lines.append("- date: %s; host: %s" % (data["date"], data["host"]))
    lines.append("- GPU: %s, UUID %s, driver %s, compute mode %s, MIG %s" % (
        g.get("name", "?"), g.get("uuid", "?"), g.get("driver_version", "?"),
        g.get("compute_mode", "?"), g.get("mig.mode.current", "?")))
    base = data.get("baseline_no_mps") or {}
    lines.append("- SMs without MPS (private empty pipe dir): %s%s; torch %s" % (
        base.get("sm_count", "?"), "" if base.get("sm_count") else " (failed; using %d)" % n,
        base.get("torch", "?")))
    lines.append("- MPS processes before: %s" % (
        "; ".join("%(pid)s uid %(uid)s %(cmdline)s" % p for p in data["mps_before"]) or "none"))
    lines.append("- prediction: sms(p) = 2*floor(floor(%d*p/100)/2); **%d mismatch(es)**, %d failed child(ren)"
                 % (n, len(data["mismatches"]), len(data["failed_percentages"])))
    lines.append("")
    lines.append("## SMs per CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    lines.append("")
    lines.append("Row r, column c: p = r + c. Mismatch: **seen** (pred N).")
    lines.append("")
    lines.append("| p | " + " | ".join("+%d" % c for c in range(1, 11)) + " |")
    lines.append("|---|" + "---|" * 10)
    by_p = {r["p"]: r for r in data["sm_sweep"]}
    for row in range(0, 100, 10):
        cells = []
        for c in range(1, 11):
            p = row + c
            r = by_p.get(p)
            if r is None:
                cells.append("")
            elif r.get("sm_count") is None:
                cells.append("err")
            elif r["sm_count"] != predicted(n, p):
                cells.append("**%d** (pred %d)" % (r["sm_count"], predicted(n, p)))
            else:
                cells.append(str(r["sm_count"]))
        lines.append("| %d | " % row + " | ".join(cells) + " |")
    lines.append("")
    inverse = {}
    for r in sorted(data["sm_sweep"], key=lambda r: r["p"]):
        if r.get("sm_count") is not None:
            inverse.setdefault(r["sm_count"], r["p"])
    lines.append("Smallest p per SM count (seen): " + ", ".join(
        "%d→%d%%" % (s, p) for s, p in sorted(inverse.items())))
    lines.append("")
    if data["failed_percentages"]:
        lines.append("Failed children: " + "; ".join(
            "p=%s: %s" % (r["p"], str(r.get("error") or r.get("stderr_tail", ""))[:200].replace("\n", " "))
            for r in data["sm_sweep"] if r.get("sm_count") is None))
        lines.append("")
    lines.append("## CUDA_MPS_PINNED_DEVICE_MEM_LIMIT key (each child tries %s in %d MiB chunks)" % (
        fmt_gib(data["mem_target_bytes"]), data["mem_chunk_bytes"] // MIB))
    lines.append("")
    lines.append("| variant | value | allocated | failed | limit held | mem_get_info before (free/total) | at peak (free/total) | error |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in data["mem_keys"]:
        b = r.get("mem_get_info_before") or {}
        pk = r.get("mem_get_info_at_peak") or {}
        err = r.get("init_error") or r.get("error") or ""
        lines.append("| %s | `%s` | %s | %s | %s | %s / %s | %s / %s | %s |" % (
            r["variant"], r["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], fmt_gib(r.get("allocated_bytes")),
            r.get("failed"), r.get("limit_held"), fmt_gib(b.get("free")), fmt_gib(b.get("total")),
            fmt_gib(pk.get("free")), fmt_gib(pk.get("total")),
            str(err).splitlines()[0][:160].replace("|", "\\|") if err else ""))
    lines.append("")
    lines.append("## Daemon")
    lines.append("")
    d = data.get("daemon", {})
    lines.append("- started: %s (pid %s); quit rc %s; daemon gone: %s" % (
        d.get("started"), d.get("pid"), (d.get("quit") or {}).get("quit", {}).get("rc"),
        (d.get("quit") or {}).get("daemon_gone")))
    lines.append("- MPS processes after: %s" % (
        "; ".join("%(pid)s uid %(uid)s %(state)s %(cmdline)s" % p for p in data["mps_after"]) or "none"))
    lines.append("- left behind by this run: %s" % (
        ", ".join(str(p) for p in data["leftover_pids"]) or "none"))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(".device", "out"))
    ap.add_argument("--parallel", type=int, default=8, help="children at a time (<= 8 advised)")
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--last", type=int, default=100)
    ap.add_argument("--child-timeout", type=float, default=120.0)
    ap.add_argument("--python", default=sys.executable or "python3")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    py = args.python

    # SIGTERM/SIGINT/SIGHUP: unwind through `finally`, which quits the daemon.
    def on_signal(signum, _frame):
        log("signal %d: stopping children, then quitting the daemon" % signum)
        INTERRUPTED.append(signum)
        stop_children()
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_signal)

    data = {"date": now(), "host": os.uname().nodename, "python": sys.version.split()[0],
            "sm_sweep": [], "mem_keys": [], "mismatches": [], "failed_percentages": [],
            "leftover_pids": []}
    data["mps_before"] = mps_procs()
    before_pids = {p["pid"] for p in data["mps_before"]}
    if data["mps_before"]:
        log("MPS processes already running (left alone): %s" % data["mps_before"])
    data["gpu"] = gpu_info(py)
    uuid = data["gpu"].get("uuid")

    # Baseline: a client that cannot reach any MPS daemon (empty private pipe directory).
    scratch = tempfile.mkdtemp(prefix="nomps", dir="/tmp")
    try:
        base_env = clean_env(CUDA_MPS_PIPE_DIRECTORY=scratch, CUDA_VISIBLE_DEVICES=uuid)
        data["baseline_no_mps"] = sm_child(py, base_env, None, args.child_timeout)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not uuid and data["baseline_no_mps"].get("uuid"):
        uuid = data["gpu"]["uuid"] = data["baseline_no_mps"]["uuid"]
    n = data["baseline_no_mps"].get("sm_count") or DEFAULT_SMS
    data["n_sms"] = n
    log("GPU %s %s, %s SMs without MPS" % (data["gpu"].get("name"), uuid, n))
    if not uuid:
        log("no GPU UUID from nvidia-smi or torch; cannot continue")
        data["fatal"] = "no GPU UUID"
        write(args.out, data)
        return 2

    daemon = Daemon(uuid)
    data["daemon"] = {"root": daemon.root}
    rc = 0
    try:
        start = daemon.start()
        data["daemon"].update(started=daemon.started, pid=daemon.pid, start=start)
        if not daemon.started:
            log("nvidia-cuda-mps-control -d failed: %s" % start)
            data["fatal"] = "daemon did not start"
            return 2
        data["daemon"]["health"] = daemon.ctl("get_default_active_thread_percentage")
        log("private MPS daemon pid %s, pipe dir %s" % (daemon.pid, daemon.pipe))

        client_env = clean_env(CUDA_VISIBLE_DEVICES=uuid, CUDA_MPS_PIPE_DIRECTORY=daemon.pipe)
        percentages = list(range(args.first, args.last + 1))
        t0 = time.monotonic()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(args.parallel, 8)))
        try:
            futures = [pool.submit(sm_child, py, client_env, p, args.child_timeout) for p in percentages]
            # Collected as they finish, so an interrupted run keeps what it measured.
            for f in concurrent.futures.as_completed(futures):
                data["sm_sweep"].append(f.result())
        except BaseException:
            stop_children()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        data["sm_sweep_wall_s"] = round(time.monotonic() - t0, 1)
        data["daemon"]["server_list_after_sweep"] = daemon.ctl("get_server_list")
        compare(data)
        log("SM sweep done in %ss: %d mismatch(es), %d failure(s)" % (
            data["sm_sweep_wall_s"], len(data["mismatches"]), len(data["failed_percentages"])))
        by_p = {r["p"]: r for r in data["sm_sweep"]}
        for row in range(0, 100, 10):
            cells = [(p, by_p.get(p)) for p in range(row + 1, row + 11) if p in by_p]
            if cells:
                log("p %3d..%3d seen/predicted: %s" % (cells[0][0], cells[-1][0], "  ".join(
                    "%s/%d%s" % (r.get("sm_count", "err"), r["predicted"],
                                 "" if r.get("sm_count") == r["predicted"] else "!") for _, r in cells)))
        for m in data["mismatches"]:
            log("MISMATCH p=%(p)s: seen %(seen)s, predicted %(predicted)s" % m)

        target, chunk = 3 * GIB, 256 * MIB
        data["mem_target_bytes"], data["mem_chunk_bytes"] = target, chunk
        variants = [("uuid=2G", "%s=2G" % uuid), ("0=2G", "0=2G"),
                    ("uuid=2048M", "%s=2048M" % uuid), ("no limit (control)", None)]
        for label, value in variants:
            r = mem_child(py, client_env, label, value, target, chunk, args.child_timeout)
            data["mem_keys"].append(r)
            log("memory key %s: allocated %s, failed %s, limit held %s" % (
                label, fmt_gib(r.get("allocated_bytes")), r.get("failed"), r.get("limit_held")))
        data["daemon"]["server_list_at_end"] = daemon.ctl("get_server_list")
    finally:
        STOPPING.clear()  # the daemon's own `quit` must run
        if daemon.started:
            data["daemon"]["control_log"] = tail(os.path.join(daemon.logs, "control.log"))
            data["daemon"]["server_log"] = tail(os.path.join(daemon.logs, "server.log"))
            data["daemon"]["quit"] = daemon.quit()
            log("quit daemon: %s" % data["daemon"]["quit"])
        # Anything MPS that this run started and that is still there?
        deadline = time.time() + 15
        while time.time() < deadline:
            left = [p for p in mps_procs() if p["pid"] not in before_pids]
            if not left:
                break
            time.sleep(0.5)
        data["mps_after"] = mps_procs()
        left = [p for p in data["mps_after"] if p["pid"] not in before_pids]
        data["leftover_pids"] = [p["pid"] for p in left]
        if left:
            rc = 1
            log("FAIL: MPS processes left behind: %s; signalling ours" % left)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for p in left:
                    if p["uid"] == os.getuid():
                        try:
                            os.kill(p["pid"], sig)
                        except OSError:
                            pass
                time.sleep(2)
            data["mps_after_kill"] = mps_procs()
        shutil.rmtree(daemon.root, ignore_errors=True)
        write(args.out, data)
    return rc


def write(out_dir, data):
    if INTERRUPTED:
        data["interrupted"] = INTERRUPTED[0]
    compare(data)
    with open(os.path.join(out_dir, "sweep.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    data.setdefault("n_sms", DEFAULT_SMS)
    data.setdefault("mem_target_bytes", 3 * GIB)
    data.setdefault("mem_chunk_bytes", 256 * MIB)
    data.setdefault("mps_after", mps_procs())
    text = markdown(data)
    with open(os.path.join(out_dir, "sweep.md"), "w") as f:
        f.write(text)
    print(text, end="", flush=True)
    log("wrote %s and %s" % (os.path.join(out_dir, "sweep.json"), os.path.join(out_dir, "sweep.md")))


if __name__ == "__main__":
    sys.exit(main())
