"""The register-tile GEMM (``nnjit.kernels.tiles``) against numpy, and the convolution
run on it against the same convolution on BLAS."""
import numpy as np
import pytest

import nnjit.layers.conv as conv_module
from nnjit import Conv2D, MaxPool2D, ReLU, Sequential
from nnjit.kernels.blas import NO_TRANS, TRANS, blas_handle, single_threaded_blas
from nnjit.kernels.tiles import tiled_gemm


@pytest.mark.parametrize("trans", [NO_TRANS, TRANS])
@pytest.mark.parametrize("m, k, n", [(8, 1, 32), (8, 5, 32), (16, 72, 64), (7, 3, 31),
                                     (33, 17, 65), (20, 250, 100), (64, 288, 97)])
def test_tiled_gemm_matches_numpy(m, k, n, trans, rng):
    """Whole tiles, rows past a multiple of 8 and columns past a multiple of 32
    (left to BLAS), the weight as (M, K) or transposed (K, M)."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    flat_a = (a if trans == NO_TRANS else np.ascontiguousarray(a.T)).reshape(-1)
    c = np.full(m * n, np.nan, np.float32)
    with single_threaded_blas:
        tiled_gemm(blas_handle(), trans, m, k, flat_a, b.reshape(-1), n, c)
    np.testing.assert_allclose(c.reshape(m, n), a.astype(np.float64) @ b, rtol=1e-5,
                               atol=1e-5 * np.sqrt(k))


def test_tiled_gemm_in_float64_is_blas(rng):
    a, b = rng.standard_normal((16, 70)), rng.standard_normal((70, 40))
    c = np.zeros(16 * 40)
    with single_threaded_blas:
        tiled_gemm(blas_handle(), NO_TRANS, 16, 70, a.reshape(-1), b.reshape(-1), 40, c)
    np.testing.assert_allclose(c.reshape(16, 40), a @ b, rtol=1e-12)


@pytest.mark.parametrize("pool", [False, True])
def test_conv_on_tiles_matches_conv_on_blas(pool, rng, monkeypatch):
    """A conv whose forward GEMM (64 channels over K = 72) and input-gradient GEMM
    (72 rows over 64 channels) both run in tiles: output, dx, dW and db equal the
    float64 layer's (BLAS) within float32 rounding. TILES_AVAILABLE is forced on,
    so this runs the tiles on any host."""
    monkeypatch.setattr(conv_module, "TILES_AVAILABLE", True)

    def build(dtype):
        layers = [Conv2D(8, 64, 3, padding=1, dtype=dtype)] + ([ReLU(), MaxPool2D(2)] if pool else [])
        model = Sequential([Conv2D(2, 8, 1, dtype=dtype)] + layers, seed=3)
        return model, model.layers[1]

    model32, conv32 = build(np.float32)
    model64, conv64 = build(np.float64)
    assert conv32._tiles(64, 72) and conv32._tiles(72, 64) and not conv64._tiles(64, 72)
    x = rng.standard_normal((3, 2, 9, 10))
    outs, grads = [], []
    for model, conv, dtype in ((model32, conv32, np.float32), (model64, conv64, np.float64)):
        h = model.layers[0].forward(x.astype(dtype))
        y = conv.forward(h)
        dy = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
        dx = conv.backward(dy)
        outs.append(y)
        grads.append((dx.copy(), conv.weight.grad.copy(), conv.bias.grad.copy()))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    for g32, g64 in zip(*grads):
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-3)
