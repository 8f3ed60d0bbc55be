#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): the CUDA tests and every notebook in the gpu
# profile, shortened; writes results/gpu_check.json. For any machine with CUDA, with the
# project's environment or the machine's own Python (no Jupyter needed):
#
#   scripts/gpu_check.sh --data data/cifar10-jpeg.tar.gz     # about 8 minutes on one H200
#   scripts/gpu_check.sh --device cpu --subset 512            # rehearse it without a GPU
#
# The interpreter: $PY, else the project's .venv when there is one, else python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PY:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:${PYTHONPATH}}"  # the library, installed or not
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg DYNPRUNE_PROGRESS=0
export DYNPRUNE_CACHE="${DYNPRUNE_CACHE:-$(pwd)/build/gpu_check/cache}"
exec "${PY}" scripts/gpu_check.py "$@"
