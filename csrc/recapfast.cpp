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
}
