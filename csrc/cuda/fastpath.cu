// Torch glue for the fast-path ops on CUDA (relu_pool, relu_pool_backward, stem_pool, stem_pool_backward,
// adv_metrics): the device-independent part is fastpath_glue.h (shared with the host-shim tests), the
// kernels live in relu_pool_kernels.cuh, adv_metrics_kernels.cuh and laplace_conv_kernels.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fastpath_glue.h"
#include "laplacian_glue.h"
#include "sm_count.h"

namespace recapfast {
namespace {

// The SM count and current stream of t's device (the caller holds a device guard).
struct Where {
  explicit Where(const at::Tensor& t, const char* op) {
    TORCH_CHECK(t.is_cuda(), op, ": CUDA tensors expected");
    const int device = t.device().index();
    sm_count = cuda::cached_sm_count(device);
    stream = c10::cuda::getCurrentCUDAStream(device).stream();
  }
  int sm_count;
  cudaStream_t stream;
};

void same_device(const at::Tensor& a, const at::Tensor& b, const char* op) {
  TORCH_CHECK(a.device() == b.device(), op, ": tensors on different devices (", a.device(), ", ", b.device(), ")");
}

at::Tensor relu_pool_cuda(const at::Tensor& h) {
  const c10::cuda::CUDAGuard guard(h.device());
  const Where where(h, "relu_pool");
  return cuda::relu_pool_launch(h, where.sm_count, where.stream);
}

at::Tensor relu_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& h) {
  same_device(grad_out, h, "relu_pool_backward");
  const c10::cuda::CUDAGuard guard(h.device());
  const Where where(h, "relu_pool_backward");
  return cuda::relu_pool_backward_launch(grad_out, h, where.sm_count, where.stream);
}

std::tuple<at::Tensor, at::Tensor> stem_pool_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                  const at::Tensor& bias, bool keep_pre) {
  same_device(x, weight, "stem_pool");
  same_device(x, bias, "stem_pool");
  const c10::cuda::CUDAGuard guard(x.device());
  const Where where(x, "stem_pool");
  const auto lap = [&](const at::Tensor& s) {
    return cuda::laplacian_launch(s, where.sm_count, where.stream, "stem_pool");
  };
  return cuda::stem_pool_launch(x, weight, bias, keep_pre, lap, where.sm_count, where.stream);
}

at::Tensor stem_pool_backward_cuda(const at::Tensor& grad_out, const at::Tensor& pre, const at::Tensor& weight) {
  same_device(grad_out, pre, "stem_pool_backward");
  same_device(weight, pre, "stem_pool_backward");
  const c10::cuda::CUDAGuard guard(pre.device());
  const Where where(pre, "stem_pool_backward");
  const auto lap = [&](const at::Tensor& s) {
    return cuda::laplacian_launch(s, where.sm_count, where.stream, "stem_pool_backward");
  };
  return cuda::stem_pool_backward_launch(grad_out, pre, weight, lap, where.sm_count, where.stream);
}

at::Tensor adv_metrics_cuda(const at::Tensor& x, const at::Tensor& adv, bool ssim) {
  same_device(x, adv, "adv_metrics");
  const c10::cuda::CUDAGuard guard(x.device());
  const Where where(x, "adv_metrics");
  return cuda::adv_metrics_launch(x, adv, ssim, where.sm_count, where.stream);
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CUDA, m) {
  m.impl("relu_pool", &relu_pool_cuda);
  m.impl("relu_pool_backward", &relu_pool_backward_cuda);
  m.impl("stem_pool", &stem_pool_cuda);
  m.impl("stem_pool_backward", &stem_pool_backward_cuda);
  m.impl("adv_metrics", &adv_metrics_cuda);
}

}  // namespace recapfast
