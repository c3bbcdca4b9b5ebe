// Torch glue for recapfast::laplace_conv on CUDA: the Laplacian kernel (laplace_conv_kernels.cuh),
// then cuDNN's convolution (forward) / convolution_backward, shared with the CPU via laplace_conv_common.h.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../laplace_conv_common.h"
#include "laplace_conv_kernels.cuh"

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

at::Tensor laplacian_cuda(const at::Tensor& src_any) {
  const c10::cuda::CUDAGuard guard(src_any.device());
  const c10::Device x_device = src_any.device();
  const at::Tensor src = src_any.contiguous();
  const auto dtype = laplace_compute_dtype(src);
  at::Tensor dst = at::empty(src.sizes(), src.options().dtype(dtype));
  if (src.numel() == 0) return dst;
  const int64_t H = src.size(2), W = src.size(3), planes = src.size(0) * src.size(1);
  const int sms = sm_count(x_device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x_device.index()).stream();
  cudaError_t err;
  switch (src.scalar_type()) {
    case at::kByte:
      err = cuda::launch_laplacian<uint8_t, float>(src.data_ptr<uint8_t>(), dst.data_ptr<float>(), planes, H, W, sms,
                                                   stream);
      break;
    case at::kFloat:
      err = cuda::launch_laplacian<float, float>(src.data_ptr<float>(), dst.data_ptr<float>(), planes, H, W, sms,
                                                 stream);
      break;
    case at::kDouble:
      err = cuda::launch_laplacian<double, double>(src.data_ptr<double>(), dst.data_ptr<double>(), planes, H, W, sms,
                                                   stream);
      break;
    default:
      TORCH_CHECK(false, "laplace_conv: unsupported dtype ", src.scalar_type());
  }
  TORCH_CHECK(err == cudaSuccess, "laplace_conv_cuda: kernel launch failed: ", cudaGetErrorString(err));
  return dst;
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
