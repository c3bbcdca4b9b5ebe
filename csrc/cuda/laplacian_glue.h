// The device-independent part of the CUDA Laplacian glue: make the input contiguous, allocate the result
// (float32; float64 for float64 input) and launch the kernel on raw pointers. laplace_conv.cu adds the
// CUDA device guard, stream and SM count; the host shim test extension (csrc/host_shim/host_kernels.cpp)
// calls the same code on CPU tensors, so the tests cover it too.
#pragma once

#include <ATen/ATen.h>

#include "../laplace_conv_common.h"
#include "laplace_conv_kernels.cuh"

namespace recapfast {
namespace cuda {

// lap(src) for src [B, C, H, W]; result contiguous. who names the op in a launch-failure message.
inline at::Tensor laplacian_launch(const at::Tensor& src_any, int sm_count, cudaStream_t stream, const char* who) {
  const at::Tensor src = src_any.contiguous();
  const auto dtype = laplace_compute_dtype(src);
  at::Tensor dst = at::empty(src.sizes(), src.options().dtype(dtype));
  if (src.numel() == 0) return dst;
  const int64_t H = src.size(2), W = src.size(3), planes = src.size(0) * src.size(1);
  cudaError_t err;
  switch (src.scalar_type()) {
    case at::kByte:
      err = launch_laplacian<uint8_t, float>(src.data_ptr<uint8_t>(), dst.data_ptr<float>(), planes, H, W, sm_count,
                                             stream);
      break;
    case at::kFloat:
      err = launch_laplacian<float, float>(src.data_ptr<float>(), dst.data_ptr<float>(), planes, H, W, sm_count,
                                           stream);
      break;
    case at::kDouble:
      err = launch_laplacian<double, double>(src.data_ptr<double>(), dst.data_ptr<double>(), planes, H, W, sm_count,
                                             stream);
      break;
    default:
      TORCH_CHECK(false, "laplace_conv: unsupported dtype ", src.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, who, ": kernel launch failed: ", cudaGetErrorString(err));
  return dst;
}

}  // namespace cuda
}  // namespace recapfast
