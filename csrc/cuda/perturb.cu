// Torch glue for recapfast::perturb on CUDA: the device-independent part is perturb_glue.h (shared with
// the host-shim tests), the kernels live in perturb_kernels.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "perturb_glue.h"
#include "sm_count.h"

namespace recapfast {
namespace {

at::Tensor perturb_cuda(const at::Tensor& x, const at::Tensor& grad, at::ArrayRef<double> eps,
                        at::ArrayRef<double> signs, bool quantize) {
  perturb_check_arguments(x, grad, eps, signs);
  TORCH_CHECK(x.is_cuda() && grad.device() == x.device(), "perturb_cuda: x and grad must be on the same CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = perturb_empty_output(x, static_cast<int64_t>(eps.size()), quantize);
  const int device = x.device().index();
  const cudaError_t err = cuda::perturb_launch(x, grad, eps, signs, out, cuda::cached_sm_count(device),
                                               c10::cuda::getCurrentCUDAStream(device).stream());
  TORCH_CHECK(err == cudaSuccess, "perturb_cuda: kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CUDA, m) { m.impl("perturb", &perturb_cuda); }

}  // namespace recapfast
