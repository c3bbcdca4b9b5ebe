"""Fake (meta) kernels and autograd for the recapfast ops; run once, after the library loaded.

Autograd of ``laplace_conv`` calls the ``laplace_conv_backward`` op, which has autograd of its own
(below), written with the two ops again. So backward is differentiable to any order: robust training's
``torch.autograd.grad(loss, x, create_graph=True)`` followed by ``loss2.backward()`` stays on the
extension. With v = grad_out and (a, b, c) the incoming grads of (grad_input, grad_weight, grad_bias):

    grad_input  = J_W^T v        ->  d/dv = laplace_conv(a, W, c) + laplace_conv(x, b);  d/dW = gw(v, a)
    grad_weight = corr(v, lap x) ->  d/dx = gx(v, x, W=b)
    grad_bias   = sum(v)
"""
from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _perturb_fake(x, grad, eps, signs, quantize=True):
    torch._check(len(eps) == len(signs), lambda: "perturb: eps and signs must have the same length")
    return x.new_empty((len(eps), *x.shape), dtype=torch.uint8 if quantize else torch.float32)


def _laplace_conv_fake(x, weight, bias):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "laplace_conv: 4-d x and weight expected")
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]), dtype=_compute_dtype(x))


def _laplace_conv_backward_fake(grad_out, x, weight, output_mask):
    dtype = _compute_dtype(x)
    shapes = (x.shape, weight.shape, (weight.shape[0],))
    return tuple(x.new_empty(shape if keep else (0,), dtype=dtype) for shape, keep in zip(shapes, output_mask))


def _pooled(n: int) -> int:
    return (n - 1) // 2 + 1


def _relu_pool_fake(h):
    torch._check(h.dim() == 4, lambda: "relu_pool: 4-d h expected")
    return h.new_empty((h.shape[0], h.shape[1], _pooled(h.shape[2]), _pooled(h.shape[3]))).contiguous(
        memory_format=torch.channels_last)


def _relu_pool_backward_fake(grad_out, h):
    torch._check(h.dim() == 4 and grad_out.dim() == 4, lambda: "relu_pool_backward: 4-d tensors expected")
    return h.new_empty((grad_out.shape[0], *h.shape[1:])).contiguous(memory_format=torch.channels_last)


def _stem_pool_fake(x, weight, bias, keep_pre):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "stem_pool: 4-d x and weight expected")
    n, cout, h, w = x.shape[0], weight.shape[0], x.shape[2], x.shape[3]
    pooled = x.new_empty((n, cout, _pooled(h), _pooled(w)), dtype=torch.float32).contiguous(
        memory_format=torch.channels_last)
    pre = (x.new_empty((n, cout, h, w), dtype=torch.float32).contiguous(memory_format=torch.channels_last)
           if keep_pre else x.new_empty((0,), dtype=torch.float32))
    return pooled, pre


def _stem_pool_backward_fake(grad_out, pre, weight):
    torch._check(pre.dim() == 4 and weight.dim() == 4, lambda: "stem_pool_backward: 4-d tensors expected")
    return pre.new_empty((grad_out.shape[0], weight.shape[1], pre.shape[2], pre.shape[3]))


def _adv_metrics_fake(x, adv, ssim):
    torch._check(x.dim() == 4 and adv.dim() == 5, lambda: "adv_metrics: x [B, C, H, W] and adv [K, B, C, H, W]")
    return x.new_empty((adv.shape[0], x.shape[0], x.shape[1], 3), dtype=torch.float64)


def _laplace_conv_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _laplace_conv_bwd(ctx, grad_out):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.bias_dtype is not None
    gx, gw, gb = torch.ops.recapfast.laplace_conv_backward(grad_out, x, weight, [need_x, need_w, need_b])
    return (gx.to(x.dtype) if need_x else None,
            gw.to(weight.dtype) if need_w else None,
            gb.to(ctx.bias_dtype) if need_b else None)


def _laplace_conv_backward_setup(ctx, inputs, output):
    grad_out, x, weight, output_mask = inputs
    ctx.save_for_backward(grad_out, x, weight)
    ctx.output_mask = tuple(bool(m) for m in output_mask)


def _laplace_conv_backward_bwd(ctx, gg_input, gg_weight, gg_bias):
    grad_out, x, weight = ctx.saved_tensors
    has_in, has_w, has_b = ctx.output_mask
    need_go, need_x, need_w = ctx.needs_input_grad[:3]
    ops = torch.ops.recapfast
    d_grad_out = d_x = d_weight = None
    if need_go:
        d_grad_out = torch.zeros_like(grad_out)
        if has_in:
            d_grad_out = d_grad_out + ops.laplace_conv(gg_input.to(_compute_dtype(x)), weight, None)
        if has_w:
            d_grad_out = d_grad_out + ops.laplace_conv(x, gg_weight, None)
        if has_b:
            d_grad_out = d_grad_out + gg_bias.to(grad_out.dtype).view(1, -1, 1, 1)
        d_grad_out = d_grad_out.to(grad_out.dtype)
    if need_x and has_w:
        d_x = ops.laplace_conv_backward(grad_out, x, gg_weight, [True, False, False])[0].to(x.dtype)
    if need_w and has_in:
        d_weight = ops.laplace_conv_backward(grad_out, gg_input.to(_compute_dtype(x)), weight,
                                             [False, True, False])[1].to(weight.dtype)
    return d_grad_out, d_x, d_weight, None


def register() -> None:
    """Register fake kernels and autograd for every recapfast op (call once per process)."""
    lib = torch.library
    lib.register_fake("recapfast::perturb")(_perturb_fake)
    lib.register_fake("recapfast::laplace_conv")(_laplace_conv_fake)
    lib.register_fake("recapfast::laplace_conv_backward")(_laplace_conv_backward_fake)
    lib.register_fake("recapfast::relu_pool")(_relu_pool_fake)
    lib.register_fake("recapfast::relu_pool_backward")(_relu_pool_backward_fake)
    lib.register_fake("recapfast::stem_pool")(_stem_pool_fake)
    lib.register_fake("recapfast::stem_pool_backward")(_stem_pool_backward_fake)
    lib.register_fake("recapfast::adv_metrics")(_adv_metrics_fake)
    lib.register_autograd("recapfast::laplace_conv", _laplace_conv_bwd, setup_context=_laplace_conv_setup)
    lib.register_autograd("recapfast::laplace_conv_backward", _laplace_conv_backward_bwd,
                          setup_context=_laplace_conv_backward_setup)
