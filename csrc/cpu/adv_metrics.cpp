// recapfast::adv_metrics on CPU: every imperceptibility figure of K adversarial batches in one pass.
//
// For each adversarial image k of clean image b and channel plane: the sum of squared differences and the
// largest absolute difference (pixel units), and the mean of the SSIM map (Wang et al. 2004: 11x11 Gaussian
// window, sigma 1.5, K1 0.01, K2 0.03, L 255, 'valid' windows, population variances) exactly as
// recapfast.metrics.ssim_map defines it. The clean plane's local mean and variance are filtered once and
// shared by all K adversarial planes; each of those needs three filtered maps (mean, second moment, cross
// moment). Filtering is separable, 8 floats wide (AVX2 + FMA where the CPU has it), on values shifted by
// -127.5 (as the reference does in float32, so the variances keep ~1e-6 accuracy); the map mean is summed
// in double. The result equals the reference up to float rounding (summation order).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace recapfast {
namespace {

constexpr int64_t kWin = 11;
constexpr double kSigma = 1.5, kK1 = 0.01, kK2 = 0.03, kRange = 255.0;
constexpr float kShift = 127.5f;

struct Plane {
  int64_t H, W, Ho, Wo;
};

// out (Ho x Wo) = valid separable Gaussian of in (H x W); tmp holds the horizontal pass (H x Wo).
RECAPFAST_ALWAYS_INLINE void gauss_valid(const float* __restrict in, float* __restrict tmp, float* __restrict out,
                                         const float* __restrict g, const Plane& p) {
  for (int64_t r = 0; r < p.H; ++r) {
    const float* __restrict row = in + r * p.W;
    float* __restrict t = tmp + r * p.Wo;
    int64_t j = 0;
    for (; j + 8 <= p.Wo; j += 8) {
      v8f acc = bcast8(g) * load8(row + j);
      for (int64_t k = 1; k < kWin; ++k) acc += bcast8(g + k) * load8(row + j + k);
      store8(t + j, acc);
    }
    for (; j < p.Wo; ++j) {
      float acc = g[0] * row[j];
      for (int64_t k = 1; k < kWin; ++k) acc += g[k] * row[j + k];
      t[j] = acc;
    }
  }
  for (int64_t i = 0; i < p.Ho; ++i) {
    float* __restrict o = out + i * p.Wo;
    int64_t j = 0;
    for (; j + 8 <= p.Wo; j += 8) {
      v8f acc = bcast8(g) * load8(tmp + i * p.Wo + j);
      for (int64_t k = 1; k < kWin; ++k) acc += bcast8(g + k) * load8(tmp + (i + k) * p.Wo + j);
      store8(o + j, acc);
    }
    for (; j < p.Wo; ++j) {
      float acc = g[0] * tmp[i * p.Wo + j];
      for (int64_t k = 1; k < kWin; ++k) acc += g[k] * tmp[(i + k) * p.Wo + j];
      o[j] = acc;
    }
  }
}

struct Args {
  const void* x;      // [B, C, H, W]
  const void* adv;    // [K, B, C, H, W]
  bool x_u8, adv_u8, ssim;
  int64_t K, B, C;
  Plane p;
  float g[kWin];
  double* out;        // [K, B, C, 3]: ssim map mean, sum of squares, max |diff|
};

template <typename T>
RECAPFAST_ALWAYS_INLINE void to_shifted(const T* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]) - kShift;
}

// Horizontal 11-tap pass of three planes at once for 8 columns: v, v*v and v*u.
RECAPFAST_ALWAYS_INLINE void horizontal3(const float* __restrict v, const float* __restrict u,
                                         const float* __restrict g, v8f& m, v8f& vv, v8f& vu) {
  const v8f g0 = bcast8(g), a0 = load8(v), b0 = load8(u);
  m = g0 * a0;
  vv = g0 * (a0 * a0);
  vu = g0 * (a0 * b0);
  for (int64_t k = 1; k < kWin; ++k) {
    const v8f gk = bcast8(g + k), a = load8(v + k), b = load8(u + k);
    m += gk * a;
    vv += gk * (a * a);
    vu += gk * (a * b);
  }
}

RECAPFAST_ALWAYS_INLINE void plane_task(const Args& a, int64_t plane_index, std::vector<float>& buf) {
  const Plane& p = a.p;
  const int64_t n = p.H * p.W, m = p.Ho * p.Wo, hw = p.H * p.Wo;
  float* u = buf.data();          // clean, shifted
  float* v = u + n;               // adversarial, shifted
  float* prod = v + n;            // u * u
  float* t1 = prod + n;           // horizontal passes: mean, second moment, cross moment
  float* t2 = t1 + hw;
  float* t3 = t2 + hw;
  float* mu_x = t3 + hw;          // clean local mean and variance
  float* var_x = mu_x + m;
  if (a.x_u8) {
    to_shifted(static_cast<const uint8_t*>(a.x) + plane_index * n, u, n);
  } else {
    to_shifted(static_cast<const float*>(a.x) + plane_index * n, u, n);
  }
  const float c1 = static_cast<float>((kK1 * kRange) * (kK1 * kRange));
  const float c2 = static_cast<float>((kK2 * kRange) * (kK2 * kRange));
  if (a.ssim) {
    gauss_valid(u, t1, mu_x, a.g, p);
    for (int64_t i = 0; i < n; ++i) prod[i] = u[i] * u[i];
    gauss_valid(prod, t1, var_x, a.g, p);
    for (int64_t i = 0; i < m; ++i) var_x[i] -= mu_x[i] * mu_x[i];
  }
  const int64_t bc = a.B * a.C;
  for (int64_t k = 0; k < a.K; ++k) {
    const int64_t src = k * bc * n + plane_index * n;
    if (a.adv_u8) {
      to_shifted(static_cast<const uint8_t*>(a.adv) + src, v, n);
    } else {
      to_shifted(static_cast<const float*>(a.adv) + src, v, n);
    }
    // Norms: exact integer sums for uint8 pixels, else double as the reference computes them.
    double sumsq = 0.0, maxabs = 0.0;
    bool nan = false;
    if (a.x_u8 && a.adv_u8) {
      const uint8_t* xs = static_cast<const uint8_t*>(a.x) + plane_index * n;
      const uint8_t* as = static_cast<const uint8_t*>(a.adv) + src;
      int64_t sq = 0;
      int32_t mx = 0;
      for (int64_t i0 = 0; i0 < n; i0 += 4096) {  // int32 partial sums cannot overflow (4096 * 255^2 < 2^31)
        int32_t part = 0;
        for (int64_t i = i0; i < std::min(n, i0 + 4096); ++i) {
          const int32_t d = static_cast<int32_t>(as[i]) - static_cast<int32_t>(xs[i]);
          part += d * d;
          mx = std::max(mx, d < 0 ? -d : d);
        }
        sq += part;
      }
      sumsq = static_cast<double>(sq);
      maxabs = static_cast<double>(mx);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(v[i]) - static_cast<double>(u[i]);
        sumsq += d * d;
        nan |= d != d;
        maxabs = std::max(maxabs, std::fabs(d));
      }
    }
    double ssim = NAN;
    if (a.ssim) {
      // Horizontal pass of v, v*v and v*u together; then the vertical pass, fused with the SSIM formula.
      for (int64_t r = 0; r < p.H; ++r) {
        const float* vr = v + r * p.W;
        const float* ur = u + r * p.W;
        int64_t j = 0;
        for (; j + 8 <= p.Wo; j += 8) {
          v8f mm, vv, vu;
          horizontal3(vr + j, ur + j, a.g, mm, vv, vu);
          store8(t1 + r * p.Wo + j, mm);
          store8(t2 + r * p.Wo + j, vv);
          store8(t3 + r * p.Wo + j, vu);
        }
        for (; j < p.Wo; ++j) {
          float mm = 0.0f, vv = 0.0f, vu = 0.0f;
          for (int64_t t = 0; t < kWin; ++t) {
            mm += a.g[t] * vr[j + t];
            vv += a.g[t] * (vr[j + t] * vr[j + t]);
            vu += a.g[t] * (vr[j + t] * ur[j + t]);
          }
          t1[r * p.Wo + j] = mm;
          t2[r * p.Wo + j] = vv;
          t3[r * p.Wo + j] = vu;
        }
      }
      double total = 0.0;
      for (int64_t i = 0; i < p.Ho; ++i) {
        float row_total = 0.0f;
        int64_t j = 0;
        const v8f vc1 = splat8(c1), vc2 = splat8(c2), two = splat8(2.0f), shift = splat8(kShift);
        v8f acc = splat8(0.0f);
        for (; j + 8 <= p.Wo; j += 8) {
          const int64_t o = i * p.Wo + j;
          v8f ma = bcast8(a.g) * load8(t1 + o), saa = bcast8(a.g) * load8(t2 + o), sax = bcast8(a.g) * load8(t3 + o);
          for (int64_t t = 1; t < kWin; ++t) {
            const v8f gt = bcast8(a.g + t);
            ma += gt * load8(t1 + o + t * p.Wo);
            saa += gt * load8(t2 + o + t * p.Wo);
            sax += gt * load8(t3 + o + t * p.Wo);
          }
          const v8f mx = load8(mu_x + o), vx = load8(var_x + o);
          const v8f va = saa - ma * ma, cov = sax - ma * mx;
          const v8f pa = ma + shift, px = mx + shift;
          acc += ((two * pa * px + vc1) * (two * cov + vc2)) / ((pa * pa + px * px + vc1) * (va + vx + vc2));
        }
        for (int64_t l = 0; l < 8; ++l) row_total += acc[l];
        for (; j < p.Wo; ++j) {
          const int64_t o = i * p.Wo + j;
          float ma = 0.0f, saa = 0.0f, sax = 0.0f;
          for (int64_t t = 0; t < kWin; ++t) {
            ma += a.g[t] * t1[o + t * p.Wo];
            saa += a.g[t] * t2[o + t * p.Wo];
            sax += a.g[t] * t3[o + t * p.Wo];
          }
          const float va = saa - ma * ma, cov = sax - ma * mu_x[o];
          const float pa = ma + kShift, px = mu_x[o] + kShift;
          row_total += ((2.0f * pa * px + c1) * (2.0f * cov + c2)) / ((pa * pa + px * px + c1) * (va + var_x[o] + c2));
        }
        total += static_cast<double>(row_total);
      }
      ssim = total / static_cast<double>(m);
    }
    double* o = a.out + ((k * a.B * a.C) + plane_index) * 3;
    o[0] = ssim;
    o[1] = sumsq;
    o[2] = nan ? NAN : maxabs;
  }
}

RECAPFAST_TARGET_AVX2 void run_avx2(const Args& a, int64_t begin, int64_t end, std::vector<float>& buf) {
  for (int64_t i = begin; i < end; ++i) plane_task(a, i, buf);
}

void run_portable(const Args& a, int64_t begin, int64_t end, std::vector<float>& buf) {
  for (int64_t i = begin; i < end; ++i) plane_task(a, i, buf);
}

at::Tensor adv_metrics_cpu(const at::Tensor& x_any, const at::Tensor& adv_any, bool ssim) {
  TORCH_CHECK(x_any.dim() == 4, "adv_metrics: x must be [B, C, H, W], got ", x_any.sizes());
  TORCH_CHECK(adv_any.dim() == 5 && adv_any.sizes().slice(1) == x_any.sizes(),
              "adv_metrics: adv must be [K, ", x_any.sizes(), "], got ", adv_any.sizes());
  for (const auto* t : {&x_any, &adv_any})
    TORCH_CHECK(t->scalar_type() == at::kByte || t->scalar_type() == at::kFloat,
                "adv_metrics: uint8 or float32 images expected, got ", t->scalar_type());
  TORCH_CHECK(x_any.device().is_cpu() && adv_any.device().is_cpu(), "adv_metrics: CPU tensors expected");
  const int64_t K = adv_any.size(0), B = x_any.size(0), C = x_any.size(1), H = x_any.size(2), W = x_any.size(3);
  at::Tensor out = at::empty({K, B, C, 3}, x_any.options().dtype(at::kDouble));
  if (out.numel() == 0) return out;
  const at::Tensor x = x_any.contiguous(), adv = adv_any.contiguous();
  Args a{};
  a.x = x.data_ptr();
  a.adv = adv.data_ptr();
  a.x_u8 = x.scalar_type() == at::kByte;
  a.adv_u8 = adv.scalar_type() == at::kByte;
  a.ssim = ssim && H >= kWin && W >= kWin;
  a.K = K;
  a.B = B;
  a.C = C;
  a.p = Plane{H, W, a.ssim ? H - kWin + 1 : 0, a.ssim ? W - kWin + 1 : 0};
  // The window as recapfast.metrics.gaussian_window computes it (float64, normalized), then float32.
  double taps[kWin], total = 0.0;
  for (int64_t i = 0; i < kWin; ++i) {
    const double r = static_cast<double>(i) - (kWin - 1) / 2.0;
    taps[i] = std::exp(-(r * r) / (2 * kSigma * kSigma));
    total += taps[i];
  }
  for (int64_t i = 0; i < kWin; ++i) a.g[i] = static_cast<float>(taps[i] / total);
  a.out = out.data_ptr<double>();
  const int64_t n = H * W, m = a.p.Ho * a.p.Wo;
  const int64_t scratch = 3 * n + 3 * H * a.p.Wo + 2 * m;
  const bool avx2 = cpu_use_avx2();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(scratch);
    if (avx2) {
      run_avx2(a, begin, end, buf);
    } else {
      run_portable(a, begin, end, buf);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CPU, m) { m.impl("adv_metrics", &adv_metrics_cpu); }

}  // namespace recapfast
