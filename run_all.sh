#!/usr/bin/env bash
# Reproduce everything: set up the environment (first run only), then execute
# every numbered notebook headlessly with papermill, in order, and write
# build/report.html. Executed notebooks go to build/notebooks/, figures to
# figures/, tables to results/; the README's results table is regenerated.
#
#   ./run_all.sh                    # every notebook, default profile (gpu with CUDA, else cpu)
#   ./run_all.sh --profile smoke    # minutes: tiny data, one epoch; outputs in build/smoke/ only
#   ./run_all.sh --only 02          # just notebooks/02_*.ipynb (repeatable, or --only 01,03)
#   ./run_all.sh --seeds 0,1,2      # seeds for every notebook (default: each profile's)
#   ./run_all.sh --data PATH        # CIFAR-10 location (else $DYNPRUNE_DATA, ./data)
#   ./run_all.sh --force            # re-execute up-to-date notebooks and retrain their runs
#   ./run_all.sh --precision fp32   # train notebooks 02-04 in float32 (default bf16 autocast;
#                                   # use fp32 on a CPU without native bfloat16)
#
# Resumable: a notebook whose executed copy matches the notebook, its
# parameters, the library, the data and the earlier notebooks' runs is
# skipped, and training runs
# checkpoint every epoch under build/runs/, so re-running after an
# interruption continues where it stopped.
set -euo pipefail
# A relative data path means relative to where the command was typed.
[[ -n "${DYNPRUNE_DATA:-}" ]] && DYNPRUNE_DATA="$(realpath -m "${DYNPRUNE_DATA}")"
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) export DYNPRUNE_DATA="$(realpath -m "${2:?--data needs a path}")"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
cd "$(dirname "${BASH_SOURCE[0]}")"

source scripts/setup_env.sh
export DYNPRUNE_PROGRESS=0
export MPLBACKEND=Agg
# The kernels print a warning about their TCP transport at every start: noise.
exec "${PY}" scripts/run_notebooks.py --kernel "${DYNPRUNE_KERNEL}" ${args[@]+"${args[@]}"} \
    2> >(grep --line-buffered -v "Kernel is running over TCP" >&2)
