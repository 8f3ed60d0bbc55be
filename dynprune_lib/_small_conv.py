"""A convolution over an input smaller than its kernel, computed as one matrix product.

When a stride-1 convolution with "same" zero padding sees an input of ``H*W <
kh*kw`` pixels, every output pixel depends on (nearly) every input pixel, so the
convolution is a dense linear map from the flattened input to the flattened
output: an ``(H*W) x (H*W)`` grid of ``out x in`` channel blocks, each one kernel
tap (or zero). That is ``(H*W)^2`` instead of ``H*W*kh*kw`` products per channel
pair, 2.25x fewer for the 2x2 last stage of :class:`~dynprune_lib.models.DynamicCNN`,
and one large GEMM instead of a convolution that oneDNN runs on mostly padding:
on the 2-core reference CPU, 3x3 over 2x2 pixels (bf16, batch 128, 256 to 512
channels) forward and backward took about half the time of ``F.conv2d``, and a
whole DynamicCNN training step is about 1.13x as fast (``bench_training_speed.json``,
``choices``).

Hand-written (a custom ``autograd.Function``) because the block matrix built with
advanced indexing has a scatter-add backward several times slower than the
products themselves; this one sums the blocks of each tap directly.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

__all__: list[str] = []


def applies(layer: nn.Conv2d, input: object) -> bool:
    """Whether ``layer(input)`` is a CPU convolution :func:`conv2d` computes with fewer products."""
    if not isinstance(input, Tensor) or input.dim() != 4 or input.device.type != "cpu":
        return False  # fx proxies, unbatched input, other devices: the regular kernel
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    kh, kw = layer.kernel_size
    return (
        layer.groups == 1
        and layer.stride == (1, 1)
        and layer.dilation == (1, 1)
        and layer.padding_mode == "zeros"
        and kh % 2 == 1
        and kw % 2 == 1
        and layer.padding == (kh // 2, kw // 2)
        and input.shape[2] * input.shape[3] < kh * kw
    )


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(input, weight, bias, padding=(kh // 2, kw // 2))`` for an input :func:`applies` to.

    The same values up to rounding (products summed in another order), under autocast too:
    input, weight and bias are cast to the autocast dtype as ``F.conv2d`` casts them there.
    The output has the input's memory format.
    """
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        input, weight = input.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif input.dtype != weight.dtype:
        raise RuntimeError(f"Input type ({input.dtype}) and weight type ({weight.dtype}) should be the same")
    with torch.autocast("cpu", enabled=False):
        out = _WholeInputConv2d.apply(input, weight)
    if not input.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous()
    return out if bias is None else out + bias.view(1, -1, 1, 1)


@functools.cache
def _taps(height: int, width: int, kh: int, kw: int) -> tuple[tuple[int, int, int, int], ...]:
    """``(output pixel, input pixel, tap row, tap column)`` for every pair a kernel tap connects."""
    pixels = [(y, x) for y in range(height) for x in range(width)]
    return tuple(
        (p, q, qy - py + kh // 2, qx - px + kw // 2)
        for p, (py, px) in enumerate(pixels)
        for q, (qy, qx) in enumerate(pixels)
        if 0 <= qy - py + kh // 2 < kh and 0 <= qx - px + kw // 2 < kw
    )


class _WholeInputConv2d(torch.autograd.Function):
    """``out[b, p, o] = sum_{q, i} blocks[p, o, q, i] * input[b, q, i]`` over pixels ``p, q``
    (channels last), ``blocks[p, :, q, :] = weight[:, :, tap(p, q)]``."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor) -> Tensor:
        batch, channels, height, width = input.shape
        out_channels, _, kh, kw = weight.shape
        pixels = height * width
        taps = _taps(height, width, kh, kw)
        by_tap = weight.permute(2, 3, 0, 1).contiguous()  # (kh, kw, out, in): each tap one block
        shape = (pixels, out_channels, pixels, channels)
        blocks = weight.new_empty(shape) if len(taps) == pixels * pixels else weight.new_zeros(shape)
        for p, q, y, x in taps:
            blocks[p, :, q, :] = by_tap[y, x]
        blocks = blocks.view(pixels * out_channels, pixels * channels)
        flat = input.permute(0, 2, 3, 1).reshape(batch, pixels * channels)
        ctx.save_for_backward(flat, blocks)
        ctx.taps, ctx.kernel = taps, (kh, kw)
        out = flat @ blocks.t()
        return out.view(batch, height, width, out_channels).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        flat, blocks = ctx.saved_tensors
        batch, height, width, out_channels = grad.shape[0], grad.shape[2], grad.shape[3], grad.shape[1]
        pixels, channels = height * width, flat.shape[1] // (height * width)
        grad = grad.permute(0, 2, 3, 1).reshape(batch, pixels * out_channels)
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = (grad @ blocks).view(batch, height, width, channels).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            grad_blocks = (grad.t() @ flat).view(pixels, out_channels, pixels, channels)
            # Each tap's gradient sums its blocks, in float32 at least (as the convolution accumulates).
            acc_dtype = torch.promote_types(grad_blocks.dtype, torch.float32)
            by_tap = grad_blocks.new_zeros((*ctx.kernel, out_channels, channels), dtype=acc_dtype)
            for p, q, y, x in ctx.taps:
                by_tap[y, x] += grad_blocks[p, :, q, :]
            grad_weight = by_tap.permute(2, 3, 0, 1).to(blocks.dtype, memory_format=torch.contiguous_format)
        return grad_input, grad_weight
