"""``unfold_block`` (a padded block unfolded from a zero-padded copy of the rows it
reads) against the same block's patches gathered by numpy."""
import numpy as np
import pytest

from nnjit.kernels.conv import unfold_block


@pytest.mark.parametrize("case", range(24))
def test_unfold_block_equals_the_patches_gathered_by_numpy(case):
    """Random channels, kernels, strides, paddings (zero too), images per block,
    and blocks of rows: plain runs (G = 1) or pool-major (G > 1) starting below
    the first row, as ``conv_forward`` and ``conv_backward`` cut them."""
    draw = np.random.default_rng([case, 11])
    c = int(draw.integers(1, 4))
    kh, kw = (int(v) for v in draw.integers(1, 5, size=2))
    sh, sw = (int(v) for v in draw.integers(1, 3, size=2))
    ph, pw = int(draw.integers(0, kh)), int(draw.integers(0, kw))
    h, w = int(draw.integers(kh + 2, 15)), int(draw.integers(kw + 2, 15))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    n = int(draw.integers(1, 4))
    g = int(draw.integers(1, 3))
    r = int(draw.integers(1, oh // g + 1))
    r0 = int(draw.integers(0, oh - g * r + 1))  # conv rows r0 .. r0 + g*r - 1
    n0 = int(draw.integers(0, n))
    n1 = int(draw.integers(n0 + 1, n + 1))
    width = int(draw.integers(1, ow + 1))
    x = draw.normal(size=n * c * h * w).astype(np.float32)
    size = c * kh * kw * (n1 - n0) * g * r * width
    # cols[(c, kh, kw), (n, g, i, ow)] = padded x[n, c, oh*sh + kh, ow*sw + kw], oh = r0 + g + i*g
    padded = np.pad(x.reshape(n, c, h, w), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    rows = [r0 + gi + i * g for gi in range(g) for i in range(r)]
    want = np.stack([padded[n0:n1, ci, [oh * sh + ki for oh in rows]][:, :, kj:kj + width * sw:sw]
                     for ci in range(c) for ki in range(kh) for kj in range(kw)]).reshape(-1)
    got = np.full(size, np.nan, np.float32)
    image = np.full(n * c * (h + 2 * ph) * (w + 2 * pw), np.nan, np.float32)
    unfold_block(x, c, h, w, kh, kw, sh, sw, ph, pw, width, n0, n1, r0, r, g, image, got)
    np.testing.assert_array_equal(got, want)
