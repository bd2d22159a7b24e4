#!/usr/bin/env bash
# Runs one unlock_jax command on several GPU nodes: SLURM, or by hand elsewhere.
#
#   launch/multinode_gpu.sh [options] -- --config configs/<file>.py --workdir /shared/run
#
# The checkout and the venv live on a file system all nodes share; the venv
# (requirements.txt with jax[cuda12] pinned to requirements.txt's jax version)
# is installed once, here, and skipped while a marker named after the
# requirements' hash exists. One process per node sees all of its GPUs
# (JAX_LOCAL_DEVICE_IDS); main.py then calls jax.distributed.initialize(),
# which takes the coordinator, process count and index from SLURM.
#
# SLURM: inside an allocation (salloc, or an sbatch script) this runs
# `srun` at once; outside one it submits the same srun with `sbatch --wrap`.
# Without SLURM, run it on every node with --coordinator HOST:PORT (a port
# free on node 0), --num-processes N and --process-id I (0 on HOST).
#
# Options:
#   --nodes N            nodes (default: the allocation's, else 2)
#   --gpus-per-node G    GPUs per node (default 8)
#   --partition P, --time T, --account A   sbatch options (outside an allocation)
#   --venv DIR           venv on the shared file system (default $HOME/unlock_jax_venv_gpu)
#   --python PY          interpreter for the venv, Python >= 3.11 (default python3)
#   --coordinator HOST:PORT --num-processes N --process-id I   without SLURM
#   --dry-run            print the commands instead of running them
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODES=${SLURM_JOB_NUM_NODES:-2} GPUS=8 PARTITION="" TIME="" ACCOUNT=""
VENV="$HOME/unlock_jax_venv_gpu" PY=python3 COORD="" NPROC="" PID="" DRY_RUN=false
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --gpus-per-node) GPUS=$2; shift 2 ;;
    --partition) PARTITION=$2; shift 2 ;;
    --time) TIME=$2; shift 2 ;;
    --account) ACCOUNT=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --coordinator) COORD=$2; shift 2 ;;
    --num-processes) NPROC=$2; shift 2 ;;
    --process-id) PID=$2; shift 2 ;;
    --dry-run) DRY_RUN=true; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "multinode_gpu.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
  esac
done
if [ $# -eq 0 ]; then
  echo "usage: multinode_gpu.sh [options] -- <unlock_jax.main flags> (--help)" >&2
  exit 2
fi

. "$REPO/launch/common.sh"  # quote, run

JAX_VERSION=$(sed -n 's/^jax==\([^ ;#]*\).*/\1/p' "$REPO/requirements.txt")
[ -n "$JAX_VERSION" ] || { echo "multinode_gpu.sh: no jax== pin in requirements.txt" >&2; exit 1; }
HASH=$( (sha256sum "$REPO/requirements.txt" 2>/dev/null || shasum -a 256 "$REPO/requirements.txt") \
  | cut -c1-16)
MARK="$VENV/.unlock_jax-$HASH"
if [ -f "$MARK" ]; then
  echo "multinode_gpu.sh: $VENV is up to date (requirements $HASH)" >&2
else
  run rm -rf "$VENV"
  run "$PY" -m venv "$VENV"
  run "$VENV/bin/pip" install --quiet -r "$REPO/requirements.txt" "jax[cuda12]==$JAX_VERSION"
  run touch "$MARK"
fi

MAIN=("$VENV/bin/python" -m unlock_jax.main "$@")
if [ -n "$COORD" ]; then
  : "${NPROC:?--num-processes is needed with --coordinator}" "${PID:?--process-id too}"
  run cd "$REPO"
  run "${MAIN[@]}" --coordinator_address="$COORD" --num_processes="$NPROC" --process_id="$PID"
  exit
fi
DEVICES=$(seq -s, 0 $((GPUS - 1)))
SRUN=(srun --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS" --kill-on-bad-exit=1
      --chdir="$REPO" env UNLOCK_JAX_DISTRIBUTED=1 JAX_LOCAL_DEVICE_IDS="$DEVICES" "${MAIN[@]}")
if [ -n "${SLURM_JOB_ID:-}" ]; then
  run "${SRUN[@]}"
else
  SBATCH=(sbatch --job-name=unlock_jax --nodes="$NODES" --ntasks-per-node=1
          --gpus-per-node="$GPUS" --output="$REPO/slurm-%j.out")
  [ -n "$PARTITION" ] && SBATCH+=(--partition="$PARTITION")
  [ -n "$TIME" ] && SBATCH+=(--time="$TIME")
  [ -n "$ACCOUNT" ] && SBATCH+=(--account="$ACCOUNT")
  run "${SBATCH[@]}" --wrap="$(quote "${SRUN[@]}")"
fi
