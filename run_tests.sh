#!/usr/bin/env bash
# The test command: set up the environment (first run only), lint (ruff check
# and ruff format --check), run the smoke profile end to end (every notebook on
# a small data subset for one epoch, and its report, all under build/smoke/),
# then pytest over the library tests and, via nbval, over every notebook with
# the same smoke parameters.
#
#   ./run_tests.sh              # everything
#   ./run_tests.sh -k csr       # extra arguments go to pytest
set -euo pipefail
# A relative data path means relative to where the command was typed.
[[ -n "${DYNPRUNE_DATA:-}" ]] && DYNPRUNE_DATA="$(realpath -m "${DYNPRUNE_DATA}")"
cd "$(dirname "${BASH_SOURCE[0]}")"
source scripts/setup_env.sh

export DYNPRUNE_PROGRESS=0
export MPLBACKEND=Agg
rm -rf build/smoke build/nbval

# Lint and format, as configured in pyproject.toml (fix with: .venv/bin/ruff check --fix . && .venv/bin/ruff format .).
"${PY}" -m ruff check .
"${PY}" -m ruff format --check .

# The smoke profile must never write to notebooks/ (only cpu/gpu runs write executed notebooks
# back there): tests/test_run_notebooks.py compares this digest with the one after the run.
DYNPRUNE_NOTEBOOKS_DIGEST="$(cat notebooks/*.ipynb | sha256sum | cut -d' ' -f1)"
export DYNPRUNE_NOTEBOOKS_DIGEST

# The smoke profile as a user runs it (./run_all.sh --profile smoke); the
# report test checks build/smoke/report.html against build/smoke/figures.
"${PY}" scripts/run_notebooks.py --profile smoke --kernel "${DYNPRUNE_KERNEL}"
export DYNPRUNE_SMOKE_DIR="$(pwd)/build/smoke"

# nbval executes copies with the smoke parameters injected (papermill
# --prepare-only); their outputs go to build/smoke, never to figures/ or results/.
"${PY}" scripts/run_notebooks.py --profile smoke --prepare-only build/nbval
exec "${PY}" -m pytest tests build/nbval --nbval-lax --timeout 900 "$@"
