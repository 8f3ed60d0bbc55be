"""ONNX export of the deployment graph (for ONNX Runtime and other runtimes)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .folding import prepare_for_inference

__all__ = ["export_onnx"]


def export_onnx(model: nn.Module, path, example_input: torch.Tensor, *, dynamic_batch: bool = True, opset: int = 18):
    """Write ``model`` for deployment to ``path`` as ONNX: masks applied, the dynamic-layer
    machinery gone, BatchNorm folded, eval mode; the batch dimension dynamic.

    ONNX stores every weight densely, zeros included, so the file is as large as
    the dense model's: for small files use :func:`dynprune_lib.csr.save_sparse`.
    ONNX Runtime (``pip install onnxruntime``) runs it. Returns the path.
    """

    prepared, _ = prepare_for_inference(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes are not the user's concern
        torch.onnx.export(
            prepared,
            (example_input,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    return path
