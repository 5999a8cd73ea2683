#!/usr/bin/env bash
# Starts a real single-host Slurm for htex's tests: munged, slurmctld and SLURM_UP_NODES slurmd
# (virtual nodes n1..nN, all on this host), with no systemd. Installs Debian's packages when
# they are missing. Idempotent: a second run with the same settings only checks. Exits non-zero
# unless a test job completes. Stop it with scripts/slurm/down.sh (it stops only what this
# script started, by pid file).
#
#   SLURM_UP_NODES=3 SLURM_UP_CPUS=2   virtual nodes and CPUs per node
#   SLURM_UP_MEM_MB=2000               RealMemory per node
#   SLURM_UP_KILLWAIT=5 SLURM_UP_MINJOBAGE=300
#   SLURM_UP_CLEAN=1                   forget the jobs of an earlier run (0 keeps slurmctld's state)
#   SLURM_UP_NO_INSTALL=1              never run apt-get
set -euo pipefail

NODES=${SLURM_UP_NODES:-3}
CPUS=${SLURM_UP_CPUS:-2}
MEM=${SLURM_UP_MEM_MB:-2000}
KILLWAIT=${SLURM_UP_KILLWAIT:-5}
MINJOBAGE=${SLURM_UP_MINJOBAGE:-300}
CLEAN=${SLURM_UP_CLEAN:-1}
RUN=/run/htex-slurm
CONF=/etc/slurm/slurm.conf
log() { printf '[slurm-up] %s\n' "$*" >&2; }

if [[ $(id -u) != 0 ]]; then
    log "needs root (it starts munged, slurmctld and slurmd)"
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    if [[ ${SLURM_UP_NO_INSTALL:-0} == 1 ]]; then
        log "Slurm is not installed and SLURM_UP_NO_INSTALL=1"
        exit 1
    fi
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    pkgs=(slurmctld slurmd slurm-client munge)
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null; }
fi

mkdir -p "$RUN" /var/lib/slurm/slurmctld /var/log/slurm /etc/slurm
host=$(hostname -s)

# The config this script writes; a config it did not write is kept aside once.
conf=$(mktemp)
{
    cat <<CONF
# written by htex scripts/slurm/up.sh
ClusterName=htexci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=$KILLWAIT
MinJobAge=$MINJOBAGE
SlurmdTimeout=60
CONF
    for i in $(seq 1 "$NODES"); do
        echo "NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=$MEM State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=short Nodes=ALL MaxTime=1 State=UP"
    echo "PartitionName=closed Nodes=ALL MaxTime=INFINITE State=DOWN"
    echo "PartitionName=inactive Nodes=ALL MaxTime=INFINITE State=INACTIVE"
} >"$conf"

alive() { # alive PIDFILE NAME
    [[ -f $1 ]] || return 1
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -n $pid && -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$2" ]]
}

changed=1
if [[ -f $CONF ]] && cmp -s "$conf" "$CONF"; then
    changed=0
elif [[ -f $CONF ]] && ! grep -q '^# written by htex scripts/slurm/up.sh' "$CONF"; then
    cp "$CONF" "$CONF.htex-backup.$(date +%s)"
    log "kept the existing $CONF aside"
fi
if ((changed)); then
    if alive "$RUN/slurmctld.pid" slurmctld; then
        log "the settings changed: restarting the daemons"
        "$(dirname "$0")/down.sh" --keep-munge
    fi
    install -m 0644 "$conf" "$CONF"
fi
rm -f "$conf"

# munge: its key must belong to munge, 0400; /run/munge must exist.
if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --force >/dev/null 2>&1 || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
if ! alive /run/munge/munged.pid munged; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged
    log "munged started"
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done

if ! alive "$RUN/slurmctld.pid" slurmctld; then
    if [[ $CLEAN == 1 ]]; then slurmctld -c; else slurmctld; fi
    log "slurmctld started"
fi
for i in $(seq 1 "$NODES"); do
    if ! alive "$RUN/slurmd-n$i.pid" slurmd; then
        mkdir -p "/var/lib/slurm/slurmd/n$i"
        slurmd -N "n$i"
        log "slurmd n$i started"
    fi
done

# Wait for every node to be idle (resume nodes left down by an earlier run).
for _ in $(seq 100); do
    states=$(sinfo -h -N -p debug -o '%N %t' 2>/dev/null || true)
    if [[ -n $states ]] && ! grep -qvE ' (idle|mix|alloc)$' <<<"$states"; then
        break
    fi
    for n in $(awk '$2 ~ /down|drain|drng|fail/ {print $1}' <<<"$states"); do
        scontrol update nodename="$n" state=resume 2>/dev/null || true
    done
    sleep 0.2
done

out=$(mktemp)
job=$(sbatch --parsable --time=1 -o "$out" --wrap 'echo htex-slurm-ok')
for _ in $(seq 150); do
    state=$(squeue -h -t all -j "$job" -o %T 2>/dev/null || true)
    [[ $state == COMPLETED ]] && break
    sleep 0.1
done
if [[ $state != COMPLETED ]] || ! grep -q htex-slurm-ok "$out"; then
    log "the test job $job did not complete (state: ${state:-unknown}); see /var/log/slurm/"
    sinfo -N >&2 || true
    exit 1
fi
rm -f "$out"
log "up: $NODES node(s) x $CPUS CPU(s), partitions debug short closed inactive; test job $job completed"
