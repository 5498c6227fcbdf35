#!/usr/bin/env bash
# Start a real Slurm on this host for development and tests (no systemd needed; must run as root):
#   munged, MariaDB + slurmdbd (accounting, so `sacct` works), slurmctld and one slurmd per emulated node
#   (node1..nodeN on distinct ports: Debian's slurmd is built with MULTIPLE_SLURMD), each node with fake
#   GPUs declared as gres and backed by char devices (copies of /dev/null).
# Every daemon writes a pid file under /run; cluster/dev/slurm_down.sh stops them by those pids.
# Knobs (environment):
#   BCM_SLURM_NODES=2        emulated nodes
#   BCM_SLURM_CPUS=2         CPUs per node (may exceed the real cores: SlurmdParameters=config_overrides)
#   BCM_SLURM_MEM=8000       RealMemory per node, MB
#   BCM_SLURM_GPUS=2         fake GPUs per node (0: no gres)
#   BCM_SLURM_ACCOUNTING=1   0: no MariaDB/slurmdbd (then sacct fails; Snakemake needs slurm-status-command squeue)
#   BCM_SLURM_INSTALL=1      0: do not apt-get install (packages already present)
set -euo pipefail
NODES=${BCM_SLURM_NODES:-2}
CPUS=${BCM_SLURM_CPUS:-2}
MEM=${BCM_SLURM_MEM:-8000}
GPUS=${BCM_SLURM_GPUS:-2}
ACCOUNTING=${BCM_SLURM_ACCOUNTING:-1}
INSTALL=${BCM_SLURM_INSTALL:-1}
CONF=/etc/slurm
LOGS=/var/log/slurm
T0=$(date +%s%N)

say() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[slurm_up %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
die() { echo "slurm_up: $*" >&2; exit 1; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS DESCRIPTION CMD...: poll CMD every 0.25 s until it succeeds
  local limit=$(( $1 * 4 )) what=$2; shift 2
  for _ in $(seq "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "timed out waiting for $what"
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"

install_packages() {
  local pkgs="slurm-wlm munge"
  [ "$ACCOUNTING" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  # Without systemd, package postinst scripts must not try to start services: policy-rc.d exit 101 forbids it.
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  # shellcheck disable=SC2086
  if ! dpkg -s $pkgs >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
  say "packages: $pkgs"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged bash -c 'munge -n | unmunge'
  say "munged pid $(cat /run/munge/munged.pid)"
}

write_configs() {
  mkdir -p "$CONF" "$LOGS" /var/lib/slurm/slurmctld
  # Node names must resolve: submitit uses a job's first node name as MASTER_ADDR.
  local names="" i
  for i in $(seq "$NODES"); do names="$names node$i"; done
  sed -i '/# bcm-dev-slurm$/d' /etc/hosts
  echo "127.0.0.1 $names # bcm-dev-slurm" >> /etc/hosts

  local gres=""
  : > "$CONF/gres.conf"
  if [ "$GPUS" -gt 0 ]; then
    # gres GPUs need File= char devices (Count= alone makes the nodes INVAL).
    echo "AutoDetect=off" >> "$CONF/gres.conf"
    for i in $(seq "$NODES"); do
      local first=$(( (i - 1) * GPUS )) last=$(( i * GPUS - 1 )) d
      for d in $(seq "$first" "$last"); do [ -e "/dev/fakegpu$d" ] || mknod -m 666 "/dev/fakegpu$d" c 1 3; done
      echo "NodeName=node$i Name=gpu File=/dev/fakegpu[$first-$last]" >> "$CONF/gres.conf"
    done
    gres="Gres=gpu:$GPUS"
  fi

  local storage="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  [ "$ACCOUNTING" = 1 ] && storage="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
  # bf_interval=5: a requeued job is reconsidered within seconds. MinJobAge=300 keeps finished jobs visible
  # to squeue long enough for pollers. KillWait=5: a cancelled or requeued job's tasks (which ignore SIGTERM
  # under submitit) get SIGKILL after 5 s, not 30.
  cat > "$CONF/slurm.conf" <<CONFEOF
ClusterName=bcmdev
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$storage
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmdParameters=config_overrides
GresTypes=gpu
CONFEOF
  for i in $(seq "$NODES"); do
    echo "NodeName=node$i NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=$MEM $gres State=UNKNOWN" >> "$CONF/slurm.conf"
    mkdir -p "/var/lib/slurm/slurmd/node$i"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$CONF/slurm.conf"
}

start_accounting() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if ! running /run/mysqld/mysqld.pid; then
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --skip-log-bin \
      --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 > "$LOGS/mariadb.log" 2>&1 < /dev/null &
  fi
  wait_for 60 mariadbd mariadb -e 'select 1'
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'bcmdev';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  say "mariadbd pid $(cat /run/mysqld/mysqld.pid)"
  cat > "$CONF/slurmdbd.conf" <<CONFEOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=bcmdev
StorageLoc=slurm_acct_db
CONFEOF
  chmod 600 "$CONF/slurmdbd.conf"
  running /run/slurmdbd.pid || /usr/sbin/slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw bcmdev || sacctmgr -i add cluster bcmdev >/dev/null
  say "slurmdbd pid $(cat /run/slurmdbd.pid)"
}

all_idle() { [ "$(sinfo -h -N -o '%T' | grep -c '^idle')" -ge "$NODES" ]; }

start_slurm() {
  running /run/slurmctld.pid || /usr/sbin/slurmctld -c   # -c: forget jobs of an earlier run
  local i
  for i in $(seq "$NODES"); do running "/run/slurmd-node$i.pid" || /usr/sbin/slurmd -N "node$i"; done
  if ! (for _ in $(seq 240); do all_idle 2>/dev/null && exit 0; sleep 0.25; done; exit 1); then
    sinfo -N >&2 || true; tail -n 20 "$LOGS/slurmctld.log" >&2
    die "nodes not idle after 60 s"
  fi
  sinfo -N -o '%N %T %c %m %G'
  say "slurm up: slurmctld pid $(cat /run/slurmctld.pid), $NODES slurmd"
}

[ "$INSTALL" = 1 ] && install_packages
start_munge
write_configs
[ "$ACCOUNTING" = 1 ] && start_accounting
start_slurm
