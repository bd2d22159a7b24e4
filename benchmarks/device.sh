#!/usr/bin/env bash
# The B5 pipeline's accelerator check: one command, under 8 minutes on one H100.
# Step times (compile apart), TFLOP/s and fraction of bf16 peak, peak memory,
# predict panoramas/s at 2048x400, projected 10,000 adapt iterations and 2,000
# panoramas. Extra flags go to benchmarks/device.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/device.py "$@"
