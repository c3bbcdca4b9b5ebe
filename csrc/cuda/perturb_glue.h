// The device-independent part of recapfast::perturb's CUDA glue (argument checks and output allocation:
// ../perturb_common.h): the hand-over of raw pointers to the kernels (x made contiguous, grad cast to
// float32 and made contiguous: a contiguous view keeps its storage offset, so the kernels see misaligned
// pointers).
// perturb.cu adds the CUDA device guard, stream and SM count; the host shim test extension
// (csrc/host_shim/host_kernels.cpp) calls the same code on CPU tensors, so the tests cover it too.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "../perturb_common.h"
#include "perturb_kernels.cuh"

namespace recapfast {
namespace cuda {

// Writes every element of out (contiguous [E, *x.shape], dtype as perturb_empty_output) and returns the
// first launch error. The reference computes float32(sign * eps) in double and takes sign(float32(grad)).
inline cudaError_t perturb_launch(const at::Tensor& x, const at::Tensor& grad, at::ArrayRef<double> eps,
                                  at::ArrayRef<double> signs, at::Tensor& out, int sm_count, cudaStream_t stream) {
  const int64_t numel = x.numel();
  const int num_eps = static_cast<int>(eps.size());
  if (numel == 0 || num_eps == 0) return cudaSuccess;
  TORCH_CHECK(out.is_contiguous() && out.numel() == num_eps * numel, "perturb: bad output buffer");
  std::vector<float> steps(num_eps);
  for (int e = 0; e < num_eps; ++e) steps[e] = static_cast<float>(signs[e] * eps[e]);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.to(at::kFloat).contiguous();
  const float* g = gc.data_ptr<float>();
  const bool quantize = out.scalar_type() == at::kByte;
  if (xc.scalar_type() == at::kByte) {
    const uint8_t* xp = xc.data_ptr<uint8_t>();
    return quantize ? launch_perturb<uint8_t, uint8_t>(xp, g, steps.data(), num_eps, out.data_ptr<uint8_t>(), numel,
                                                       sm_count, stream)
                    : launch_perturb<uint8_t, float>(xp, g, steps.data(), num_eps, out.data_ptr<float>(), numel,
                                                     sm_count, stream);
  }
  const float* xp = xc.data_ptr<float>();
  return quantize ? launch_perturb<float, uint8_t>(xp, g, steps.data(), num_eps, out.data_ptr<uint8_t>(), numel,
                                                   sm_count, stream)
                  : launch_perturb<float, float>(xp, g, steps.data(), num_eps, out.data_ptr<float>(), numel,
                                                 sm_count, stream);
}

}  // namespace cuda
}  // namespace recapfast
