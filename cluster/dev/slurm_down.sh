#!/usr/bin/env bash
# Stop what cluster/dev/slurm_up.sh started, each daemon by the pid in its pid file (never by name).
# Order: jobs, slurmd(s), slurmctld, slurmdbd, mariadbd, munged. Safe to run when nothing is up.
set -uo pipefail

stop() {  # stop PIDFILE NAME: TERM, wait up to 10 s, then KILL
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then echo "slurm_down: $name ($pid) ignored TERM, sending KILL"; kill -9 "$pid"; fi
    echo "slurm_down: stopped $name ($pid)"
  fi
  rm -f "$file"
}

if [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
  scancel --user=root 2>/dev/null && sleep 1
fi
for f in /run/slurmd-*.pid; do [ -e "$f" ] && stop "$f" "$(basename "$f" .pid)"; done
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
exit 0
