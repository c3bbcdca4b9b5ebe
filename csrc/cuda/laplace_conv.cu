// Torch glue for recapfast::laplace_conv on CUDA: the Laplacian (laplacian_glue.h, shared with the
// host-shim tests; kernel in laplace_conv_kernels.cuh), then cuDNN's convolution (forward) /
// convolution_backward, shared with the CPU via laplace_conv_common.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../laplace_conv_common.h"
#include "laplacian_glue.h"
#include "sm_count.h"

namespace recapfast {
namespace {

at::Tensor laplacian_cuda(const at::Tensor& src) {
  const c10::cuda::CUDAGuard guard(src.device());
  const int device = src.device().index();
  return cuda::laplacian_launch(src, cuda::cached_sm_count(device), c10::cuda::getCurrentCUDAStream(device).stream(),
                                "laplace_conv_cuda");
}

at::Tensor laplace_conv_cuda(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard guard(x.device());
  return laplace_conv_forward(x, weight, bias, laplacian_cuda);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> laplace_conv_backward_cuda(const at::Tensor& grad_out,
                                                                          const at::Tensor& x,
                                                                          const at::Tensor& weight,
                                                                          std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(x.device());
  return laplace_conv_backward_impl(grad_out, x, weight, output_mask, laplacian_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CUDA, m) {
  m.impl("laplace_conv", &laplace_conv_cuda);
  m.impl("laplace_conv_backward", &laplace_conv_backward_cuda);
}

}  // namespace recapfast
