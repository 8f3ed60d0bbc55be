"""The runtimes a user would pick instead of ours, run on the same model and input: ONNX Runtime and SparseProp.

Neither is a dependency of the library: each runner is built only when its
package imports, and otherwise :func:`peer_runners` says why it is missing
and the measurement goes on without it.

* ``onnxruntime``: ONNX Runtime on the dense graph :func:`~dynprune_lib.inference.export_onnx`
  writes (it does not exploit weight sparsity; it removes per-layer overhead);
* ``sparseprop``: SparseProp (Nikdan et al. 2023, IST-DASLab/sparseprop), its
  forward pass after ``swap_modules_with_sparse`` (which keeps a sparse layer
  only where it measured faster, as ours does).
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..inference import export_onnx
from ..layers import densify

__all__ = ["PEERS", "peer_runners"]

#: The peers, in the order the tables show them.
PEERS: tuple[str, ...] = ("onnxruntime", "sparseprop")

Runner = Callable[[], object]


def _onnxruntime(model: nn.Module, x: torch.Tensor, workdir: Path) -> Runner:
    import onnxruntime as ort

    path = export_onnx(model, workdir / "model.onnx", x[:1])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the threads torch runs with, for a fair comparison
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Its threads would otherwise spin between calls and slow the other runtimes timed beside it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": x.numpy()}
    return lambda: session.run(None, feed)


def _sparseprop(model: nn.Module, x: torch.Tensor, workdir: Path) -> Runner:
    from sparseprop.utils import swap_modules_with_sparse

    dense = densify(copy.deepcopy(model)).eval()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints one line per layer even with verbose=False
        swapped = swap_modules_with_sparse(dense, tuple(x.shape), verbose=False).eval()

    def run() -> None:
        with torch.no_grad():
            swapped(x)

    return run


_BUILDERS = {"onnxruntime": _onnxruntime, "sparseprop": _sparseprop}


def peer_runners(
    model: nn.Module, x: torch.Tensor, peers: tuple[str, ...] = PEERS
) -> tuple[dict[str, Runner], dict[str, str]]:
    """Runners ``fn()`` computing ``model(x)`` on each peer, and for the peers that could not be
    built, why (not installed, or the error building it). CPU, float32."""
    unknown = set(peers) - set(_BUILDERS)
    if unknown:
        raise ValueError(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    runners, missing = {}, {}
    workdir = Path(tempfile.mkdtemp(prefix="dynprune-peers-"))
    for name in peers:
        try:
            runners[name] = _BUILDERS[name](model, x, workdir)
        except ImportError as error:
            missing[name] = f"not installed ({error})"
        except Exception as error:  # a peer that fails on this model must not stop the measurement
            missing[name] = f"failed: {type(error).__name__}: {str(error)[:200]}"
    return runners, missing
