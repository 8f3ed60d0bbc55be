#!/usr/bin/env bash
# Reproduce everything: set up the environment (first run only), then execute
# every numbered notebook headlessly with papermill, in order. Executed
# notebooks go to build/notebooks/, figures to figures/, tables to results/;
# finally the README's results table is regenerated from results/.
#
#   ./run_all.sh                 # all notebooks
#   ./run_all.sh --only 01       # just notebooks/01_*.ipynb
#   ./run_all.sh --data PATH     # CIFAR-10 location (else $DYNPRUNE_DATA, ./data)
#
# Finished training runs are checkpointed under build/runs/, so re-running
# after an interruption resumes instead of starting over.
set -euo pipefail
# A relative data path means relative to where the command was typed.
[[ -n "${DYNPRUNE_DATA:-}" ]] && DYNPRUNE_DATA="$(realpath -m "${DYNPRUNE_DATA}")"
only=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) only="${2:?--only needs a notebook number, e.g. 01}"; shift 2 ;;
        --data) export DYNPRUNE_DATA="$(realpath -m "${2:?--data needs a path}")"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "run_all.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "${BASH_SOURCE[0]}")"

source scripts/setup_env.sh
export DYNPRUNE_PROGRESS=0
export MPLBACKEND=Agg
mkdir -p build/notebooks figures results

shopt -s nullglob
notebooks=(notebooks/${only:-[0-9][0-9]}_*.ipynb)
if [[ ${#notebooks[@]} -eq 0 ]]; then
    echo "run_all.sh: no notebook matches notebooks/${only:-NN}_*.ipynb" >&2
    exit 2
fi

total_start=${SECONDS}
for nb in "${notebooks[@]}"; do
    name="$(basename "${nb}")"
    out="build/notebooks/${name}"
    echo "==> ${name}"
    start=${SECONDS}
    if ! "${PY}" -m papermill --cwd notebooks --kernel "${DYNPRUNE_KERNEL}" --log-output --no-progress-bar \
            "${nb}" "${out}" 2> >(grep --line-buffered -v "Kernel is running over TCP" >&2); then
        "${PY}" scripts/notebook_error.py "${out}" >&2 || true
        echo "run_all.sh: ${name} FAILED after $((SECONDS - start)) s; executed copy: ${out}" >&2
        exit 1
    fi
    echo "<== ${name} done in $((SECONDS - start)) s"
done

"${PY}" scripts/update_readme.py
echo "all done in $((SECONDS - total_start)) s: figures in figures/, tables in results/, notebooks in build/notebooks/"
