"""CSR codec: canonical arrays, exact round trips, value modes, model files, hostile input."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import tracemalloc
import zlib
from collections import OrderedDict

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dynprune_lib import (
    CSRFormatError,
    CSRMatrix,
    DynamicConv2d,
    DynamicLinear,
    load_sparse,
    save_sparse,
    to_csr,
)
from dynprune_lib.csr import decode, encode, model_from_bytes, model_to_bytes, plain_csr_nbytes

HEADER = struct.Struct("<4sBBBBBBBBIIQQf")
INDEX_MODE_BYTE = 6  # offset of index_mode in the header
MODES = ("float32", "float16", "int8")
pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sparse_matrix(rows: int, cols: int, density: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=generator)
    return values * (torch.rand(rows, cols, generator=generator) < density)


matrices = st.builds(
    sparse_matrix,
    rows=st.integers(0, 12),
    cols=st.integers(0, 40),
    density=st.sampled_from([0.0, 0.03, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
)


def assert_same(a: CSRMatrix, b: CSRMatrix, exact_values: bool = True) -> None:
    assert a.shape == b.shape
    assert torch.equal(a.indptr, b.indptr)
    assert torch.equal(a.indices, b.indices)
    if exact_values:
        assert torch.equal(a.values, b.values)


def assert_valid(csr: CSRMatrix) -> None:
    """The invariants of canonical CSR (structure only: explicit zeros are allowed)."""
    rows, cols = csr.shape
    indptr, indices = csr.indptr.numpy(), csr.indices.numpy()
    assert len(indptr) == rows + 1 and indptr[0] == 0 and indptr[-1] == len(indices) == csr.nnz
    assert (np.diff(indptr) >= 0).all()
    for r in range(rows):
        row = indices[indptr[r] : indptr[r + 1]]
        assert (row >= 0).all() and (row < cols).all() and (np.diff(row) > 0).all()


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


# --------------------------------------------------------------------------- in memory


@FAST
@given(matrices)
def test_to_csr_matches_scipy_and_round_trips(dense):
    csr = to_csr(dense)
    reference = scipy.sparse.csr_matrix(dense.numpy())
    assert np.array_equal(csr.indptr.numpy(), reference.indptr)
    assert np.array_equal(csr.indices.numpy(), reference.indices)
    assert np.array_equal(csr.values.numpy(), reference.data)
    assert torch.equal(csr.to_dense(), dense)


@pytest.mark.parametrize(
    "dense",
    [
        torch.zeros(7, 5),  # all zero
        torch.randn(6, 4),  # fully dense
        torch.randn(1, 300) * (torch.rand(1, 300) < 0.2),  # 1 x N
        torch.randn(300, 1) * (torch.rand(300, 1) < 0.2),  # N x 1
        torch.tensor([[0.0, 0.0], [1.5, -0.0], [0.0, 0.0], [0.0, 2.0]]),  # empty rows, -0.0
    ],
    ids=["zeros", "dense", "1xN", "Nx1", "empty-rows"],
)
def test_edge_shapes(dense):
    csr = to_csr(dense)
    assert csr.nnz == int((dense != 0).sum())
    assert torch.equal(csr.to_dense(), dense)
    for mode in MODES:
        assert_same(decode(encode(csr, mode)), csr, exact_values=mode == "float32")


def test_conv_weight_is_viewed_as_out_by_rest():
    weight = torch.randn(8, 3, 3, 3) * (torch.rand(8, 3, 3, 3) < 0.3)
    csr = to_csr(weight)
    assert csr.shape == (8, 27)
    assert torch.equal(csr.to_dense().view_as(weight), weight)


def test_torch_sparse_conversion_shares_memory():
    dense = sparse_matrix(9, 13, 0.3, 0)
    csr = to_csr(dense)
    as_torch = csr.to_torch()
    assert as_torch.layout == torch.sparse_csr
    assert as_torch.values().data_ptr() == csr.values.data_ptr()
    assert as_torch.col_indices().data_ptr() == csr.indices.data_ptr()
    back = CSRMatrix.from_torch(as_torch)
    assert back.values.data_ptr() == csr.values.data_ptr()
    assert_same(back, csr)
    assert torch.equal(as_torch.to_dense(), dense)
    with pytest.raises(ValueError):
        CSRMatrix.from_torch(dense)


def test_mask_keeps_explicit_zeros():
    weight = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    csr = to_csr(weight, mask)
    assert csr.indices.tolist() == [0, 1, 0] and csr.values.tolist() == [0.0, 2.0, 3.0]
    decoded = decode(encode(csr))
    assert_same(decoded, csr)


# --------------------------------------------------------------------------- encoding


@FAST
@given(matrices, st.sampled_from(MODES))
def test_encode_decode(dense, mode):
    csr = to_csr(dense)
    decoded = decode(encode(csr, mode))
    assert_same(decoded, csr, exact_values=False)
    original, restored = csr.values, decoded.values
    if mode == "float32":
        assert torch.equal(restored, original)
    elif mode == "float16":  # round to nearest half: relative 2**-11, subnormal step 2**-24
        assert ((restored - original).abs() <= original.abs() * 2**-11 + 2**-25).all()
    else:  # int8: step max|v| / 127, error at most half a step
        step = original.abs().max() / 127 if csr.nnz else 1.0
        assert ((restored - original).abs() <= step / 2 * (1 + 1e-5)).all()


def last_column_matrix(rows: int = 4, cols: int = 256) -> torch.Tensor:
    """One entry per row, in the last column: 8-bit absolute indices beat 9-bit Rice codes."""
    dense = torch.zeros(rows, cols)
    dense[:, -1] = torch.arange(1.0, rows + 1)
    return dense


@pytest.mark.parametrize(
    "dense, expected_mode",
    [
        (sparse_matrix(64, 576, 0.1, 1), 1),  # Rice: ~4.8 bits per entry at 90 % sparsity
        (sparse_matrix(20, 3000, 0.002, 1), 1),  # Rice with a large k
        (last_column_matrix(), 0),  # absolute
        (torch.zeros(6, 9), 0),  # nothing to index: absolute (row counts only)
        (sparse_matrix(16, 16, 0.6, 1), 2),  # bitmap: dense
    ],
)
def test_each_index_coding_is_chosen_where_smallest_and_exact(dense, expected_mode):
    csr = to_csr(dense)
    data = encode(csr)
    assert data[INDEX_MODE_BYTE] == expected_mode
    assert_same(decode(data), csr)


def test_compression_at_90_percent_sparsity():
    csr = to_csr(sparse_matrix(128, 1152, 0.1, 2))
    dense_bytes = 128 * 1152 * 4
    plain = csr.nnz * 8 + 129 * 4
    assert dense_bytes / plain < 5.1  # plain CSR: 4.8x
    assert dense_bytes / len(encode(csr)) > 8.5  # limit for float32 values: 10x
    assert dense_bytes / len(encode(csr, "float16")) > 15.0


@pytest.mark.parametrize("density", [0.3, 0.2, 0.1, 0.05])
def test_index_cost_is_close_to_the_mask_entropy(density):
    """For a random mask no coding beats log2 C(n, nnz) bits on average; we stay within 5 %."""
    csr = to_csr(sparse_matrix(128, 1152, density, 3))
    n, k = 128 * 1152, csr.nnz
    entropy_bits = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    index_bits = 8 * (len(encode(csr)) - 4 * k - 44)  # minus values, header and CRC (row counts stay)
    assert entropy_bits < index_bits < 1.05 * entropy_bits


def test_encode_rejects_bad_arguments():
    csr = to_csr(sparse_matrix(3, 3, 0.5, 0))
    with pytest.raises(ValueError):
        encode(csr, "float64")
    with pytest.raises(ValueError):
        encode(to_csr(torch.tensor([[float("inf"), 1.0]])), "int8")


# --------------------------------------------------------------------------- hostile input


def small_blobs() -> list[bytes]:
    """One small valid encoding per index coding."""
    return [
        encode(to_csr(sparse_matrix(3, 60, 0.1, 3))),  # Rice
        encode(to_csr(sparse_matrix(2, 300, 0.01, 4)), "float16"),  # Rice, larger k
        encode(to_csr(last_column_matrix(3, 256)), "int8"),  # absolute
        encode(to_csr(sparse_matrix(4, 4, 0.6, 6))),  # bitmap
    ]


def test_small_blobs_cover_every_index_coding():
    assert sorted(blob[INDEX_MODE_BYTE] for blob in small_blobs()) == [0, 1, 1, 2]


@pytest.mark.parametrize("blob_index", range(4))
def test_every_single_byte_corruption_is_detected(blob_index):
    blob = small_blobs()[blob_index]
    original = decode(blob)
    for position in range(len(blob)):
        for flip in (0x01, 0x80, 0xFF):
            corrupt = bytearray(blob)
            corrupt[position] ^= flip
            try:
                decoded = decode(bytes(corrupt))
            except CSRFormatError:
                continue
            assert_same(decoded, original)  # only acceptable alternative


@pytest.mark.parametrize("blob_index", range(4))
def test_corruption_with_a_valid_crc_is_validated(blob_index):
    """A hostile file can carry a correct CRC: the decoder itself must still reject or stay valid."""
    blob = small_blobs()[blob_index]
    for position in range(len(blob) - 4):
        for flip in (0x01, 0x10, 0x80, 0xFF):
            corrupt = bytearray(blob[:-4])
            corrupt[position] ^= flip
            try:
                decoded = decode(with_crc(bytes(corrupt)))
            except CSRFormatError:
                continue
            assert_valid(decoded)


def test_truncation_is_detected():
    for blob in small_blobs():
        for length in range(len(blob)):
            with pytest.raises(CSRFormatError):
                decode(blob[:length])
        with pytest.raises(CSRFormatError, match="trailing"):
            decode(blob + b"\0")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_random_bytes_never_raise_anything_else(data, with_magic):
    if with_magic:  # get past the magic and version checks
        data = b"DPCS\x01" + data
    with contextlib.suppress(CSRFormatError):
        assert_valid(decode(data))


def test_unsorted_or_repeated_absolute_indices_are_rejected():
    for columns in ([5, 3], [4, 4]):
        header = HEADER.pack(b"DPCS", 1, 0, 0, 1, 1, 0, 0, 0, 1, 10, 2, 0, 0.0)
        payload = bytes([2, *columns]) + struct.pack("<2f", 1.0, 2.0)
        with pytest.raises(CSRFormatError, match="increasing"):
            decode(with_crc(header + payload))
    header = HEADER.pack(b"DPCS", 1, 0, 0, 1, 1, 0, 0, 0, 2, 10, 2, 0, 0.0)  # a new row may restart lower
    assert decode(with_crc(header + bytes([1, 1, 5, 3]) + struct.pack("<2f", 1.0, 2.0))).indices.tolist() == [5, 3]


def test_wrong_magic_and_future_version_are_named():
    blob = small_blobs()[0]
    with pytest.raises(CSRFormatError, match="magic"):
        decode(b"XXXX" + blob[4:])
    future = bytearray(blob[:-4])
    future[4] = 2
    with pytest.raises(CSRFormatError, match="newer"):
        decode(with_crc(bytes(future)))
    assert issubclass(CSRFormatError, ValueError)


@pytest.mark.parametrize(
    "rows, cols, nnz, index_mode, count_width, index_param, unary_bits",
    [
        (2**32 - 1, 2**32 - 1, 2**60, 0, 1, 4, 0),  # huge nnz
        (2**32 - 1, 1, 0, 0, 8, 1, 0),  # huge row count (indptr would be 32 GiB)
        (2**32 - 1, 2**32 - 1, 10**9, 1, 4, 5, 2**62),  # huge Rice sections
        (2**32 - 1, 2**32 - 1, 10**6, 2, 0, 0, 0),  # huge bitmap
    ],
)
def test_huge_header_sizes_fail_before_allocating(rows, cols, nnz, index_mode, count_width, index_param, unary_bits):
    header = HEADER.pack(b"DPCS", 1, 0, index_mode, count_width, index_param, 0, 0, 0, rows, cols, nnz, unary_bits, 0.0)
    tracemalloc.start()
    try:
        with pytest.raises(CSRFormatError, match="truncated"):
            decode(with_crc(header + bytes(64)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# --------------------------------------------------------------------------- whole models


class SmallNet(nn.Module):
    """Sparse conv and linear layers, BatchNorm, biases and a dense classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = DynamicConv2d(3, 8, 3, initial_sparsity=0.7)
        self.bn = nn.BatchNorm2d(8)
        self.fc = DynamicLinear(8 * 6 * 6, 16, initial_sparsity=0.8)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x))).flatten(1)
        return self.head(torch.relu(self.fc(x)))


def trained_small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    model = SmallNet()
    model(torch.randn(16, 3, 8, 8))  # give BatchNorm running statistics
    with torch.no_grad():
        row, col = model.fc.mask.nonzero()[0].tolist()
        model.fc.weight[row, col] = 0.0  # a live weight that is exactly 0
    return model.eval()


def test_model_round_trip_is_bit_exact(tmp_path):
    model = trained_small_net(0)
    path = tmp_path / "model.dpsm"
    size = save_sparse(model, path)
    assert size == os.path.getsize(path)
    assert os.listdir(tmp_path) == ["model.dpsm"]  # no temporary file left behind

    fresh = trained_small_net(1)  # different weights, masks and statistics
    x = torch.randn(5, 3, 8, 8)
    assert not torch.equal(fresh(x), model(x))
    assert load_sparse(path, fresh) is fresh
    assert torch.equal(fresh(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

    state = load_sparse(path)  # without a model: the state dict
    assert sorted(state) == sorted(model.state_dict())  # each mask comes right after its weight
    for key, value in model.state_dict().items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


@pytest.mark.parametrize("mode, tolerance", [("float16", 1e-2), ("int8", 0.1)])
def test_lossy_model_modes(mode, tolerance):
    model = trained_small_net(0)
    clone = trained_small_net(1)
    clone.load_state_dict(model_from_bytes(model_to_bytes(model, mode)))
    x = torch.randn(5, 3, 8, 8)
    assert torch.equal(clone.fc.mask, model.fc.mask)
    assert torch.equal(clone.bn.running_var, model.bn.running_var)  # only sparse weights are lossy
    assert (clone(x) - model(x)).abs().max() < tolerance


def test_model_file_is_smaller_than_plain_csr_and_torch_save(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(DynamicLinear(512, 256, initial_sparsity=0.9), nn.ReLU(), DynamicLinear(256, 10, 0.9))
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("mask")}, tmp_path / "dense.pt")
    size = save_sparse(model, tmp_path / "sparse.dpsm")
    assert size < 0.75 * plain_csr_nbytes(model)
    assert os.path.getsize(tmp_path / "dense.pt") / size > 7.5


def test_weight_outside_mask_is_refused(tmp_path):
    model = trained_small_net(0)
    with torch.no_grad():
        model.fc.weight[~model.fc.mask] = 1.0
    with pytest.raises(ValueError, match="outside its mask"):
        save_sparse(model, tmp_path / "m.dpsm")


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.dpsm"
    save_sparse(trained_small_net(0), path)
    before = path.read_bytes()
    bad = trained_small_net(0)
    bad.register_buffer("odd", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match="dtype"):
        save_sparse(bad, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.dpsm"]


def test_model_file_corruption_and_truncation(tmp_path):
    data = model_to_bytes(trained_small_net(0))
    for position in range(len(data)):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x41
        with pytest.raises(CSRFormatError):
            model_from_bytes(bytes(corrupt))
    for length in range(0, len(data), 7):
        with pytest.raises(CSRFormatError):
            model_from_bytes(data[:length])
    with pytest.raises(CSRFormatError, match="magic"):
        model_from_bytes(b"PK\x03\x04" + data[4:])


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (NaN-safe equality)."""
    return tensor.reshape(-1).view(torch.uint8)


def test_model_file_with_valid_crc_but_bad_content():
    """A flipped byte under a valid CRC is either refused with CSRFormatError (a broken structure)
    or decodes to the same keys and shapes with at most one tensor changed (a flipped value):
    never another exception, a renamed or reshaped tensor, or damage beyond the byte."""
    model = trained_small_net(0)
    original = model.state_dict()
    shapes = {name: tensor.shape for name, tensor in original.items()}
    data = model_to_bytes(model)
    refused = decoded = 0
    for position in range(0, len(data) - 4, 3):
        corrupt = bytearray(data[:-4])
        corrupt[position] ^= 0x5A
        try:
            state = model_from_bytes(with_crc(bytes(corrupt)), shapes)
        except CSRFormatError:
            refused += 1
            continue
        decoded += 1
        assert sorted(state) == sorted(original) and all(state[k].shape == original[k].shape for k in state), position
        changed = [k for k in state if not torch.equal(_bytes(state[k]), _bytes(original[k]))]
        assert len(changed) <= 1, (position, changed)
    assert refused and decoded  # both kinds of damage occur in the file


def test_hostile_model_file_cannot_expand_a_huge_weight(tmp_path):
    empty = CSRMatrix(
        torch.zeros(2, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0), (1, 2**32 - 1)
    )
    blob = encode(empty)  # 1 x (2**32 - 1) with nothing stored: 45 bytes
    name = b"fc.weight"
    entry = struct.pack("<H", len(name)) + name + struct.pack("<BBB", 1, 0, 2)  # CSR, float32, 2-D
    entry += struct.pack("<QQQ", 1, 2**32 - 1, len(blob))
    data = with_crc(b"DPSM\x01\0\0\0" + struct.pack("<I", 1) + entry + blob)
    tracemalloc.start()
    try:
        with pytest.raises(CSRFormatError, match="elements"):
            model_from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    (tmp_path / "m.dpsm").write_bytes(data)
    with pytest.raises(CSRFormatError, match="shape"):
        load_sparse(tmp_path / "m.dpsm", nn.Sequential(OrderedDict(fc=nn.Linear(5, 1))))  # checked against it
