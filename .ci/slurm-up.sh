#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine, so tests/test_slurm.py can
# submit the workflow through the real sbatch (see README, "Running on a cluster").
#
#   sudo .ci/slurm-up.sh        # install (Debian/Ubuntu packages) and start
#   sudo .ci/slurm-up.sh stop   # stop the daemons this script started
#
# Runs as root without systemd (CI containers have none): munged, slurmctld and
# slurmd are started in the background and the script waits until `sinfo` shows
# the node idle. The node is this machine with its real CPUs and memory (from
# `slurmd -C`), in two partitions named like the ones workflow/profiles/slurm
# asks for, `cpu` and `gpu`. It advertises one count-only GPU GRES (no device
# behind it) so that the profile's GPU requests are scheduled as on a real GPU
# partition; the jobs themselves run on the CPU. There is no slurmdbd: finished
# jobs are written by jobcomp/filetxt to $SLURM_STATE/jobcomp.log, which
# `sacct --completion` reads, and slurmctld keeps them for MinJobAge so that
# `squeue` still sees them.
set -euo pipefail

SLURM_STATE=${SLURM_STATE:-/var/lib/elmo-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf

log() { echo "slurm-up: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (it installs packages and starts the SLURM daemons)"
    exit 1
fi

MARKER="# Written by .ci/slurm-up.sh: a one-node test cluster, not for production."
if [ -e "$CONF" ] && [ "$(head -n 1 "$CONF")" != "$MARKER" ]; then
    log "$CONF exists and was not written by this script; not touching a real cluster's setup"
    exit 1
fi

stop_daemons() {
    for pidfile in "$SLURM_STATE/slurmd.pid" "$SLURM_STATE/slurmctld.pid" /run/munge/munged.pid; do
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" && log "stopped pid $pid ($pidfile)"
        fi
    done
}

if [ "${1:-}" = stop ]; then
    stop_daemons
    exit 0
fi

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurmctld, slurmd, slurm-client and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_munge_key() {
    # The Debian package writes a key on install; make one where it did not.
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
}

write_slurm_conf() {
    # CPUs, sockets, cores, threads and RealMemory as slurmd measures them.
    local hardware
    hardware=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //')
    mkdir -p "$CONF_DIR" "$SLURM_STATE/ctld" "$SLURM_STATE/d"
    cat >"$CONF" <<EOF
$MARKER
ClusterName=elmo-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_STATE/ctld
SlurmdSpoolDir=$SLURM_STATE/d
SlurmctldPidFile=$SLURM_STATE/slurmctld.pid
SlurmdPidFile=$SLURM_STATE/slurmd.pid
SlurmctldLogFile=$SLURM_STATE/slurmctld.log
SlurmdLogFile=$SLURM_STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_STATE/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SlurmdTimeout=300
GresTypes=gpu
NodeName=localhost $hardware Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/gres.conf" <<EOF
NodeName=localhost Name=gpu Count=1 File=/dev/null
EOF
    log "wrote $CONF (node: localhost $hardware)"
}

start_daemons() {
    if ! munge -n </dev/null >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged
    fi
    if ! scontrol ping >/dev/null 2>&1; then
        slurmctld
    fi
    # slurmd removes its pid file when it stops (a dead process can linger as a zombie).
    if ! { [ -s "$SLURM_STATE/slurmd.pid" ] && kill -0 "$(cat "$SLURM_STATE/slurmd.pid")"; }; then
        slurmd -N localhost
    fi
}

wait_for_idle_node() {
    local state
    for _ in $(seq 1 60); do
        state=$(sinfo --noheader --nodes=localhost --format=%T 2>/dev/null | head -n 1 || true)
        if [ "$state" = idle ]; then
            log "node localhost is idle: $(sinfo --noheader --format='%P %D %c %m %G' | tr '\n' ';')"
            return 0
        fi
        if [[ "$state" == drain* || "$state" == down* ]]; then
            scontrol update NodeName=localhost State=RESUME 2>/dev/null || true
        fi
        sleep 1
    done
    log "node did not become idle (state: ${state:-none}); see $SLURM_STATE/slurmctld.log and slurmd.log"
    tail -n 20 "$SLURM_STATE/slurmctld.log" "$SLURM_STATE/slurmd.log" >&2 || true
    return 1
}

install_packages
write_munge_key
write_slurm_conf
start_daemons
wait_for_idle_node
