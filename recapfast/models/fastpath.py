"""The fast path of a LaplacianCNN in eval mode: pure forwards and batched input gradients.

What the eval sweep spends its time on is (a) forwards of the adversarial batches and (b) one
forward + the input gradients of the two attacks. For a model in eval mode, BatchNorm is an
affine map per channel, so it is folded into the preceding convolution (w' = w * alpha,
b' = b * alpha + beta with alpha = gamma / sqrt(var + eps) and beta = bn.bias - mean * alpha, the
scale/shift ATen's own eval BatchNorm applies); ReLU and the 5x5/2 average pooling run as one
op (``ops.relu_pool``, bit-exact with the unfused reference); every 4-d tensor is channels_last.

The input gradients of several cotangents are computed in ONE backward pass by hand: the
cotangents (e.g. FGSM's and LLCM's softmax-minus-one-hot rows) are stacked along the batch, and
each layer's adjoint runs once over the stacked batch while sharing the forward's saved
pre-activations (``ops.relu_pool_backward`` takes k cotangents per saved image). This is the same
linear map autograd applies to each cotangent; only the float rounding differs (the convolution
adjoints, folded BatchNorm).

Logits differ from the unfolded model's by float rounding only (~1e-6 relative); tests hold the
predictions, logits (1e-4 relative) and attack images (>= 99.99 % of pixels) to the reference.
Models that are not a plain :class:`recapfast.models.laplacian.LaplacianCNN` use the generic autograd path.

Activations (``LaplacianCNN(activation=...)``): ReLU runs the fused C++ ops above.  softplus and GELU run plain
torch ops: the forward ``avg_pool(act(conv))`` on the folded weights, and the hand adjoint per unit (average-pool
backward, then the activation's derivative at the saved pre-activation through ATen's own ``softplus_backward`` /
``gelu_backward``, the formulas autograd applies, then the conv adjoint), k cotangents in one pass as for ReLU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recapfast import ops
from recapfast.models.laplacian import LaplacianCNN, activation_fn
from recapfast.ops.reference import POOL_KERNEL, POOL_PAD, POOL_STRIDE

_CL = torch.channels_last


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is a LaplacianCNN the fast path computes exactly (same layers, eval BN)."""
    if type(model) is not LaplacianCNN:  # subclasses may change forward
        return False
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return False
    return all(u.bn.track_running_stats and u.bn.running_mean is not None and u.bn.affine for u in model.units)


@dataclass
class _Saved:
    """What the input-gradient pass needs from the forward: x and every unit's pre-activation."""
    x: torch.Tensor
    pre: list[torch.Tensor]


class FoldedLaplacianCNN:
    """A snapshot of a LaplacianCNN's eval-mode function with BatchNorm folded into the convolutions.

    Build it once per batch/sweep (it copies ~0.4 MB of weights); it does not follow later updates
    of the model's parameters.
    """

    def __init__(self, model: LaplacianCNN):
        if not supports(model):
            raise TypeError("FoldedLaplacianCNN needs a plain recapfast LaplacianCNN")
        self.weights: list[torch.Tensor] = []    # folded conv weights, channels_last
        self.biases: list[torch.Tensor] = []
        self.adjoints: list[torch.Tensor] = []   # conv adjoint as a convolution: w.transpose(0, 1).flip(2, 3)
        with torch.no_grad():
            for unit in model.units:
                bn, conv = unit.bn, unit.conv
                alpha = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                beta = bn.bias - bn.running_mean * alpha
                bias = conv.bias if conv.bias is not None else torch.zeros_like(alpha)
                self.weights.append((conv.weight * alpha.view(-1, 1, 1, 1)).contiguous(memory_format=_CL))
                self.biases.append(bias * alpha + beta)
                self.adjoints.append(self.weights[-1].transpose(0, 1).flip(2, 3).contiguous(memory_format=_CL))
            self.fc_weight = model.fc.weight.detach().clone()
            self.fc_bias = model.fc.bias.detach().clone()
        self.num_classes = model.num_classes
        self.activation = model.activation

    # -- forward -------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, keep: list | None) -> torch.Tensor:
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.activation != "relu":
            return self._smooth_features(x, keep)
        h, pre = ops.stem_pool(x, self.weights[0], self.biases[0], keep is not None)
        if keep is not None:
            keep.append(pre)
        h = F.conv2d(h, self.weights[1], self.biases[1], padding=1)
        for i in range(2, 5):
            if keep is not None:
                keep.append(h)
            h = F.conv2d(ops.relu_pool(h), self.weights[i], self.biases[i], padding=1)
        if keep is not None:
            keep.append(h)
        return F.relu(h).mean(dim=(2, 3))

    def _smooth_features(self, x: torch.Tensor, keep: list | None) -> torch.Tensor:
        """softplus/GELU units in plain torch ops: pre-activation, activation, 5x5/2 average pool (global at the
        end)."""
        act = activation_fn(self.activation)
        h = x
        for i in range(5):
            pre = ops.laplace_conv(h, self.weights[0], self.biases[0]) if i == 0 else \
                F.conv2d(h, self.weights[i], self.biases[i], padding=1)
            if keep is not None:
                keep.append(pre)
            a = act(pre)
            h = a.mean(dim=(2, 3)) if i == 4 else \
                F.avg_pool2d(a, POOL_KERNEL, POOL_STRIDE, POOL_PAD, count_include_pad=False)
        return h

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, classes] of a batch (uint8 or float32 pixels [0, 255]); no autograd graph."""
        with torch.no_grad():
            return F.linear(self._features(x, None), self.fc_weight, self.fc_bias)

    def forward_saving(self, x: torch.Tensor) -> tuple[torch.Tensor, _Saved]:
        """Logits plus what :meth:`input_grads` needs."""
        pre: list[torch.Tensor] = []
        with torch.no_grad():
            logits = F.linear(self._features(x, pre), self.fc_weight, self.fc_bias)
        return logits, _Saved(x, pre)

    # -- backward ------------------------------------------------------------------------------
    def input_grads(self, saved: _Saved, cotangents: torch.Tensor) -> torch.Tensor:
        """d(cotangent . logits)/dx for k cotangents per image in one pass.

        ``cotangents``: [k * B, classes], row j * B + b belongs to image b. Returns [k * B, 3, H, W]
        float32 (the layout of a float32 copy of x).
        """
        x, pre = saved.x, saved.pre
        batch = x.shape[0]
        k = cotangents.shape[0] // batch if batch else 0
        if self.activation != "relu":
            return self._smooth_input_grads(pre, cotangents, k)
        with torch.no_grad():
            g = cotangents.to(torch.float32) @ self.fc_weight                          # [kB, C5]
            last = pre[4]
            area = last.shape[2] * last.shape[3]
            mask = (F.relu(last) > 0).repeat(k, 1, 1, 1) if k > 1 else F.relu(last) > 0
            # mean's backward (grad / area, expanded) then ReLU's threshold backward
            g = torch.where(mask, (g / area)[:, :, None, None], 0.0).contiguous(memory_format=_CL)
            for i in range(4, 1, -1):
                g = F.conv2d(g, self.adjoints[i], padding=1)                          # conv adjoint
                g = ops.relu_pool_backward(g, pre[i - 1])
            g = F.conv2d(g, self.adjoints[1], padding=1)
            return ops.stem_pool_backward(g, pre[0], self.weights[0])

    def _act_backward(self, g: torch.Tensor, pre: torch.Tensor, k: int) -> torch.Tensor:
        """The activation's backward at ``pre`` for k cotangents stacked over its batch (ATen's formulas)."""
        at = pre.repeat(k, 1, 1, 1) if k > 1 else pre
        if self.activation == "softplus":
            return torch.ops.aten.softplus_backward(g, at, 1.0, 20.0)     # F.softplus's defaults
        return torch.ops.aten.gelu_backward(g, at, approximate="none")

    def _smooth_input_grads(self, pre: list[torch.Tensor], cotangents: torch.Tensor, k: int) -> torch.Tensor:
        with torch.no_grad():
            g = cotangents.to(torch.float32) @ self.fc_weight                          # [kB, C5]
            last = pre[4]
            g = (g / (last.shape[2] * last.shape[3]))[:, :, None, None].expand(-1, -1, *last.shape[2:])
            g = self._act_backward(g, last, k)                                       # mean's, then act's backward
            for i in range(4, 0, -1):
                g = F.conv2d(g, self.adjoints[i], padding=1)                          # conv adjoint
                shape = (g.shape[0], *pre[i - 1].shape[1:])                         # the pooling's input
                g = torch.ops.aten.avg_pool2d_backward(g, g.new_empty(shape), [POOL_KERNEL] * 2, [POOL_STRIDE] * 2,
                                                       [POOL_PAD] * 2, False, False, None)
                g = self._act_backward(g, pre[i - 1], k)
            # the stem: the first conv's adjoint, then the (self-adjoint, zero-padded) Laplacian
            return ops.laplacian(F.conv_transpose2d(g, self.weights[0], padding=1)).contiguous()


__all__ = ["FoldedLaplacianCNN", "supports"]
