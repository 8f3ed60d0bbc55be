"""The Numba twins of the compiled kernels: the fallback where no C++ build is there.

Every sparse layer is reduced to the same product (Park et al. 2017, "Faster
CNNs with direct sparse convolutions"; SparseProp, Nikdan et al. 2023)::

    out[o, y, i] = bias[o] + sum over the non-zeros k of row o:  value[k] * src[offset[k] + y*row + i]

Each output channel ``o`` keeps its non-zero weights only, each as the place
``offset[k]`` where its input starts in ``src``, a flat array in which the
batch is the innermost axis (SparseProp's layout), so that the loop over ``i``,
a grid row's (x, b) elements, is a contiguous axpy that vectorises:

* a convolution with stride 1 reads its zero-padded input (C, Hp, Wp, B)
  directly: tap ``(ky, kx)`` of input channel ``c`` is the offset
  ``((c*Hp + ky*dy)*Wp + kx*dx)*B``, so no im2col matrix is built and, row by
  row, no output on the padding is computed;
* any other convolution uses an im2col matrix (C*kh*kw, Ho*Wo*B);
* a linear layer uses ``x`` transposed (one row per input feature, the batch
  contiguous); at batch 1 a dedicated kernel gathers ``x`` at the column
  indices, stored as 16-bit integers where they fit (sparse matrix-vector product).

The work is cut into tiles of a few grid rows by a block of output channels
(the loop order of a blocked GEMM): every channel of a tile reads the same part
of ``src``, which stays in cache, its accumulator stays in L1, and eight
non-zeros are folded in per pass over it. Tiles run in parallel on torch's
threads. The epilogue adds the bias (a BatchNorm folded into it), and
optionally takes the 2x2 max pool and the ReLU, as it writes the output in the
same batch-innermost layout, which the next sparse layer reads with a plain
copy. Inputs from dense layers (NCHW or channels_last) are transposed into it by
blocked copies (:func:`to_grid`, or :func:`pool_to_grid` fused with a pool).

Numba is a pip wheel (no compiler on the user's machine) and ``cache=True``
keeps the compiled kernels on disk after the first use. Unlike the C++ kernels
(``csrc/sparse_kernels.cpp``) they cannot keep a tile of outputs in registers:
their accumulator lives in L1 and is read and written once per eight non-zeros.
Without Numba :func:`available` is false.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # numba is optional: without it the library runs on torch.sparse or dense kernels
    import numba
    from numba import njit, prange

    _IMPORT_ERROR: str | None = None
except ImportError as error:  # pragma: no cover - exercised by monkeypatching in the tests
    numba = None
    _IMPORT_ERROR = f"numba is not installed ({error}); pip install numba"

__all__ = ["available", "im2col", "plan_tiles", "pool_to_grid", "sparse_tiles", "spmv", "to_grid", "unavailable_reason"]

#: Work (non-zeros x output elements) below which a kernel runs on one thread: starting the
#: thread pool costs more than it saves.
PARALLEL_WORK = 1 << 16
#: Bytes of the input one tile of the sparse-row kernel reads: they stay in the L2 cache while every
#: output channel of the tile streams its non-zeros over them.
TILE_BYTES = 256 * 1024
#: Outputs one tile accumulates per channel at most (16 KiB of float32: the accumulator stays in L1).
TILE_OUTPUTS = 4096
#: Tiles a layer is cut into at least (output channels split further when the batch gives too few).
TILES = 16


def available() -> bool:
    """Whether the Numba kernels can run here."""
    return numba is not None


def unavailable_reason() -> str | None:
    """Why they cannot (None when they can)."""
    return _IMPORT_ERROR


if numba is not None:

    @njit(cache=True, inline="always", fastmath={"contract"})
    def _accumulate(o, indptr, offsets, values, src, start, rows, row, span, bias, acc):  # pragma: no cover
        # acc[y*span + i] = bias[o] + sum_k values[k] * src[offsets[k] + start + y*row + i] for the ``rows``
        # grid rows y of the tile and the ``span`` valid elements i of each: acc (a few KiB) stays in L1 while
        # the non-zeros of row o stream past it, eight at a time (one load and store of acc per eight FMAs).
        # Indices are unsigned: LLVM then needs no negative-index check and vectorises the loop over i.
        acc[:] = bias[o]
        k, end = indptr[o], indptr[o + 1]
        while k + 8 <= end:
            v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
            v4, v5, v6, v7 = values[k + 4], values[k + 5], values[k + 6], values[k + 7]
            for y in range(rows):
                at = start + np.uint64(y) * row
                b0, b1, b2, b3 = offsets[k] + at, offsets[k + 1] + at, offsets[k + 2] + at, offsets[k + 3] + at
                b4, b5, b6, b7 = offsets[k + 4] + at, offsets[k + 5] + at, offsets[k + 6] + at, offsets[k + 7] + at
                line = np.uint64(y) * span
                for j in range(span):
                    i = np.uint64(j)
                    acc[line + i] += ((v0 * src[b0 + i] + v1 * src[b1 + i]) + (v2 * src[b2 + i] + v3 * src[b3 + i])) + (
                        (v4 * src[b4 + i] + v5 * src[b5 + i]) + (v6 * src[b6 + i] + v7 * src[b7 + i])
                    )
            k += 8
        while k < end:
            v = values[k]
            for y in range(rows):
                b0 = offsets[k] + start + np.uint64(y) * row
                line = np.uint64(y) * span
                for j in range(span):
                    i = np.uint64(j)
                    acc[line + i] += v * src[b0 + i]
            k += 1

    @njit(cache=True, inline="always")
    def _max4(a, b, c, d, floor):  # pragma: no cover - jitted
        # max(a, b, c, d, floor) in compare-and-select form, which LLVM turns into vector max instructions
        # (floor: 0 for a fused ReLU, -inf for none)
        m = a if a > b else b
        n = c if c > d else d
        m = m if m > n else n
        return floor if m < floor else m

    @njit(cache=True, inline="always")
    def _store(o, acc, first, rows, span, batch, pool, relu, out):  # pragma: no cover - jitted
        # acc holds ``rows`` grid rows from ``first`` on, ``span`` elements (x, b) each with the batch
        # innermost; out[o] (rows, columns, batch) gets them, 2x2/2 max-pooled when asked (grid rows 2y and
        # 2y + 1 into row y), then the ReLU
        floor = np.float32(0.0 if relu else -np.inf)
        if pool:
            width = out.shape[2] * batch
            for y in range(rows // 2):
                dst = out[o, first // 2 + y].reshape(width)
                top = acc[2 * y * span : (2 * y + 2) * span]
                for x in range(out.shape[2]):
                    i = 2 * x * batch
                    for b in range(batch):
                        j = i + b
                        dst[x * batch + b] = _max4(top[j], top[j + batch], top[span + j], top[span + j + batch], floor)
        else:
            for y in range(rows):
                dst = out[o, first + y].reshape(span)
                line = acc[y * span : (y + 1) * span]
                for i in range(span):
                    m = line[i]
                    dst[i] = floor if m < floor else m  # a NaN passes, as through F.relu

    @njit(cache=True, inline="always", fastmath={"contract"})
    def _tile(
        item, o_block, strip, indptr, offsets, values, src, bias, row, batch, pool, relu, out
    ):  # pragma: no cover
        # one work item: output channels [o0, o1) of the grid rows [first, first + strip)
        n_blocks = (indptr.shape[0] - 2) // o_block + 1
        first, block = (item // n_blocks) * strip, item % n_blocks
        grid_rows = (2 * out.shape[1]) if pool else out.shape[1]
        rows = min(strip, grid_rows - first)
        span = (2 * out.shape[2] if pool else out.shape[2]) * batch
        acc = np.empty(rows * span, dtype=np.float32)
        start = np.uint64(first) * row
        for o in range(block * o_block, min((block + 1) * o_block, indptr.shape[0] - 1)):
            _accumulate(o, indptr, offsets, values, src, start, rows, row, np.uint64(span), bias, acc)
            _store(o, acc, first, rows, span, batch, pool, relu, out)

    # Each kernel comes as a parallel and a serial twin around one inlined body: a parallel launch costs
    # microseconds that a batch-1 layer cannot afford, and one Python function compiled twice would share
    # one on-disk cache entry (cache=True keys on the function, not on the parallel flag). fastmath's
    # "contract" lets LLVM fuse each multiply-add (one rounding instead of two); the order of every
    # sum stays as written, so results do not depend on the tiling or the thread count.
    @njit(cache=True, parallel=True, fastmath={"contract"})
    def _tiles_parallel(
        n_items, o_block, strip, indptr, offsets, values, src, bias, row, batch, pool, relu, out
    ):  # pragma: no cover - jitted
        for item in prange(n_items):
            _tile(item, o_block, strip, indptr, offsets, values, src, bias, row, batch, pool, relu, out)

    @njit(cache=True, fastmath={"contract"})
    def _tiles_serial(
        n_items, o_block, strip, indptr, offsets, values, src, bias, row, batch, pool, relu, out
    ):  # pragma: no cover - jitted
        for item in range(n_items):
            _tile(item, o_block, strip, indptr, offsets, values, src, bias, row, batch, pool, relu, out)

    @njit(cache=True, parallel=True)
    def _im2col(padded, kh, kw, sy, sx, dy, dx, out_h, out_w, cols):  # pragma: no cover - jitted
        # padded (C, Hp, Wp, B) -> cols (C*kh*kw, Ho*Wo*B), the batch innermost
        channels, batch = padded.shape[0], padded.shape[3]
        for r in prange(channels * kh * kw):
            c, tap = r // (kh * kw), r % (kh * kw)
            ky, kx = tap // kw, tap % kw
            dst = cols[r]
            for y in range(out_h):
                line = padded[c, y * sy + ky * dy]
                for x in range(out_w):
                    src = line[x * sx + kx * dx]
                    base = (y * out_w + x) * batch
                    for b in range(batch):
                        dst[base + b] = src[b]

    # Both transposing copies below go through a small block in L1: the source rows of one block lie a
    # power of two apart, and so (nearly) do the destination rows, so writing one straight into the other
    # keeps evicting lines that map to the same cache set.
    @njit(cache=True, parallel=True)
    def _nchw_to_grid(x, top, left, padded):  # pragma: no cover - jitted
        # padded[c, top + y, left + w, b] = x[b, c, y, w], one (c, y) row of all images at a time
        batch, channels, height, width = x.shape
        for cy in prange(channels * height):
            c, y = cy // height, cy % height
            block = np.empty((width, batch), dtype=np.float32)
            for b in range(batch):
                line = x[b, c, y]
                for w in range(width):
                    block[w, b] = line[w]
            padded[c, top + y, left : left + width] = block

    @njit(cache=True, parallel=True)
    def _nhwc_to_grid(x, top, left, padded):  # pragma: no cover - jitted
        # padded[c, top + y, left + w, b] = x[b, y, w, c], one pixel (y, w) of all images at a time
        batch, height, width, channels = x.shape
        for y in prange(height):
            block = np.empty((channels, batch), dtype=np.float32)
            for w in range(width):
                for b in range(batch):
                    line = x[b, y, w]
                    for c in range(channels):
                        block[c, b] = line[c]
                padded[:, top + y, left + w] = block

    @njit(cache=True, parallel=True)
    def _nchw_pool_to_grid(x, relu, out):  # pragma: no cover - jitted
        # out[c, y, w, b] = max of x[b, c, 2y:2y+2, 2w:2w+2] (then ReLU), one (c, y) row of all images at a time
        batch, channels = x.shape[0], x.shape[1]
        height, width = out.shape[1], out.shape[2]
        floor = np.float32(0.0 if relu else -np.inf)
        for cy in prange(channels * height):
            c, y = cy // height, cy % height
            block = np.empty((width, batch), dtype=np.float32)
            for b in range(batch):
                top, bottom = x[b, c, 2 * y], x[b, c, 2 * y + 1]
                for w in range(width):
                    block[w, b] = _max4(top[2 * w], top[2 * w + 1], bottom[2 * w], bottom[2 * w + 1], floor)
            out[c, y] = block

    @njit(cache=True, parallel=True)
    def _nhwc_pool_to_grid(x, relu, out):  # pragma: no cover - jitted
        # out[c, y, w, b] = max of x[b, 2y:2y+2, 2w:2w+2, c] (then ReLU), one pixel of all images at a time
        batch, channels = x.shape[0], x.shape[3]
        height, width = out.shape[1], out.shape[2]
        floor = np.float32(0.0 if relu else -np.inf)
        for y in prange(height):
            pooled = np.empty((batch, channels), dtype=np.float32)
            block = np.empty((channels, batch), dtype=np.float32)
            for w in range(width):
                for b in range(batch):  # pool along the channels (vectorised), then transpose in L1
                    a, bb = x[b, 2 * y, 2 * w], x[b, 2 * y, 2 * w + 1]
                    cc, d = x[b, 2 * y + 1, 2 * w], x[b, 2 * y + 1, 2 * w + 1]
                    line = pooled[b]
                    for c in range(channels):
                        line[c] = _max4(a[c], bb[c], cc[c], d[c], floor)
                for b in range(batch):
                    line = pooled[b]
                    for c in range(channels):
                        block[c, b] = line[c]
                out[:, y, w] = block

    @njit(cache=True, inline="always", fastmath=True)
    def _dot_row(o, indptr, cols, values, x, bias, relu, out):  # pragma: no cover - jitted
        # slices indexed from 0 and unsigned column indices: LLVM vectorises the gather-multiply-add
        # (fastmath lets it reorder the sum; the result differs from a sequential sum by rounding only)
        v = values[indptr[o] : indptr[o + 1]]
        c = cols[indptr[o] : indptr[o + 1]]
        total = np.float32(0.0)
        for k in range(v.shape[0]):
            total += v[k] * x[c[k]]
        total += bias[o]
        if relu and total < 0.0:
            total = np.float32(0.0)
        out[o] = total

    @njit(cache=True, parallel=True, fastmath=True)
    def _spmv_parallel(indptr, cols, values, x, bias, relu, out):  # pragma: no cover - jitted
        for o in prange(indptr.shape[0] - 1):
            _dot_row(o, indptr, cols, values, x, bias, relu, out)

    @njit(cache=True, fastmath=True)
    def _spmv_serial(indptr, cols, values, x, bias, relu, out):  # pragma: no cover - jitted
        for o in range(indptr.shape[0] - 1):
            _dot_row(o, indptr, cols, values, x, bias, relu, out)


def plan_tiles(
    grid_rows: int, row: int, src_rows: int, max_shift: int, out_channels: int, pool: bool
) -> tuple[int, int]:
    """Grid rows and output channels per tile of :func:`sparse_tiles`: as many rows as keep the
    tile's columns of ``src`` within :data:`TILE_BYTES` and its accumulator within
    :data:`TILE_OUTPUTS` (an even number when pooling), and enough tiles (:data:`TILES`) for every
    thread to get work."""
    fit = min((TILE_BYTES // (4 * src_rows) - max_shift) // row, TILE_OUTPUTS // row)
    strip = min(grid_rows, max(2 if pool else 1, fit))
    strip -= strip % 2 if pool else 0
    strips = -(-grid_rows // strip)
    blocks = min(out_channels, -(-TILES // strips))
    return strip, -(-out_channels // blocks)


def _run(parallel_kernel, serial_kernel, args: tuple, parallel: bool) -> None:
    """Run on as many threads as torch uses (what the caller set), or serially for small work.

    Numba's OpenMP layer shares torch's OpenMP runtime (one thread pool, no two pools spinning on
    the same cores), and starting it sets that runtime's thread count: torch's is restored after.
    """
    threads = torch.get_num_threads()
    wanted = min(threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    (parallel_kernel if parallel and wanted > 1 else serial_kernel)(*args)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def sparse_tiles(
    indptr: np.ndarray,
    offsets: np.ndarray,
    values: np.ndarray,
    src: np.ndarray,
    bias: np.ndarray,
    out: np.ndarray,
    *,
    row: int,
    strip: int,
    o_block: int,
    pool: bool = False,
    relu: bool = False,
    parallel: bool = True,
) -> np.ndarray:
    """The sparse product of every output channel on a grid, written to ``out`` (O, H, W, B).

    ``g[o, y, i] = bias[o] + sum_k values[k] * src[offsets[k] + y*row + i]`` over row ``o``'s
    non-zeros (``src`` flat, ``offsets`` unsigned), for the elements ``i`` = (x, b) of grid row ``y``,
    the batch ``b`` innermost. ``out[o, y]`` gets grid row ``y``, or, with ``pool``, the 2x2/2 max
    pool of grid rows ``2y`` and ``2y + 1``; then the ReLU.

    The work is cut into strips of ``strip`` grid rows by ``o_block`` output channels: every
    output channel of a strip reads the same part of ``src``, which stays in cache (the loop order
    of a blocked GEMM), and the tiles run in parallel.
    """
    grid_rows = 2 * out.shape[1] if pool else out.shape[1]
    n_items = -(-grid_rows // strip) * (-(-out.shape[0] // o_block))
    args = (n_items, o_block, strip, indptr, offsets, values, src, bias, np.uint64(row), out.shape[3], pool, relu, out)
    _run(_tiles_parallel, _tiles_serial, args, parallel)
    return out


def im2col(
    padded: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    cols: np.ndarray,
) -> np.ndarray:
    """``cols[(c*kh + ky)*kw + kx, (y*Wo + x)*B + b] = padded[c, y*sy + ky*dy, x*sx + kx*dx, b]`` in place."""
    _run(_im2col, _im2col, (padded, *kernel, *stride, *dilation, *out_hw, cols), True)
    return cols


def to_grid(x: torch.Tensor, top: int, left: int, padded: np.ndarray) -> np.ndarray:
    """``padded[:, top:top + H, left:left + W, :] = x.permute(1, 2, 3, 0)`` for a (B, C, H, W) float32
    batch in NCHW or channels_last memory: the batch-innermost layout of :func:`sparse_tiles`, by a
    transposing copy blocked for the cache (``Tensor.copy_`` takes several times longer)."""
    if x.is_contiguous():
        _run(_nchw_to_grid, _nchw_to_grid, (x.numpy(), top, left, padded), True)
    elif x.is_contiguous(memory_format=torch.channels_last):
        _run(_nhwc_to_grid, _nhwc_to_grid, (x.permute(0, 2, 3, 1).numpy(), top, left, padded), True)
    else:
        _run(_nchw_to_grid, _nchw_to_grid, (x.contiguous().numpy(), top, left, padded), True)
    return padded


def pool_to_grid(x: torch.Tensor, *, relu: bool = False) -> np.ndarray:
    """2x2/2 max pool (then ReLU) of a (B, C, H, W) float32 batch in NCHW or channels_last memory,
    written in the batch-innermost layout (C, H/2, W/2, B) of :func:`sparse_tiles`: one pass that
    also does the transposing copy the next sparse layer would make (``F.max_pool2d`` alone takes
    several times longer on a channels_last batch)."""
    batch, channels, height, width = x.shape
    out = np.empty((channels, height // 2, width // 2, batch), dtype=np.float32)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        _run(_nhwc_pool_to_grid, _nhwc_pool_to_grid, (x.permute(0, 2, 3, 1).numpy(), relu, out), True)
    else:
        _run(_nchw_pool_to_grid, _nchw_pool_to_grid, (x.contiguous().numpy(), relu, out), True)
    return out


def spmv(
    indptr: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    x: np.ndarray,
    bias: np.ndarray,
    out: np.ndarray,
    *,
    relu: bool = False,
    parallel: bool = True,
) -> np.ndarray:
    """``out[o] = bias[o] + sum_k values[k] * x[cols[k]]`` over row ``o`` (a CSR matrix-vector product)."""
    _run(_spmv_parallel, _spmv_serial, (indptr, cols, values, x, bias, relu, out), parallel)
    return out
