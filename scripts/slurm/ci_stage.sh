#!/usr/bin/env bash
# CI's second stage: the SLURM tests (tests/test_slurm.py, marked slow) on a throwaway two-node cluster
# on this machine: a 2-node DDP fit through scripts/slurm/train.sbatch equals one process, and SIGUSR1
# preemption checkpoints, requeues and resumes in the same W&B run. Needs root; installs Debian's
# slurm-wlm and munge when they are missing. On failure it prints the slurmctld / slurmd / munged logs.
set -uo pipefail
cd "$(dirname "$0")/../.."
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    echo "installing slurm-wlm and munge (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null ||
        { echo "error: apt-get could not install slurm-wlm munge" >&2; exit 1; }
fi
logs=$(mktemp -d /tmp/litseg-slurm-logs.XXXXXX)
LITSEG_REQUIRE_SLURM=1 LITSEG_SLURM_LOG_DIR="$logs" .venv/bin/python -m pytest -m slow tests/test_slurm.py \
    -p no:cacheprovider
rc=$?
if [ "$rc" -ne 0 ]; then
    for f in "$logs"/*.log; do
        [ -e "$f" ] || continue
        echo "===== $f (last 100 lines)"
        tail -n 100 "$f"
    done
fi
rm -rf "$logs"
exit "$rc"
