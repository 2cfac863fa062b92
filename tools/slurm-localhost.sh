#!/usr/bin/env bash
# Runs a command against a real, throw-away Slurm "cluster" of one node (localhost):
#   tools/slurm-localhost.sh COMMAND [ARGS...]
# e.g. tools/slurm-localhost.sh target/debug/launcher slurm -n 4 -- swarm train --transport tcp ...
#
# It installs nothing (tools/setup.sh installs Debian's slurm-wlm and munge). As root it
#   - writes a fresh munge key, slurm.conf and cgroup.conf into a temporary directory
#     (proctrack/linuxproc and task/none: no cgroups; select/cons_tres with CR_CPU; one node
#     `localhost` declared with SLURM_LOCALHOST_CPUS CPUs (default 4) whatever the machine has,
#     so a 4-task job fits on a 2-core machine),
#   - starts munged, slurmctld and slurmd on 127.0.0.1 (ports 16817/16818 unless
#     SLURM_LOCALHOST_PORT is set), waits until `sinfo` shows the node idle,
#   - runs the command with SLURM_CONF pointing at the configuration, under `timeout`
#     (SLURM_LOCALHOST_TIMEOUT seconds, default 900),
#   - always stops the daemons and removes the directory on exit (trap), and prints the
#     daemons' logs when the command failed.
# Exit status: the command's (124 when it timed out); 125 when the cluster could not start.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARGS...]" >&2
  exit 2
fi
for prog in munged slurmctld slurmd sinfo srun timeout; do
  if ! command -v "$prog" >/dev/null 2>&1; then
    echo "slurm-localhost: \`$prog\` not found: install Debian's slurm-wlm and munge (bash tools/setup.sh does)" >&2
    exit 125
  fi
done
if [ "$(id -u)" -ne 0 ]; then
  echo "slurm-localhost: must run as root (munged and slurmd start as root here)" >&2
  exit 125
fi

cpus="${SLURM_LOCALHOST_CPUS:-4}"
port="${SLURM_LOCALHOST_PORT:-16817}"
limit="${SLURM_LOCALHOST_TIMEOUT:-900}"
dir="$(mktemp -d /tmp/slurm-localhost.XXXXXX)"
chmod 700 "$dir"
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
pids=()

logs() {
  for f in "$dir"/*.log; do
    [ -f "$f" ] || continue
    echo "---- $(basename "$f") (last 40 lines)" >&2
    tail -n 40 "$f" >&2 || true
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Jobs still running on the node go first, then the daemons (slurmd, slurmctld, munged).
  if [ -f "$dir/slurm.conf" ]; then
    SLURM_CONF="$dir/slurm.conf" timeout 10 scancel --full --quiet --user=root >/dev/null 2>&1 || true
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ] && [ "${SLURM_LOCALHOST_QUIET_LOGS:-0}" != 1 ]; then logs; fi
  rm -rf "$dir"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# munge: a key of our own, its socket inside $dir.
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --foreground --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
  --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" \
  --log-file="$dir/munged.log" >>"$dir/munged.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
if [ ! -S "$dir/munge/munge.socket" ]; then
  echo "slurm-localhost: munged did not start" >&2
  exit 125
fi

cat >"$dir/slurm.conf" <<EOF
# Throw-away single-node cluster written by tools/slurm-localhost.sh
ClusterName=swarmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
InactiveLimit=0
KillWait=5
MinJobAge=10
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
# No cgroup plugin is used (proctrack/linuxproc, task/none); the file only keeps slurmd from
# looking for a system one.
cat >"$dir/cgroup.conf" <<EOF
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
export SLURM_CONF="$dir/slurm.conf"

slurmctld -D -c -f "$SLURM_CONF" >>"$dir/slurmctld.out.log" 2>&1 &
pids+=($!)
slurmd -D -N localhost -f "$SLURM_CONF" >>"$dir/slurmd.out.log" 2>&1 &
pids+=($!)

state=""
for _ in $(seq 120); do
  state="$(sinfo -h -N -n localhost -o %t 2>/dev/null || true)"
  [ "$state" = idle ] && break
  sleep 0.5
done
if [ "$state" != idle ]; then
  echo "slurm-localhost: node localhost not idle after 60 s (state: '${state:-none}')" >&2
  exit 125
fi
echo "slurm-localhost: $(sinfo --version) up: node localhost idle with $cpus CPUs (SLURM_CONF=$SLURM_CONF)" >&2

set +e
timeout --kill-after=10 "$limit" "$@"
rc=$?
set -e
exit "$rc"
