#!/usr/bin/env bash
# Start/stop a private single-node SLURM for tests and CI (no systemd needed).
#
# Usage:
#   scripts/slurm_local.sh start  DIR   # install if missing, munge, config in DIR, fake GPUs,
#                                       # start slurmctld + slurmd, wait until the node is idle
#   scripts/slurm_local.sh stop   DIR   # stop the daemons by the pids in DIR/run/*.pid
#   scripts/slurm_local.sh status DIR   # exit 0 when the cluster in DIR answers and is idle/mix/alloc
#   scripts/slurm_local.sh env    DIR   # print "export SLURM_CONF=..." for eval
#
# Idempotent: `start` on a running cluster only waits for it to answer; `stop` on a stopped one
# does nothing. Every wait has a timeout (SLURM_LOCAL_TIMEOUT seconds, default 60).
#
# Settings (environment):
#   SLURM_LOCAL_PORT      slurmctld port (default 6817; slurmd uses PORT+1)
#   SLURM_LOCAL_GPUS      fake GPUs on the node (default 2; character devices like /dev/null)
#   SLURM_LOCAL_CPUS      CPUs the node advertises (default 16; config_overrides lets it lie)
#   SLURM_LOCAL_MEM_MB    memory the node advertises (default 256000)
#   SLURM_LOCAL_NO_INSTALL=1  never apt-get install (fail if the binaries are missing)
#
# The node has partitions `debug` (default) and `gpu`, both on the one node, so scripts that
# name either are accepted. Recipe and pitfalls: SLURM-LOCAL notes in slurm/README.md.
set -euo pipefail

die() { echo "slurm_local: error: $*" >&2; exit 1; }
log() { echo "slurm_local: $*" >&2; }

cmd=${1:-}
dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || die "usage: $0 start|stop|status|env DIR"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf="$dir/etc/slurm.conf"
timeout_s=${SLURM_LOCAL_TIMEOUT:-60}
port=${SLURM_LOCAL_PORT:-6817}
ngpus=${SLURM_LOCAL_GPUS:-2}
host=$(hostname -s)

need_root() { [[ $(id -u) -eq 0 ]] || die "$1 needs root (run as root or install slurm-wlm + munge yourself)"; }

install_if_missing() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null; then
    return 0
  fi
  [[ "${SLURM_LOCAL_NO_INSTALL:-0}" != 1 ]] || die "slurmctld/slurmd/sbatch/munged missing and SLURM_LOCAL_NO_INSTALL=1"
  need_root "installing slurm"
  log "installing munge + slurm from apt (about 10 s)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# Runs a daemon without our open files (fds > 2): started under `flock LOCK scripts/slurm_local.sh
# start`, it would otherwise inherit the lock and hold it as long as it lives (munged is left running).
detached() {
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if (( fd > 2 && fd < 255 )); then eval "exec ${fd}<&-" 2>/dev/null || true; fi
    done
    exec "$@"
  )
}

start_munge() {
  munge_ok && return 0
  need_root "starting munged"
  [[ -f /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing (reinstall the munge package)"
  mkdir -p /run/munge && chown munge:munge /run/munge
  detached runuser -u munge -- /usr/sbin/munged || true  # exits non-zero if one already runs
  local t=0
  until munge_ok; do
    (( t++ < timeout_s * 5 )) || die "munged did not answer within ${timeout_s}s"
    sleep 0.2
  done
}

write_config() {
  mkdir -p "$dir"/{etc,state,spool,log,run,fakedev}
  local gres_line="" gres_node="" i
  if (( ngpus > 0 )); then
    for ((i = 0; i < ngpus; i++)); do
      [[ -c "$dir/fakedev/gpu$i" ]] || mknod "$dir/fakedev/gpu$i" c 1 3
    done
    gres_line="NodeName=$host Name=gpu File=$dir/fakedev/gpu[0-$((ngpus - 1))]"
    gres_node="Gres=gpu:$ngpus"
  fi
  echo "$gres_line" >"$dir/etc/gres.conf"
  cat >"$conf" <<EOF
# Written by scripts/slurm_local.sh (private test cluster; do not use in production)
ClusterName=mtglocal
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
AuthType=auth/munge
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
GresTypes=gpu
SlurmdParameters=config_overrides
MinJobAge=300
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=${SLURM_LOCAL_CPUS:-16} RealMemory=${SLURM_LOCAL_MEM_MB:-256000} $gres_node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
}

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { SLURM_CONF=$conf timeout 10 sinfo -h -o %t 2>/dev/null | head -1; }

wait_idle() {
  local t=0 state=""
  while :; do
    state=$(node_state || true)
    case "$state" in
      idle*|mix*|alloc*|comp*) return 0 ;;
      drain*|drng*)
        # a stale drain reason from an earlier config: resume once
        SLURM_CONF=$conf scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    (( t++ < timeout_s * 2 )) || die "node not idle within ${timeout_s}s (state '${state:-no answer}'); see $dir/log/"
    sleep 0.5
  done
}

start() {
  install_if_missing
  start_munge
  if pid_alive "$dir/run/slurmctld.pid" && pid_alive "$dir/run/slurmd.pid"; then
    wait_idle
    log "already running (SLURM_CONF=$conf)"
    return 0
  fi
  need_root "starting slurmctld/slurmd"
  [[ -f "$conf" ]] || write_config
  export SLURM_CONF=$conf
  pid_alive "$dir/run/slurmctld.pid" || detached slurmctld
  pid_alive "$dir/run/slurmd.pid" || detached slurmd
  wait_idle
  log "cluster up: export SLURM_CONF=$conf"
}

stop() {
  local name pidf pid t
  for name in slurmd slurmctld; do
    pidf="$dir/run/$name.pid"
    pid_alive "$pidf" || { rm -f "$pidf"; continue; }
    pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    t=0
    while kill -0 "$pid" 2>/dev/null; do
      if (( t++ > timeout_s * 5 )); then log "$name ($pid) ignored SIGTERM; SIGKILL"; kill -9 "$pid" 2>/dev/null || true; break; fi
      sleep 0.2
    done
    rm -f "$pidf"
  done
  log "stopped (state kept in $dir)"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) pid_alive "$dir/run/slurmctld.pid" && [[ -n "$(node_state)" ]] ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) die "unknown command '$cmd' (start|stop|status|env)" ;;
esac
