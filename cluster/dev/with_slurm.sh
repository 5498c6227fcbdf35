#!/usr/bin/env bash
# with_slurm.sh CMD...: run CMD with the dev Slurm cluster up when this machine can host it.
#   - Slurm already answering `scontrol ping`: use it and leave it running (someone else started it).
#   - Otherwise, as root with apt-get (or Slurm installed): start it with slurm_up.sh and stop it by pid
#     afterwards, whatever happens (EXIT trap).
#   - Slurm up: export SLURM_REQUIRED=1, so slurm-marked tests fail instead of skipping.
#   - CI=true: a Slurm that cannot be brought up is a failure (exit 1 before CMD), never a skip.
# Returns CMD's exit code. BCM_SLURM=0 runs CMD without trying Slurm (outside CI).
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -gt 0 ] || { echo "usage: with_slurm.sh CMD [ARGS...]" >&2; exit 2; }

ping_ok() { command -v scontrol >/dev/null && timeout 15 scontrol ping >/dev/null 2>&1; }
can_host() { [ "$(id -u)" = 0 ] && { command -v apt-get >/dev/null || command -v slurmctld >/dev/null; }; }

up=0
if [ "${BCM_SLURM:-1}" = 0 ] && [ "${CI:-}" != true ]; then
  echo "with_slurm: BCM_SLURM=0, running without Slurm"
elif ping_ok; then
  echo "with_slurm: using the Slurm controller that is already running"
  up=1
elif can_host; then
  trap 'bash "$HERE/slurm_down.sh"' EXIT
  if bash "$HERE/slurm_up.sh" && ping_ok; then
    up=1
  elif [ "${CI:-}" = true ]; then
    echo "with_slurm: CI=true and the dev Slurm cluster did not come up" >&2
    exit 1
  else
    echo "with_slurm: Slurm did not come up; slurm tests will be skipped" >&2
  fi
elif [ "${CI:-}" = true ]; then
  echo "with_slurm: CI=true but this machine cannot host the dev Slurm cluster (needs root and apt-get)" >&2
  exit 1
else
  echo "with_slurm: not root or no apt-get: running without Slurm (slurm tests will be skipped)"
fi

[ "$up" = 1 ] && export SLURM_REQUIRED=1
"$@"
