#!/usr/bin/env bash
# Starts one process per node for a multi-node GPU run (one process sees all local GPUs).
#
#   COORD=host0:12345 NUM_PROCESSES=2 PROCESS_ID=<0|1> launch/multinode_gpu.sh \
#       --config configs/<file>.py --workdir /shared/run
#
# Run the same command on every node with its PROCESS_ID; jax.distributed uses
# JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID.
set -euo pipefail
export JAX_COORDINATOR_ADDRESS=${COORD:?host:port of process 0}
export JAX_NUM_PROCESSES=${NUM_PROCESSES:?number of processes}
export JAX_PROCESS_ID=${PROCESS_ID:?this process index}
export UNLOCK_JAX_DISTRIBUTED=1
exec python -m unlock_jax.main "$@"
