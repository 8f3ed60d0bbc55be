"""Building and loading the compiled kernels, and what happens where they cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dynprune_lib import kernels, to_sparse_inference
from dynprune_lib.inference import SparseConv2d
from dynprune_lib.kernels import native


def test_without_a_compiler_the_build_fails_clearly_and_the_library_runs_on_numba(tmp_path, monkeypatch):
    """A machine with no C++ compiler: the set-up's build fails with a message naming both builds,
    nothing half-built is loaded, and sparse inference runs on the Numba kernels with a warning."""
    monkeypatch.setenv("DYNPRUNE_KERNELS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    native.load.cache_clear()
    monkeypatch.setattr(kernels, "_warned", set())
    try:
        with pytest.raises(RuntimeError, match="could not be built.*native.*portable"):
            native.build()
        module, why = native.load()
        assert module is None and "not built" in why and native.build_info() is None
        assert kernels.backend("compiled") is None and not kernels.available("compiled")
        if not kernels.available("numba"):
            pytest.skip("numba is not installed either")
        conv = nn.Conv2d(4, 4, 3, padding=1)
        with pytest.warns(RuntimeWarning, match="not built"):
            layer = SparseConv2d(conv)
        assert layer.backend == "numba"
        x = torch.randn(2, 4, 6, 6)
        with torch.no_grad():
            assert torch.allclose(layer(x), conv(x), atol=1e-5)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # warned once already
                to_sparse_inference(nn.Sequential(conv), x, chain=False)
    finally:
        native.load.cache_clear()


def test_a_build_is_keyed_by_its_source(tmp_path, monkeypatch):
    """A changed source (or torch, Python, CPU) gets a directory of its own: no stale binary loads."""
    monkeypatch.setenv("DYNPRUNE_KERNELS_DIR", str(tmp_path))
    first = native.build_dir()
    source = tmp_path / "sparse_kernels.cpp"
    source.write_text(native.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(native, "SOURCE", source)
    assert native.build_dir() != first and native.build_dir().parent == tmp_path


def test_the_backend_names_are_checked():
    with pytest.raises(ValueError, match="'auto', 'compiled' or 'numba'"):
        kernels.backend("mkl")
