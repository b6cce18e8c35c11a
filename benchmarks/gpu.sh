#!/usr/bin/env bash
# The GPU run, prepared to go in one call on a lent CUDA machine that has torch but no aelab and no network:
#   here:   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
#   there:  bash benchmarks/gpu.sh        (the `device` tool: run with carry ["data"])
# It runs aelab from src/ and prints PASS/FAIL per check, then the chapter's 100-epoch figures.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PYTHONPATH=src python3 benchmarks/gpu.py --data "${1:-data/fashion-mnist}" "${@:2}"
