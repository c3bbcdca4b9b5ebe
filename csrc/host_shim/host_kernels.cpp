// Test-only extension: the CUDA kernels of csrc/cuda, compiled UNCHANGED by the host compiler through the
// shim (cuda_runtime.h in this directory) and run over their whole grid on CPU tensors, behind the same
// device-independent glue as the real CUDA ops (perturb_glue.h, perturb_common.h, laplacian_glue.h,
// laplace_conv_common.h).
// Built and used by tests/test_kernels_host.py only; never part of the recapfast extension.
//
// Ops (torch.ops.recapfast_host_shim.*), sm_count standing in for the device's SM count (it sizes the grid;
// 1 forces long grid-stride loops, a huge value forces the 64-bit index path):
//   perturb(x, grad, eps, signs, quantize, sm_count, out_offset, fill) -> Tensor
//       the output is placed out_offset elements into a buffer with guard zones before and after it, all
//       filled with the byte `fill`; a kernel writing outside its output fails the call.
//   laplacian(src, sm_count) -> Tensor
//   laplace_conv(x, weight, bias, sm_count) / laplace_conv_backward(grad_out, x, weight, mask, sm_count)
//   index_bits(op, num_eps, numel, W, sm_count) -> int: 32 or 64, the index type the launcher picks
//   launches() -> int: kernel launches run so far on this thread
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>

#include "cuda/laplacian_glue.h"
#include "cuda/perturb_glue.h"

namespace {

constexpr int64_t kGuardBytes = 64;

at::Tensor shim_perturb(const at::Tensor& x, const at::Tensor& grad, at::ArrayRef<double> eps,
                        at::ArrayRef<double> signs, bool quantize, int64_t sm_count, int64_t out_offset,
                        int64_t fill) {
  recapfast::perturb_check_arguments(x, grad, eps, signs);
  TORCH_CHECK(x.device().is_cpu(), "host shim: CPU tensors only");
  TORCH_CHECK(out_offset >= 0 && out_offset < 4, "host shim: out_offset must be in [0, 4)");
  const at::Tensor shape_of = recapfast::perturb_empty_output(x, static_cast<int64_t>(eps.size()), quantize);
  const int64_t elem = static_cast<int64_t>(shape_of.element_size());
  const int64_t body = shape_of.numel() * elem;
  // [guard | out_offset elements | output | guard], the output starting out_offset elements past a
  // 64-byte boundary (the allocator aligns the buffer itself to 64 bytes at least).
  at::Tensor buffer = at::empty({kGuardBytes + out_offset * elem + body + kGuardBytes}, x.options().dtype(at::kByte));
  std::memset(buffer.data_ptr<uint8_t>(), static_cast<int>(fill & 0xff), static_cast<size_t>(buffer.numel()));
  const int64_t start = kGuardBytes + out_offset * elem;
  at::Tensor out = buffer.narrow(0, start, body).view(shape_of.scalar_type()).view(shape_of.sizes());
  const cudaError_t err =
      recapfast::cuda::perturb_launch(x, grad, eps, signs, out, static_cast<int>(sm_count), /*stream=*/nullptr);
  TORCH_CHECK(err == cudaSuccess, "perturb (host shim): kernel launch failed: ", cudaGetErrorString(err));
  const uint8_t* bytes = buffer.data_ptr<uint8_t>();
  for (int64_t i = 0; i < buffer.numel(); ++i) {
    if (i == start) i += body;
    if (i < buffer.numel()) {
      TORCH_CHECK(bytes[i] == static_cast<uint8_t>(fill & 0xff), "perturb (host shim): the kernel wrote byte ",
                  i - start, " relative to its output of ", body, " bytes (outside it)");
    }
  }
  return out.clone();
}

at::Tensor shim_laplacian(const at::Tensor& src, int64_t sm_count) {
  TORCH_CHECK(src.device().is_cpu(), "host shim: CPU tensors only");
  TORCH_CHECK(src.dim() == 4, "laplacian: src must be [B, C, H, W]");
  return recapfast::cuda::laplacian_launch(src, static_cast<int>(sm_count), nullptr, "laplacian (host shim)");
}

at::Tensor shim_laplace_conv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             int64_t sm_count) {
  return recapfast::laplace_conv_forward(x, weight, bias,
                                         [&](const at::Tensor& s) { return shim_laplacian(s, sm_count); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shim_laplace_conv_backward(const at::Tensor& grad_out,
                                                                          const at::Tensor& x,
                                                                          const at::Tensor& weight,
                                                                          std::array<bool, 3> mask, int64_t sm_count) {
  return recapfast::laplace_conv_backward_impl(grad_out, x, weight, mask,
                                               [&](const at::Tensor& s) { return shim_laplacian(s, sm_count); });
}

int64_t shim_index_bits(c10::string_view op, int64_t num_eps, int64_t numel, int64_t W, int64_t sm_count) {
  const int sms = static_cast<int>(sm_count);
  if (op == "perturb") return recapfast::cuda::perturb_fits_int32(static_cast<int>(num_eps), numel, sms) ? 32 : 64;
  TORCH_CHECK(op == "laplacian", "index_bits: op must be perturb or laplacian");
  return recapfast::cuda::laplacian_fits_int32(numel, W, sms) ? 32 : 64;
}

int64_t shim_launches() { return static_cast<int64_t>(recapfast_host_shim::launches); }

}  // namespace

TORCH_LIBRARY(recapfast_host_shim, m) {
  m.def("perturb(Tensor x, Tensor grad, float[] eps, float[] signs, bool quantize, int sm_count, int out_offset, "
        "int fill) -> Tensor");
  m.def("laplacian(Tensor src, int sm_count) -> Tensor");
  m.def("laplace_conv(Tensor x, Tensor weight, Tensor? bias, int sm_count) -> Tensor");
  m.def("laplace_conv_backward(Tensor grad_out, Tensor x, Tensor weight, bool[3] output_mask, int sm_count) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("index_bits(str op, int num_eps, int numel, int W, int sm_count) -> int", &shim_index_bits);
  m.def("launches() -> int", &shim_launches);
}

TORCH_LIBRARY_IMPL(recapfast_host_shim, CPU, m) {
  m.impl("perturb", &shim_perturb);
  m.impl("laplacian", &shim_laplacian);
  m.impl("laplace_conv", &shim_laplace_conv);
  m.impl("laplace_conv_backward", &shim_laplace_conv_backward);
}
