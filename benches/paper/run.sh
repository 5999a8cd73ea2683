#!/usr/bin/env bash
# The paper experiment (LLaMa-2-7B-shaped inference, 1-4 instances on one GPU, time-sharing vs
# MPS) through htex and with bare Python processes, side by side. See benches/paper/README.md.
#
# Run from anywhere on the GPU machine; it works in the repository root. Needs .device/htex,
# .device/paper-client, python3 with torch + transformers, nvidia-smi, nvidia-cuda-mps-control.
#
# Selection (environment; split runs so that each call stays under the machine's time limit):
#   MODES="timeshare mps"  SLOTS="1 2 3 4"  SYSTEMS="htex bare"  COMPLETIONS=100  REPEAT=1
#   FIRST_REPEAT=1 (the number of the first repeat, to continue a series in another call)
# REPEAT times (the order of the systems alternating), for each mode, for each N, for each
# system, one run:
#   htex: interchange + manager (--gpus 0,...,0 (N times) or --mps-split N) with the warm runner
#         `llama=python3 -m htex_runner benches.paper.llama_runner`, then .device/paper-client;
#         both stopped with SIGTERM; no MPS process may be left.
#   bare: python3 benches/paper/bare.py --slots N --mode MODE.
# Appends one JSON line per run to $OUT/paper.jsonl (a failed run gets a line with "error"),
# everything else to $OUT/paper.log, and the machine's facts to $OUT/paper-env.txt.
# Exit status: 0 every run succeeded, 1 some run failed, 2 could not start.
# Tunables: HTEX, CLIENT, PYTHON, OUT, RUN_TIMEOUT_S (per run, default 480), REG_TIMEOUT_S,
# WARMUP_TIMEOUT_S, STOP_TIMEOUT_S, RUNNER_START (eager|lazy; default: the manager's, eager),
# MANAGER_EXTRA (more manager flags, e.g. `--inventory FILE --mps-control PROG` for a dry run),
# AFFINITY (none|block: pin each instance to its own CPUs, the same way in both systems; default
# none) and CORES_PER_SLOT (CPUs per instance with AFFINITY=block; default: an even split).
# Each run also records cpu_steal_pct: the share of CPU time the hypervisor took (/proc/stat).

set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
HTEX=${HTEX:-$REPO/.device/htex}
CLIENT=${CLIENT:-$REPO/.device/paper-client}
PY=$(command -v "${PYTHON:-python3}" || true)
OUT=${OUT:-$REPO/.device/out}
MODES=${MODES:-"timeshare mps"}
SLOTS=${SLOTS:-"1 2 3 4"}
SYSTEMS=${SYSTEMS:-"htex bare"}
COMPLETIONS=${COMPLETIONS:-100}
REPEAT=${REPEAT:-1}
FIRST_REPEAT=${FIRST_REPEAT:-1}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-480}
REG_TIMEOUT_S=${REG_TIMEOUT_S:-60}
WARMUP_TIMEOUT_S=${WARMUP_TIMEOUT_S:-300}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}
RUNNER_START=${RUNNER_START:-}
MANAGER_EXTRA=${MANAGER_EXTRA:-}
AFFINITY=${AFFINITY:-none}
CORES_PER_SLOT=${CORES_PER_SLOT:-}
AFFINITY_FLAGS=(--cpu-affinity "$AFFINITY")
[[ -n "$CORES_PER_SLOT" ]] && AFFINITY_FLAGS+=(--cores-per-slot "$CORES_PER_SLOT")

mkdir -p "$OUT"
LOG=$OUT/paper.log
JSONL=$OUT/paper.jsonl
ENVF=$OUT/paper-env.txt
touch "$LOG" "$JSONL"
WORK=$(mktemp -d /tmp/paper.XXXXXX)
MY_UID=$(id -u)
IC_PID=""
MGR_PID=""
MGR_STOP=""
CHILD_PID=""
RUN_DIR=""
PRE_MPS_PIDS=""
FAILED=0
CURRENT_RUN=""
rep=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" | tee -a "$LOG" >&2; }

# Appends a file to the log under a header.
log_file() {
    local title=$1 file=$2
    {
        printf '\n===== %s =====\n' "$title"
        if [[ -f "$file" ]]; then sed 's/\x1b\[[0-9;]*m//g' "$file"; else echo "(missing)"; fi
        printf '===== end %s =====\n\n' "$title"
    } >>"$LOG"
}

# "PID UID STATE ARGS" per nvidia-cuda-mps-* process (zombies left out); scans /proc.
mps_procs() {
    "$PY" - <<'EOF'
import os
for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
        argv = [a.decode(errors="replace") for a in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0") if a]
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        uid = os.stat(f"/proc/{pid}").st_uid
    except (OSError, IndexError):
        continue
    argv0 = os.path.basename(argv[0]) if argv else ""
    if (comm.startswith("nvidia-cuda-mps") or argv0.startswith("nvidia-cuda-mps")) and state != "Z":
        print(pid, uid, state, " ".join(argv) or "[" + comm + "]")
EOF
}

new_mps_pids() {
    local pid
    for pid in $(mps_procs | awk '{print $1}'); do
        grep -qx "$pid" <<<"$PRE_MPS_PIDS" || echo "$pid"
    done
}

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }

descendants() {
    local parent=$1 child
    for child in $(ps -eo pid=,ppid= | awk -v p="$parent" '$2 == p {print $1}'); do
        echo "$child"
        descendants "$child"
    done
}

# stop_proc NAME PID: SIGTERM, wait STOP_TIMEOUT_S, then SIGKILL it and its descendants.
STOP_RESULT=""
stop_proc() {
    local name=$1 pid=$2 start=$SECONDS rc=0 forced=no desc
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        while alive "$pid" && ((SECONDS - start < STOP_TIMEOUT_S)); do sleep 0.2; done
        if alive "$pid"; then
            forced=yes
            desc=$(descendants "$pid" | tr '\n' ' ')
            log "$name (pid $pid) still running ${STOP_TIMEOUT_S}s after SIGTERM: SIGKILL it and [$desc]"
            # shellcheck disable=SC2086
            kill -KILL "$pid" $desc 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || rc=$?
    STOP_RESULT="exit=$rc seconds=$((SECONDS - start)) forced=$forced"
}

# Quits MPS daemons of this uid that appeared during this script (via their own pipe
# directory), then signals what is left. Pre-existing daemons are never touched.
reap_new_mps() {
    local pid uid pipe
    for pid in $(new_mps_pids); do
        uid=$(stat -c %u "/proc/$pid" 2>/dev/null || echo "")
        [[ "$uid" == "$MY_UID" ]] || continue
        pipe=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^CUDA_MPS_PIPE_DIRECTORY=//p' | head -n1 || true)
        if [[ -n "$pipe" ]] && grep -q -- "-d" "/proc/$pid/cmdline" 2>/dev/null; then
            log "leftover MPS daemon $pid: quit via $pipe"
            echo quit | CUDA_MPS_PIPE_DIRECTORY=$pipe timeout 15 nvidia-cuda-mps-control >>"$LOG" 2>&1 || true
        fi
    done
    local deadline=$((SECONDS + 15))
    while [[ -n "$(new_mps_pids)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
    for pid in $(new_mps_pids); do
        uid=$(stat -c %u "/proc/$pid" 2>/dev/null || echo "")
        [[ "$uid" == "$MY_UID" ]] || continue
        log "leftover MPS process $pid: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

# After a run: wait for MPS processes of this script to go; report and reap any left.
# Sets MPS_LEFT (empty when clean).
MPS_LEFT=""
check_mps() {
    local what=$1 deadline=$((SECONDS + 20))
    while [[ -n "$(new_mps_pids)" ]] && ((SECONDS < deadline)); do sleep 0.5; done
    MPS_LEFT=$(new_mps_pids | tr '\n' ' ')
    MPS_LEFT=${MPS_LEFT% }
    if [[ -n "$MPS_LEFT" ]]; then
        log "$what: FAIL: MPS processes left: $(mps_procs | tr '\n' ';')"
        reap_new_mps
    else
        log "$what: no MPS process left"
    fi
}

stop_all() {
    if alive "$CHILD_PID"; then
        log "cleanup: stopping $CHILD_PID and its children"
        stop_proc client "$CHILD_PID"
    fi
    CHILD_PID=""
    if [[ -n "$MGR_PID" ]]; then
        stop_proc manager "$MGR_PID"
        MGR_STOP=$STOP_RESULT
        log "manager stopped: $STOP_RESULT"
    fi
    MGR_PID=""
    if [[ -n "$IC_PID" ]]; then stop_proc interchange "$IC_PID"; log "interchange stopped: $STOP_RESULT"; fi
    IC_PID=""
    if [[ -n "$RUN_DIR" ]]; then
        log_file "interchange log ($RUN_DIR)" "$RUN_DIR/interchange.log"
        log_file "manager log ($RUN_DIR)" "$RUN_DIR/manager.log"
    fi
    RUN_DIR=""
}

on_exit() {
    local rc=$?
    set +e
    if [[ -n "$CURRENT_RUN" ]]; then
        # A run cut short by a signal still gets its line.
        echo "{\"label\": \"$CURRENT_RUN\", \"repeat\": $rep, \"error\": \"run.sh stopped (exit $rc) during the run\"}" >>"$JSONL"
    fi
    stop_all
    if [[ -n "$PY" && -n "$(new_mps_pids 2>/dev/null)" ]]; then check_mps "exit"; fi
    rm -rf "$WORK"
    log "paper: done (exit $rc)"
    exit "$rc"
}
trap on_exit EXIT
trap 'log "SIGTERM received"; exit 143' TERM
trap 'log "SIGINT received"; exit 130' INT
trap 'log "SIGHUP received"; exit 129' HUP

# add_fields JSON_LINE KEY=VALUE... → the line with string fields added (never fails).
add_fields() {
    "$PY" - "$@" <<'EOF'
import json, sys
line, pairs = sys.argv[1], sys.argv[2:]
try:
    d = json.loads(line)
except ValueError:
    d = {"error": "unparsable line: " + line[:500]}
for p in pairs:
    k, _, v = p.partition("=")
    if k == "mps_leftover":
        d[k] = v.split() if v else []
    elif k in ("run_wall_s", "client_exit", "repeat", "slots", "completions", "cpu_steal_pct"):
        d.setdefault(k, float(v) if "." in v else int(v))
    else:
        d.setdefault(k, v)
print(json.dumps(d))
EOF
}

# "steal total" jiffies of all CPUs so far (/proc/stat).
cpu_jiffies() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print $9, t}' /proc/stat; }

# Percent of CPU time stolen by the hypervisor between two cpu_jiffies readings.
steal_pct() { awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.2f", (d > 0 ? 100 * (y[1] - x[1]) / d : 0)}'; }

# The last line of a file that is a JSON object (empty when none).
last_json() { grep -E '^\{' "$1" 2>/dev/null | tail -n1; }

gpu_mem() { timeout 20 nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null | head -n1; }

# ---------------------------------------------------------------------------------------------
log "paper: MODES='$MODES' SLOTS='$SLOTS' SYSTEMS='$SYSTEMS' COMPLETIONS=$COMPLETIONS REPEAT=$REPEAT AFFINITY=$AFFINITY CORES_PER_SLOT=$CORES_PER_SLOT OUT=$OUT"
if [[ -z "$PY" ]]; then log "FATAL: no python3"; exit 2; fi
# The interpreter itself, not a wrapper script (signals must reach it).
PY=$("$PY" -c 'import sys; print(sys.executable)' 2>/dev/null || echo "$PY")
for s in $SYSTEMS; do
    if [[ $s == htex ]]; then
        for b in "$HTEX" "$CLIENT"; do
            if [[ ! -x "$b" ]]; then log "FATAL: $b is missing or not executable"; exit 2; fi
        done
        if ! PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c 'import msgpack, htex_runner' 2>>"$LOG"; then
            log "FATAL: $PY cannot import msgpack and htex_runner (python/), which htex runners need"
            exit 2
        fi
    fi
done
{
    echo "=== $(date -Is) ==="
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(hostname)"
    echo "selection: MODES='$MODES' SLOTS='$SLOTS' SYSTEMS='$SYSTEMS' COMPLETIONS=$COMPLETIONS REPEAT=$REPEAT AFFINITY=$AFFINITY CORES_PER_SLOT=$CORES_PER_SLOT"
    q=$(timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,uuid,compute_mode,mig.mode.current --format=csv,noheader 2>&1 | head -n1)
    echo "device: $(cut -d, -f1 <<<"$q" | xargs)"
    echo "driver: $(cut -d, -f2 <<<"$q" | xargs)"
    echo "gpu: $q"
    echo "cuda (nvidia-smi): $(timeout 30 nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)"
    echo "cpus: $(nproc)"
    echo "python: $("$PY" --version 2>&1)"
    echo "packages: $(timeout 120 "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1 | tail -n1)"
    echo "htex: $(timeout 10 "$HTEX" --version 2>&1 || echo missing)"
    echo "git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >>"$ENVF" 2>&1
cat "$ENVF" >>"$LOG"

PRE_MPS=$(mps_procs)
PRE_MPS_PIDS=$(awk '{print $1}' <<<"$PRE_MPS")
if [[ -n "$PRE_MPS" ]]; then
    log "PRE-CHECK: MPS processes already running (left alone): $(tr '\n' ';' <<<"$PRE_MPS")"
    echo "pre-existing MPS: $PRE_MPS" >>"$ENVF"
else
    log "PRE-CHECK: no MPS process running"
fi
log "GPU memory used before: $(gpu_mem)"

# run_htex MODE N
run_htex() {
    local mode=$1 n=$2 label="htex-$1-$2" t0=$SECONDS
    MGR_STOP=""
    RUN_DIR=$WORK/$label
    mkdir -p "$RUN_DIR"
    local dir=$RUN_DIR
    NO_COLOR=1 "$HTEX" interchange --addresses-file "$dir/addresses.json" >"$dir/interchange.log" 2>&1 &
    IC_PID=$!
    local ports="" deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && alive "$IC_PID"; do
        ports=$("$PY" -c 'import json,sys; a=json.load(open(sys.argv[1])); print(a["client"], a["manager"].rsplit(":",1)[1])' \
            "$dir/addresses.json" 2>/dev/null || true)
        [[ -n "$ports" ]] && break
        sleep 0.2
    done
    if [[ -z "$ports" ]]; then
        log "$label: interchange wrote no addresses within 30 s"
        RUN_LINE='{"error": "interchange did not start"}'
        stop_all
        return 1
    fi
    local endpoint mport
    read -r endpoint mport <<<"$ports"
    local slotflags
    if [[ $mode == timeshare ]]; then
        slotflags=(--gpus "$(printf '0%.0s,' $(seq "$n") | sed 's/,$//')")
    else
        slotflags=(--mps-split "$n")
    fi
    local startflags=()
    [[ -n "$RUNNER_START" ]] && startflags=(--runner-start "$RUNNER_START")
    # shellcheck disable=SC2206
    [[ -n "$MANAGER_EXTRA" ]] && startflags+=($MANAGER_EXTRA)
    log "$label: interchange $endpoint (pid $IC_PID); manager ${slotflags[*]}"
    PYTHONPATH="$REPO/python:$REPO${PYTHONPATH:+:$PYTHONPATH}" NO_COLOR=1 \
        "$HTEX" manager --port "$mport" --interchange 127.0.0.1 --manager-id paper \
        --runner "llama=$PY -m htex_runner benches.paper.llama_runner" "${startflags[@]}" "${AFFINITY_FLAGS[@]}" \
        "${slotflags[@]}" >"$dir/manager.log" 2>&1 &
    MGR_PID=$!
    # In the background so that the traps run at once; stderr (progress) straight into the log.
    timeout --kill-after=10 "$RUN_TIMEOUT_S" "$CLIENT" --endpoint "$endpoint" --slots "$n" \
        --completions "$COMPLETIONS" --barrier-dir "$dir/barrier" --label "$label" --mode "$mode" \
        --register-timeout-s "$REG_TIMEOUT_S" --warmup-timeout-s "$WARMUP_TIMEOUT_S" \
        --run-timeout-s "$RUN_TIMEOUT_S" >"$dir/client.out" 2>>"$LOG" &
    CHILD_PID=$!
    local crc=0
    wait "$CHILD_PID" || crc=$?
    CHILD_PID=""
    log "$label: paper-client exited $crc after $((SECONDS - t0))s; GPU memory used: $(gpu_mem)"
    RUN_LINE=$(last_json "$dir/client.out")
    [[ -n "$RUN_LINE" ]] || RUN_LINE="{\"error\": \"paper-client exited $crc without a result line\"}"
    stop_all
    check_mps "$label"
    RUN_LINE=$(add_fields "$RUN_LINE" "system=htex" "mode=$mode" "slots_flag=${slotflags[*]}" \
        "manager_stop=$MGR_STOP" "mps_leftover=$MPS_LEFT" "run_wall_s=$((SECONDS - t0))" "client_exit=$crc")
    [[ $crc -eq 0 && -z "$MPS_LEFT" ]]
}

# run_bare MODE N
run_bare() {
    local mode=$1 n=$2 label="bare-$1-$2" t0=$SECONDS dir=$WORK/bare-$1-$2
    mkdir -p "$dir"
    log "$label: bare.py --slots $n --mode $mode"
    timeout --kill-after=10 "$RUN_TIMEOUT_S" "$PY" "$REPO/benches/paper/bare.py" --slots "$n" --mode "$mode" "${AFFINITY_FLAGS[@]}" \
        --completions "$COMPLETIONS" --label "$label" --ready-timeout "$WARMUP_TIMEOUT_S" \
        --run-timeout "$RUN_TIMEOUT_S" >"$dir/out" 2>>"$LOG" &
    CHILD_PID=$!
    local crc=0
    wait "$CHILD_PID" || crc=$?
    CHILD_PID=""
    log "$label: bare.py exited $crc after $((SECONDS - t0))s; GPU memory used: $(gpu_mem)"
    RUN_LINE=$(last_json "$dir/out")
    [[ -n "$RUN_LINE" ]] || RUN_LINE="{\"error\": \"bare.py exited $crc without a result line\"}"
    check_mps "$label"
    RUN_LINE=$(add_fields "$RUN_LINE" "system=bare" "mode=$mode" "mps_leftover=$MPS_LEFT" \
        "run_wall_s=$((SECONDS - t0))" "client_exit=$crc")
    [[ $crc -eq 0 && -z "$MPS_LEFT" ]]
}

# Repeats alternate the order of the systems (htex bare, bare htex, ...) so that a drift of the
# machine does not favour one of them.
REVERSED=$(printf '%s\n' $SYSTEMS | tac | tr '\n' ' ')
for ((rep = FIRST_REPEAT; rep < FIRST_REPEAT + REPEAT; rep++)); do
for mode in $MODES; do
    case $mode in timeshare | mps) ;; *) log "unknown mode '$mode' (timeshare, mps)"; FAILED=1; continue ;; esac
    for n in $SLOTS; do
        order=$SYSTEMS
        ((rep % 2 == 0)) && order=$REVERSED
        for system in $order; do
            RUN_LINE=""
            ok=0
            jiffies_before=$(cpu_jiffies)
            CURRENT_RUN=$system-$mode-$n
            case $system in
                htex) run_htex "$mode" "$n" || ok=$? ;;
                bare) run_bare "$mode" "$n" || ok=$? ;;
                *) log "unknown system '$system' (htex, bare)"; FAILED=1; continue ;;
            esac
            RUN_LINE=$(add_fields "${RUN_LINE:-{\}}" "label=$system-$mode-$n" "system=$system" "mode=$mode" \
                "slots=$n" "completions=$COMPLETIONS" "repeat=$rep" "cpu_affinity=$AFFINITY${CORES_PER_SLOT:+/$CORES_PER_SLOT}" \
                "cpu_steal_pct=$(steal_pct "$jiffies_before" "$(cpu_jiffies)")")
            echo "$RUN_LINE" >>"$JSONL"
            CURRENT_RUN=""
            summary=$("$PY" -c '
import json, sys
d = json.loads(sys.argv[1])
lat = d.get("service_s") or {}
print("%s: ok %s/%s, total %s s, throughput %s /s, service mean %s s, cold start %s%s" % (
    d.get("label"), d.get("ok"), d.get("completions"), d.get("total_s"), d.get("throughput"),
    lat.get("mean"), (d.get("cold_start_s") or {}).get("max"),
    ", ERROR " + d["error"] if d.get("error") else ""))' "$RUN_LINE" 2>&1)
            log "RESULT $summary"
            if [[ $ok -ne 0 ]]; then FAILED=1; fi
        done
    done
done
done

exit "$FAILED"
