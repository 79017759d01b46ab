"""A stride-1 convolution followed by a 2x2 max-pool, finished pooling window by
pooling window in registers, the output channels on the vector lanes (at
inference, and in training keeping each window's winner for the unfold
path's backward).

Unfolded and multiplied as a GEMM, such a conv computes its whole output,
stores it, and the pooling reads it back; for the cnn's first conv (1 -> 32
channels, 3x3, on 28x28) the reduction is K = 9, so its register tiles
spend about as long zeroing and storing their outputs as multiplying (one
image: ~4.1 us of unfold, GEMM and pooling). Here (``window_tile``), for
each tap t = (c, kh, kw), the weights of 16 or 32 output channels (one or
two vectors) times each of a window's four input pixels, broadcast, are
added to its four accumulators; then their maximum, the bias and the
optional ReLU are stored as one row of a channels-last (windows, OC) block;
two windows per tile share each weight load (16 accumulators). The block is
then transposed to (OC, windows). No unfolding, no conv output in memory:
the cnn's first conv on one image 2.3 us, on 1000 images 1.79x faster; on
1000 images 1.23-1.95x faster than the unfold path for every few-channel
shape measured, up to 32 -> 64 channels 5x5 (800 taps: 1.28x). Winograd
(``nnjit.kernels.winograd``) stays ahead where it applies, from 16 input
channels (3x3: 6.5 against 8.9 ms for the cnn's second conv on 1000 images;
with 8 channels the windows were faster, 9.9 against 13.1 ms, and Winograd
still takes them).

Sums run over the taps in order with fused multiply-adds, as the register
tiles' do, and the pooling keeps ``block_to_pool_major``'s order of
comparisons (the first maximum in row-major order; a NaN propagates).
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._jit import call_part, helper, kernel, prange
from .conv import padded_image, tap_offsets
from .tiles import transpose_slice

#: Output channels per vector.
LANES = 16


def _window_tile(vectors, windows):
    """An intrinsic finishing ``windows`` (1 or 2) adjacent pooling windows for
    16*``vectors`` output channels:

    tile(x, x_off, W, offsets, T, wt, wt_off, ldw, out, out_off, bias, bias_off, relu,
         argmax, train)

    For window w and output channel j < 16*vectors: the max over its members
    (a, b) in {0, 1}^2 of sum_t x[x_off + offsets[t] + a*W + 2w + b] *
    wt[wt_off + t*ldw + j], plus bias[bias_off + j], then max(0, .) with
    ``relu`` (bool), into out[out_off + w*ldw + j]; with ``train`` (bool),
    the winning member 2a + b into argmax[out_off + w*ldw + j]. x, wt, out,
    bias: 1-D float32 arrays; argmax: int32; offsets: int64 (T,); the others
    int64."""

    def codegen(context, builder, signature, args):
        x, x_off, W, offsets, T, wt, wt_off, ldw, out, out_off, bias, bias_off, relu = args[:13]
        argmax, train = args[13:]
        f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
        v16 = ir.VectorType(f32, LANES)
        i32x16 = ir.VectorType(i32, LANES)
        module = builder.module

        def data(i, value):
            return context.make_array(signature.args[i])(context, builder, value).data

        def const(v):
            return ir.Constant(i64, v)

        fmuladd = module.globals.get("llvm.fmuladd.v16f32") or ir.Function(
            module, ir.FunctionType(v16, [v16, v16, v16]), "llvm.fmuladd.v16f32")
        zero = ir.Constant(v16, [0.0] * LANES)
        undefined = ir.Constant(v16, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)

        def load16(pointer):
            return builder.load(builder.bitcast(pointer, v16.as_pointer()), align=4)

        def broadcast(value):
            return builder.shuffle_vector(
                builder.insert_element(undefined, value, ir.Constant(i32, 0)), undefined, splat)

        X = builder.gep(data(0, x), [x_off])
        offset_of = data(3, offsets)
        WT = builder.gep(data(5, wt), [wt_off])
        OUT = builder.gep(data(8, out), [out_off])
        B = builder.gep(data(10, bias), [bias_off])
        WINNER = builder.gep(data(13, argmax), [out_off])

        entry = builder.block
        head = builder.append_basic_block("window.head")
        body = builder.append_basic_block("window.body")
        done = builder.append_basic_block("window.done")
        builder.branch(head)

        builder.position_at_end(head)
        t = builder.phi(i64)
        t.add_incoming(const(0), entry)
        accs = []  # [(window w, member a*2 + b) * vectors + vector v]
        for _ in range(4 * windows * vectors):
            acc = builder.phi(v16)
            acc.add_incoming(zero, entry)
            accs.append(acc)
        builder.cbranch(builder.icmp_signed("<", t, T), body, done)

        builder.position_at_end(body)
        top = builder.gep(X, [builder.load(builder.gep(offset_of, [t]))])
        rows = (top, builder.gep(top, [W]))
        weight_row = builder.gep(WT, [builder.mul(t, ldw)])
        weights = [load16(builder.gep(weight_row, [const(LANES * v)])) for v in range(vectors)]
        updated = []
        for w in range(windows):
            for a in range(2):
                for b in range(2):
                    pixel = broadcast(builder.load(builder.gep(rows[a], [const(2 * w + b)])))
                    for v in range(vectors):
                        acc = accs[((4 * w) + 2 * a + b) * vectors + v]
                        updated.append(builder.call(fmuladd, [pixel, weights[v], acc]))
        t.add_incoming(builder.add(t, const(1)), builder.block)
        for acc, new in zip(accs, updated):
            acc.add_incoming(new, builder.block)
        builder.branch(head)

        builder.position_at_end(done)
        rectify = context.cast(builder, relu, signature.args[12], types.boolean)
        winners = []  # (offset into out and argmax, the winners' members)
        for w in range(windows):
            for v in range(vectors):
                best = accs[4 * w * vectors + v]
                at = ir.Constant(i32x16, [0] * LANES)
                for member in range(1, 4):
                    value = accs[(4 * w + member) * vectors + v]
                    # not (value <= best): greater, or either is NaN
                    wins = builder.fcmp_unordered(">", value, best)
                    best = builder.select(wins, value, best)
                    at = builder.select(wins, ir.Constant(i32x16, [member] * LANES), at)
                best = builder.fadd(best, load16(builder.gep(B, [const(LANES * v)])))
                clipped = builder.select(builder.fcmp_ordered("<", best, zero), zero, best)
                best = builder.select(rectify, clipped, best)
                offset = builder.add(builder.mul(const(w), ldw), const(LANES * v))
                builder.store(best, builder.bitcast(builder.gep(OUT, [offset]), v16.as_pointer()),
                              align=4)
                winners.append((offset, at))
        keep = builder.append_basic_block("window.argmax")
        end = builder.append_basic_block("window.end")
        builder.cbranch(context.cast(builder, train, signature.args[14], types.boolean), keep, end)
        builder.position_at_end(keep)
        for offset, at in winners:
            builder.store(at, builder.bitcast(builder.gep(WINNER, [offset]), i32x16.as_pointer()),
                          align=4)
        builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    @intrinsic
    def tile(typingctx, x, x_off, W, offsets, T, wt, wt_off, ldw, out, out_off, bias, bias_off,
             relu, argmax, train):
        return types.void(x, x_off, W, offsets, T, wt, wt_off, ldw, out, out_off, bias, bias_off,
                          relu, argmax, train), codegen
    return tile


window_tile_1x16, window_tile_1x32 = _window_tile(1, 1), _window_tile(2, 1)
window_tile_2x16, window_tile_2x32 = _window_tile(1, 2), _window_tile(2, 2)


@helper
def windows_of_image(x, x_off, W, offsets, wt, bias, relu, POH, POW, cl, train, winners):
    """cl (POH*POW, OCp) = the pooled windows of one image (``window_tile``s),
    channels-last; with ``train``, winners (int32, the same shape) = their
    winning members. wt (T*OCp,) and bias (OCp,) as ``window_conv_pool`` packs them."""
    T, OCp = offsets.size, bias.size
    for ph in range(POH):
        for pw in range(0, POW, 2):
            x0 = x_off + 2 * ph * W + 2 * pw
            d = (ph * POW + pw) * OCp
            pair = pw + 1 < POW
            for g in range(0, OCp, 2 * LANES):
                if g + 2 * LANES > OCp:  # the last 16 channels
                    if pair:
                        window_tile_2x16(x, x0, W, offsets, T, wt, g, OCp, cl, d + g, bias, g,
                                         relu, winners, train)
                    else:
                        window_tile_1x16(x, x0, W, offsets, T, wt, g, OCp, cl, d + g, bias, g,
                                         relu, winners, train)
                elif pair:
                    window_tile_2x32(x, x0, W, offsets, T, wt, g, OCp, cl, d + g, bias, g, relu,
                                     winners, train)
                else:
                    window_tile_1x32(x, x0, W, offsets, T, wt, g, OCp, cl, d + g, bias, g, relu,
                                     winners, train)


@helper
def window_images_part(part, x, weight, bias, C, H, W, KH, KW, PH, PW, POH, POW, relu, N, parts,
                       offsets, wt, bias_p, image, cl, train, winners, argmax, out):
    """Part ``part`` of ``window_conv_pool`` (same arguments): images
    [part*N//parts, (part+1)*N//parts), in the part's workspaces."""
    OC, OCp = bias.size, bias_p.size
    Hp, Wp = H + 2 * PH, W + 2 * PW
    P = POH * POW
    for n in range(part * N // parts, (part + 1) * N // parts):
        if PH > 0 or PW > 0:
            padded_image(x, n, C, H, W, PH, PW, 0, Hp, image[part])
            windows_of_image(image[part], 0, Wp, offsets, wt, bias_p, relu, POH, POW, cl[part],
                             train, winners[part])
        else:
            windows_of_image(x, n * C * H * W, W, offsets, wt, bias_p, relu, POH, POW, cl[part],
                             train, winners[part])
        transpose_slice(cl[part], OCp, 0, OC, 0, P, P, out[n * OC * P:])
        if train:
            transpose_slice(winners[part], OCp, 0, OC, 0, P, P, argmax[n * OC * P:])


@kernel(parts=(window_images_part,))
def window_conv_pool(window_images_part, x, weight, bias, C, H, W, KH, KW, PH, PW, POH, POW, relu,
                     N, parts, offsets, wt, bias_p, image, cl, train, winners, argmax, out):
    """Conv2D(stride 1, padding PH, PW) + [ReLU] + MaxPool2D(2, 2), window by
    window in registers (module docstring).

    x: float32 (N*C*H*W,); weight (OC*T,), T = C*KH*KW taps; bias (OC,).
    Workspaces, rewritten at every call (so a replayed call follows changes
    of the weight): offsets int64 (T,); wt (T*OCp,), the weight transposed,
    its columns padded with zeros to OCp = OC rounded up to 16; bias_p
    (OCp,). Part p takes images [p*N//parts, (p+1)*N//parts) with image[p]
    (C*(H+2PH)*(W+2PW),; with padding, the zero-bordered copy of an image),
    cl[p] (POH*POW*OCp,) and, with ``train``, winners[p] (int32, the same).
    Writes out (N*OC*POH*POW,) as (N, OC, POH, POW) and, with ``train``,
    argmax (int32, the same): each window's winning member dy*2 + dx, as
    ``block_to_pool_major`` (so ``conv_backward`` takes it). The parts
    (``window_images_part``) are taken by address (``nnjit.kernels._jit``).
    """
    OC, OCp, T = bias.size, bias_p.size, offsets.size
    tap_offsets(C, KH, KW, H + 2 * PH, W + 2 * PW, offsets)
    for t in range(T):
        for oc in range(OCp):
            wt[t * OCp + oc] = weight[oc * T + t] if oc < OC else 0
    for oc in range(OCp):
        bias_p[oc] = bias[oc] if oc < OC else 0
    for p in prange(parts):
        call_part(window_images_part, np.int64(p), x, weight, bias, C, H, W, KH, KW, PH, PW, POH,
                  POW, relu, N, parts, offsets, wt, bias_p, image, cl, train, winners, argmax, out)
