// recapfast::perturb CUDA kernels, framework-free (raw pointers, explicit stream).
//
// One thread handles 4 consecutive elements (vectorized loads of x and grad: uchar4/float4) and
// writes them for every eps of the sweep, so x and grad are read from global memory once.
// Grid-stride loops; a scalar kernel covers unaligned pointers and sizes not divisible by 4.
// Arithmetic matches the reference bit for bit: float32 x + step * sign(g), clip to [0, 255],
// round half to even (rintf) and convert to uint8 when quantizing.
#ifndef RECAPFAST_CUDA_PERTURB_KERNELS_CUH_
#define RECAPFAST_CUDA_PERTURB_KERNELS_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace recapfast {
namespace cuda {

constexpr int kPerturbMaxEps = 16;  // eps per launch; longer sweeps are split over launches

struct PerturbSteps {
  float step[kPerturbMaxEps];  // float32(sign_e * eps_e)
  int count;
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

// Scalar kernel: any alignment, any numel.
template <typename in_t, typename out_t>
__global__ void perturb_scalar_kernel(const in_t* __restrict__ x, const float* __restrict__ grad,
                                      PerturbSteps steps, out_t* __restrict__ out, int64_t numel) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    const float xv = to_float(x[i]);
    const float d = perturb_sign(grad[i]);
#pragma unroll 4
    for (int e = 0; e < steps.count; ++e) {
      out[e * numel + i] = perturb_store_value<out_t>(perturb_clip(__fadd_rn(xv, __fmul_rn(steps.step[e], d))));
    }
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

// Vectorized kernel: requires numel % 4 == 0 and x, grad, out aligned to their 4-element vector.
template <typename in_t, typename out_t>
__global__ void perturb_vec4_kernel(const in_t* __restrict__ x, const float* __restrict__ grad,
                                    PerturbSteps steps, out_t* __restrict__ out, int64_t numel) {
  using in_vec = typename Vec4<in_t>::type;
  using out_vec = typename Vec4<out_t>::type;
  const int64_t nvec = numel / 4;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const in_vec xv = reinterpret_cast<const in_vec*>(x)[v];
    const float4 gv = reinterpret_cast<const float4*>(grad)[v];
    const float x0 = to_float(xv.x), x1 = to_float(xv.y), x2 = to_float(xv.z), x3 = to_float(xv.w);
    const float d0 = perturb_sign(gv.x), d1 = perturb_sign(gv.y), d2 = perturb_sign(gv.z), d3 = perturb_sign(gv.w);
    for (int e = 0; e < steps.count; ++e) {
      const float s = steps.step[e];
      // __fadd_rn/__fmul_rn: no FMA contraction, exactly the reference's two roundings.
      reinterpret_cast<out_vec*>(out + e * numel)[v] =
          make_vec4<out_t>(perturb_store_value<out_t>(perturb_clip(__fadd_rn(x0, __fmul_rn(s, d0)))),
                           perturb_store_value<out_t>(perturb_clip(__fadd_rn(x1, __fmul_rn(s, d1)))),
                           perturb_store_value<out_t>(perturb_clip(__fadd_rn(x2, __fmul_rn(s, d2)))),
                           perturb_store_value<out_t>(perturb_clip(__fadd_rn(x3, __fmul_rn(s, d3)))));
    }
  }
}

inline bool perturb_aligned(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// Host launcher: out holds num_eps * numel elements ([E, numel] row-major). steps: num_eps floats on the host.
// Returns the first launch error (cudaSuccess when all launches were queued).
template <typename in_t, typename out_t>
cudaError_t launch_perturb(const in_t* x, const float* grad, const float* steps, int num_eps, out_t* out,
                           int64_t numel, int sm_count, cudaStream_t stream) {
  if (numel == 0 || num_eps == 0) return cudaSuccess;
  const int threads = 256;
  const bool vec = numel % 4 == 0 && perturb_aligned(x, 4 * sizeof(in_t)) && perturb_aligned(grad, 16) &&
                   perturb_aligned(out, 4 * sizeof(out_t));
  const int64_t work = vec ? numel / 4 : numel;
  const int64_t max_blocks = static_cast<int64_t>(sm_count > 0 ? sm_count : 80) * 8;  // grid-stride beyond this
  const int blocks = static_cast<int>(std::min<int64_t>((work + threads - 1) / threads, max_blocks));
  for (int e0 = 0; e0 < num_eps; e0 += kPerturbMaxEps) {
    PerturbSteps chunk{};
    chunk.count = num_eps - e0 < kPerturbMaxEps ? num_eps - e0 : kPerturbMaxEps;
    for (int e = 0; e < chunk.count; ++e) chunk.step[e] = steps[e0 + e];
    out_t* out_chunk = out + static_cast<int64_t>(e0) * numel;
    if (vec) {
      perturb_vec4_kernel<in_t, out_t><<<blocks, threads, 0, stream>>>(x, grad, chunk, out_chunk, numel);
    } else {
      perturb_scalar_kernel<in_t, out_t><<<blocks, threads, 0, stream>>>(x, grad, chunk, out_chunk, numel);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
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
