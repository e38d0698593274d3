#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests: `scripts/slurm.sh up` installs Slurm and munge
# (Debian packages, as root) when missing and starts munged, slurmctld and slurmd with their state in
# $CONFORMER_BENCH_SLURM_DIR (default /tmp/conformer-bench-slurm); `scripts/slurm.sh down` stops exactly
# those daemons (by their pid files) and removes what `up` wrote. `scripts/slurm.sh status` prints sinfo.
set -euo pipefail

STATE=${CONFORMER_BENCH_SLURM_DIR:-/tmp/conformer-bench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by conformer-bench scripts/slurm.sh (removed by its 'down')"
NODE=$(hostname -s)
CPUS=${CONFORMER_BENCH_SLURM_CPUS:-2}

die() { echo "error: $*" >&2; exit 1; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    [ "$(id -u)" = 0 ] || die "Slurm is not installed; run this script as root to install slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; } \
        || die "apt-get install slurm-wlm munge failed; install them by hand"
}

write_conf() {
    if [ -e "$CONF" ] && ! head -n 1 "$CONF" | grep -qF "$MARK"; then
        die "$CONF exists and was not written by this script; this machine has a Slurm of its own: use it"
    fi
    mkdir -p "$(dirname "$CONF")"
    cat > "$CONF.tmp" <<CONFEOF
$MARK
ClusterName=conformer-bench
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$NODE CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONFEOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    alive "$STATE/munge/munged.pid" && return
    install -d -o munge -g munge -m 0755 "$STATE/munge"
    if [ ! -s /etc/munge/munge.key ]; then
        install -d -o munge -g munge -m 0700 /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    runuser -u munge -- munged --socket="$STATE/munge/munge.socket" --pid-file="$STATE/munge/munged.pid" \
        --log-file="$STATE/munge/munged.log" --seed-file="$STATE/munge/munged.seed"
    munge -S "$STATE/munge/munge.socket" -n | unmunge -S "$STATE/munge/munge.socket" >/dev/null \
        || die "munged does not answer; see $STATE/munge/munged.log"
}

wait_idle() {
    for _ in $(seq 1 60); do
        state=$(sinfo --noheader --nodes="$NODE" --format=%t 2>/dev/null || true)
        case "$state" in idle*|mix*|alloc*) echo "slurm is up: node $NODE $state, state in $STATE"; return ;; esac
        sleep 0.5
    done
    die "node $NODE is not idle after 30 s (sinfo: ${state:-no answer}); see $STATE/slurmctld.log and $STATE/slurmd.log"
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root: the daemons of a one-node cluster run as root here"
    install_packages
    mkdir -p "$STATE/ctld" "$STATE/slurmd"
    chmod 0755 "$STATE"
    write_conf
    start_munge
    alive "$STATE/slurmctld.pid" || slurmctld -i
    alive "$STATE/slurmd.pid" || slurmd
    wait_idle
}

stop_pidfile() {
    local pidfile=$1 pid
    alive "$pidfile" || return 0
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    stop_pidfile "$STATE/slurmd.pid"
    stop_pidfile "$STATE/slurmctld.pid"
    stop_pidfile "$STATE/munge/munged.pid"
    if [ -e "$CONF" ] && head -n 1 "$CONF" | grep -qF "$MARK"; then rm -f "$CONF"; fi
    rm -rf "$STATE"
    echo "slurm is down (state folder $STATE removed)"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo ;;
    *) die "usage: scripts/slurm.sh up|down|status" ;;
esac
