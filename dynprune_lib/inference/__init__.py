"""Sparse inference: a pruned model rewritten for speed, each layer on the kernel that measures faster.

The paper claims pruning speeds up inference but never measures it. A masked
layer computed densely does all the work of an unpruned one, so the speed has
to come from sparse kernels and from what every deployment runtime does before
it runs a graph. :func:`to_sparse_inference` returns a copy of the model that

1. holds plain layers (masks applied; the dynamic-layer machinery gone);
2. folds each BatchNorm into the convolution before it, also across a 2x2 max
   pool when every BatchNorm scale is positive, and fuses a following 2x2 max
   pool and ReLU into the layer (:mod:`.folding`, :mod:`.fused`);
3. runs each convolution and linear layer on the faster of the dense PyTorch
   kernel and a sparse one: :class:`SparseConv2d` / :class:`SparseLinear` on the
   kernels of :mod:`dynprune_lib.kernels` (compiled C++, or Numba where it is
   not built), or, on CUDA or for other dtypes, ``torch.sparse`` CSR
   (:class:`TorchSparseConv2d` / :class:`TorchSparseLinear`) (:mod:`.choice`);
4. where the graph is one straight chain, runs it as one compiled call
   (:class:`SparseChain`) if that measures faster.

Steps 1-2 need a model ``torch.fx`` can trace; one it cannot is converted
layer by layer without them (the report says so). Outputs equal the original
model's within float32 rounding (1e-5 relative). :func:`export_onnx` writes
the deployment graph for ONNX Runtime.
"""

from .._utils import time_interleaved
from .chain import SparseChain, chain_steps
from .choice import DENSITY_RULE, LayerChoice, to_sparse_inference
from .folding import prepare_for_inference
from .fused import FusedConv2d, FusedLinear, Im2colConv2d
from .onnx import export_onnx
from .sparse import SparseConv2d, SparseLinear
from .torch_sparse import TorchSparseConv2d, TorchSparseLinear

__all__ = [
    "DENSITY_RULE",
    "FusedConv2d",
    "FusedLinear",
    "Im2colConv2d",
    "LayerChoice",
    "SparseChain",
    "SparseConv2d",
    "SparseLinear",
    "TorchSparseConv2d",
    "TorchSparseLinear",
    "chain_steps",
    "export_onnx",
    "prepare_for_inference",
    "time_interleaved",
    "to_sparse_inference",
]
