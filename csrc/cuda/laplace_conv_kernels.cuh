// recapfast::laplace_conv CUDA kernel, framework-free: the fixed per-channel Laplacian
//   out[p, y, x] = 4*in[p, y, x] - in[p, y-1, x] - in[p, y+1, x] - in[p, y, x-1] - in[p, y, x+1]
// with zero padding, over planes p = (batch, channel). The glue (laplace_conv.cu) feeds its result to
// cuDNN's 3x3 convolution (and uses it again, unchanged, as the adjoint in backward: the kernel is
// symmetric). Threads run along x, so loads and stores are coalesced; the 5-point neighbourhood is
// served from L1/L2. Grid-stride over all planes * H * W outputs; index math (one division and one
// remainder per element) is 32-bit when every index of the launch fits, else 64-bit. The operations
// and their order are those of the CPU kernel (csrc/cpu/laplace_conv.cpp), with no fused multiply-add,
// so both give the same bits. The host shim (csrc/host_shim) runs this kernel on the CPU in the tests.
#ifndef RECAPFAST_CUDA_LAPLACE_CONV_KERNELS_CUH_
#define RECAPFAST_CUDA_LAPLACE_CONV_KERNELS_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "launch.cuh"

namespace recapfast {
namespace cuda {

constexpr int kLaplacianThreads = 256;

// 4 * c rounded on its own (exact unless it overflows), so the compiler cannot fuse it with the subtraction.
__device__ __forceinline__ float laplacian_times4(float c) { return __fmul_rn(4.0f, c); }
__device__ __forceinline__ double laplacian_times4(double c) { return __dmul_rn(4.0, c); }

template <typename in_t, typename out_t, typename index_t>
__global__ void laplacian_kernel(const in_t* __restrict__ src, out_t* __restrict__ dst, index_t total, index_t H,
                                 index_t W) {
  const index_t stride = static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x);
  for (index_t i = static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) +
                   static_cast<index_t>(threadIdx.x);
       i < total; i += stride) {
    const index_t row = i / W;  // plane * H + y
    const index_t x = i - row * W;
    const index_t y = row % H;
    const out_t c = static_cast<out_t>(src[i]);
    const out_t up = y > 0 ? static_cast<out_t>(src[i - W]) : out_t(0);
    const out_t down = y < H - 1 ? static_cast<out_t>(src[i + W]) : out_t(0);
    const out_t left = x > 0 ? static_cast<out_t>(src[i - 1]) : out_t(0);
    const out_t right = x < W - 1 ? static_cast<out_t>(src[i + 1]) : out_t(0);
    dst[i] = laplacian_times4(c) - up - down - left - right;
  }
}

// Host launcher with a fixed index type; launch_laplacian picks it. Same arguments as launch_laplacian.
template <typename in_t, typename out_t, typename index_t>
cudaError_t launch_laplacian_indexed(const in_t* src, out_t* dst, int64_t planes, int64_t H, int64_t W, int sm_count,
                                     cudaStream_t stream) {
  const int64_t total = planes * H * W;
  if (total == 0) return cudaSuccess;
  const int64_t max_blocks = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8;
  const int blocks =
      static_cast<int>(std::min<int64_t>((total + kLaplacianThreads - 1) / kLaplacianThreads, max_blocks));
  RECAPFAST_LAUNCH(blocks, kLaplacianThreads, stream, laplacian_kernel<in_t, out_t, index_t>)(
      src, dst, static_cast<index_t>(total), static_cast<index_t>(H), static_cast<index_t>(W));
  return cudaGetLastError();
}

// Whether every index of a launch (i + W, and i + stride past the end) fits int32.
inline bool laplacian_fits_int32(int64_t total, int64_t W, int sm_count) {
  const int64_t threads = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8 * kLaplacianThreads;
  return total + std::max(W, threads) <= std::numeric_limits<int32_t>::max();
}

// Host launcher for a contiguous [planes, H, W] input; dst has the same layout.
template <typename in_t, typename out_t>
cudaError_t launch_laplacian(const in_t* src, out_t* dst, int64_t planes, int64_t H, int64_t W, int sm_count,
                             cudaStream_t stream) {
  return laplacian_fits_int32(planes * H * W, W, sm_count)
             ? launch_laplacian_indexed<in_t, out_t, int32_t>(src, dst, planes, H, W, sm_count, stream)
             : launch_laplacian_indexed<in_t, out_t, int64_t>(src, dst, planes, H, W, sm_count, stream);
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
