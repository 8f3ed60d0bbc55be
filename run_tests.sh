#!/usr/bin/env bash
# The test command: set up the environment (first run only), then run pytest
# over the library tests and, via nbval, over every notebook executed with
# smoke parameters (a small data subset, one epoch) into build/smoke/.
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
smoke="$(pwd)/build/smoke"
rm -rf "${smoke}" build/nbval
mkdir -p "${smoke}" build/nbval

# papermill --prepare-only injects the smoke parameters without executing;
# nbval then executes the prepared copies (outputs go to build/smoke, never to
# the committed figures/ and results/).
for nb in notebooks/[0-9][0-9]_*.ipynb; do
    "${PY}" -m papermill --prepare-only --log-level WARNING "${nb}" "build/nbval/$(basename "${nb}")" \
        -p epochs 1 -p train_subset 2000 -p test_subset 500 -p profile smoke \
        -p figures_dir "${smoke}/figures" -p results_dir "${smoke}/results" -p run_dir "${smoke}/runs" \
        2> >(grep -v "Passed unknown parameter" >&2)
done

exec "${PY}" -m pytest tests build/nbval --nbval-lax --timeout 900 "$@"
