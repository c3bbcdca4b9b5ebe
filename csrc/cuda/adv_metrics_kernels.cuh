// recapfast::adv_metrics CUDA kernels, framework-free: for every adversarial plane q of adv [K, B, C, H, W]
// against its clean plane p = q % (B * C) of x [B, C, H, W]: the SSIM map's mean (Wang et al. 2004, 11x11
// Gaussian window, 'valid' windows, as recapfast.metrics.ssim_map), the sum of squared differences and the
// largest absolute difference (pixel units), float64 [K, B, C, 3].
//
// Kernels (no thread cooperation, so the host shim runs them too):
//   ssim_rows      horizontal 11-tap pass of v, v*v (and v*u) on values shifted by -127.5, one thread per
//                  output element; for the clean planes (once) and for each chunk of adversarial planes;
//   ssim_clean     vertical pass of the clean planes: local mean and variance;
//   ssim_map       vertical pass of a chunk's adversarial planes fused with the SSIM formula;
//   plane_rows     one thread per (plane, row): the row's sum of squares, max |difference| (NaN if any
//                  difference is NaN) and SSIM-map row sum, all in float64;
//   plane_totals   one thread per plane: the rows combined, the map sum divided by its size.
// Filter taps accumulate with __fmaf_rn and the SSIM formula uses explicitly rounded operations, so the
// GPU and the host shim give the same bits; against the reference (separable convolutions in float32)
// they differ by float rounding (summation order), like the CPU kernel. Differences are taken in float64 of
// the raw pixels (exact for uint8 and float32 pixels in [0, 255]), as the reference does.
// Grid-stride; index math is 32-bit when every index of the call fits, else 64-bit.
#ifndef RECAPFAST_CUDA_ADV_METRICS_KERNELS_CUH_
#define RECAPFAST_CUDA_ADV_METRICS_KERNELS_CUH_

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "launch.cuh"
#include "relu_pool_kernels.cuh"  // fastpath_blocks, fastpath_fits_int32, kFastpathThreads

namespace recapfast {
namespace cuda {

constexpr int kSsimWin = 11;

struct SsimWindow {
  float g[kSsimWin];  // normalized Gaussian taps (sigma 1.5), float32
  float c1, c2;       // (K1 * 255)^2, (K2 * 255)^2
};

__device__ __forceinline__ float pixel_value(uint8_t v) { return static_cast<float>(v); }
__device__ __forceinline__ float pixel_value(float v) { return v; }
__device__ __forceinline__ float ssim_shifted(uint8_t v) { return __fsub_rn(static_cast<float>(v), 127.5f); }
__device__ __forceinline__ float ssim_shifted(float v) { return __fsub_rn(v, 127.5f); }

template <typename index_t>
__device__ __forceinline__ index_t fastpath_thread() {
  return static_cast<index_t>(blockIdx.x) * static_cast<index_t>(blockDim.x) + static_cast<index_t>(threadIdx.x);
}

template <typename index_t>
__device__ __forceinline__ index_t fastpath_stride() {
  return static_cast<index_t>(blockDim.x) * static_cast<index_t>(gridDim.x);
}

// Horizontal pass over planes [q0, q0 + total / (H * Wo)) of v: t1 = sum g v, t2 = sum g v^2 and, unless
// kClean, t3 = sum g v u with u the plane's clean plane ((q0 + q) % planes_x of x). Buffers [Q][H][Wo].
template <typename v_t, typename u_t, typename index_t, bool kClean>
__global__ void ssim_rows_kernel(const v_t* __restrict__ v, const u_t* __restrict__ x, SsimWindow w,
                                 float* __restrict__ t1, float* __restrict__ t2, float* __restrict__ t3, index_t total,
                                 index_t q0, index_t planes_x, index_t H, index_t W, index_t Wo) {
  for (index_t i = fastpath_thread<index_t>(); i < total; i += fastpath_stride<index_t>()) {
    const index_t j = i % Wo;
    const index_t rq = i / Wo;  // q * H + r
    const index_t r = rq % H;
    const index_t q = q0 + rq / H;
    const v_t* vr = v + (q * H + r) * W + j;
    const u_t* ur = x + ((q % planes_x) * H + r) * W + j;
    float m = 0.0f, vv = 0.0f, vu = 0.0f;
    for (int t = 0; t < kSsimWin; ++t) {
      const float a = ssim_shifted(vr[t]);
      m = __fmaf_rn(w.g[t], a, m);
      vv = __fmaf_rn(w.g[t], __fmul_rn(a, a), vv);
      if (!kClean) vu = __fmaf_rn(w.g[t], __fmul_rn(a, ssim_shifted(ur[t])), vu);
    }
    t1[i] = m;
    t2[i] = vv;
    if (!kClean) t3[i] = vu;
  }
}

// Vertical pass of the clean planes' horizontal sums: mu_x and var_x [planes_x][Ho][Wo].
template <typename index_t>
__global__ void ssim_clean_kernel(const float* __restrict__ t1, const float* __restrict__ t2, SsimWindow w,
                                  float* __restrict__ mu_x, float* __restrict__ var_x, index_t total, index_t H,
                                  index_t Ho, index_t Wo) {
  for (index_t i = fastpath_thread<index_t>(); i < total; i += fastpath_stride<index_t>()) {
    const index_t j = i % Wo;
    const index_t pi = i / Wo;  // p * Ho + row
    const index_t base = ((pi / Ho) * H + pi % Ho) * Wo + j;
    float m = 0.0f, s = 0.0f;
    for (int t = 0; t < kSsimWin; ++t) {
      m = __fmaf_rn(w.g[t], t1[base + t * Wo], m);
      s = __fmaf_rn(w.g[t], t2[base + t * Wo], s);
    }
    mu_x[i] = m;
    var_x[i] = __fsub_rn(s, __fmul_rn(m, m));
  }
}

// Vertical pass of a chunk's horizontal sums, then the SSIM formula: map [Q][Ho][Wo] of planes q0 + q.
template <typename index_t>
__global__ void ssim_map_kernel(const float* __restrict__ t1, const float* __restrict__ t2,
                                const float* __restrict__ t3, const float* __restrict__ mu_x,
                                const float* __restrict__ var_x, SsimWindow w, float* __restrict__ map, index_t total,
                                index_t q0, index_t planes_x, index_t H, index_t Ho, index_t Wo) {
  for (index_t i = fastpath_thread<index_t>(); i < total; i += fastpath_stride<index_t>()) {
    const index_t j = i % Wo;
    const index_t qi = i / Wo;  // q * Ho + row
    const index_t q = qi / Ho, row = qi % Ho;
    const index_t base = (q * H + row) * Wo + j;
    float ma = 0.0f, saa = 0.0f, sax = 0.0f;
    for (int t = 0; t < kSsimWin - kPlantedIndexBug; ++t) {
      ma = __fmaf_rn(w.g[t], t1[base + t * Wo], ma);
      saa = __fmaf_rn(w.g[t], t2[base + t * Wo], saa);
      sax = __fmaf_rn(w.g[t], t3[base + t * Wo], sax);
    }
    const index_t o = (((q0 + q) % planes_x) * Ho + row) * Wo + j;
    const float mx = mu_x[o], vx = var_x[o];
    const float va = __fsub_rn(saa, __fmul_rn(ma, ma));
    const float cov = __fsub_rn(sax, __fmul_rn(ma, mx));
    const float pa = __fadd_rn(ma, 127.5f), px = __fadd_rn(mx, 127.5f);
    const float num =
        __fmul_rn(__fadd_rn(__fmul_rn(__fmul_rn(2.0f, pa), px), w.c1), __fadd_rn(__fmul_rn(2.0f, cov), w.c2));
    const float den = __fmul_rn(__fadd_rn(__fadd_rn(__fmul_rn(pa, pa), __fmul_rn(px, px)), w.c1),
                                __fadd_rn(__fadd_rn(va, vx), w.c2));
    map[i] = __fdiv_rn(num, den);
  }
}

// One thread per (plane q0 + q, row r < H): rows[(q * H + r) * 3 + {0, 1, 2}] = (SSIM-map row sum, 0 past Ho;
// sum of squared differences; max |difference|, NaN if any difference is NaN). map may be null (no SSIM).
template <typename adv_t, typename x_t, typename index_t>
__global__ void plane_rows_kernel(const adv_t* __restrict__ adv, const x_t* __restrict__ x,
                                  const float* __restrict__ map, double* __restrict__ rows, index_t total, index_t q0,
                                  index_t planes_x, index_t H, index_t W, index_t Ho, index_t Wo) {
  for (index_t i = fastpath_thread<index_t>(); i < total; i += fastpath_stride<index_t>()) {
    const index_t q = i / H, r = i % H;
    const adv_t* ar = adv + ((q0 + q) * H + r) * W;
    const x_t* xr = x + (((q0 + q) % planes_x) * H + r) * W;
    double sumsq = 0.0, maxabs = 0.0;
    bool nan = false;
    for (index_t j = 0; j < W; ++j) {
      const double d = static_cast<double>(pixel_value(ar[j])) - static_cast<double>(pixel_value(xr[j]));
      sumsq = __fma_rn(d, d, sumsq);
      nan |= d != d;
      const double a = d < 0.0 ? -d : d;
      maxabs = a > maxabs ? a : maxabs;
    }
    double ssim = 0.0;
    if (map != nullptr && r < Ho) {
      const float* mr = map + (q * Ho + r) * Wo;
      for (index_t j = 0; j < Wo; ++j) ssim = __dadd_rn(ssim, static_cast<double>(mr[j]));
    }
    rows[i * 3] = ssim;
    rows[i * 3 + 1] = sumsq;
    rows[i * 3 + 2] = nan ? NAN : maxabs;
  }
}

// One thread per plane q0 + q: out[(q0 + q) * 3 + {0, 1, 2}] from its H rows (SSIM NaN when map_size is 0).
template <typename index_t>
__global__ void plane_totals_kernel(const double* __restrict__ rows, double* __restrict__ out, index_t planes,
                                    index_t q0, index_t H, index_t map_size) {
  for (index_t q = fastpath_thread<index_t>(); q < planes; q += fastpath_stride<index_t>()) {
    double ssim = 0.0, sumsq = 0.0, maxabs = 0.0;
    bool nan = false;
    for (index_t r = 0; r < H; ++r) {
      const double* row = rows + (q * H + r) * 3;
      ssim = __dadd_rn(ssim, row[0]);
      sumsq = __dadd_rn(sumsq, row[1]);
      nan |= row[2] != row[2];
      maxabs = row[2] > maxabs ? row[2] : maxabs;
    }
    double* o = out + (q0 + q) * 3;
    o[0] = map_size > 0 ? ssim / static_cast<double>(map_size) : NAN;
    o[1] = sumsq;
    o[2] = nan ? NAN : maxabs;
  }
}

// Scratch of one call (device memory, allocated by the caller; see adv_metrics_scratch). The SSIM buffers
// are unused (may be null) when ssim is false.
struct AdvMetricsScratch {
  float *ct1, *ct2;         // clean horizontal sums [planes_x][H][Wo]
  float *mu_x, *var_x;      // [planes_x][Ho][Wo]
  float *t1, *t2, *t3;      // a chunk's horizontal sums [chunk][H][Wo]
  float* map;               // a chunk's SSIM maps [chunk][Ho][Wo]
  double* rows;             // [chunk][H][3]
  int64_t chunk;            // adversarial planes per chunk (>= 1)
};

// Whether every index of a call fits int32: the largest buffer (adv, out, or a chunk's) plus the grid-stride
// overshoot.
inline bool adv_metrics_fits_int32(int64_t planes, int64_t chunk, int64_t H, int64_t W, int sm_count) {
  const int64_t chunk_numel = chunk * H * (W + 3);  // rows (3 per row) and t buffers (Wo <= W per row)
  return fastpath_fits_int32(std::max({planes * H * W, planes * 3, chunk_numel}), sm_count);
}

template <typename adv_t, typename x_t, typename index_t>
cudaError_t launch_adv_metrics_indexed(const x_t* x, const adv_t* adv, double* out, int64_t planes, int64_t planes_x,
                                       int64_t H, int64_t W, bool ssim, const SsimWindow& w,
                                       const AdvMetricsScratch& s, int sm_count, cudaStream_t stream) {
  const int64_t Ho = ssim ? H - kSsimWin + 1 : 0, Wo = ssim ? W - kSsimWin + 1 : 0;
  const auto I = [](int64_t v) { return static_cast<index_t>(v); };
  cudaError_t err;
  if (ssim) {
    const int64_t n1 = planes_x * H * Wo, n2 = planes_x * Ho * Wo;
    RECAPFAST_LAUNCH(fastpath_blocks(n1, sm_count), kFastpathThreads, stream,
                     ssim_rows_kernel<x_t, x_t, index_t, true>)(
        x, x, w, s.ct1, s.ct2, nullptr, I(n1), I(0), I(planes_x), I(H), I(W), I(Wo));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    RECAPFAST_LAUNCH(fastpath_blocks(n2, sm_count), kFastpathThreads, stream, ssim_clean_kernel<index_t>)(
        s.ct1, s.ct2, w, s.mu_x, s.var_x, I(n2), I(H), I(Ho), I(Wo));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  for (int64_t q0 = 0; q0 < planes; q0 += s.chunk) {
    const int64_t Q = planes - q0 < s.chunk ? planes - q0 : s.chunk;
    if (ssim) {
      const int64_t n1 = Q * H * Wo, n2 = Q * Ho * Wo;
      RECAPFAST_LAUNCH(fastpath_blocks(n1, sm_count), kFastpathThreads, stream,
                       ssim_rows_kernel<adv_t, x_t, index_t, false>)(adv, x, w, s.t1, s.t2, s.t3, I(n1), I(q0),
                                                                      I(planes_x), I(H), I(W), I(Wo));
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
      RECAPFAST_LAUNCH(fastpath_blocks(n2, sm_count), kFastpathThreads, stream, ssim_map_kernel<index_t>)(
          s.t1, s.t2, s.t3, s.mu_x, s.var_x, w, s.map, I(n2), I(q0), I(planes_x), I(H), I(Ho), I(Wo));
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
    }
    RECAPFAST_LAUNCH(fastpath_blocks(Q * H, sm_count), kFastpathThreads, stream,
                     plane_rows_kernel<adv_t, x_t, index_t>)(adv, x, ssim ? s.map : nullptr, s.rows, I(Q * H), I(q0),
                                                             I(planes_x), I(H), I(W), I(Ho), I(Wo));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    RECAPFAST_LAUNCH(fastpath_blocks(Q, sm_count), kFastpathThreads, stream, plane_totals_kernel<index_t>)(
        s.rows, out, I(Q), I(q0), I(H), I(Ho * Wo));
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

// Host launcher: x [planes_x][H][W], adv [planes][H][W] (planes a multiple of planes_x), out [planes][3]
// float64. ssim requires H, W >= 11. Returns the first launch error.
template <typename adv_t, typename x_t>
cudaError_t launch_adv_metrics(const x_t* x, const adv_t* adv, double* out, int64_t planes, int64_t planes_x, int64_t H,
                               int64_t W, bool ssim, const SsimWindow& w, const AdvMetricsScratch& s, int sm_count,
                               cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;  // H * W == 0: every plane gets (NaN, 0, 0), as on the CPU
  return adv_metrics_fits_int32(planes, s.chunk, H, W, sm_count)
             ? launch_adv_metrics_indexed<adv_t, x_t, int32_t>(x, adv, out, planes, planes_x, H, W, ssim, w, s,
                                                               sm_count, stream)
             : launch_adv_metrics_indexed<adv_t, x_t, int64_t>(x, adv, out, planes, planes_x, H, W, ssim, w, s,
                                                               sm_count, stream);
}

// Explicit instantiations: every (adversarial, clean) pixel type pair, so a standalone compile checks them all.
template cudaError_t launch_adv_metrics<uint8_t, uint8_t>(const uint8_t*, const uint8_t*, double*, int64_t, int64_t,
                                                          int64_t, int64_t, bool, const SsimWindow&,
                                                          const AdvMetricsScratch&, int, cudaStream_t);
template cudaError_t launch_adv_metrics<uint8_t, float>(const float*, const uint8_t*, double*, int64_t, int64_t,
                                                        int64_t, int64_t, bool, const SsimWindow&,
                                                        const AdvMetricsScratch&, int, cudaStream_t);
template cudaError_t launch_adv_metrics<float, uint8_t>(const uint8_t*, const float*, double*, int64_t, int64_t,
                                                        int64_t, int64_t, bool, const SsimWindow&,
                                                        const AdvMetricsScratch&, int, cudaStream_t);
template cudaError_t launch_adv_metrics<float, float>(const float*, const float*, double*, int64_t, int64_t, int64_t,
                                                      int64_t, bool, const SsimWindow&, const AdvMetricsScratch&, int,
                                                      cudaStream_t);

}  // namespace cuda
}  // namespace recapfast

#endif  // RECAPFAST_CUDA_ADV_METRICS_KERNELS_CUH_
