"""GEMM inside the kernels: BLAS by address and the plain-loop fallback, against numpy."""
import numpy as np
import pytest

from nnjit.kernels.blas import (CALLED, NO_TRANS, SGEMM, TRANS, blas_called, blas_handle, gemm,
                               reset_blas_called)


def test_numpys_blas_is_found():
    assert blas_handle()[SGEMM] != 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [NO_TRANS, TRANS])
@pytest.mark.parametrize("trans_b", [NO_TRANS, TRANS])
@pytest.mark.parametrize("handle", ["blas", "loop"])
def test_gemm_matches_numpy(dtype, trans_a, trans_b, handle, rng):
    m, n, k = 5, 7, 3
    a = rng.normal(size=(m, k) if trans_a == NO_TRANS else (k, m)).astype(dtype)
    b = rng.normal(size=(k, n) if trans_b == NO_TRANS else (n, k)).astype(dtype)
    c = rng.normal(size=(m, n + 2)).astype(dtype)  # a row stride wider than the matrix
    expected = c.copy()
    expected[:, :n] = (2.0 * (a if trans_a == NO_TRANS else a.T) @ (b if trans_b == NO_TRANS else b.T)
                       + 0.5 * c[:, :n])
    blas = blas_handle() if handle == "blas" else np.zeros(CALLED + 1, np.int64)
    out = c.reshape(-1).copy()
    gemm(blas, trans_a, trans_b, m, n, k, 2.0, a.reshape(-1), a.shape[1], b.reshape(-1),
         b.shape[1], 0.5, out, n + 2)
    np.testing.assert_allclose(out.reshape(m, n + 2), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("handle", ["blas", "loop"])
def test_a_blas_call_leaves_its_mark(handle):
    a = np.ones(6, np.float32)
    out = np.zeros(4, np.float32)
    reset_blas_called()
    assert not blas_called()
    blas = blas_handle() if handle == "blas" else np.zeros(CALLED + 1, np.int64)
    gemm(blas, NO_TRANS, NO_TRANS, 2, 2, 3, 1.0, a, 3, a, 2, 0.0, out, 2)
    np.testing.assert_array_equal(out, 3)
    assert blas_called() == (handle == "blas")
