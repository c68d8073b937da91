#!/usr/bin/env bash
# The GPU check of the fast path (static caches, compiled steps): CUDA exactness, eager vs compiled
# decode ms against the HBM bound, trace replay's measured vs ideal speedup. One CUDA GPU, no hub
# access, under 6 minutes (random weights in the R1-Distill-Qwen-1.5B/7B shapes, bf16).
#
#   bash benchmarks/gpu_check.sh            # JSON: benchmarks/results/gpu_<gpu-name>.json
#
# Uses `python3` (or $PYTHON) with torch and transformers; the repository is put on PYTHONPATH, so an
# installed rstitch is not needed (llguidance, needed for grammars only, is not imported). Wheels in
# ./.whl (for an image that lacks a package) are installed to a scratch folder first. Where $OUT is set
# (a device machine's output folder) the JSON is copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/rstitch-site .whl/*.whl
    export PYTHONPATH="/tmp/rstitch-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
status=0
timeout "${GPU_CHECK_TIMEOUT:-345}" "$PY" benchmarks/gpu_check.py --budget-s "${GPU_CHECK_BUDGET:-270}" "$@" || status=$?
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/gpu_*.json "$OUT"/ 2>/dev/null || true
fi
exit "$status"
