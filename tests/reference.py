"""Slow, obvious NumPy implementations that the kernels are checked against."""
import numpy as np


def conv2d(x, weight, bias, stride, padding):
    """x (N, C, H, W), weight (OC, C, KH, KW) -> (N, OC, OH, OW), direct loops over outputs."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    oc, _, kh, kw = weight.shape
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, oc, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # (N, C, KH, KW)
            out[:, :, i, j] = np.tensordot(patch, weight, axes=([1, 2, 3], [1, 2, 3]))
    return out + bias[None, :, None, None]


def pool2d(x, kernel, stride, reduce):
    """Windows of x (N, C, H, W) without padding, each reduced by reduce(window, axis=(2, 3))."""
    (kh, kw), (sh, sw) = kernel, stride
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw], axis=(2, 3))
    return out


def maxpool2d(x, kernel, stride):
    return pool2d(x, kernel, stride, np.max)


def conv_relu_maxpool2x2(x, conv, relu):
    """float64 conv of x by the Conv2D ``conv``'s parameters, max(0, .) with ``relu``,
    then a 2x2, stride-2 max-pool (the last row/column of odd sizes unpooled)."""
    y = conv2d(x.astype(np.float64), conv.weight.value.astype(np.float64),
               conv.bias.value.astype(np.float64), conv.stride, conv.padding)
    if relu:
        y = np.maximum(y, 0)
    return maxpool2d(y, (2, 2), (2, 2))


def avgpool2d(x, kernel, stride):
    return pool2d(x, kernel, stride, np.mean)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(z, labels):
    """Mean of logsumexp(z) - z[label], via np.logaddexp (a different route than the kernel)."""
    z = np.asarray(z, dtype=np.float64)
    lse = np.logaddexp.reduce(z, axis=1)
    return float(np.mean(lse - z[np.arange(len(z)), labels]))


def numeric_grad(f, arr, eps=1e-6):
    """Central differences of scalar f() with respect to every entry of arr (modified in place)."""
    grad = np.zeros(arr.shape)
    flat = arr.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        grad.reshape(-1)[i] = (up - down) / (2 * eps)
    return grad


def conv2d_grouped(x, weight, bias, stride, padding, groups, dilation):
    """x (N, C, H, W), weight (OC, C/groups, KH, KW): each output channel sums its
    group's input channels over taps ``dilation`` apart; bias (OC,) or None."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    n, c, h, w = x.shape
    oc, cg, kh, kw = weight.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, oc, oh, ow))
    for o in range(oc):
        for ci in range(cg):
            channel = o // (oc // groups) * cg + ci
            for i in range(kh):
                for j in range(kw):
                    out[:, o] += weight[o, ci, i, j] * xp[:, channel,
                                                         i * dh:i * dh + sh * (oh - 1) + 1:sh,
                                                         j * dw:j * dw + sw * (ow - 1) + 1:sw]
    return out if bias is None else out + bias[None, :, None, None]


def maxpool2d_padded(x, kernel, stride, padding):
    """Max-pool with implicit -inf padding (PyTorch's ``padding``)."""
    (ph, pw) = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                constant_values=-np.inf)
    return pool2d(xp, kernel, stride, np.max)
