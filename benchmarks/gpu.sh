#!/usr/bin/env bash
# One-shot GPU benchmark for a lent machine: results land in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e . 2>/dev/null || python3 -m pip install -q --no-deps -e .
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "${OUT:?}/nvidia-smi.csv" || true
timeout 470 python3 benchmarks/gpu.py --out "$OUT"
