#!/usr/bin/env bash
# Runs one unlock_jax command on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh NAME ZONE -- --config configs/<file>.py --workdir gs://BUCKET/run
#
# Copies this checkout to all workers, installs the pinned stack with the TPU
# jaxlib, and starts `python -m unlock_jax.main` on each worker with
# UNLOCK_JAX_DISTRIBUTED=1 (main.py then calls jax.distributed.initialize(),
# which discovers the coordinator from the TPU metadata).
set -euo pipefail
NAME=${1:?tpu name}; ZONE=${2:?zone}; shift 2
[ "${1:-}" = "--" ] && shift
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all \
  "$(git rev-parse --show-toplevel)" "$NAME":~/unlock_jax
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "
  set -e; cd ~/unlock_jax
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -r requirements.txt && pip install -q 'jax[tpu]==0.10.2' && pip install -q -e . --no-deps
  UNLOCK_JAX_DISTRIBUTED=1 python -m unlock_jax.main $ARGS"
