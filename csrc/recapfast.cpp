// Every recapfast op schema, nothing else. Kernels register per backend in cpu/*.cpp and cuda/*.cu;
// fake (meta) kernels and autograd are registered from Python (recapfast/ops/_register.py).
#include <torch/library.h>

TORCH_LIBRARY(recapfast, m) {
  // out[e] = quantize(clip(x + float32(signs[e] * eps[e]) * sign(grad), 0, 255)); shape [E, *x.shape].
  m.def("perturb(Tensor x, Tensor grad, float[] eps, float[] signs, bool quantize=True) -> Tensor");
  // Fixed per-channel Laplacian (zero pad 1) followed by a 3x3 stride-1 pad-1 convolution.
  m.def("laplace_conv(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // (grad_input, grad_weight, grad_bias); an output whose mask entry is false is an empty [0] tensor.
  m.def(
      "laplace_conv_backward(Tensor grad_out, Tensor x, Tensor weight, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // ReLU then 5x5 / stride 2 / pad 2 average pooling (count_include_pad=False); channels_last float32.
  m.def("relu_pool(Tensor h) -> Tensor");
  // Input gradient of relu_pool for grad_out stacked k times over h's batch: [k*N, C, H2, W2] -> [k*N, C, H, W].
  m.def("relu_pool_backward(Tensor grad_out, Tensor h) -> Tensor");
  // The first unit fused: relu_pool(laplace_conv(x, weight, bias)) -> (pooled, pre-activation or [0]).
  m.def("stem_pool(Tensor x, Tensor weight, Tensor bias, bool keep_pre) -> (Tensor, Tensor)");
  // Input gradient of stem_pool for grad_out stacked k times over pre's batch: -> [k*N, Cin, H, W].
  m.def("stem_pool_backward(Tensor grad_out, Tensor pre, Tensor weight) -> Tensor");
  // Per (k, b, c) plane of adv [K, B, C, H, W] vs x [B, C, H, W]: (SSIM map mean or NaN, sum of squared
  // differences, max |difference|) as float64 [K, B, C, 3].
  m.def("adv_metrics(Tensor x, Tensor adv, bool ssim) -> Tensor");
}
