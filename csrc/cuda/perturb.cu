// Torch glue for recapfast::perturb on CUDA; the kernels live in perturb_kernels.cuh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "perturb_kernels.cuh"

namespace recapfast {
namespace {

// Streaming multiprocessors of the device (sizes the grid-stride launch); a cheap attribute query, no sync.
int sm_count(const c10::Device& device) {
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device.index()) != cudaSuccess) {
    (void)cudaGetLastError();  // clear this (non-sticky) error; the launcher then uses a default grid
    sms = 0;
  }
  return sms;
}

at::Tensor perturb_cuda(const at::Tensor& x, const at::Tensor& grad, at::ArrayRef<double> eps,
                        at::ArrayRef<double> signs, bool quantize) {
  TORCH_CHECK(eps.size() == signs.size(), "perturb: eps and signs must have the same length, got ", eps.size(),
              " and ", signs.size());
  TORCH_CHECK(x.scalar_type() == at::kByte || x.scalar_type() == at::kFloat,
              "perturb: x must be uint8 or float32, got ", x.scalar_type());
  TORCH_CHECK(grad.is_floating_point(), "perturb: grad must be a floating tensor, got ", grad.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), "perturb: grad shape ", grad.sizes(), " differs from x shape ", x.sizes());
  TORCH_CHECK(x.is_cuda() && grad.device() == x.device(), "perturb_cuda: x and grad must be on the same CUDA device");
  const c10::cuda::CUDAGuard guard(x.device());
  const c10::Device x_device = x.device();

  const int64_t num_eps = static_cast<int64_t>(eps.size());
  std::vector<int64_t> out_shape{num_eps};
  out_shape.insert(out_shape.end(), x.sizes().begin(), x.sizes().end());
  at::Tensor out = at::empty(out_shape, x.options().dtype(quantize ? at::kByte : at::kFloat));
  const int64_t numel = x.numel();
  if (numel == 0 || num_eps == 0) return out;

  std::vector<float> steps(num_eps);
  for (int64_t e = 0; e < num_eps; ++e) steps[e] = static_cast<float>(signs[e] * eps[e]);
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.to(at::kFloat).contiguous();
  const float* g = gc.data_ptr<float>();
  const int sms = sm_count(x_device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x_device.index()).stream();
  cudaError_t err;
  if (xc.scalar_type() == at::kByte) {
    const uint8_t* xp = xc.data_ptr<uint8_t>();
    err = quantize ? cuda::launch_perturb<uint8_t, uint8_t>(xp, g, steps.data(), num_eps, out.data_ptr<uint8_t>(),
                                                            numel, sms, stream)
                   : cuda::launch_perturb<uint8_t, float>(xp, g, steps.data(), num_eps, out.data_ptr<float>(), numel,
                                                          sms, stream);
  } else {
    const float* xp = xc.data_ptr<float>();
    err = quantize ? cuda::launch_perturb<float, uint8_t>(xp, g, steps.data(), num_eps, out.data_ptr<uint8_t>(),
                                                          numel, sms, stream)
                   : cuda::launch_perturb<float, float>(xp, g, steps.data(), num_eps, out.data_ptr<float>(), numel,
                                                        sms, stream);
  }
  TORCH_CHECK(err == cudaSuccess, "perturb_cuda: kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CUDA, m) { m.impl("perturb", &perturb_cuda); }

}  // namespace recapfast
