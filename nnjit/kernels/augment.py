"""Data augmentation on a batch of images (N, C, H, W), one plane per ``prange`` step."""
from ._jit import kernel, prange


@kernel
def shift_flip(x, N, C, H, W, dy, dx, flip, out):
    """out[n, c, i, j] = x[n, c, i + dy[n], j' + dx[n]], zero where that falls outside
    the image, with j' = W - 1 - j when flip[n] else j: the shifted image, then
    mirrored left-right.

    A shift by (dy, dx) in [-p, p] is torchvision's random crop of the image
    zero-padded by p. x, out: float (N*C*H*W,); dy, dx: int64 (N,); flip: bool (N,).
    """
    x3, o3 = x.reshape((N * C, H, W)), out.reshape((N * C, H, W))
    for pl in prange(N * C):
        n = pl // C
        sy, sx, mirror = dy[n], dx[n], flip[n]
        src, dst = x3[pl], o3[pl]
        for i in range(H):
            si = i + sy
            row = dst[i]
            if si < 0 or si >= H:
                row[:] = 0
                continue
            srow = src[si]
            for j in range(W):
                sj = (W - 1 - j if mirror else j) + sx
                row[j] = srow[sj] if 0 <= sj < W else 0


@kernel
def erase_rectangles(out, N, C, H, W, erase):
    """Zero out[n, :, top:top + height, left:left + width] for each image n, with
    erase[4n:4n + 4] = (top, left, height, width) (height 0: none).
    out: float (N*C*H*W,), in place; erase: int64 (N*4,)."""
    o3 = out.reshape((N * C, H, W))
    for pl in prange(N * C):
        n = pl // C
        top, left, eh, ew = erase[4 * n], erase[4 * n + 1], erase[4 * n + 2], erase[4 * n + 3]
        for i in range(top, top + eh):
            o3[pl, i, left:left + ew] = 0
