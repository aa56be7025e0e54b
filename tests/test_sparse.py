"""RowSparse: construction checks, in-place coalescing against a dense index_add_ reference, bulk helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsembed.rows.coalesce import RowSparse

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def batches(draw, max_rows=300, max_n=400):
    num_rows = draw(st.integers(1, max_rows))
    n = draw(st.integers(0, max_n))
    skew = draw(st.sampled_from(["uniform", "zipf", "one"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if skew == "uniform":
        ids = rng.integers(0, num_rows, n)
    elif skew == "zipf":
        ids = np.minimum(rng.zipf(1.3, n) - 1, num_rows - 1)
    else:
        ids = np.full(n, rng.integers(0, num_rows))
    dim = draw(st.integers(1, 9))
    return ids.astype(np.int64), dim, num_rows, rng


@settings(max_examples=300, deadline=None)
@given(batches(), st.sampled_from(DTYPES))
def test_coalesce_matches_dense_index_add(batch, dtype):
    ids, dim, num_rows, rng = batch
    # small integers: every sum is exact in each dtype, so results must match bit for bit
    values = torch.from_numpy(rng.integers(-8, 9, (ids.shape[0], dim)).astype(np.float32)).to(dtype)
    ref = torch.zeros(num_rows, dim).index_add_(0, torch.from_numpy(ids), values.float())
    rs = RowSparse(ids.copy(), values.clone(), num_rows)
    ptr = rs.values.untyped_storage().data_ptr()
    assert rs.coalesce_() is rs
    assert rs.values.untyped_storage().data_ptr() == ptr  # same storage: no second n x dim buffer
    assert torch.equal(rs.ids, torch.from_numpy(np.unique(ids)))
    assert rs.is_coalesced()
    dense = torch.zeros(num_rows, dim)
    dense[rs.ids] = rs.values.float()
    if dtype == torch.float32 or np.abs(ref.numpy()).max(initial=0) <= 256:
        assert torch.equal(dense, ref)
    else:
        assert torch.allclose(dense, ref, rtol=1e-2)


@settings(max_examples=100, deadline=None)
@given(batches(max_rows=5000, max_n=3000), st.sampled_from(DTYPES))
def test_coalesce_random_floats(batch, dtype):
    ids, dim, num_rows, rng = batch
    values = torch.from_numpy(rng.standard_normal((ids.shape[0], dim)).astype(np.float32)).to(dtype)
    ref = torch.zeros(num_rows, dim).index_add_(0, torch.from_numpy(ids), values.float())
    rs = RowSparse(torch.from_numpy(ids), values.clone(), num_rows).coalesce_()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(rs.to_dense(), ref, atol=tol * 10, rtol=tol)
    # coalescing the torch way gives the same ids
    coo = torch.sparse_coo_tensor(
        torch.from_numpy(ids)[None], values.float(), (num_rows, dim), check_invariants=False
    ).coalesce()
    assert torch.equal(coo.indices()[0], rs.ids)


def test_coalesce_large_zipf_and_idempotent():
    rng = np.random.default_rng(1)
    ids = np.minimum(rng.zipf(1.1, 200_000), 999_999).astype(np.int64)
    values = torch.randn(ids.shape[0], 16)
    ref = torch.sparse_coo_tensor(
        torch.from_numpy(ids)[None], values, (1_000_000, 16), check_invariants=False
    ).coalesce()
    rs = RowSparse(ids, values.clone(), 1_000_000).coalesce_()
    assert torch.equal(rs.ids, ref.indices()[0])
    assert torch.allclose(rs.values, ref.values(), atol=1e-3)
    before = rs.values.clone()
    assert torch.equal(rs.coalesce_().values, before)


def test_coalesced_copy_leaves_original():
    rs = RowSparse(torch.tensor([3, 1, 3]), torch.ones(3, 2), 4)
    out = rs.coalesced()
    assert out.ids.tolist() == [1, 3] and out.values[:, 0].tolist() == [1.0, 2.0]
    assert rs.ids.tolist() == [3, 1, 3] and not rs.is_coalesced()


def test_numpy_input_shared():
    ids = np.array([2, 0], np.int64)
    values = np.ones((2, 3), np.float32)
    rs = RowSparse(ids, values, 3)
    rs.values[0, 0] = 5
    assert values[0, 0] == 5


def test_gather_and_scatter_add():
    matrix = torch.arange(12.0).reshape(4, 3)
    rs = RowSparse(torch.tensor([3, 0, 3]), torch.ones(3, 3), 4)
    assert torch.equal(rs.gather(matrix).values, matrix[[3, 0, 3]])
    out = rs.scatter_add_(matrix.clone(), alpha=-0.5)
    expect = matrix.clone()
    expect[3] -= 1.0
    expect[0] -= 0.5
    assert torch.equal(out, expect)
    np_matrix = np.zeros((4, 3), np.float32)
    rs.scatter_add_(np_matrix)
    assert np_matrix[3, 0] == 2 and np_matrix[0, 0] == 1


@pytest.mark.parametrize(
    "ids, values, num_rows, match",
    [
        (torch.tensor([0, 5]), torch.zeros(2, 2), 5, "out of range"),
        (torch.tensor([-1]), torch.zeros(1, 2), 5, "out of range"),
        (torch.tensor([[0]]), torch.zeros(1, 2), 5, "1-D"),
        (torch.tensor([0.0]), torch.zeros(1, 2), 5, "integers"),
        (torch.tensor([0, 1]), torch.zeros(3, 2), 5, r"\[n, dim\]"),
        (torch.tensor([0]), torch.zeros(1, 2, dtype=torch.float64), 5, "dtype"),
        (torch.tensor([0]), torch.zeros(1, 2), -1, "num_rows"),
        ([0], torch.zeros(1, 2), 5, "torch.Tensor or numpy"),
    ],
)
def test_constructor_rejects(ids, values, num_rows, match):
    with pytest.raises(ValueError, match=match):
        RowSparse(ids, values, num_rows)


def test_matrix_shape_checked():
    rs = RowSparse(torch.tensor([0]), torch.zeros(1, 2), 3)
    with pytest.raises(ValueError, match="matrix"):
        rs.gather(torch.zeros(3, 4))
