// Test-only: the fast-path ops' CUDA kernels (relu_pool_kernels.cuh, adv_metrics_kernels.cuh) compiled
// UNCHANGED by the host compiler through the shim and run over their whole grid on CPU tensors, behind
// the same glue as the real CUDA ops (cuda/fastpath_glue.h). Linked into the host shim test extension
// (with host_kernels.cpp) by tests/test_fastpath_kernels_host.py; never part of the recapfast extension.
//
// Built a second time, alone, with -DRECAPFAST_PLANT_INDEX_BUG (an off-by-one window/loop bound in the
// kernels, see cuda/launch.cuh) and -DRECAPFAST_SHIM_NAMESPACE=recapfast_host_shim_broken, so the tests can
// show that the same checks fail for a broken index.
//
// Ops (torch.ops.<namespace>.*), sm_count standing in for the device's SM count (it sizes the grid; a huge
// value forces the 64-bit index path):
//   relu_pool(h, sm_count), relu_pool_backward(grad_out, h, sm_count)
//   stem_pool(x, weight, bias, keep_pre, sm_count) -> (pooled, pre)
//   stem_pool_backward(grad_out, pre, weight, sm_count)
//   adv_metrics(x, adv, ssim, sm_count, chunk_elems) -> [K, B, C, 3]
//   fastpath_index_bits(op, planes_or_numel, chunk, H, W, sm_count) -> 32 or 64
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/fastpath_glue.h"
#include "cuda/laplacian_glue.h"

#ifndef RECAPFAST_SHIM_NAMESPACE
#define RECAPFAST_SHIM_NAMESPACE recapfast_host_shim
#endif
// One more expansion step, so TORCH_LIBRARY_FRAGMENT sees the namespace's name, not the macro's.
#define RECAPFAST_SHIM_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define RECAPFAST_SHIM_IMPL(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)

namespace {

void cpu_only(const at::Tensor& t) { TORCH_CHECK(t.device().is_cpu(), "host shim: CPU tensors only"); }

at::Tensor shim_lap(const at::Tensor& s, int64_t sm_count) {
  return recapfast::cuda::laplacian_launch(s, static_cast<int>(sm_count), nullptr, "laplacian (host shim)");
}

at::Tensor shim_relu_pool(const at::Tensor& h, int64_t sm_count) {
  cpu_only(h);
  return recapfast::cuda::relu_pool_launch(h, static_cast<int>(sm_count), nullptr);
}

at::Tensor shim_relu_pool_backward(const at::Tensor& grad_out, const at::Tensor& h, int64_t sm_count) {
  cpu_only(h);
  return recapfast::cuda::relu_pool_backward_launch(grad_out, h, static_cast<int>(sm_count), nullptr);
}

std::tuple<at::Tensor, at::Tensor> shim_stem_pool(const at::Tensor& x, const at::Tensor& weight,
                                                  const at::Tensor& bias, bool keep_pre, int64_t sm_count) {
  cpu_only(x);
  return recapfast::cuda::stem_pool_launch(
      x, weight, bias, keep_pre, [&](const at::Tensor& s) { return shim_lap(s, sm_count); },
      static_cast<int>(sm_count), nullptr);
}

at::Tensor shim_stem_pool_backward(const at::Tensor& grad_out, const at::Tensor& pre, const at::Tensor& weight,
                                   int64_t sm_count) {
  cpu_only(pre);
  return recapfast::cuda::stem_pool_backward_launch(
      grad_out, pre, weight, [&](const at::Tensor& s) { return shim_lap(s, sm_count); }, static_cast<int>(sm_count),
      nullptr);
}

at::Tensor shim_adv_metrics(const at::Tensor& x, const at::Tensor& adv, bool ssim, int64_t sm_count,
                            int64_t chunk_elems) {
  cpu_only(x);
  TORCH_CHECK(chunk_elems > 0, "host shim: chunk_elems must be positive");
  return recapfast::cuda::adv_metrics_launch(x, adv, ssim, static_cast<int>(sm_count), nullptr, chunk_elems);
}

int64_t shim_fastpath_index_bits(c10::string_view op, int64_t n, int64_t chunk, int64_t H, int64_t W,
                                 int64_t sm_count) {
  const int sms = static_cast<int>(sm_count);
  if (op == "relu_pool") return recapfast::cuda::fastpath_fits_int32(n, sms) ? 32 : 64;
  TORCH_CHECK(op == "adv_metrics", "fastpath_index_bits: op must be relu_pool or adv_metrics");
  return recapfast::cuda::adv_metrics_fits_int32(n, chunk, H, W, sms) ? 32 : 64;
}

}  // namespace

RECAPFAST_SHIM_FRAGMENT(RECAPFAST_SHIM_NAMESPACE, m) {
  m.def("relu_pool(Tensor h, int sm_count) -> Tensor");
  m.def("relu_pool_backward(Tensor grad_out, Tensor h, int sm_count) -> Tensor");
  m.def("stem_pool(Tensor x, Tensor weight, Tensor bias, bool keep_pre, int sm_count) -> (Tensor, Tensor)");
  m.def("stem_pool_backward(Tensor grad_out, Tensor pre, Tensor weight, int sm_count) -> Tensor");
  m.def("adv_metrics(Tensor x, Tensor adv, bool ssim, int sm_count, int chunk_elems) -> Tensor");
  m.def("fastpath_index_bits(str op, int n, int chunk, int H, int W, int sm_count) -> int", &shim_fastpath_index_bits);
}

RECAPFAST_SHIM_IMPL(RECAPFAST_SHIM_NAMESPACE, CPU, m) {
  m.impl("relu_pool", &shim_relu_pool);
  m.impl("relu_pool_backward", &shim_relu_pool_backward);
  m.impl("stem_pool", &shim_stem_pool);
  m.impl("stem_pool_backward", &shim_stem_pool_backward);
  m.impl("adv_metrics", &shim_adv_metrics);
}
