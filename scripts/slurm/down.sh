#!/usr/bin/env bash
# Stops what scripts/slurm/up.sh started: cancels remaining jobs, then TERMs slurmd, slurmctld
# and munged by pid file (after checking /proc/PID/comm), KILL after 15 s.
#   --keep-munge   leave munged running (up.sh uses it to restart after a settings change)
set -uo pipefail
RUN=/run/htex-slurm
keep_munge=0
[[ ${1:-} == --keep-munge ]] && keep_munge=1

stop() { # stop PIDFILE NAME
    [[ -f $1 ]] || return 0
    local pid
    pid=$(cat "$1" 2>/dev/null)
    if [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$2" ]]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 150); do
            [[ -r /proc/$pid/comm ]] || break
            sleep 0.1
        done
        [[ -r /proc/$pid/comm ]] && kill -KILL "$pid" 2>/dev/null
    fi
    rm -f "$1"
}

if [[ -f $RUN/slurmctld.pid ]]; then
    scancel --full --quiet "--user=$(id -un)" 2>/dev/null || true
    sleep 0.5
fi
for pidfile in "$RUN"/slurmd-*.pid; do
    [[ -e $pidfile ]] && stop "$pidfile" slurmd
done
stop "$RUN/slurmctld.pid" slurmctld
((keep_munge)) || stop /run/munge/munged.pid munged
echo "[slurm-down] stopped" >&2
