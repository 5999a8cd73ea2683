#!/usr/bin/env python3
"""The paper experiment without htex: N bare Python processes share one GPU.

    python3 benches/paper/bare.py --slots N --mode timeshare|mps [--completions 100]

- timeshare: every child gets CUDA_VISIBLE_DEVICES=<GPU UUID> and an empty private
  CUDA_MPS_PIPE_DIRECTORY (so no MPS daemon is reached; the driver time-slices the contexts).
- mps: a private MPS control daemon is started for the GPU (pipe and log directories in a short
  private directory under /tmp, CUDA_VISIBLE_DEVICES=<GPU UUID>), every child gets its pipe
  directory and CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100//N; the daemon is quit at the end and the
  driver checks that no MPS process it started is left.

Each child (bare_worker.py) builds the model, runs one warm-up completion and reports "ready" with
its cold start. Once all N are ready, the driver hands out the completions on demand (a free child
gets the next one), timing each from hand-out to answer, and prints ONE JSON line on stdout, of
the same shape as paper-client's (label bare-<mode>-<N>). Progress and child output go to stderr.
Exit status: 0 all completions succeeded, 1 some failed or something was left behind, 2 the run
could not start (no GPU, daemon, or a child not ready in time).
"""

import argparse
import datetime
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import llama_model  # noqa: E402  (cheap: torch is imported only when a model is built)

MPS_VARS = [
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_LOG_DIRECTORY",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    "CUDA_MPS_CLIENT_PRIORITY",
]


def log(msg):
    print("[bare %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def now_us():
    return time.time_ns() // 1000


def summary(values):
    """mean, p50, p95 (linear interpolation between ranks, as numpy) and max; None when empty."""
    if not values:
        return None
    xs = sorted(values)

    def q(p):
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return {"mean": round(sum(xs) / len(xs), 6), "p50": round(q(0.5), 6), "p95": round(q(0.95), 6),
            "max": round(xs[-1], 6)}


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in MPS_VARS}
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def run(cmd, env=None, timeout=30, stdin=None):
    """Runs a command; never raises. Returns {"rc", "stdout", "stderr"}."""
    try:
        r = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
        return {"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}
    except subprocess.TimeoutExpired as e:
        return {"rc": None, "timeout": True, "stdout": e.stdout or "", "stderr": e.stderr or ""}
    except OSError as e:
        return {"rc": None, "stdout": "", "stderr": str(e)}


def gpu_uuid(index):
    r = run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader", "-i", str(index)], timeout=30)
    lines = [l.strip() for l in (r["stdout"] or "").splitlines() if l.strip().startswith(("GPU-", "MIG-"))]
    return lines[0] if r["rc"] == 0 and lines else None


def mps_procs():
    """Every nvidia-cuda-mps-* process: {pid: "uid state cmdline"} (scans /proc)."""
    found = {}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
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
            if state != "Z":
                found[int(pid)] = "%d %s %s" % (uid, state, " ".join(argv) or "[%s]" % comm)
    return found


def block_cpus(n, per_slot=None):
    """The CPUs of n slots, in blocks of per_slot (default: an even split) of this process's."""
    available = sorted(os.sched_getaffinity(0))
    per_slot = per_slot or max(1, len(available) // n)
    if per_slot * n > len(available):
        raise Abort("%d slots with %d CPUs each need %d CPUs; %d available" % (n, per_slot, per_slot * n,
                                                                           len(available)))
    return [available[i * per_slot:(i + 1) * per_slot] for i in range(n)]


class Abort(Exception):
    """The run cannot go on (exit status 2)."""


class Daemon:
    """A private MPS control daemon for one GPU."""

    def __init__(self, uuid):
        # Short path: the sockets inside must fit AF_UNIX's ~107 bytes.
        self.root = tempfile.mkdtemp(prefix="bmps", dir="/tmp")
        self.pipe = os.path.join(self.root, "p")
        self.logs = os.path.join(self.root, "l")
        os.makedirs(self.pipe)
        os.makedirs(self.logs)
        self.uuid = uuid
        self.running = False

    def env(self):
        return clean_env(CUDA_VISIBLE_DEVICES=self.uuid, CUDA_MPS_PIPE_DIRECTORY=self.pipe,
                         CUDA_MPS_LOG_DIRECTORY=self.logs)

    def ctl(self, command, timeout=30):
        return run(["nvidia-cuda-mps-control"], env=self.env(), stdin=command + "\n", timeout=timeout)

    def start(self):
        r = run(["nvidia-cuda-mps-control", "-d"], env=self.env(), timeout=30)
        if r["rc"] != 0:
            raise RuntimeError("nvidia-cuda-mps-control -d failed: %s" % r)
        self.running = True
        deadline = time.monotonic() + 15
        while True:  # the daemon forks; wait until it answers
            q = self.ctl("get_default_active_thread_percentage", timeout=10)
            if q["rc"] == 0:
                return q["stdout"].strip()
            if time.monotonic() > deadline:
                raise RuntimeError("MPS daemon does not answer: %s" % q)
            time.sleep(0.1)

    def quit(self):
        if not self.running:
            return None
        self.running = False
        r = self.ctl("quit", timeout=30)
        return r

    def daemon_log(self):
        out = []
        for name in ("control.log", "server.log"):
            path = os.path.join(self.logs, name)
            try:
                with open(path, errors="replace") as f:
                    out.append("--- %s ---\n%s" % (path, f.read()[-20000:]))
            except OSError:
                pass
        return "\n".join(out)

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


class Child:
    """One bare_worker.py process and the thread that reads its answers."""

    def __init__(self, index, env, events, python, cpus=None):
        self.index = index
        self.spawned_at_us = now_us()
        env = dict(env, BARE_SLOT_INDEX=str(index), BARE_SPAWNED_AT_US=str(self.spawned_at_us),
                   PYTHONUNBUFFERED="1")
        if cpus:
            env["OMP_NUM_THREADS"] = str(len(cpus))  # as htex's manager does for a pinned slot
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        self.proc = subprocess.Popen([python, os.path.join(HERE, "bare_worker.py")], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                     text=True, bufsize=1, preexec_fn=pin)
        self.ready = None
        self.job = None  # (completion id, hand-out perf_counter)
        self.alive = True
        self.thread = threading.Thread(target=self._read, args=(events,), daemon=True)
        self.thread.start()

    def _read(self, events):
        for line in self.proc.stdout:
            t = time.perf_counter()
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                msg = {"event": "garbage", "line": line[:500]}
            events.put((self.index, t, msg))
        events.put((self.index, time.perf_counter(), {"event": "eof"}))

    def send(self, obj):
        try:
            self.proc.stdin.write(json.dumps(obj) + "\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def stop(self, timeout):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log("child %d (pid %d) did not exit within %ss of EOF: SIGKILL" % (self.index, self.proc.pid, timeout))
            self.proc.kill()
            return self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slots", type=int, required=True, help="child processes sharing the GPU")
    ap.add_argument("--mode", choices=["timeshare", "mps"], required=True)
    ap.add_argument("--completions", type=int, default=100)
    ap.add_argument("--gpu", default="0", help="nvidia-smi index of the GPU (default 0)")
    ap.add_argument("--gpu-uuid", help="the GPU's UUID (default: asked of nvidia-smi)")
    ap.add_argument("--label", help="default bare-<mode>-<N>")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--ready-timeout", type=float, default=420.0,
                    help="seconds for all children to build the model and warm up")
    ap.add_argument("--run-timeout", type=float, default=900.0, help="seconds for all completions")
    ap.add_argument("--task-timeout", type=float, default=300.0, help="seconds for one completion")
    ap.add_argument("--cpu-affinity", choices=["none", "block"], default="none",
                    help="block: child i is pinned to CPUs [i*k, (i+1)*k) of this process's, as "
                         "htex manager --cpu-affinity block")
    ap.add_argument("--cores-per-slot", type=int, help="k for --cpu-affinity block (default: CPUs / slots)")
    args = ap.parse_args()
    n = args.slots
    if n < 1 or args.completions < 1:
        ap.error("--slots and --completions must be at least 1")
    label = args.label or "bare-%s-%d" % (args.mode, n)
    record = {"system": "bare", "label": label, "mode": args.mode, "slots": n,
              "completions": args.completions,
              "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

    children, daemon, scratch = [], None, None
    pre_mps = mps_procs()
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    rc = 0
    try:
        uuid = args.gpu_uuid or gpu_uuid(args.gpu)
        if not uuid:
            raise Abort("no GPU UUID from nvidia-smi for GPU %s" % args.gpu)
        record["gpu_uuid"] = uuid
        if args.mode == "mps":
            daemon = Daemon(uuid)
            default_pct = daemon.start()
            log("MPS daemon started for %s (pipe %s, default percentage %s)" % (uuid, daemon.pipe, default_pct))
            env = clean_env(CUDA_VISIBLE_DEVICES=uuid, CUDA_MPS_PIPE_DIRECTORY=daemon.pipe,
                            CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=str(100 // n))
        else:
            scratch = tempfile.mkdtemp(prefix="bnomps", dir="/tmp")
            env = clean_env(CUDA_VISIBLE_DEVICES=uuid, CUDA_MPS_PIPE_DIRECTORY=scratch)

        # Start all children, wait until every one is ready (model built, one warm completion).
        events = queue.Queue()
        t_spawn = time.perf_counter()
        slot_cpus = block_cpus(n, args.cores_per_slot) if args.cpu_affinity == "block" else [None] * n
        record["cpu_affinity"] = args.cpu_affinity + ("/%d" % args.cores_per_slot if args.cores_per_slot else "")
        for i in range(n):
            children.append(Child(i, env, events, args.python, slot_cpus[i]))
        log("%s: started %d child(ren) %s; waiting for ready (limit %.0fs)"
            % (label, n, [c.proc.pid for c in children], args.ready_timeout))
        deadline = time.monotonic() + args.ready_timeout
        ready = 0
        while ready < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Abort("%d of %d children ready after %.0fs" % (ready, n, args.ready_timeout))
            try:
                i, _t, msg = events.get(timeout=min(left, 5.0))
            except queue.Empty:
                continue
            ev = msg.get("event")
            if ev == "ready":
                children[i].ready = msg
                ready += 1
                log("child %d ready: cold start %ss, warm completion %ss, %s SMs, MPS %% %s"
                    % (i, msg.get("cold_start_s"), msg.get("warm_generate_s"), msg.get("sm_count"),
                       msg.get("mps_percentage")))
            elif ev in ("failed", "eof", "garbage"):
                raise Abort("child %d before ready: %s" % (i, json.dumps(msg)[:500]))
        record["setup_wall_s"] = round(time.perf_counter() - t_spawn, 3)
        record["cold_starts"] = [c.ready for c in children]
        colds = [c.ready["cold_start_s"] for c in children if c.ready.get("cold_start_s") is not None]
        record["cold_start_s"] = {"mean": round(sum(colds) / len(colds), 3), "max": max(colds)} if colds else None

        # Hand out the completions on demand.
        todo = list(range(args.completions))
        todo.reverse()
        service, latency, execs, errors = [], [], [], []
        # One [completion, slot, answered_at_s (since the first hand-out), service_s, exec_s] per answer.
        samples = []
        per_slot = {str(i): 0 for i in range(n)}
        done = 0
        t0 = time.perf_counter()
        last = t0

        def hand_out(child):
            if todo and child.alive:
                cid = todo.pop()
                child.job = (cid, time.perf_counter())
                if not child.send({"id": cid}):
                    child.alive = False
                    errors.append("child %d: cannot send job %d" % (child.index, cid))
                    child.job = None

        for c in children:
            hand_out(c)
        deadline = time.monotonic() + args.run_timeout
        progress_every = max(1, args.completions // 10)
        while any(c.job for c in children):
            now = time.monotonic()
            if now > deadline:
                errors.append("run timeout: %d completions outstanding after %.0fs" % (
                    len(todo) + sum(1 for c in children if c.job), args.run_timeout))
                break
            for c in children:  # a completion past its own limit counts as failed
                if c.job and time.perf_counter() - c.job[1] > args.task_timeout:
                    errors.append("completion %d on child %d: no answer within %.0fs" % (c.job[0], c.index, args.task_timeout))
                    c.job, c.alive = None, False
                    c.proc.kill()
            try:
                i, t, msg = events.get(timeout=1.0)
            except queue.Empty:
                continue
            c = children[i]
            ev = msg.get("event")
            if ev == "eof":
                c.alive = False
                if c.job:
                    errors.append("child %d exited during completion %d (rc %s)" % (i, c.job[0], c.proc.poll()))
                    c.job = None
                continue
            if not c.job or msg.get("id") != c.job[0]:
                errors.append("child %d: unexpected message %s" % (i, json.dumps(msg)[:300]))
                continue
            cid, handed = c.job
            c.job = None
            if ev == "done" and msg.get("tokens") == llama_model.NEW_TOKENS:
                service.append(t - handed)
                latency.append(t - t0)
                execs.append(msg.get("exec_s"))
                samples.append([cid, str(i), round(t - t0, 6), round(t - handed, 6), msg.get("exec_s")])
                per_slot[str(i)] += 1
                done += 1
                last = t
                if done % progress_every == 0 or done == args.completions:
                    log("%s: %d/%d done, %.1fs" % (label, done, args.completions, t - t0))
            else:
                errors.append("completion %d on child %d: %s" % (cid, i, json.dumps(msg)[:300]))
            hand_out(c)
        failures = args.completions - done
        record.update({
            "ok": done,
            "failures": failures,
            "errors": errors[:10],
            "total_s": round(last - t0, 6),
            "throughput": round(done / (last - t0), 6) if done and last > t0 else None,
            "latency_s": summary(latency),
            "service_s": summary(service),
            "exec_s": summary([e for e in execs if e is not None]),
            "per_slot": per_slot,
            "samples": samples,
        })
        rc = 0 if failures == 0 else 1
    except Abort as e:
        record["error"] = str(e)
        rc = 2
    except KeyboardInterrupt as e:
        record["error"] = "interrupted (%s)" % e
        rc = 130
    except Exception as e:  # noqa: BLE001 - reported in the record
        record["error"] = "%s: %s" % (type(e).__name__, e)
        rc = 2
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for c in children:
            c.send({"quit": True})
        for c in children:
            c.stop(timeout=30)
        if daemon is not None:
            q = daemon.quit()
            if q is not None and q.get("rc") != 0:
                log("MPS quit answered %s" % q)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and set(mps_procs()) - set(pre_mps):
                time.sleep(0.25)
            left = {p: d for p, d in mps_procs().items() if p not in pre_mps}
            record["mps_leftover"] = sorted(left.values())
            if left:
                log("FAIL: MPS processes left after quit: %s; SIGKILL those of this uid" % left)
                for pid, desc in left.items():
                    if desc.split()[0] == str(os.getuid()):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                if rc == 0:
                    rc = 1
            else:
                log("MPS daemon quit; no MPS process of this run left")
            dlog = daemon.daemon_log()
            if dlog:
                print(dlog, file=sys.stderr, flush=True)
            daemon.remove()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return emit(record, rc)


def emit(record, rc):
    """Prints the record (the one stdout line) and returns the exit status."""
    if "ok" not in record:
        record.setdefault("ok", 0)
        record.setdefault("failures", record.get("completions"))
    print(json.dumps(record), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
