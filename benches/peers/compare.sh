#!/usr/bin/env bash
# Side-by-side throughput of htex against its peers, in one run on this machine:
#   1. Parsl's HighThroughputExecutor running parsl-perf's no-op app  vs  `htex bench` (no-op);
#   2. HyperQueue running N `true` processes                          vs  `htex run` of N ["true"] commands.
# Prints one JSON line per comparison plus a short table, and appends the lines to
# benches/peers/results-<date>.jsonl. See benches/peers/README.md for what is fair about each.
#
# Environment knobs (all optional):
#   W=2               workers (Parsl max_workers_per_node, htex --workers, HyperQueue worker cpus)
#   T=20              parsl-perf --time (target seconds of its last iteration)
#   N_NOOP=           tasks for `htex bench`; empty = calibrate so that the run lasts >= 5 s
#   N_CMD=10000       `true` tasks for HyperQueue and for `htex run`
#   PARSL_VERSION=2026.10.26  HQ_VERSION=0.27.0   pinned PyPI versions installed into the venv
#   PYTHON=python3    interpreter that creates benches/peers/.venv
#   SKIP_HQ=1         skip the HyperQueue comparison
#   HTEX_BIN=         use this htex binary instead of building target/release/htex
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=${W:-2}
T=${T:-20}
N_NOOP=${N_NOOP:-}
N_CMD=${N_CMD:-10000}
PARSL_VERSION=${PARSL_VERSION:-2026.10.26}
HQ_VERSION=${HQ_VERSION:-0.27.0}
PYTHON=${PYTHON:-python3}
SKIP_HQ=${SKIP_HQ:-0}
VENV="$HERE/.venv"
PHASE_TIMEOUT=900

WORK=$(mktemp -d "${TMPDIR:-/tmp}/htex-peers.XXXXXX")
PGIDS=() # process group of the phase in flight (phases run one at a time)

# Every phase runs in its own session (setsid), so its whole process tree (Parsl's interchange and
# worker pool, htex's interchange/managers/workers, HyperQueue's task processes) is one process
# group that the trap can kill by id.
# end_group PGID: TERM, up to 2 s of grace, then KILL.
end_group() {
    kill -TERM -- "-$1" 2>/dev/null || return 0
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        kill -0 -- "-$1" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL -- "-$1" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local g
    for g in "${PGIDS[@]}"; do end_group "$g"; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log() { printf '[compare %3ds] %s\n' "$SECONDS" "$*" >&2; }

# run_phase LOG CMD...: runs CMD in a new session (stdout+stderr to LOG), waits, returns its status.
run_phase() {
    local out=$1
    shift
    setsid timeout "$PHASE_TIMEOUT" "$@" </dev/null >"$out" 2>&1 &
    local pid=$!
    PGIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    # Anything the phase left behind in its group goes now; then the id is forgotten, so the trap
    # never signals a group id that the system may have handed to someone else since.
    end_group "$pid"
    PGIDS=()
    return "$rc"
}

now() { date +%s.%N; }

# ---------------------------------------------------------------- virtualenv, Parsl, HyperQueue
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
export PATH="$VENV/bin:$PATH" # parsl-perf starts interchange.py and process_worker_pool.py from PATH
export PIP_DISABLE_PIP_VERSION_CHECK=1

installed_version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

if [[ "$(installed_version parsl)" != "$PARSL_VERSION" ]]; then
    log "installing parsl==$PARSL_VERSION"
    "$PY" -m pip install -q "parsl==$PARSL_VERSION"
fi
PARSL_GOT=$(installed_version parsl)
log "parsl $PARSL_GOT ($("$PY" -c 'import parsl; print(parsl.__file__)'))"

HQ_REASON=""
if [[ "$SKIP_HQ" == 1 ]]; then
    HQ_REASON="skipped (SKIP_HQ=1)"
elif [[ "$(installed_version hyperqueue)" != "$HQ_VERSION" ]]; then
    log "installing hyperqueue==$HQ_VERSION"
    if ! "$PY" -m pip install -q "hyperqueue==$HQ_VERSION" >"$WORK/pip-hq.log" 2>&1; then
        HQ_REASON="pip install hyperqueue==$HQ_VERSION failed: $(tail -n 3 "$WORK/pip-hq.log" | tr '\n' ' ')"
    fi
fi
HQ_GOT=$(installed_version hyperqueue)
if [[ -z "$HQ_REASON" ]]; then
    if ! "$PY" -c 'from hyperqueue.cluster import LocalCluster' >"$WORK/hq-import.log" 2>&1; then
        HQ_REASON="hyperqueue $HQ_GOT does not import here: $(tail -n 3 "$WORK/hq-import.log" | tr '\n' ' ')"
    fi
fi
if [[ -x "$VENV/bin/hq" ]]; then
    HQ_BIN_NOTE="$VENV/bin/hq exists but is not used: the embedded cluster is used so the run is the same everywhere"
else
    HQ_BIN_NOTE="the hyperqueue $HQ_GOT wheel installs no hq executable (its Rust server and worker are inside hyperqueue/hyperqueue.abi3.so); used hyperqueue.cluster.LocalCluster"
fi
[[ -n "$HQ_GOT" ]] && log "hyperqueue $HQ_GOT: $HQ_BIN_NOTE"

# ---------------------------------------------------------------- htex
if [[ -n "${HTEX_BIN:-}" ]]; then
    HTEX=$HTEX_BIN
else
    log "building htex (cargo build --release -p htex)"
    run_phase "$WORK/cargo.log" cargo build --release -p htex --manifest-path "$ROOT/Cargo.toml" || {
        tail -n 30 "$WORK/cargo.log" >&2
        log "cargo build failed; fix the build or pass a built binary as HTEX_BIN=..."
        exit 1
    }
    HTEX="$ROOT/target/release/htex"
fi
HTEX_VERSION=$("$HTEX" --version)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git -C "$ROOT" status --porcelain -- htex interchange manager worker protocol client 2>/dev/null)" ]]; then
    GIT_REV="$GIT_REV+dirty"
fi

DATE=$(date -u +%F)
STAMP=$(date -u +%FT%TZ)
RESULTS="$HERE/results-$DATE.jsonl"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "W=$W T=$T N_CMD=$N_CMD, $(nproc) cores, load $LOAD_START, work dir $WORK"
cd "$WORK" # Parsl writes runinfo/ and HyperQueue its files under the current directory

# ---------------------------------------------------------------- 1a. Parsl: parsl-perf
log "parsl-perf --time $T on HighThroughputExecutor (max_workers_per_node=$W)"
PARSL_RC=0
PEERS_WORKERS=$W PEERS_RUN_DIR="$WORK/runinfo" \
    run_phase "$WORK/parsl-perf.log" parsl-perf --config "$HERE/parsl_htex_config.py" --time "$T" || PARSL_RC=$?
# tasks/s of every iteration; the last one is the measurement (it ran about T seconds).
"$PY" - "$WORK/parsl-perf.log" "$PARSL_RC" >"$WORK/parsl.json" <<'EOF'
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
iterations = []
for block in re.split(r"^==== Iteration \d+ ====$", text, flags=re.M)[1:]:
    n = re.search(r"Will run (\d+) tasks", block)
    rt = re.search(r"Runtime: actual ([0-9.]+)s", block)
    tps = re.search(r"Tasks per second: ([0-9.]+)", block)
    if n and rt and tps:
        iterations.append({"tasks": int(n.group(1)), "wall_s": float(rt.group(1)),
                           "tasks_per_s": float(tps.group(1))})
out = {"system": "parsl-htex", "tool": "parsl-perf", "exit_code": int(sys.argv[2]),
       "iterations": iterations}
if iterations:
    last = iterations[-1]
    out.update(tasks=last["tasks"], wall_s=last["wall_s"], tasks_per_s=last["tasks_per_s"])
else:
    out["error"] = "no 'Tasks per second' line in parsl-perf output: " + " | ".join(text.strip().splitlines()[-5:])
print(json.dumps(out))
EOF
if ! "$PY" -c 'import json,sys; sys.exit(0 if "tasks_per_s" in json.load(open(sys.argv[1])) else 1)' "$WORK/parsl.json"; then
    log "parsl-perf gave no result (exit $PARSL_RC); its output:"
    tail -n 30 "$WORK/parsl-perf.log" >&2
fi

# ---------------------------------------------------------------- 1b. htex bench (no-op)
# htex_bench N [FLAGS...]: sets BENCH to the JSON line of `htex bench --tasks N FLAGS` (not run in
# $(...), so that its process group is registered with the trap).
htex_bench() {
    local n=$1
    shift
    run_phase "$WORK/bench.log" "$HTEX" bench --tasks "$n" --managers 1 --workers "$W" "$@" || {
        log "htex bench --tasks $n $* failed:"
        tail -n 20 "$WORK/bench.log" >&2
        return 1
    }
    BENCH=$(grep '^{' "$WORK/bench.log" | tail -n 1)
}
json_get() { "$PY" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

if [[ -z "$N_NOOP" ]]; then
    htex_bench 20000
    RATE=$(json_get "$BENCH" tasks_per_s)
    # 8 s worth at the probe's rate, in tens of thousands, at least 50,000.
    N_NOOP=$("$PY" -c "import math; print(max(50000, math.ceil($RATE * 8 / 10000) * 10000))")
    log "htex bench probe: $RATE tasks/s; measuring with --tasks $N_NOOP"
fi
for attempt in 1 2 3; do
    htex_bench "$N_NOOP"
    HTEX_NOOP=$BENCH
    WALL=$(json_get "$HTEX_NOOP" wall_s)
    if "$PY" -c "import sys; sys.exit(0 if $WALL >= 5 else 1)" || [[ $attempt == 3 ]]; then break; fi
    N_NOOP=$("$PY" -c "import math; print(math.ceil($N_NOOP * 6.5 / $WALL / 10000) * 10000)")
    log "htex bench ran only $WALL s; again with --tasks $N_NOOP"
done
printf '%s\n' "$HTEX_NOOP" >"$WORK/htex-noop.json"
# The same N again with CURVE on both interchange ports, as Parsl's default encrypts its sockets.
log "htex bench --tasks $N_NOOP --encrypted"
if htex_bench "$N_NOOP" --encrypted; then
    printf '%s\n' "$BENCH" >"$WORK/htex-noop-encrypted.json"
fi

# ---------------------------------------------------------------- 2a. HyperQueue (N `true` processes)
if [[ -z "$HQ_REASON" ]]; then
    log "HyperQueue: $N_CMD x true, 1 worker with $W cpus"
    if ! run_phase "$WORK/hq.log" "$PY" "$HERE/hq_true.py" "$N_CMD" "$W" "$WORK/hq.json"; then
        HQ_REASON="hq_true.py failed: $(tail -n 5 "$WORK/hq.log" | tr '\n' ' ')"
        log "$HQ_REASON"
    fi
fi
[[ -n "$HQ_REASON" ]] && log "HyperQueue not measured: $HQ_REASON"

# ---------------------------------------------------------------- 2b. htex run (N ["true"] commands)
log "htex run: $N_CMD x [\"true\"], 1 manager with $W workers"
"$PY" -c "
import json, sys
with open(sys.argv[1], 'w') as f:
    for i in range($N_CMD):
        f.write(json.dumps({'id': i, 'command': ['true']}) + '\n')
" "$WORK/true.jsonl"
T0=$(now)
HTEX_RUN_RC=0
run_phase "$WORK/htex-run.log" "$HTEX" run "$WORK/true.jsonl" --managers 1 --workers "$W" --quiet \
    --results "$WORK/htex-run-results.jsonl" || HTEX_RUN_RC=$?
T1=$(now)
"$PY" - "$WORK/htex-run.log" "$HTEX_RUN_RC" "$T0" "$T1" "$N_CMD" "$W" >"$WORK/htex-run.json" <<'EOF'
import json, re, sys
log, rc, t0, t1, n, w = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
text = open(log, errors="replace").read()
m = re.search(r"(\d+) tasks in ([0-9.]+) s \(\d+ tasks/s\): (\d+) succeeded, (\d+) failed", text)
out = {"system": "htex", "tool": "htex run", "task": 'command ["true"], stdout/stderr captured into the results file',
       "tasks": n, "workers": w, "exit_code": rc, "process_total_s": round(t1 - t0, 3)}
if m:
    wall = float(m.group(2))
    out.update(wall_s=wall, tasks_per_s=round(n / wall, 1), succeeded=int(m.group(3)), failed=int(m.group(4)))
else:
    out["error"] = "no summary line: " + " | ".join(text.strip().splitlines()[-5:])
print(json.dumps(out))
EOF

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
export R_STAMP="$STAMP" R_CORES="$(nproc)" R_LOAD_START="$LOAD_START" R_LOAD_END="$LOAD_END" \
    R_PYTHON="$("$PY" -c 'import platform; print(platform.python_version())')" R_PARSL="$PARSL_GOT" \
    R_HQ="$HQ_GOT" R_HTEX="$HTEX_VERSION" R_REV="$GIT_REV" R_W="$W" R_HQ_REASON="$HQ_REASON" \
    R_HQ_NOTE="$HQ_BIN_NOTE"
"$PY" - "$WORK" "$RESULTS" <<'EOF'
import json, os, sys
work, results = sys.argv[1], sys.argv[2]
env = os.environ
def load(name):
    p = os.path.join(work, name)
    return json.load(open(p)) if os.path.exists(p) and os.path.getsize(p) else None
meta = {"date": env["R_STAMP"], "host_cores": int(env["R_CORES"]), "load_start": env["R_LOAD_START"],
        "load_end": env["R_LOAD_END"], "workers": int(env["R_W"]),
        "versions": {"python": env["R_PYTHON"], "parsl": env["R_PARSL"], "hyperqueue": env["R_HQ"] or None,
                     "htex": env["R_HTEX"], "htex_rev": env["R_REV"]}}
parsl, hnoop = load("parsl.json"), load("htex-noop.json")
hcurve = load("htex-noop-encrypted.json")
hq, hrun = load("hq.json"), load("htex-run.json")
hq_reason = env["R_HQ_REASON"]
def ratio(a, b, key="tasks_per_s"):
    try:
        return round(a[key] / b[key], 2)
    except (TypeError, KeyError, ZeroDivisionError):
        return None
line1 = dict(meta, comparison="noop: parsl-perf (Parsl HTEX) vs htex bench",
             parsl=parsl, htex=hnoop, ratio_htex_over_parsl=ratio(hnoop, parsl),
             htex_encrypted=hcurve, ratio_htex_encrypted_over_parsl=ratio(hcurve, parsl),
             ratio_htex_encrypted_over_plain=ratio(hcurve, hnoop))
line2 = dict(meta, comparison="command true: HyperQueue vs htex run",
             hyperqueue_note=env["R_HQ_NOTE"], htex=hrun)
if hq and not hq_reason:
    line2["hyperqueue"] = hq
    line2["ratio_htex_over_hq"] = ratio(hrun, hq)
    line2["ratio_htex_over_hq_best_case_for_hq"] = (
        round(hrun["tasks_per_s"] / hq["tasks_per_s_upper_bound"], 2) if hrun and "tasks_per_s" in hrun else None)
else:
    line2["hyperqueue"] = {"status": "not run", "reason": hq_reason}
with open(results, "a") as f:
    for line in (line1, line2):
        f.write(json.dumps(line) + "\n")
        print(json.dumps(line))

def row(label, system, r):
    if not r or "tasks_per_s" not in r:
        why = (r or {}).get("error") or (r or {}).get("reason") or "no result"
        print(f"{label:<26}{system:<24}{'-':>9}{'-':>9}{'-':>11}   {why[:80]}")
    else:
        print(f"{label:<26}{system:<24}{r['tasks']:>9}{r['wall_s']:>9.2f}{r['tasks_per_s']:>11.0f}")
print()
print(f"{'comparison (W=' + str(meta['workers']) + ')':<26}{'system':<24}{'tasks':>9}{'wall_s':>9}{'tasks/s':>11}")
row("no-op task", f"parsl {meta['versions']['parsl']}", parsl)
row("", "htex bench", hnoop)
row("", "htex bench --encrypted", hcurve)
print(f"{'':<26}ratio htex/parsl = {line1['ratio_htex_over_parsl']}, "
      f"encrypted htex/parsl = {line1['ratio_htex_encrypted_over_parsl']}, "
      f"encrypted/plain htex = {line1['ratio_htex_encrypted_over_plain']}")
row("`true` process", f"hyperqueue {meta['versions']['hyperqueue']}", line2["hyperqueue"])
row("", "htex run", hrun)
if "ratio_htex_over_hq" in line2:
    print(f"{'':<26}ratio htex/hq = {line2['ratio_htex_over_hq']} "
          f"(HQ polls once a second: {line2['ratio_htex_over_hq_best_case_for_hq']} if HQ finished right after its previous poll)")
else:
    print(f"{'':<26}HyperQueue not run: {hq_reason}")
print(f"\nload average {meta['load_start']} -> {meta['load_end']} on {meta['host_cores']} cores; appended to {results}")
EOF
