"""Sparse CPU kernels for inference, compiled with Numba: one sparse-row kernel serves convolutions and linear layers.

Every sparse layer is reduced to the same product (Park et al. 2017, "Faster
CNNs with direct sparse convolutions"; SparseProp, Nikdan et al. 2023)::

    out[o, q] = bias[o] + sum over the non-zeros k of row o:  value[k] * src[row[k], shift[k] + q]

for ``q`` in ``0 .. length - 1``. Each output channel ``o`` keeps its non-zero
weights only; ``src`` is a dense 2-D array whose inner dimension is contiguous,
so the loop over ``q`` is an axpy that vectorises; rows run in parallel.

* a convolution with stride 1 uses its zero-padded input directly, one row
  per input channel holding the whole batch as one flat, padded grid: the tap
  ``(kh, kw)`` of a weight is the shift ``kh*dh*Wp + kw*dw`` on that grid, so no
  im2col matrix is built (outputs on the padding are computed and dropped);
* any other convolution (stride 2, or outputs too small for the padding to be
  worth computing) uses the im2col matrix, one row per (channel, tap), shift 0;
* a linear layer uses ``x`` transposed (one row per input feature, the batch
  contiguous); at batch 1 a dedicated kernel gathers ``x`` at the column
  indices, stored as 16-bit integers where they fit (sparse matrix-vector product).

The epilogue adds the bias (a BatchNorm folded into it), and optionally takes
the 2x2 max pool and the ReLU, in the same pass over the output.

Numba is a pip wheel (no compiler on the user's machine) and ``cache=True``
keeps the compiled kernels on disk after the first use. Without it
:func:`available` is false and :func:`dynprune_lib.inference.to_sparse_inference`
falls back to ``torch.sparse`` (and says so).
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

__all__ = ["available", "crop", "im2col", "sparse_rows", "sparse_rows_pool", "spmv", "unavailable_reason"]

#: Elements of an output row accumulated at a time: 4 KiB of float32, stays in L1 across the row's non-zeros.
CHUNK = 1024


def available() -> bool:
    """Whether the Numba kernels can run here."""
    return numba is not None


def unavailable_reason() -> str | None:
    """Why they cannot (None when they can)."""
    return _IMPORT_ERROR


if numba is not None:

    @njit(cache=True, inline="always")
    def _row(o, indptr, rows, shifts, values, src, length, bias, relu, out):  # pragma: no cover - jitted
        # 1-D views indexed from 0: LLVM then drops the negative-index checks and vectorises the axpy;
        # four non-zeros per pass over the chunk: one load and store of the output per four FMAs
        row = out[o]
        end = indptr[o + 1]
        for start in range(0, length, CHUNK):
            stop = min(start + CHUNK, length)
            n = stop - start
            acc = row[start:stop]
            acc[:] = bias[o]
            k = indptr[o]
            while k + 4 <= end:
                v0, v1, v2, v3 = values[k], values[k + 1], values[k + 2], values[k + 3]
                s0 = src[rows[k], shifts[k] + start : shifts[k] + stop]
                s1 = src[rows[k + 1], shifts[k + 1] + start : shifts[k + 1] + stop]
                s2 = src[rows[k + 2], shifts[k + 2] + start : shifts[k + 2] + stop]
                s3 = src[rows[k + 3], shifts[k + 3] + start : shifts[k + 3] + stop]
                for i in range(n):
                    acc[i] += (v0 * s0[i] + v1 * s1[i]) + (v2 * s2[i] + v3 * s3[i])
                k += 4
            while k < end:
                v = values[k]
                seg = src[rows[k], shifts[k] + start : shifts[k] + stop]
                for i in range(n):
                    acc[i] += v * seg[i]
                k += 1
            if relu:
                for i in range(n):
                    if acc[i] < 0.0:
                        acc[i] = 0.0

    # Each kernel comes as a parallel and a serial twin around one inlined body: a parallel launch costs
    # microseconds that a batch-1 layer cannot afford, and one Python function compiled twice would share
    # one on-disk cache entry (cache=True keys on the function, not on the parallel flag).
    @njit(cache=True, parallel=True)
    def _rows_parallel(indptr, rows, shifts, values, src, length, bias, relu, out):  # pragma: no cover
        for o in prange(indptr.shape[0] - 1):
            _row(o, indptr, rows, shifts, values, src, length, bias, relu, out)

    @njit(cache=True)
    def _rows_serial(indptr, rows, shifts, values, src, length, bias, relu, out):  # pragma: no cover
        for o in range(indptr.shape[0] - 1):
            _row(o, indptr, rows, shifts, values, src, length, bias, relu, out)

    @njit(cache=True, inline="always")
    def _pool_row(o, grid, batch, plane, width, out_h, out_w, relu, out):  # pragma: no cover - jitted
        # grid[o] holds batch planes of ``plane`` elements, rows ``width`` apart; 2x2 max pool, stride 2
        for b in range(batch):
            base = b * plane
            for y in range(out_h):
                top = base + 2 * y * width
                for x in range(out_w):
                    i = top + 2 * x
                    m = max(max(grid[o, i], grid[o, i + 1]), max(grid[o, i + width], grid[o, i + width + 1]))
                    if relu and m < 0.0:
                        m = 0.0
                    out[o, b, y, x] = m

    @njit(cache=True, parallel=True)
    def _rows_pool_parallel(
        indptr, rows, shifts, values, src, length, bias, grid, batch, plane, width, out_h, out_w, relu, out
    ):  # pragma: no cover - jitted
        for o in prange(indptr.shape[0] - 1):
            _row(o, indptr, rows, shifts, values, src, length, bias, False, grid)
            _pool_row(o, grid, batch, plane, width, out_h, out_w, relu, out)

    @njit(cache=True)
    def _rows_pool_serial(
        indptr, rows, shifts, values, src, length, bias, grid, batch, plane, width, out_h, out_w, relu, out
    ):  # pragma: no cover - jitted
        for o in range(indptr.shape[0] - 1):
            _row(o, indptr, rows, shifts, values, src, length, bias, False, grid)
            _pool_row(o, grid, batch, plane, width, out_h, out_w, relu, out)

    @njit(cache=True, parallel=True)
    def _im2col(padded, kh, kw, sy, sx, dy, dx, out_h, out_w, cols):  # pragma: no cover - jitted
        channels, batch = padded.shape[0], padded.shape[1]
        for r in prange(channels * kh * kw):
            c, tap = r // (kh * kw), r % (kh * kw)
            ky, kx = tap // kw, tap % kw
            row = cols[r]
            for b in range(batch):
                plane = padded[c, b]
                base = b * out_h * out_w
                for y in range(out_h):
                    line = plane[y * sy + ky * dy]
                    dst = row[base + y * out_w : base + (y + 1) * out_w]
                    for x in range(out_w):
                        dst[x] = line[x * sx + kx * dx]

    @njit(cache=True, parallel=True)
    def _crop(grid, batch, height, width, out):  # pragma: no cover - jitted
        # out[o, b, y, x] = grid[o] seen as (batch, height, width), top-left corner
        for o in prange(out.shape[0]):
            flat = grid[o]
            for b in range(batch):
                for y in range(out.shape[2]):
                    line = flat[(b * height + y) * width : (b * height + y) * width + out.shape[3]]
                    dst = out[o, b, y]
                    for x in range(out.shape[3]):
                        dst[x] = line[x]

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


def sparse_rows(
    indptr: np.ndarray,
    rows: np.ndarray,
    shifts: np.ndarray,
    values: np.ndarray,
    src: np.ndarray,
    length: int,
    bias: np.ndarray,
    out: np.ndarray,
    *,
    relu: bool = False,
    parallel: bool = True,
) -> np.ndarray:
    """``out[o, :length] = bias[o] + sum_k values[k] * src[rows[k], shifts[k] : shifts[k] + length]``
    over row ``o``'s non-zeros, then ReLU if asked; ``out`` is written in place and returned."""
    _run(_rows_parallel, _rows_serial, (indptr, rows, shifts, values, src, length, bias, relu, out), parallel)
    return out


def sparse_rows_pool(
    indptr: np.ndarray,
    rows: np.ndarray,
    shifts: np.ndarray,
    values: np.ndarray,
    src: np.ndarray,
    length: int,
    bias: np.ndarray,
    grid: np.ndarray,
    batch: int,
    plane: int,
    width: int,
    out: np.ndarray,
    *,
    relu: bool = False,
    parallel: bool = True,
) -> np.ndarray:
    """:func:`sparse_rows` into ``grid`` (the output on its padded grid: ``batch`` planes of ``plane``
    elements, rows ``width`` apart), then a 2x2/2 max pool (and ReLU) into ``out`` (o, b, y, x)."""
    _, _, out_h, out_w = out.shape
    args = (indptr, rows, shifts, values, src, length, bias, grid, batch, plane, width, out_h, out_w, relu, out)
    _run(_rows_pool_parallel, _rows_pool_serial, args, parallel)
    return out


def im2col(
    padded: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
    cols: np.ndarray,
) -> np.ndarray:
    """``cols[(c*kh + ky)*kw + kx, (b*Ho + y)*Wo + x] = padded[c, b, y*sy + ky*dy, x*sx + kx*dx]`` in place."""
    _run(_im2col, _im2col, (padded, *kernel, *stride, *dilation, *out_hw, cols), True)
    return cols


def crop(grid: np.ndarray, batch: int, height: int, width: int, out: np.ndarray) -> np.ndarray:
    """The top-left ``out.shape[2:]`` corner of each (``height``, ``width``) plane of ``grid`` (rows
    of ``batch`` planes) into ``out`` (o, b, y, x): the valid outputs of the flat-grid convolution."""
    _run(_crop, _crop, (grid, batch, height, width, out), True)
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
