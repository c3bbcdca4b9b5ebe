// recapfast::relu_pool and relu_pool_backward CUDA kernels, framework-free: ReLU fused with the model's
// 5x5 / stride 2 / pad 2 average pooling (count_include_pad=False), channels_last (NHWC) float32.
//
// One thread per output element, channel fastest (coalesced loads and stores). The arithmetic is the CPU
// kernel's (csrc/cpu/relu_pool.cpp), which is ATen's: a window is summed from zero in row-major (ih, iw)
// order and divided by its number of valid taps; the backward adds grad_out / count of every covering
// window in row-major (oh, ow) order and zeroes it where relu(h) <= 0 (a NaN h passes the gradient).
// Every operation is an explicitly rounded __fadd_rn / __fdiv_rn, so the results are the reference's bit for
// bit (on the GPU and through the host shim). Grid-stride; index math is 32-bit when every index of the
// launch fits, else 64-bit.
#ifndef RECAPFAST_CUDA_RELU_POOL_KERNELS_CUH_
#define RECAPFAST_CUDA_RELU_POOL_KERNELS_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "launch.cuh"

namespace recapfast {
namespace cuda {

constexpr int kPoolK = 5, kPoolS = 2, kPoolP = 2;  // the model's pooling window, stride and padding
constexpr int kFastpathThreads = 256;

inline int64_t pool_out_size(int64_t n) { return (n + 2 * kPoolP - kPoolK) / kPoolS + 1; }

// Grid of a grid-stride launch over `work` threads (capped at 8 blocks per SM).
inline int fastpath_blocks(int64_t work, int sm_count) {
  const int64_t max_blocks = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + kFastpathThreads - 1) / kFastpathThreads,
                                                                  max_blocks)));
}

// Whether every index of a launch over buffers of at most max_numel elements (and the grid-stride
// overshoot past the end) fits int32.
inline bool fastpath_fits_int32(int64_t max_numel, int sm_count) {
  const int64_t threads = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8 * kFastpathThreads;
  return max_numel + threads <= std::numeric_limits<int32_t>::max();
}

// ReLU as torch computes it (clamp_min(x, 0)): NaN propagates, -0.0 stays.
__device__ __forceinline__ float pool_relu(float v) { return v < 0.0f ? 0.0f : v; }

// Input rows [lo, hi) of pooled row o.
template <typename index_t>
__device__ __forceinline__ void pool_window(index_t o, index_t size, index_t& lo, index_t& hi) {
  const index_t start = o * kPoolS - kPoolP;
  lo = start < 0 ? index_t(0) : start;
  hi = start + kPoolK < size ? start + kPoolK : size;
}

// Pooled rows [lo, hi) whose window contains input row i.
template <typename index_t>
__device__ __forceinline__ void pool_covering(index_t i, index_t out_size, index_t& lo, index_t& hi) {
  const index_t first = i + kPoolP - kPoolK + 1;
  lo = first <= 0 ? index_t(0) : (first + kPoolS - 1) / kPoolS;
  const index_t last = (i + kPoolP) / kPoolS + 1;
  hi = last < out_size ? last : out_size;
}

template <typename index_t>
__global__ void relu_pool_kernel(const float* __restrict__ in, float* __restrict__ out, index_t total, index_t C,
                                 index_t H, index_t W, index_t H2, index_t W2) {
  const index_t stride = static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x);
  for (index_t i = static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) +
                   static_cast<index_t>(threadIdx.x);
       i < total; i += stride) {
    const index_t c = i % C;
    index_t r = i / C;
    const index_t ox = r % W2;
    r /= W2;
    const index_t oy = r % H2;
    const index_t n = r / H2;
    index_t ih0, ih1, iw0, iw1;
    pool_window<index_t>(oy, H, ih0, ih1);
    pool_window<index_t>(ox, W, iw0, iw1);
    iw1 -= kPlantedIndexBug;
    float acc = 0.0f;
    for (index_t ih = ih0; ih < ih1; ++ih) {
      const float* row = in + (n * H + ih) * W * C + c;
      for (index_t iw = iw0; iw < iw1; ++iw) acc = __fadd_rn(acc, pool_relu(row[iw * C]));
    }
    out[i] = __fdiv_rn(acc, static_cast<float>((ih1 - ih0) * (iw1 - iw0)));
  }
}

// gin [M, H, W, C] from g [M, H2, W2, C] and h [N, H, W, C]; cotangent image m belongs to h image m % N.
template <typename index_t>
__global__ void relu_pool_backward_kernel(const float* __restrict__ g, const float* __restrict__ h,
                                          float* __restrict__ gin, index_t total, index_t N, index_t C, index_t H,
                                          index_t W, index_t H2, index_t W2) {
  const index_t stride = static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x);
  for (index_t i = static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) +
                   static_cast<index_t>(threadIdx.x);
       i < total; i += stride) {
    const index_t c = i % C;
    index_t r = i / C;
    const index_t iw = r % W;
    r /= W;
    const index_t ih = r % H;
    const index_t m = r / H;
    index_t oh0, oh1, ow0, ow1;
    pool_covering<index_t>(ih, H2, oh0, oh1);
    pool_covering<index_t>(iw, W2, ow0, ow1);
    ow1 -= kPlantedIndexBug;
    float acc = 0.0f;
    for (index_t oh = oh0; oh < oh1; ++oh) {
      index_t a0, a1;
      pool_window<index_t>(oh, H, a0, a1);
      const float* grow = g + (m * H2 + oh) * W2 * C + c;
      for (index_t ow = ow0; ow < ow1; ++ow) {
        index_t b0, b1;
        pool_window<index_t>(ow, W, b0, b1);
        acc = __fadd_rn(acc, __fdiv_rn(grow[ow * C], static_cast<float>((a1 - a0) * (b1 - b0))));
      }
    }
    const float hv = h[(((m % N) * H + ih) * W + iw) * C + c];
    gin[i] = hv <= 0.0f ? 0.0f : acc;  // threshold_backward(grad, relu(h), 0)
  }
}

// Host launcher: in [N, H, W, C] (channels_last memory of [N, C, H, W]) -> out [N, H2, W2, C].
inline cudaError_t launch_relu_pool(const float* in, float* out, int64_t N, int64_t C, int64_t H, int64_t W,
                                    int sm_count, cudaStream_t stream) {
  const int64_t H2 = pool_out_size(H), W2 = pool_out_size(W), total = N * H2 * W2 * C;
  if (total == 0) return cudaSuccess;
  const int blocks = fastpath_blocks(total, sm_count);
  if (fastpath_fits_int32(N * H * W * C, sm_count)) {
    RECAPFAST_LAUNCH(blocks, kFastpathThreads, stream, relu_pool_kernel<int32_t>)(
        in, out, static_cast<int32_t>(total), static_cast<int32_t>(C), static_cast<int32_t>(H),
        static_cast<int32_t>(W), static_cast<int32_t>(H2), static_cast<int32_t>(W2));
  } else {
    RECAPFAST_LAUNCH(blocks, kFastpathThreads, stream, relu_pool_kernel<int64_t>)(in, out, total, C, H, W, H2, W2);
  }
  return cudaGetLastError();
}

// Host launcher: g [M, H2, W2, C], h [N, H, W, C] (M a multiple of N) -> gin [M, H, W, C].
inline cudaError_t launch_relu_pool_backward(const float* g, const float* h, float* gin, int64_t M, int64_t N,
                                             int64_t C, int64_t H, int64_t W, int sm_count, cudaStream_t stream) {
  const int64_t H2 = pool_out_size(H), W2 = pool_out_size(W), total = M * H * W * C;
  if (total == 0) return cudaSuccess;
  const int blocks = fastpath_blocks(total, sm_count);
  if (fastpath_fits_int32(total, sm_count)) {
    RECAPFAST_LAUNCH(blocks, kFastpathThreads, stream, relu_pool_backward_kernel<int32_t>)(
        g, h, gin, static_cast<int32_t>(total), static_cast<int32_t>(N), static_cast<int32_t>(C),
        static_cast<int32_t>(H), static_cast<int32_t>(W), static_cast<int32_t>(H2), static_cast<int32_t>(W2));
  } else {
    RECAPFAST_LAUNCH(blocks, kFastpathThreads, stream, relu_pool_backward_kernel<int64_t>)(
        g, h, gin, total, N, C, H, W, H2, W2);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace recapfast

#endif  // RECAPFAST_CUDA_RELU_POOL_KERNELS_CUH_
