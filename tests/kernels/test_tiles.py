"""The register-tile GEMMs (``nnjit.kernels.tiles``) against numpy, and the convolution
and the Dense stack run on them against the same layers on BLAS."""
import numpy as np
import pytest

import nnjit.layers.dense as dense_module
from nnjit.planner import DenseAlgorithm, Tuning
from nnjit import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Sequential, Softmax
from nnjit.kernels.blas import NO_TRANS, TRANS, blas_handle, single_threaded_blas
from nnjit.kernels.tiles import (NT_REDUCTION_STEP, batched_product, refresh_transpose, tiled_gemm,
                                 tiled_gemm_nt, transpose_slice)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("trans", [NO_TRANS, TRANS])
@pytest.mark.parametrize("m, k, n", [(8, 1, 32), (8, 5, 32), (16, 72, 64), (7, 3, 31),
                                     (33, 17, 65), (20, 250, 100), (64, 288, 97), (13, 40, 64),
                                     (4, 9, 40), (13, 64, 10), (8, 128, 16), (12, 20, 17),
                                     (5, 30, 10), (3, 7, 10)])
def test_tiled_gemm_matches_numpy(m, k, n, trans, accumulate, rng):
    """Whole tiles, 4-row tiles for 4 of the rows past a multiple of 8, the
    columns past a multiple of 32 in masked tiles (16 or 32 wide), the last
    rows by an overlapping tile or BLAS, the weight as (M, K) or transposed
    (K, M); written over c (NaN before) or added to it."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    flat_a = (a if trans == NO_TRANS else np.ascontiguousarray(a.T)).reshape(-1)
    before = rng.standard_normal(m * n).astype(np.float32) if accumulate else \
        np.full(m * n, np.nan, np.float32)
    c = before.copy()
    with single_threaded_blas:
        tiled_gemm(blas_handle(), trans, m, k, flat_a, k if trans == NO_TRANS else m,
                   b.reshape(-1), n, c, accumulate)
    want = a.astype(np.float64) @ b + (before.reshape(m, n) if accumulate else 0)
    np.testing.assert_allclose(c.reshape(m, n), want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("m, n", [(8, 10), (12, 17), (13, 40), (4, 3)])
def test_tiled_gemm_masked_columns_stay_inside_c(m, n, accumulate, rng):
    """The masked tiles of the last columns read and write only c's own columns:
    values placed after c's last row come out unchanged (an unmasked 16- or
    32-wide store there would overwrite them), and NaN in them never reaches c."""
    k = 24
    a = rng.standard_normal((m, k)).astype(np.float32)
    b_values = rng.standard_normal(k * n).astype(np.float32)
    b = np.concatenate([b_values, np.full(32, np.nan, np.float32)])
    before = rng.standard_normal(m * n).astype(np.float32)
    c = np.concatenate([before, np.full(32, 7.0, np.float32)])
    with single_threaded_blas:
        tiled_gemm(blas_handle(), NO_TRANS, m, k, a.reshape(-1), k, b, n, c, accumulate)
    want = a.astype(np.float64) @ b_values.reshape(k, n) + \
        (before.reshape(m, n) if accumulate else 0)
    np.testing.assert_allclose(c[:m * n].reshape(m, n), want, rtol=1e-5, atol=1e-4)
    assert (c[m * n:] == 7.0).all()


@pytest.mark.parametrize("tiles", [True, False])
@pytest.mark.parametrize("m, k, n", [(25, 32, 64), (9, 32, 64), (3, 16, 40), (4, 8, 33),
                                     (13, 20, 17)])
def test_batched_product_multiplies_each_pair_and_writes_only_its_rows(m, k, n, tiles, rng):
    """c[i] = a[i] @ b[i] for matrices lying a stride apart (Winograd's 16 per
    chunk), in tiles (8-row, 4-row, overlapping, masked) or by BLAS; what lies
    between the c[i] (NaN) untouched."""
    count, a_step, b_step, c_step = 3, (m + 3) * k, k * n + 5, (m + 2) * n
    a = rng.standard_normal(count * a_step).astype(np.float32)
    b = rng.standard_normal(count * b_step).astype(np.float32)
    c = np.full(count * c_step, np.nan, np.float32)
    with single_threaded_blas:
        batched_product(blas_handle(), tiles, count, m, k, a, a_step, b, b_step, n, c, c_step)
    for i in range(count):
        ai = a[i * a_step:i * a_step + m * k].reshape(m, k).astype(np.float64)
        bi = b[i * b_step:i * b_step + k * n].reshape(k, n)
        np.testing.assert_allclose(c[i * c_step:i * c_step + m * n].reshape(m, n), ai @ bi,
                                   rtol=1e-5, atol=1e-5 * np.sqrt(k))
        assert np.isnan(c[i * c_step + m * n:(i + 1) * c_step]).all()


def test_tiled_gemm_in_float64_is_blas(rng):
    a, b = rng.standard_normal((16, 70)), rng.standard_normal((70, 40))
    c = np.zeros(16 * 40)
    with single_threaded_blas:
        tiled_gemm(blas_handle(), NO_TRANS, 16, 70, a.reshape(-1), 70, b.reshape(-1), 40, c,
                   False)
    np.testing.assert_allclose(c.reshape(16, 40), a @ b, rtol=1e-12)


@pytest.mark.parametrize("m, k, n", [(256, 1, 32), (256, 300, 64), (263, 40, 31), (269, 70, 32),
                                     (259, 2 * NT_REDUCTION_STEP + 5, 33), (300, 90, 64),
                                     (257, 600, 70), (72, 90, 64), (250, 576, 20),
                                     (66, 40, 10)])
def test_tiled_gemm_nt_adds_a_times_b_transposed(m, k, n, rng):
    """c += a b^T: whole tiles, a 4-row tile, the last 1-3 rows (dot products),
    ragged columns (masked tiles, 10 or 20 columns alone), sums over several
    passes of NT_REDUCTION_STEP; c's previous contents are kept and added to."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    c = c0.reshape(-1).copy()
    workspace = np.full(NT_REDUCTION_STEP * n, np.nan, np.float32)
    with single_threaded_blas:
        tiled_gemm_nt(blas_handle(), m, k, a.reshape(-1), b.reshape(-1), n, workspace, c)
    np.testing.assert_allclose(c.reshape(m, n), c0 + a.astype(np.float64) @ b.T, rtol=1e-5,
                               atol=1e-5 * np.sqrt(k))


def test_tiled_gemm_nt_in_float64_is_blas(rng):
    a, b = rng.standard_normal((16, 70)), rng.standard_normal((40, 70))
    c0 = rng.standard_normal((16, 40))
    c = c0.reshape(-1).copy()
    with single_threaded_blas:
        tiled_gemm_nt(blas_handle(), 16, 70, a.reshape(-1), b.reshape(-1), 40, np.zeros(1), c)
    np.testing.assert_allclose(c.reshape(16, 40), c0 + a @ b.T, rtol=1e-12)


@pytest.mark.parametrize("everywhere", [False, True])
def test_conv_weight_gradient_in_tiles_from_its_row_threshold(everywhere, host_with, using):
    """A conv's weight gradient (K rows) runs in tiles from ``nt_min_rows`` rows, or
    ``nt_min_rows_everywhere`` where BLAS lacks AVX-512 kernels; never for float64."""
    using(host=host_with(tiles=True, blas_avx512=not everywhere))
    t = Tuning()
    least = t.nt_min_rows_everywhere if everywhere else t.nt_min_rows
    assert t.nt_min_rows_everywhere < t.nt_min_rows

    def weight_grad_tiles(k, dtype=np.float32):  # K = C * 3 * 3 rows
        conv = Conv2D(k // 9, 64, 3, dtype=dtype)
        return conv.plan((64, k // 9, 12, 12), True).weight_grad_tiles

    above = -(-least // 9) * 9
    assert weight_grad_tiles(above) and not weight_grad_tiles(above - 9)
    assert not weight_grad_tiles(above, np.float64)


@pytest.mark.parametrize("rows, cols, n0, n1, k0, steps", [
    (32, 169, 0, 32, 0, 169),  # a 13x13 image of 32 channels, channels-last at once
    (13, 29, 3, 12, 5, 19),    # a slice: ragged rows and columns inside and past 8x8 blocks
    (8, 8, 0, 8, 0, 8), (7, 5, 0, 7, 0, 5), (20, 40, 4, 20, 16, 17), (25, 3, 0, 25, 1, 2),
])
def test_transpose_slice_writes_exactly_the_slice_transposed(rows, cols, n0, n1, k0, steps, rng):
    b = rng.random((rows, cols), dtype=np.float32)
    bt = np.full((steps, rows), -1.0, np.float32)
    transpose_slice(b.reshape(-1), cols, k0, steps, n0, n1, rows, bt.reshape(-1))
    expected = np.full((steps, rows), -1.0, np.float32)
    expected[:, n0:n1] = b[n0:n1, k0:k0 + steps].T
    np.testing.assert_array_equal(bt, expected)


def test_refresh_transpose_follows_every_change_of_its_rows(rng):
    """The kept transpose is rebuilt for exactly the rows that changed, including a
    change of sign of a zero and a NaN; rows outside [n0, n1) are left alone."""
    n, k = 6, 5
    b = rng.standard_normal((n, k)).astype(np.float32)
    b[2, 3] = 0.0
    packed = np.full(2 * n * k, np.nan, np.float32)
    refresh_transpose(b.reshape(-1), k, 0, n, n, packed)
    np.testing.assert_array_equal(packed[:n * k].reshape(k, n), b.T)
    for row, col, value in ((1, 4, 7.5), (2, 3, -0.0), (4, 0, np.nan)):
        b[row, col] = value
        refresh_transpose(b.reshape(-1), k, 0, n, n, packed)
        seen = packed[:n * k].reshape(k, n)
        np.testing.assert_array_equal(seen, b.T)
        assert np.signbit(seen[col, row]) == np.signbit(b[row, col])
    b[0, 0] = 9.0  # outside the refreshed rows [1, 6): not seen
    refresh_transpose(b.reshape(-1), k, 1, n, n, packed)
    assert packed[0] != 9.0
    refresh_transpose(b.reshape(-1), k, 0, 1, n, packed)
    assert packed[0] == 9.0


@pytest.mark.parametrize("everywhere", [False, True])
@pytest.mark.parametrize("pool, channels", [(False, 64), (True, 64), (True, 36)])
def test_conv_on_tiles_matches_conv_on_blas(pool, channels, everywhere, rng, host_with, using):
    """A conv whose forward GEMM (64 or 36 channels over K = 288: 8-row tiles, and
    a 4-row one for 36), and with 64 channels (or ``tiles_everywhere``) its
    input-gradient GEMM (288 rows over the channels) and weight-gradient GEMM
    (288 x channels over the block's columns), run in tiles (the unfold path:
    Winograd off): output, dx, dW and db equal the float64 layer's (BLAS)
    within float32 rounding. The tiles are forced on, so this runs them on any
    host."""
    using(host=host_with(tiles=True, blas_avx512=not everywhere), conv="unfold")

    def build(dtype):
        layers = [Conv2D(32, channels, 3, padding=1, dtype=dtype)] + \
            ([ReLU(), MaxPool2D(2)] if pool else [])
        model = Sequential([Conv2D(2, 32, 1, dtype=dtype)] + layers, seed=3)
        return model, model.layers[1]

    model32, conv32 = build(np.float32)
    model64, conv64 = build(np.float64)
    plan32, plan64 = (conv.plan((3, 32, 9, 10), True) for conv in (conv32, conv64))
    assert plan32.forward_tiles and not plan64.forward_tiles
    assert plan32.input_grad_tiles == (channels == 64 or everywhere)
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


@pytest.mark.parametrize("everywhere", [False, True])
def test_dense_stack_on_tiles_follows_its_weights(everywhere, rng, host_with, using):
    """A Dense stack on enough rows (``tiled_dense_min_rows``, or 4 where BLAS lacks
    AVX-512 kernels) runs its wide layer in tiles over a kept transposed
    weight: predict equals the float64 model's, and still does after the
    weight and bias are changed in place (no rebinding), and after a training
    step. The tiles are forced on, so this runs on any host."""
    using(host=host_with(tiles=True, blas_avx512=not everywhere))
    rows = 6 if everywhere else Tuning().tiled_dense_min_rows + 3

    def build(dtype):
        return Sequential([Flatten(), Dense(70, 40, dtype=dtype), ReLU(),
                           Dense(40, 10, dtype=dtype), Softmax()], seed=5)

    m32, m64 = build(np.float32), build(np.float64)
    stack_first, narrow = m32.layers[1], m32.layers[3]
    assert stack_first.plan(rows, False).packed
    assert not stack_first.plan(rows - 4, False).packed
    assert narrow.plan(rows, False).packed == everywhere  # 10 outputs: masked tiles
    x = rng.standard_normal((rows, 70))

    def agree():
        np.testing.assert_allclose(m32.predict(x.astype(np.float32), batch_size=rows),
                                   m64.predict(x, batch_size=rows), rtol=1e-4, atol=1e-5)

    agree()
    assert "packed" in stack_first._buffers
    for model in (m32, m64):
        model.layers[1].weight.value[3, :] *= -2.0
        model.layers[1].weight.value[:, 7] = 0.5
        model.layers[1].bias.value[1] += 1.0
    agree()
    labels = rng.integers(0, 10, min(rows, 32))
    for model in (m32, m64):
        model.forward(x[:32].astype(model.dtype))
        model.backward(labels)
        for p in model.parameters():
            p.value -= 0.5 * p.grad
    agree()


@pytest.mark.parametrize("dot", [True, False])
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_dense_on_few_rows_matches_numpy(rows, dot, rng, host_with, using):
    """Fewer than ``dot_rows_below`` rows run as dot products where BLAS has no
    AVX-512 kernels (forced either way here): a training forward and a predict
    (through a Dense stack) equal numpy's float64 products with the same weights."""
    using(host=host_with(blas_avx512=not dot))
    model = Sequential([Flatten(), Dense(300, 40), ReLU(), Dense(40, 10)], seed=6)
    assert model.layers[1].plan(rows, False).dot_below == (Tuning().dot_rows_below if dot else 0)
    x = rng.standard_normal((rows, 300)).astype(np.float32)
    first, second = (model.layers[i] for i in (1, 3))
    hidden = np.maximum(x.astype(np.float64) @ first.weight.value.T + first.bias.value, 0)
    want = hidden @ second.weight.value.T + second.bias.value
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.forward(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("everywhere", [True, False])
@pytest.mark.parametrize("rows", [6, 70])
def test_dense_training_on_tiles_matches_float64(rows, everywhere, rng, host_with, using):
    """Where BLAS lacks AVX-512 kernels (forced either way, tiles forced on) a
    Dense layer's training forward, input and weight gradients run in register
    tiles: they equal the float64 model's (BLAS) within float32 rounding."""
    using(host=host_with(tiles=True, blas_avx512=not everywhere))

    def build(dtype):
        return Sequential([Flatten(), Dense(300, 40, dtype=dtype), ReLU(),
                           Dense(40, 36, dtype=dtype), Softmax()], seed=7)

    m32, m64 = build(np.float32), build(np.float64)
    assert m32.layers[1].plan(rows, True).packed == everywhere
    assert m32.layers[3].plan(rows, True).backward_tiles == everywhere
    x = rng.standard_normal((rows, 300))
    labels = rng.integers(0, 36, rows)
    for model in (m32, m64):
        model.forward(x.astype(model.dtype))
        model.backward(labels)
    for p32, p64 in zip(m32.parameters(), m64.parameters(), strict=True):
        np.testing.assert_allclose(p32.grad, p64.grad, rtol=1e-4, atol=1e-6, err_msg=p32.name)


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize("rows, features", [(4, 37), (13, 40), (33, 128), (50, 51)])
def test_dense_forward_as_weight_times_input_transposed(rows, features, parts, rng,
                                                        monkeypatch, host_with, using):
    """From ``dot_rows_below`` rows to fewer than out_features (tiles everywhere,
    forced here), forward runs as out^T = W x^T (``dense_forward_transposed``):
    with a fused ReLU, in training and at inference, on one part or two (the
    input's columns and the output features split), it equals numpy's float64
    product; the gradients after it equal the float64 layer's."""
    using(host=host_with(tiles=True, blas_avx512=False))
    monkeypatch.setattr(dense_module, "parts_for", lambda work, most: min(parts, most))

    def build(dtype):
        return Sequential([Dense(70, features, dtype=dtype), ReLU()], seed=3)

    m32, m64 = build(np.float32), build(np.float64)
    dense = m32.layers[0]
    assert dense.plan(rows, True).algorithm is DenseAlgorithm.TRANSPOSED
    dense.bias.value[...] = rng.normal(size=features)
    m64.layers[0].bias.value[...] = dense.bias.value
    x = rng.standard_normal((rows, 70))
    want = np.maximum(x @ m64.layers[0].weight.value.T + dense.bias.value, 0)
    np.testing.assert_allclose(dense.forward(x.astype(np.float32), training=False), want,
                               rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal((rows, features))
    for model, cast in ((m32, np.float32), (m64, np.float64)):
        layer = model.layers[0]
        np.testing.assert_allclose(layer.forward(x.astype(cast)), want, rtol=1e-4, atol=1e-5)
        layer.backward(dy.astype(cast))
    for p32, p64 in zip(m32.parameters(), m64.parameters(), strict=True):
        np.testing.assert_allclose(p32.grad, p64.grad, rtol=1e-4, atol=1e-5, err_msg=p32.name)
