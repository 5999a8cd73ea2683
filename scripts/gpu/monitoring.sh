#!/usr/bin/env bash
# Monitoring on a real GPU: an interchange with --monitoring and --metrics-address, a manager
# with three MPS slots (50 %, 25 %, 25 %) sampling NVML every second, and one load.py task per
# slot (GEMMs, holding 1, 2 and 3 GiB). Then: what the database recorded (GPU samples with
# utilization, SM activity and memory; each slot's GPU memory, per MPS client) and a scrape of
# /metrics, into $OUT (default .device/out): monitoring.db, monitoring.md, metrics.txt, logs.
# Never changes GPU settings; the MPS daemon is the manager's own.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
HTEX=${HTEX:-$REPO/.device/htex}
OUT=${OUT:-$REPO/.device/out}
PY=$(command -v "${PYTHON:-python3}")
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/htexmon.XXXXXX)
DB=$OUT/monitoring.db
rm -f "$DB" "$DB-wal" "$DB-shm"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 3
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

"$HTEX" interchange --addresses-file "$WORK/addresses.json" --heartbeat-period 1 \
    --heartbeat-threshold 10 --monitoring "$DB" --metrics-address 127.0.0.1:0 \
    >"$OUT/interchange.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $WORK/addresses.json ]] && break; sleep 0.1; done
read -r cport mport metrics < <("$PY" -c '
import json, sys
a = json.load(open(sys.argv[1]))
print(a["client"].rsplit(":", 1)[1], a["manager"].rsplit(":", 1)[1], a["metrics"])' "$WORK/addresses.json")
"$HTEX" manager --interchange 127.0.0.1 --port "$mport" --manager-id gpu-mon \
    --mps 0:50,25,25 --gpu-sample-period 1 >"$OUT/manager.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do grep -q "manager registered" "$OUT/manager.log" && break; sleep 0.2; done

"$PY" - "$WORK/tasks.jsonl" "$PY" "$REPO/scripts/gpu/load.py" <<'PYEOF'
import json, sys
path, py, load = sys.argv[1:4]
with open(path, "w") as f:
    for i, gib in enumerate([1, 2, 3]):
        f.write(json.dumps({"id": f"load-{i}", "command": [py, load, "--seconds", "10", "--gib", str(gib)],
                            "resources": {"gpu": True}}) + "\n")
PYEOF
"$HTEX" submit --port "$cport" --quiet --results "$OUT/results.jsonl" "$WORK/tasks.jsonl" \
    >"$OUT/submit.log" 2>&1 &
submit=$!
sleep 13
curl -s "$metrics" >"$OUT/metrics.txt" || "$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' "$metrics" >"$OUT/metrics.txt"
"$HTEX" status --port "$cport" --json >"$OUT/status.json" || true
wait "$submit" || echo "submit exited with $?" >>"$OUT/submit.log"
sleep 2
"$HTEX" report "$DB" --out "$OUT/report.html" >>"$OUT/submit.log" 2>&1 || echo "report failed" >>"$OUT/submit.log"
cleanup
trap - EXIT
"$PY" - "$DB" >"$OUT/monitoring.md" <<'PYEOF'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
q = lambda sql: c.execute(sql).fetchall()
print("# Monitoring on the GPU machine\n")
print("| gpu | samples | max utilization | max SM activity (GPM) | max memory used GiB | total GiB |")
print("|---|---|---|---|---|---|")
for row in q("""SELECT gpu_uuid, count(*), max(utilization_ratio), max(sm_activity_ratio),
                max(memory_used_bytes) / 1073741824.0, max(memory_total_bytes) / 1073741824.0
                FROM gpu_samples GROUP BY gpu_uuid"""):
    print("| " + " | ".join("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row) + " |")
print("\n| slot | kind | mps % | samples | max slot GPU memory GiB |")
print("|---|---|---|---|---|")
for row in q("""SELECT s.slot, s.kind, s.mps_percentage, count(x.at_us), max(x.gpu_memory_used_bytes) / 1073741824.0
                FROM slots s LEFT JOIN slot_samples x ON x.run_id = s.run_id AND x.manager_key = s.manager_key AND x.slot = s.slot
                GROUP BY s.slot ORDER BY s.slot"""):
    print("| " + " | ".join("-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row) + " |")
print("\n| task | attempt | slot | outcome | run s |")
print("|---|---|---|---|---|")
for row in q("""SELECT t.client_task_id, a.attempt, a.slot, a.outcome, (a.finished_us - a.started_us) / 1e6
                FROM tasks t JOIN attempts a USING (run_id, task_id) ORDER BY a.slot"""):
    print("| " + " | ".join(str(v) for v in row) + " |")
print("\nslot events:", q("SELECT event, count(*) FROM slot_events GROUP BY event"))
PYEOF
cat "$OUT/monitoring.md"
grep -E '^htex_(gpu|slot_gpu)' "$OUT/metrics.txt" || echo "no GPU gauges in metrics.txt"
