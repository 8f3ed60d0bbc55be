"""Sparse CPU kernels for inference: compiled C++ (register-blocked) where built, Numba where not.

One sparse product serves convolutions and linear layers (see
``csrc/sparse_kernels.cpp``). Two builds of it:

* ``"compiled"``: the C++ extension the README's set-up compiles for the machine
  (:mod:`.native`); each tile of outputs stays in registers across all non-zeros
  of its output channel, and :class:`~dynprune_lib.inference.SparseChain` runs a
  whole network in one call;
* ``"numba"``: the same loops in Numba (:mod:`._numba`), a pip wheel that needs no
  compiler: the fallback, slower, announced once by a warning.

:func:`backend` says which one runs here, and :func:`unavailable_reason` why the
compiled one does not.
"""

from __future__ import annotations

import warnings

from . import _numba, native
from ._numba import im2col, plan_tiles, sparse_tiles, spmv, to_grid

__all__ = [
    "BACKENDS",
    "available",
    "backend",
    "compiled",
    "im2col",
    "plan_tiles",
    "pool_to_grid",
    "sparse_tiles",
    "spmv",
    "to_grid",
    "unavailable_reason",
]

#: The kernel builds, fastest first.
BACKENDS = ("compiled", "numba")
_warned: set[str] = set()


def compiled():
    """The compiled extension module, or None where it is not built (or was made unavailable)."""
    return native.module()


def backend(wanted: str = "auto") -> str | None:
    """The build that runs for ``wanted`` (``"auto"``: the fastest here), or None when none can.

    ``"auto"`` on the Numba fallback warns once, naming why the compiled kernels are missing.
    """
    if wanted not in ("auto", *BACKENDS):
        raise ValueError(f"kernel backend must be 'auto', 'compiled' or 'numba', got {wanted!r}")
    if wanted in ("auto", "compiled") and compiled() is not None:
        return "compiled"
    if wanted == "compiled":
        return None
    if _numba.available():
        if wanted == "auto" and "numba" not in _warned:
            _warned.add("numba")
            warnings.warn(
                f"dynprune: {native.load()[1]}; sparse layers run on the slower Numba kernels",
                RuntimeWarning,
                stacklevel=3,
            )
        return "numba"
    return None


def available(wanted: str = "auto") -> bool:
    """Whether a sparse kernel build (``wanted``) can run here."""
    if wanted == "auto":
        return compiled() is not None or _numba.available()
    return (compiled() is not None) if wanted == "compiled" else _numba.available()


def unavailable_reason(wanted: str = "auto") -> str | None:
    """Why ``wanted`` cannot run (None when it can); for ``"auto"``, why neither build can."""
    compiled_why = native.load()[1]
    numba_why = _numba.unavailable_reason()
    if wanted == "compiled":
        return compiled_why
    if wanted == "numba":
        return numba_why
    return None if available() else f"{compiled_why}; and {numba_why}"


def pool_to_grid(x, *, relu: bool = False):
    """2x2/2 max pool (then ReLU) of a (B, C, H, W) float32 batch, as the (C, H/2, W/2, B) grid the
    sparse layers read: one pass that also makes the transposing copy the next layer would."""
    ext = compiled()
    if ext is not None:
        return ext.pool_to_grid(x, relu)
    import torch

    return torch.from_numpy(_numba.pool_to_grid(x, relu=relu))
