#!/usr/bin/env bash
# Check htex GPU slots on a real GPU: for three manager configurations start an interchange and
# a manager from .device/htex, run scripts/gpu/probe.py once in every slot, stop both with
# SIGTERM and check that no MPS control daemon or server is left behind.
#
#   (a) --mps 0:50,25,25 --mps-mem 0:8G,4G,4G   3 MPS slots with pinned memory limits
#   (b) --mps-split 4                           4 MPS slots of 25 %
#   (c) --gpus all                              one whole-GPU slot per GPU
#   (d) (a) plus --mps-mem-key uuid             only when asked for: CONFIGS="a b c d"
#
# Run from anywhere; it works in the repository root. Writes into $OUT (default .device/out):
#   check-slots.log   everything: pre-checks, every process's output, status JSON, leftovers
#   check-slots.md    the summary tables (also printed on stdout)
#   check-slots.json  raw data: every result line, per-configuration facts, pre-checks
# Exit status: 0 all checks passed, 1 some check failed, 2 could not start at all.
# Tunables (environment): HTEX, PYTHON, HOLD_S, REG_TIMEOUT_S, TASK_TIMEOUT_S,
# SUBMIT_TIMEOUT_S, STOP_TIMEOUT_S, CONFIGS (e.g. "a c").
# Never changes GPU settings (compute mode, MIG); only MPS daemons this run created are touched.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
HTEX=${HTEX:-$REPO/.device/htex}
OUT=${OUT:-$REPO/.device/out}
PY=$(command -v "${PYTHON:-python3}" || true)
HOLD_S=${HOLD_S:-5}
REG_TIMEOUT_S=${REG_TIMEOUT_S:-90}
TASK_TIMEOUT_S=${TASK_TIMEOUT_S:-180}
SUBMIT_TIMEOUT_S=${SUBMIT_TIMEOUT_S:-300}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}
CONFIGS=${CONFIGS:-"a b c"}
PROBE=$REPO/scripts/gpu/probe.py

mkdir -p "$OUT"
LOG=$OUT/check-slots.log
MD=$OUT/check-slots.md
JSON=$OUT/check-slots.json
: >"$LOG"
WORK=$(mktemp -d /tmp/htexchk.XXXXXX)
MY_UID=$(id -u)

IC_PID=""
MGR_PID=""
SUBMIT_PID=""
CUR_DIR=""
PRE_MPS_PIDS=""

log() {
    printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG" >&2
}

# Appends a file to the log under a header (once per file).
log_file() {
    local title=$1 file=$2
    [[ -e "$file.logged" ]] && return 0
    {
        printf '\n===== %s (%s) =====\n' "$title" "$file"
        if [[ -f "$file" ]]; then cat "$file"; else echo "(missing)"; fi
        printf '===== end %s =====\n\n' "$title"
    } >>"$LOG"
    : >"$file.logged"
}

# One line per nvidia-cuda-mps-* process (control daemon, server, zombies included):
# "PID UID STATE ARGS". Scans /proc, so it never matches this script or pgrep itself.
mps_procs() {
    "$PY" - <<'EOF'
import os
for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        stat = open(f"/proc/{pid}/stat").read()
        uid = os.stat(f"/proc/{pid}").st_uid
    except OSError:
        continue
    argv = [a.decode(errors="replace") for a in argv if a]
    argv0 = os.path.basename(argv[0]) if argv else ""
    if comm.startswith("nvidia-cuda-mps") or argv0.startswith("nvidia-cuda-mps"):
        state = stat.rsplit(")", 1)[1].split()[0]
        print(pid, uid, state, " ".join(argv) or "[" + comm + "]")
EOF
}

mps_pids() { mps_procs | awk '{print $1}'; }

# PIDs of MPS processes that were not there before this script started.
new_mps_pids() {
    local pid
    for pid in $(mps_pids); do
        if ! grep -qx "$pid" <<<"$PRE_MPS_PIDS"; then echo "$pid"; fi
    done
}

# All descendants of a PID (children first-level and below).
descendants() {
    local parent=$1 child
    for child in $(ps -eo pid=,ppid= | awk -v p="$parent" '$2 == p {print $1}'); do
        echo "$child"
        descendants "$child"
    done
}

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

# stop_proc NAME PID: SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL it and its descendants.
# Sets STOP_RESULT="exit=<code> seconds=<s> forced=<yes|no>". Not to be called in $(...): only
# this shell can wait for its children.
STOP_RESULT=""
stop_proc() {
    local name=$1 pid=$2 start=$SECONDS rc=0 forced=no desc
    if ! alive "$pid"; then
        wait "$pid" 2>/dev/null || rc=$?
        STOP_RESULT="exit=$rc seconds=0 forced=no already-exited=yes"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while alive "$pid" && ((SECONDS - start < STOP_TIMEOUT_S)); do
        # A zombie child still answers kill -0; reap it if it is done.
        if [[ "$(ps -o stat= -p "$pid" 2>/dev/null || true)" == Z* ]]; then break; fi
        sleep 0.2
    done
    if alive "$pid" && [[ "$(ps -o stat= -p "$pid" 2>/dev/null || true)" != Z* ]]; then
        forced=yes
        desc=$(descendants "$pid" | tr '\n' ' ')
        log "$name (pid $pid) still running ${STOP_TIMEOUT_S}s after SIGTERM: SIGKILL it and descendants [$desc]"
        # shellcheck disable=SC2086
        kill -KILL "$pid" $desc 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || rc=$?
    STOP_RESULT="exit=$rc seconds=$((SECONDS - start)) forced=$forced"
}

# Quits MPS daemons that appeared during this run (owned by us) via their own pipe directory,
# then signals whatever is left. Never touches pre-existing daemons or other users' processes.
reap_new_mps() {
    local pid uid pipe
    for pid in $(new_mps_pids); do
        uid=$(stat -c %u "/proc/$pid" 2>/dev/null || echo "")
        [[ "$uid" == "$MY_UID" ]] || continue
        pipe=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^CUDA_MPS_PIPE_DIRECTORY=//p' | head -n1 || true)
        if [[ -n "$pipe" ]] && grep -q -- "-d" "/proc/$pid/cmdline" 2>/dev/null; then
            log "leftover MPS daemon $pid: sending quit via $pipe"
            echo quit | CUDA_MPS_PIPE_DIRECTORY=$pipe timeout 15 nvidia-cuda-mps-control >>"$LOG" 2>&1 || true
        fi
    done
    local deadline=$((SECONDS + 15))
    while [[ -n "$(new_mps_pids)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
    for pid in $(new_mps_pids); do
        uid=$(stat -c %u "/proc/$pid" 2>/dev/null || echo "")
        [[ "$uid" == "$MY_UID" ]] || continue
        log "leftover MPS process $pid still there: SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 2
    for pid in $(new_mps_pids); do
        uid=$(stat -c %u "/proc/$pid" 2>/dev/null || echo "")
        [[ "$uid" == "$MY_UID" ]] || continue
        log "leftover MPS process $pid still there: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

on_exit() {
    local rc=$?
    set +e
    if alive "$SUBMIT_PID"; then log "cleanup: stopping submit $SUBMIT_PID"; kill -TERM "$SUBMIT_PID" 2>/dev/null; fi
    if alive "$MGR_PID"; then
        log "cleanup: stopping manager $MGR_PID"
        stop_proc manager "$MGR_PID"
        log "cleanup: manager: $STOP_RESULT"
    fi
    if alive "$IC_PID"; then
        log "cleanup: stopping interchange $IC_PID"
        stop_proc interchange "$IC_PID"
        log "cleanup: interchange: $STOP_RESULT"
    fi
    if [[ -n "$PY" ]]; then
        local deadline=$((SECONDS + 10))
        while [[ -n "$(new_mps_pids 2>/dev/null)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
    fi
    if [[ -n "$PY" && -n "$(new_mps_pids 2>/dev/null)" ]]; then
        log "cleanup: MPS processes started during this run are still there:"
        mps_procs >>"$LOG" 2>&1
        reap_new_mps
    fi
    if [[ -n "$CUR_DIR" ]]; then
        log_file "interchange" "$CUR_DIR/interchange.log"
        log_file "manager" "$CUR_DIR/manager.log"
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap on_exit EXIT
trap 'log "SIGTERM received"; exit 143' TERM
trap 'log "SIGINT received"; exit 130' INT
trap 'log "SIGHUP received"; exit 129' HUP

# meta CONFIG KEY VALUE: one fact about a configuration, for the summary.
meta() { printf '%s\t%s\n' "$2" "$3" >>"$WORK/$1/meta.tsv"; }

# ---------------------------------------------------------------------------------------------
# Pre-checks
# ---------------------------------------------------------------------------------------------
log "check-slots: repo $REPO, htex $HTEX, OUT $OUT"
if [[ -z "$PY" ]]; then log "FATAL: no python3"; exit 2; fi
if [[ ! -x "$HTEX" ]]; then log "FATAL: $HTEX is missing or not executable"; exit 2; fi
{
    echo "date: $(date -Is)"
    echo "host: $(hostname)"
    echo "uid: $MY_UID"
    echo "htex --version: $(timeout 10 "$HTEX" --version 2>&1 || echo '(failed)')"
    echo "python: $PY $("$PY" --version 2>&1)"
    echo "--- nvidia-smi --query-gpu ---"
    timeout 30 nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,compute_mode,mig.mode.current \
        --format=csv 2>&1 || echo "(nvidia-smi failed)"
    echo "--- nvidia-smi -L ---"
    timeout 30 nvidia-smi -L 2>&1 || true
    echo "--- nvidia-cuda-mps-control: $(command -v nvidia-cuda-mps-control || echo 'NOT FOUND') ---"
    echo "--- /tmp/nvidia-mps (default pipe dir): $(ls -la /tmp/nvidia-mps 2>&1 | tr '\n' ' ')"
} >>"$LOG" 2>&1

PRE_MPS=$(mps_procs)
PRE_MPS_PIDS=$(awk '{print $1}' <<<"$PRE_MPS")
printf '%s\n' "$PRE_MPS" >"$WORK/pre-mps.txt"
if [[ -n "$PRE_MPS" ]]; then
    log "PRE-CHECK: MPS processes were already running before this script (left alone; continuing):"
    printf '%s\n' "$PRE_MPS" | tee -a "$LOG" >&2
else
    log "PRE-CHECK: no MPS daemon or server running before this script"
fi
echo "pgrep -af nvidia-cuda-mps (raw, before): $(pgrep -af nvidia-cuda-mps 2>&1 | tr '\n' ';' || true)" >>"$LOG"

# The GPU's full SM count and UUID, seen by a plain CUDA client that cannot reach any MPS daemon
# (its pipe directory is an empty private one).
mkdir -p "$WORK/nomps"
GPU_FACTS=$(env -u CUDA_MPS_ACTIVE_THREAD_PERCENTAGE -u CUDA_MPS_PINNED_DEVICE_MEM_LIMIT \
    CUDA_MPS_PIPE_DIRECTORY="$WORK/nomps" timeout 180 "$PY" -c '
import json, torch
torch.zeros(1, device="cuda")
p = torch.cuda.get_device_properties(0)
print(json.dumps({"sm_count": p.multi_processor_count, "name": p.name, "total_memory": p.total_memory,
                  "device_count": torch.cuda.device_count(), "torch": torch.__version__}))
' 2>>"$LOG" | tail -n1 || true)
log "PRE-CHECK: whole GPU without MPS: ${GPU_FACTS:-(failed; assuming 132 SMs)}"
printf '%s\n' "${GPU_FACTS:-{\}}" >"$WORK/gpu-facts.json"

# ---------------------------------------------------------------------------------------------
# One configuration
# ---------------------------------------------------------------------------------------------

# Not relying on set -e in here (it is off inside functions called from `||`): every step is
# checked explicitly, and a failed step ends this configuration, not the script.
run_config() {
    local name=$1 nslots=$2
    shift 2
    local dir=$WORK/$name
    mkdir -p "$dir"
    CUR_DIR=$dir
    : >"$dir/meta.tsv"
    meta "$name" flags "$*"
    meta "$name" slots_expected "$nslots"
    log "=== config $name: htex manager $* ($nslots slot(s)) ==="

    # Interchange.
    NO_COLOR=1 "$HTEX" interchange --addresses-file "$dir/addresses.json" >"$dir/interchange.log" 2>&1 &
    IC_PID=$!
    local ports="" deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
        ports=$("$PY" -c '
import json, sys
a = json.load(open(sys.argv[1]))
print(a["client"].rsplit(":", 1)[1], a["manager"].rsplit(":", 1)[1])
' "$dir/addresses.json" 2>/dev/null || true)
        [[ -n "$ports" ]] && break
        if ! alive "$IC_PID"; then break; fi
        sleep 0.2
    done
    if [[ -z "$ports" ]]; then
        log "config $name: interchange did not write its addresses file within 30 s"
        meta "$name" error "interchange did not start"
        return 1
    fi
    local cport mport
    read -r cport mport <<<"$ports"
    log "config $name: interchange pid $IC_PID, client port $cport, manager port $mport"

    # Manager. (A forced kill takes its descendants too, see stop_proc.)
    NO_COLOR=1 "$HTEX" manager --port "$mport" --interchange 127.0.0.1 \
        --manager-id "gpu-$name" "$@" >"$dir/manager.log" 2>&1 &
    MGR_PID=$!
    local registered=no t0=$SECONDS
    while ((SECONDS - t0 < REG_TIMEOUT_S)); do
        if grep -qF "manager registered" "$dir/manager.log"; then registered=yes; break; fi
        if ! alive "$MGR_PID"; then break; fi
        sleep 0.2
    done
    meta "$name" registered "$registered"
    meta "$name" registration_s "$((SECONDS - t0))"
    if [[ $registered != yes ]]; then
        if alive "$MGR_PID"; then
            log "config $name: manager not registered after ${REG_TIMEOUT_S}s"
            meta "$name" error "manager not registered after ${REG_TIMEOUT_S}s"
        else
            local rc=0
            wait "$MGR_PID" || rc=$?
            log "config $name: manager exited with status $rc before registering"
            meta "$name" error "manager exited ($rc) before registering"
        fi
        return 1
    fi
    log "config $name: manager pid $MGR_PID registered after $((SECONDS - t0))s"
    log "config $name: MPS processes now: $(mps_procs | tr '\n' ';')"
    timeout 20 "$HTEX" status --port "$cport" --json >"$dir/status.json" 2>>"$dir/submit.log" || true
    log_file "htex status --json (config $name, after registration)" "$dir/status.json"

    # One probe per slot, all at once.
    "$PY" - "$dir/tasks.jsonl" "$name" "$nslots" "$PY" "$PROBE" "$HOLD_S" "$TASK_TIMEOUT_S" <<'EOF'
import json, sys
path, name, n, py, probe, hold, timeout = sys.argv[1:8]
with open(path, "w") as f:
    for i in range(int(n)):
        f.write(json.dumps({
            "id": f"{name}-probe-{i}",
            "command": [py, probe, "--hold", hold],
            "timeout_s": float(timeout),
            "resources": {"gpu": True},
        }) + "\n")
EOF
    local src=0
    log "config $name: submitting $nslots probe(s)"
    # In the background: `wait` lets the signal traps run at once.
    timeout "$SUBMIT_TIMEOUT_S" "$HTEX" submit --port "$cport" --quiet --results "$dir/results.jsonl" \
        "$dir/tasks.jsonl" >>"$dir/submit.log" 2>&1 &
    SUBMIT_PID=$!
    wait "$SUBMIT_PID" || src=$?
    SUBMIT_PID=""
    meta "$name" submit_exit "$src"
    log "config $name: submit exited with $src; $(wc -l <"$dir/results.jsonl" 2>/dev/null || echo 0) result line(s)"
    log_file "htex submit output (config $name)" "$dir/submit.log"
    log_file "results (config $name)" "$dir/results.jsonl"
    return 0
}

# Stops the configuration's processes and checks that nothing MPS is left.
finish_config() {
    local name=$1 dir=$WORK/$1
    if [[ -n "$MGR_PID" ]]; then
        stop_proc manager "$MGR_PID"
        log "config $name: manager stopped: $STOP_RESULT"
        meta "$name" manager_stop "$STOP_RESULT"
    fi
    MGR_PID=""
    if [[ -n "$IC_PID" ]]; then
        stop_proc interchange "$IC_PID"
        log "config $name: interchange stopped: $STOP_RESULT"
        meta "$name" interchange_stop "$STOP_RESULT"
    fi
    IC_PID=""
    log_file "interchange (config $name)" "$dir/interchange.log"
    log_file "manager (config $name)" "$dir/manager.log"
    CUR_DIR=""

    # The manager quits its MPS daemons on exit; give the servers a moment to go.
    local deadline=$((SECONDS + 15))
    while [[ -n "$(new_mps_pids)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
    local left
    left=$(new_mps_pids | tr '\n' ' ')
    echo "pgrep -af nvidia-cuda-mps (raw, after config $name): $(pgrep -af nvidia-cuda-mps 2>&1 | tr '\n' ';' || true)" >>"$LOG"
    if [[ -n "${left// /}" ]]; then
        log "config $name: FAIL: MPS processes left after the manager exited: $left"
        mps_procs | tee -a "$LOG" >&2
        meta "$name" mps_leftover "$(mps_procs | awk -v l=" $left" 'index(l, " " $1 " ") {printf "%s;", $0}')"
        reap_new_mps
    else
        log "config $name: no MPS daemon or server left (pre-existing ones not counted)"
        meta "$name" mps_leftover ""
    fi
}

for c in $CONFIGS; do
    case $c in
        a) run_config a 3 --mps 0:50,25,25 --mps-mem 0:8G,4G,4G || true ;;
        b) run_config b 4 --mps-split 4 || true ;;
        c) run_config c 1 --gpus all || true ;;
        # Not run by default: (a) with ordinal-keyed pinned memory limits.
        d) run_config d 3 --mps 0:50,25,25 --mps-mem 0:8G,4G,4G --mps-mem-key uuid || true ;;
        *) log "unknown config '$c' (use a, b, c, d)"; continue ;;
    esac
    finish_config "$c"
done

POST_MPS=$(mps_procs)
printf '%s\n' "$POST_MPS" >"$WORK/post-mps.txt"
log "POST-CHECK: MPS processes at the end: ${POST_MPS:-(none)}"

# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
set +e
"$PY" - "$WORK" "$MD" "$JSON" "$CONFIGS" <<'EOF'
import json, os, sys

work, md_path, json_path, configs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
GIB = 1 << 30
SPECS = {  # what each configuration should give, slot by slot (slot index = position in the flag)
    "a": {"kind": "mps", "pct": [50, 25, 25], "mem": [8 * GIB, 4 * GIB, 4 * GIB]},
    "b": {"kind": "mps", "pct": [25] * 4, "mem": [None] * 4},
    "c": {"kind": "gpu", "pct": [None], "mem": [None]},
}
SPECS["d"] = SPECS["a"]
DECIMAL = {8 * GIB: 8 * 10**9, 4 * GIB: 4 * 10**9}

def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default

try:
    facts = json.loads(read(os.path.join(work, "gpu-facts.json"), "{}") or "{}")
except ValueError:
    facts = {}
N = facts.get("sm_count") or 132

def sms(p):
    return 2 * ((N * p // 100) // 2)

def to_int(v):
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None

def gib(b):
    return "-" if b is None else f"{b / GIB:.2f} GiB"

def short_uuid(text):
    if not text:
        return text
    import re
    return re.sub(r"(GPU|MIG)-([0-9a-f]{8})[0-9a-f-]+", r"\1-\2…", text)

pre = read(os.path.join(work, "pre-mps.txt")).strip()
post = read(os.path.join(work, "post-mps.txt")).strip()
rows, config_rows, raw, failures = [], [], {"gpu": facts, "pre_mps": pre, "post_mps": post, "configs": {}}, 0

for name in configs:
    if name not in SPECS:
        continue
    spec = SPECS[name]
    d = os.path.join(work, name)
    meta = {}
    for line in read(os.path.join(d, "meta.tsv")).splitlines():
        if "\t" in line:
            k, v = line.split("\t", 1)
            meta[k] = v
    results = []
    for line in read(os.path.join(d, "results.jsonl")).splitlines():
        line = line.strip()
        if line:
            try:
                results.append(json.loads(line))
            except ValueError:
                results.append({"unparsed": line})
    try:
        status = json.loads(read(os.path.join(d, "status.json")) or "null")
    except ValueError:
        status = None
    raw["configs"][name] = {"meta": meta, "results": results, "status": status}

    # Configuration-level checks.
    checks = []
    def check(ok, what):
        checks.append(("ok" if ok else "FAIL") + ": " + what)
        return ok
    n = len(spec["pct"])
    ok = check(meta.get("registered") == "yes", "manager registered" + ("" if meta.get("registered") == "yes" else f" ({meta.get('error', 'not started')})"))
    if status and status.get("managers"):
        adv = [s for m in status["managers"] for s in m.get("slots", []) if str(s.get("kind", "")).lower() != "cpu"]
        ok &= check(len(adv) == n, f"{len(adv)} GPU slot(s) advertised (want {n})")
    ok &= check(meta.get("submit_exit") == "0", f"submit exit {meta.get('submit_exit', '-')}")
    ok &= check(len(results) == n, f"{len(results)} result(s) (want {n})")
    slots = [r.get("slot") for r in results]
    ok &= check(len(set(slots)) == n and None not in slots, f"{len(set(s for s in slots if s))} distinct slot(s)")
    for key in ("manager_stop", "interchange_stop"):
        v = meta.get(key, "")
        ok &= check(v.startswith("exit=") and "forced=no" in v, f"{key.split('_')[0]} after SIGTERM: {v or 'not stopped'}")
    left = meta.get("mps_leftover", None)
    ok &= check(left == "", "no MPS process left" if left == "" else f"MPS left: {left or 'not checked'}")
    if not ok:
        failures += 1
    config_rows.append((name, meta.get("flags", ""), "PASS" if ok else "FAIL", "; ".join(checks)))

    if not results:
        rows.append((name, "-", "-", "-", "-", "-", "-", "-", meta.get("error", "no results"), "FAIL"))
        continue
    for r in sorted(results, key=lambda r: str(r.get("id"))):
        probe = None
        for line in (r.get("stdout") or "").splitlines():
            try:
                probe = json.loads(line)
            except ValueError:
                continue
        if probe is None:
            msg = r.get("message") or (r.get("stderr") or "").strip()[-200:] or "no probe output"
            rows.append((name, r.get("slot") or "-", "-", "-", "-", "-", "-", "-", f"{r.get('outcome')}: {msg}", "FAIL"))
            failures += 1
            continue
        env = probe.get("env", {})
        idx = to_int(env.get("HTEX_SLOT_INDEX"))
        kind = env.get("HTEX_SLOT_KIND")
        pct = to_int(env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"))
        seen = probe.get("multi_processor_count")
        htex_sms = to_int(env.get("HTEX_SLOT_SM_COUNT"))
        limit = to_int(env.get("HTEX_SLOT_MEMORY_BYTES"))
        pinned = env.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
        notes, good = [], True
        if kind != spec["kind"]:
            good = False; notes.append(f"kind {kind} != {spec['kind']}")
        # Slot index = position in the flag list (assumption; mismatches are reported, not guessed).
        want_pct = spec["pct"][idx] if idx is not None and 0 <= idx < n else None
        want_mem = spec["mem"][idx] if idx is not None and 0 <= idx < n else None
        if spec["kind"] == "mps":
            if pct is None:
                good = False; notes.append("no CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
            elif want_pct is not None and pct != want_pct:
                good = False; notes.append(f"percentage {pct} != {want_pct} for slot index {idx}")
            if to_int(env.get("HTEX_SLOT_MPS_PERCENTAGE")) != pct:
                notes.append(f"HTEX_SLOT_MPS_PERCENTAGE={env.get('HTEX_SLOT_MPS_PERCENTAGE')}")
            want_sms = sms(pct) if pct is not None else None
            if not env.get("CUDA_MPS_PIPE_DIRECTORY"):
                good = False; notes.append("no CUDA_MPS_PIPE_DIRECTORY")
        else:
            want_sms = N
            pipe = env.get("CUDA_MPS_PIPE_DIRECTORY")
            if pct is not None:
                good = False; notes.append(f"whole GPU slot has MPS percentage {pct}")
            if not pipe:
                notes.append("warn: no CUDA_MPS_PIPE_DIRECTORY (would join a daemon at /tmp/nvidia-mps)")
            elif pipe.rstrip("/") == "/tmp/nvidia-mps":
                notes.append("warn: pipe dir is the default /tmp/nvidia-mps")
        if seen is None:
            good = False; notes.append("CUDA: " + str(probe.get("cuda_error", "?"))[:160])
        elif want_sms is not None and seen != want_sms:
            good = False; notes.append(f"SMs {seen} != {want_sms}")
        if htex_sms is not None and seen is not None and htex_sms != seen:
            notes.append(f"HTEX_SLOT_SM_COUNT {htex_sms} != seen {seen}")
        cvd = env.get("CUDA_VISIBLE_DEVICES") or ""
        if not cvd.startswith("GPU-"):
            good = False; notes.append(f"CUDA_VISIBLE_DEVICES={cvd!r} is not a GPU UUID")
        if env.get("HTEX_SLOT_GPU_UUID") and env.get("HTEX_SLOT_GPU_UUID") != cvd:
            notes.append("HTEX_SLOT_GPU_UUID != CUDA_VISIBLE_DEVICES")
        if want_mem is not None:
            if limit == DECIMAL.get(want_mem):
                notes.append(f"note: HTEX_SLOT_MEMORY_BYTES {limit}: G read as 10^9, not 2^30")
            elif limit != want_mem:
                good = False; notes.append(f"HTEX_SLOT_MEMORY_BYTES {limit} != {want_mem}")
            if not pinned:
                good = False; notes.append("no CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
        a = probe.get("alloc") or {}
        if not a:
            alloc_text = "not run"
            good = False
        elif a.get("mode") == "limit":
            if a.get("limit_held"):
                alloc_text = f"failed after {gib(a['allocated_bytes'])} (limit held)"
            elif a.get("failed"):
                alloc_text = f"failed after {gib(a['allocated_bytes'])}, past the limit"
                good = False
            else:
                alloc_text = f"no failure up to {gib(a['allocated_bytes'])} (limit NOT enforced)"
                good = False
            if a.get("error") and not a.get("limit_held"):
                notes.append("error: " + a["error"].splitlines()[0][:120])
        else:
            alloc_text = f"{gib(a['allocated_bytes'])} ok" if not a.get("failed") else f"failed after {gib(a['allocated_bytes'])}: {str(a.get('error'))[:100]}"
            good &= not a.get("failed")
        mi = probe.get("mem_get_info") or {}
        pk = a.get("mem_get_info_at_peak") or {}
        if mi:
            notes.append(f"mem_get_info free {gib(mi.get('free'))} / total {gib(mi.get('total'))}"
                         + (f", at peak free {gib(pk.get('free'))}" if pk else ""))
        mem_text = gib(limit) + (f" ({short_uuid(pinned)})" if pinned else "")
        if not good:
            failures += 1
        rows.append((name, r.get("slot") or "-", kind or "-", "-" if pct is None else str(pct),
                     "-" if seen is None else str(seen), "-" if want_sms is None else str(want_sms),
                     "-" if htex_sms is None else str(htex_sms), mem_text, alloc_text,
                     ("PASS" if good else "FAIL") + ("" if not notes else "; " + "; ".join(notes))))

def esc(s):
    return str(s).replace("|", "\\|").replace("\n", " ")

lines = []
lines.append("# htex GPU slot check")
lines.append("")
lines.append(f"GPU: {facts.get('name', '?')}, {N} SMs without MPS" + ("" if facts.get("sm_count") else " (assumed; pre-check failed)")
             + f"; expected SMs for p % = 2*floor(floor({N}*p/100)/2).")
lines.append("")
lines.append("Pre-existing MPS processes: " + ("none" if not pre else "`" + pre.replace("\n", "; ") + "` (left alone)"))
lines.append("")
lines.append("| config | slot | kind | MPS % | SMs seen | SMs expected | HTEX_SLOT_SM_COUNT | memory limit | allocation | verdict |")
lines.append("|---|---|---|---|---|---|---|---|---|---|")
for row in rows:
    lines.append("| " + " | ".join(esc(x) for x in row) + " |")
lines.append("")
lines.append("| config | manager flags | verdict | checks |")
lines.append("|---|---|---|---|")
for row in config_rows:
    lines.append("| " + " | ".join(esc(x) for x in row) + " |")
lines.append("")
lines.append("MPS processes after all configurations: " + ("none" if not post else "`" + post.replace("\n", "; ") + "`"))
lines.append("")
lines.append(f"**Overall: {'PASS' if failures == 0 else f'FAIL ({failures} failing row(s)/config(s))'}**")
text = "\n".join(lines) + "\n"
with open(md_path, "w") as f:
    f.write(text)
raw["failures"] = failures
with open(json_path, "w") as f:
    json.dump(raw, f, indent=1, sort_keys=True)
print(text, end="")
sys.exit(1 if failures else 0)
EOF
SUMMARY_RC=$?
set -e
log "check-slots: done (summary exit $SUMMARY_RC); files: $LOG $MD $JSON"
exit "$SUMMARY_RC"
