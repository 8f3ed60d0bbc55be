#!/usr/bin/env bash
# Shared set-up for run_all.sh and run_tests.sh (sourced, not executed).
#
# Creates the environment on a fresh machine and is a no-op (seconds) when
# nothing changed:
#   * an active conda environment (CONDA_PREFIX set, not "base") is used as is;
#     create it with `conda env create -f environment.yml`;
#   * otherwise a virtual environment in .venv is created with the `venv`
#     module and the exact pins of requirements.txt are installed with pip.
# Either way the package is installed in editable mode and a Jupyter kernel
# named "dynprune" is registered inside the environment (--sys-prefix).
# Exports PY (the interpreter) and DYNPRUNE_KERNEL.

set -euo pipefail

_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DYNPRUNE_KERNEL=dynprune

_log() { printf '[setup] %s\n' "$*" >&2; }

if [[ -n "${CONDA_PREFIX:-}" && "${CONDA_DEFAULT_ENV:-base}" != "base" ]]; then
    PY="${CONDA_PREFIX}/bin/python"
    _log "using the active conda environment ${CONDA_DEFAULT_ENV} (${CONDA_PREFIX})"
else
    _base_py="${DYNPRUNE_PYTHON:-$(command -v python3.11 || command -v python3 || true)}"
    if [[ -z "${_base_py}" ]]; then
        _log "error: no python3 found; install Python 3.10-3.12 or set DYNPRUNE_PYTHON"
        return 1 2>/dev/null || exit 1
    fi
    if [[ ! -x "${_root}/.venv/bin/python" ]]; then
        _log "creating ${_root}/.venv with $(${_base_py} --version 2>&1)"
        "${_base_py}" -m venv "${_root}/.venv"
    fi
    PY="${_root}/.venv/bin/python"
fi
export PY

# The environment is (re)built only when requirements.txt or pyproject.toml
# changed since the last successful set-up; the stamp records their hash and
# the interpreter it was built for.
_stamp_dir="$("${PY}" -c 'import sys; print(sys.prefix)')"
_stamp="${_stamp_dir}/.dynprune-setup"
_want="$(cat "${_root}/requirements.txt" "${_root}/pyproject.toml" | sha256sum | cut -d' ' -f1) ${PY}"
if [[ ! -f "${_stamp}" || "$(cat "${_stamp}")" != "${_want}" ]]; then
    _log "installing pinned packages (first run: about 2-3 minutes, ~6 GB)"
    _t0=$SECONDS
    "${PY}" -m pip install --quiet --disable-pip-version-check -r "${_root}/requirements.txt"
    "${PY}" -m pip install --quiet --disable-pip-version-check --no-deps -e "${_root}"
    "${PY}" -m ipykernel install --sys-prefix --name "${DYNPRUNE_KERNEL}" \
        --display-name "Python (dynprune)" >/dev/null
    printf '%s' "${_want}" > "${_stamp}"
    _log "environment ready in $((SECONDS - _t0)) s"
else
    _log "environment up to date (${PY})"
fi

# The compiled sparse kernels (C++, dynprune_lib/kernels/csrc), built once for this machine's CPU
# (about 40 s on 2 cores; a no-op when this source, torch and CPU were built before). Where no C++
# compiler is found, or the build fails, the library runs on its Numba kernels and says so.
if ! "${PY}" -c 'import sys; from dynprune_lib.kernels import native; sys.exit(native.module() is None)' 2>/dev/null; then
    _t0=$SECONDS
    if PATH="$(dirname "${PY}"):${PATH}" "${PY}" -m dynprune_lib.kernels >&2; then
        _log "compiled kernels ready in $((SECONDS - _t0)) s"
    else
        _log "warning: the compiled kernels could not be built (see above); sparse inference runs on Numba"
    fi
fi

# Notebooks run with notebooks/ as their working directory, so a relative data
# path (or the default ./data) must be made absolute against the repository.
if [[ -n "${DYNPRUNE_DATA:-}" ]]; then
    if [[ ! -e "${DYNPRUNE_DATA}" ]]; then
        _log "error: DYNPRUNE_DATA=${DYNPRUNE_DATA} does not exist (see README, 'Data')"
        return 1 2>/dev/null || exit 1
    fi
    DYNPRUNE_DATA="$(cd "$(dirname "${DYNPRUNE_DATA}")" && pwd)/$(basename "${DYNPRUNE_DATA}")"
    export DYNPRUNE_DATA
elif [[ -e "${_root}/data" ]]; then
    export DYNPRUNE_DATA="${_root}/data"
fi
