// recapfast::laplace_conv CUDA kernel, framework-free: the fixed per-channel Laplacian
//   out[p, y, x] = 4*in[p, y, x] - in[p, y-1, x] - in[p, y+1, x] - in[p, y, x-1] - in[p, y, x+1]
// with zero padding, over planes p = (batch, channel). The glue (laplace_conv.cu) feeds its result to
// cuDNN's 3x3 convolution (and uses it again, unchanged, as the adjoint in backward: the kernel is
// symmetric). Threads run along x, so loads and stores are coalesced; the 5-point neighbourhood is
// served from L1/L2. Grid-stride over all planes * H * W outputs.
#ifndef RECAPFAST_CUDA_LAPLACE_CONV_KERNELS_CUH_
#define RECAPFAST_CUDA_LAPLACE_CONV_KERNELS_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace recapfast {
namespace cuda {

template <typename in_t, typename out_t>
__global__ void laplacian_kernel(const in_t* __restrict__ src, out_t* __restrict__ dst, int64_t planes, int64_t H,
                                 int64_t W) {
  const int64_t total = planes * H * W;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t x = i % W;
    const int64_t y = (i / W) % H;
    const out_t c = static_cast<out_t>(src[i]);
    const out_t up = y > 0 ? static_cast<out_t>(src[i - W]) : out_t(0);
    const out_t down = y < H - 1 ? static_cast<out_t>(src[i + W]) : out_t(0);
    const out_t left = x > 0 ? static_cast<out_t>(src[i - 1]) : out_t(0);
    const out_t right = x < W - 1 ? static_cast<out_t>(src[i + 1]) : out_t(0);
    dst[i] = out_t(4) * c - up - down - left - right;
  }
}

// Host launcher for a contiguous [planes, H, W] input; dst has the same layout.
template <typename in_t, typename out_t>
cudaError_t launch_laplacian(const in_t* src, out_t* dst, int64_t planes, int64_t H, int64_t W, int sm_count,
                             cudaStream_t stream) {
  const int64_t total = planes * H * W;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8;
  const int blocks = static_cast<int>(std::min<int64_t>((total + threads - 1) / threads, max_blocks));
  laplacian_kernel<in_t, out_t><<<blocks, threads, 0, stream>>>(src, dst, planes, H, W);
  return cudaGetLastError();
}

// Explicit instantiations: uint8 and float32 inputs -> float32, float64 -> float64 (gradcheck).
template cudaError_t launch_laplacian<uint8_t, float>(const uint8_t*, float*, int64_t, int64_t, int64_t, int,
                                                      cudaStream_t);
template cudaError_t launch_laplacian<float, float>(const float*, float*, int64_t, int64_t, int64_t, int,
                                                    cudaStream_t);
template cudaError_t launch_laplacian<double, double>(const double*, double*, int64_t, int64_t, int64_t, int,
                                                      cudaStream_t);

}  // namespace cuda
}  // namespace recapfast

#endif  // RECAPFAST_CUDA_LAPLACE_CONV_KERNELS_CUH_
