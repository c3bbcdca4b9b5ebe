// recapfast::perturb CUDA kernels, framework-free (raw pointers, explicit stream).
//
// out[e, i] = quantize(clip(x[i] + step[e] * sign(grad[i]), 0, 255)) for every eps e of a sweep, so x
// and grad are read from global memory once. The vector kernel gives each thread 4 consecutive elements
// (uchar4/float4 loads of x and grad) starting at the first element where both are vector-aligned; the
// few elements before it (head) and after the last full vector (tail) are done one by one. A row of the
// output whose vectors are misaligned (numel % 4 != 0 shifts row e by e * numel) is stored element-wise;
// the decision is per row, so a warp never diverges on it. Only when x and grad are misaligned
// differently (views with different offsets) does the whole launch go scalar.
// Index math is 32-bit when every index of the launch fits (the usual case), else 64-bit.
// Arithmetic matches the reference bit for bit: float32 x + step * sign(g) with no fused multiply-add,
// clip to [0, 255], round half to even (rintf) and convert to uint8 when quantizing.
// The host shim (csrc/host_shim) runs these kernels on the CPU in the tests.
#ifndef RECAPFAST_CUDA_PERTURB_KERNELS_CUH_
#define RECAPFAST_CUDA_PERTURB_KERNELS_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "launch.cuh"

namespace recapfast {
namespace cuda {

constexpr int kPerturbMaxEps = 16;  // eps per launch; longer sweeps are split over launches
constexpr int kPerturbThreads = 256;

struct PerturbSteps {
  float step[kPerturbMaxEps];  // float32(sign_e * eps_e)
  int count;
  unsigned int vec_rows;  // vector kernel: bit e set when row e's 4-element groups are vector-aligned
};

__device__ __forceinline__ float perturb_sign(float g) {
  return static_cast<float>(g > 0.0f) - static_cast<float>(g < 0.0f);  // torch.sign; 0 for NaN
}

__device__ __forceinline__ float perturb_clip(float v) {
  v = v < 0.0f ? 0.0f : v;  // ternaries keep NaN, like torch.clamp (fminf/fmaxf would drop it)
  return v > 255.0f ? 255.0f : v;
}

__device__ __forceinline__ float to_float(uint8_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float to_float(float v) { return v; }

template <typename out_t>
__device__ __forceinline__ out_t perturb_store_value(float v);

template <>
__device__ __forceinline__ uint8_t perturb_store_value<uint8_t>(float v) {
  return static_cast<uint8_t>(static_cast<int>(rintf(v)));  // rintf: nearest, ties to even
}

template <>
__device__ __forceinline__ float perturb_store_value<float>(float v) {
  return v;
}

template <typename out_t>
__device__ __forceinline__ out_t perturb_value(float x, float step, float direction) {
  // __fadd_rn/__fmul_rn: no FMA contraction, exactly the reference's two roundings.
  return perturb_store_value<out_t>(perturb_clip(__fadd_rn(x, __fmul_rn(step, direction))));
}

template <typename index_t>
__device__ __forceinline__ index_t global_thread_index() {
  return static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + static_cast<index_t>(threadIdx.x);
}

template <typename index_t>
__device__ __forceinline__ index_t grid_threads() {
  return static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x);
}

// Element i of every output row.
template <typename in_t, typename out_t, typename index_t>
__device__ __forceinline__ void perturb_element(const in_t* __restrict__ x, const float* __restrict__ grad,
                                                const PerturbSteps& steps, out_t* __restrict__ out, index_t numel,
                                                index_t i) {
  const float xv = to_float(x[i]);
  const float d = perturb_sign(grad[i]);
  for (int e = 0; e < steps.count; ++e) {
    out[static_cast<index_t>(e) * numel + i] = perturb_value<out_t>(xv, steps.step[e], d);
  }
}

// Scalar kernel: any alignment, any numel.
template <typename in_t, typename out_t, typename index_t>
__global__ void perturb_scalar_kernel(const in_t* __restrict__ x, const float* __restrict__ grad,
                                      PerturbSteps steps, out_t* __restrict__ out, index_t numel) {
  const index_t stride = grid_threads<index_t>();
  for (index_t i = global_thread_index<index_t>(); i < numel; i += stride) {
    perturb_element<in_t, out_t, index_t>(x, grad, steps, out, numel, i);
  }
}

template <typename T>
struct Vec4;
template <>
struct Vec4<uint8_t> {
  using type = uchar4;
};
template <>
struct Vec4<float> {
  using type = float4;
};

template <typename T>
__device__ __forceinline__ typename Vec4<T>::type make_vec4(T a, T b, T c, T d);
template <>
__device__ __forceinline__ uchar4 make_vec4<uint8_t>(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return make_uchar4(a, b, c, d);
}
template <>
__device__ __forceinline__ float4 make_vec4<float>(float a, float b, float c, float d) {
  return make_float4(a, b, c, d);
}

// Vector kernel: elements [head, head + 4 * nvec) as aligned 4-element vectors of x and grad (head < 4),
// then the head and the tail (numel - head - 4 * nvec < 4 elements) one by one.
template <typename in_t, typename out_t, typename index_t>
__global__ void perturb_vec4_kernel(const in_t* __restrict__ x, const float* __restrict__ grad,
                                    PerturbSteps steps, out_t* __restrict__ out, index_t numel, index_t head,
                                    index_t nvec) {
  using in_vec = typename Vec4<in_t>::type;
  using out_vec = typename Vec4<out_t>::type;
  const index_t tid = global_thread_index<index_t>();
  const index_t stride = grid_threads<index_t>();
  for (index_t v = tid; v < nvec; v += stride) {
    const index_t i = head + 4 * v;
    const in_vec xv = *reinterpret_cast<const in_vec*>(x + i);
    const float4 gv = *reinterpret_cast<const float4*>(grad + i);
    const float x0 = to_float(xv.x), x1 = to_float(xv.y), x2 = to_float(xv.z), x3 = to_float(xv.w);
    const float d0 = perturb_sign(gv.x), d1 = perturb_sign(gv.y), d2 = perturb_sign(gv.z), d3 = perturb_sign(gv.w);
    for (int e = 0; e < steps.count; ++e) {
      const float s = steps.step[e];
      const out_t r0 = perturb_value<out_t>(x0, s, d0), r1 = perturb_value<out_t>(x1, s, d1),
                  r2 = perturb_value<out_t>(x2, s, d2), r3 = perturb_value<out_t>(x3, s, d3);
      out_t* o = out + static_cast<index_t>(e) * numel + i;
      if ((steps.vec_rows >> e) & 1u) {
        *reinterpret_cast<out_vec*>(o) = make_vec4<out_t>(r0, r1, r2, r3);
      } else {
        o[0] = r0;
        o[1] = r1;
        o[2] = r2;
        o[3] = r3;
      }
    }
  }
  const index_t tail = head + 4 * nvec;
  if (tid < head) perturb_element<in_t, out_t, index_t>(x, grad, steps, out, numel, tid);
  if (tid < numel - tail) perturb_element<in_t, out_t, index_t>(x, grad, steps, out, numel, tail + tid);
}

// Position of p within its 4-element vector (0 = vector-aligned), or -1 when p is not even element-aligned.
template <typename T>
inline int vec4_phase(const T* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return a % sizeof(T) ? -1 : static_cast<int>((a / sizeof(T)) % 4);
}

// Host launcher with a fixed index type; launch_perturb picks it. Same arguments as launch_perturb.
template <typename in_t, typename out_t, typename index_t>
cudaError_t launch_perturb_indexed(const in_t* x, const float* grad, const float* steps, int num_eps, out_t* out,
                                   int64_t numel, int sm_count, cudaStream_t stream) {
  if (numel == 0 || num_eps == 0) return cudaSuccess;
  const int px = vec4_phase(x), pg = vec4_phase(grad), po = vec4_phase(out);
  const bool vec = px >= 0 && px == pg && po >= 0;
  const int64_t head = vec ? std::min<int64_t>((4 - px) % 4, numel) : 0;
  const int64_t nvec = vec ? (numel - head) / 4 : 0;
  const int64_t work = vec ? std::max<int64_t>(nvec, 4) : numel;  // >= 4 threads for the head and tail
  const int64_t max_blocks = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8;  // grid-stride beyond this
  const int blocks =
      static_cast<int>(std::min<int64_t>((work + kPerturbThreads - 1) / kPerturbThreads, max_blocks));
  for (int e0 = 0; e0 < num_eps; e0 += kPerturbMaxEps) {
    PerturbSteps chunk{};
    chunk.count = num_eps - e0 < kPerturbMaxEps ? num_eps - e0 : kPerturbMaxEps;
    for (int e = 0; e < chunk.count; ++e) {
      chunk.step[e] = steps[e0 + e];
      // Row e0 + e starts (e0 + e) * numel elements after out: its vectors are aligned when that shift,
      // out's own phase and the head add up to a multiple of 4.
      if (vec && (po + (static_cast<int64_t>(e0 + e) * numel + head) % 4) % 4 == 0) chunk.vec_rows |= 1u << e;
    }
    out_t* out_chunk = out + static_cast<int64_t>(e0) * numel;
    if (vec) {
      RECAPFAST_LAUNCH(blocks, kPerturbThreads, stream, perturb_vec4_kernel<in_t, out_t, index_t>)(
          x, grad, chunk, out_chunk, static_cast<index_t>(numel), static_cast<index_t>(head),
          static_cast<index_t>(nvec));
    } else {
      RECAPFAST_LAUNCH(blocks, kPerturbThreads, stream, perturb_scalar_kernel<in_t, out_t, index_t>)(
          x, grad, chunk, out_chunk, static_cast<index_t>(numel));
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Whether every index a launch computes (row offsets e * numel + i and grid-stride overshoot) fits int32.
inline bool perturb_fits_int32(int num_eps, int64_t numel, int sm_count) {
  const int64_t rows = std::min(num_eps, kPerturbMaxEps);
  const int64_t threads = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8 * kPerturbThreads;
  return rows * numel + 4 * threads <= std::numeric_limits<int32_t>::max();
}

// Host launcher: out holds num_eps * numel elements ([E, numel] row-major). steps: num_eps floats on the host.
// Returns the first launch error (cudaSuccess when all launches were queued).
template <typename in_t, typename out_t>
cudaError_t launch_perturb(const in_t* x, const float* grad, const float* steps, int num_eps, out_t* out,
                           int64_t numel, int sm_count, cudaStream_t stream) {
  return perturb_fits_int32(num_eps, numel, sm_count)
             ? launch_perturb_indexed<in_t, out_t, int32_t>(x, grad, steps, num_eps, out, numel, sm_count, stream)
             : launch_perturb_indexed<in_t, out_t, int64_t>(x, grad, steps, num_eps, out, numel, sm_count, stream);
}

// Explicit instantiations: every supported (input, output) pair, so a standalone compile checks them all.
template cudaError_t launch_perturb<uint8_t, uint8_t>(const uint8_t*, const float*, const float*, int, uint8_t*,
                                                      int64_t, int, cudaStream_t);
template cudaError_t launch_perturb<uint8_t, float>(const uint8_t*, const float*, const float*, int, float*, int64_t,
                                                    int, cudaStream_t);
template cudaError_t launch_perturb<float, uint8_t>(const float*, const float*, const float*, int, uint8_t*, int64_t,
                                                    int, cudaStream_t);
template cudaError_t launch_perturb<float, float>(const float*, const float*, const float*, int, float*, int64_t, int,
                                                  cudaStream_t);

}  // namespace cuda
}  // namespace recapfast

#endif  // RECAPFAST_CUDA_PERTURB_KERNELS_CUH_
