#!/usr/bin/env bash
# All GPU checks and figures in one call of under 8 minutes; results land in $OUT.
#
# Here, before the call (the GPU image has torch but not every dependency):
#   bash benchmarks/gpu_wheels.sh            # wheels for what the image lacks, into .whl/ (git-ignored)
# Then, through the device tool: run `bash benchmarks/gpu.sh` with carry [".whl"] and timeout_s 540.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to a folder for the results}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || echo "warning: some wheels did not install" >&2
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
timeout 470 python3 benchmarks/gpu.py --out "$OUT" --budget 420 2>&1 | tee "$OUT/gpu.log"
