// recapfast::perturb on CPU: one pass over x and grad for all eps of a sweep.
//
// Each task walks its slice of the flattened batch in L1-sized blocks: it converts x to float and
// sign(grad) to {-1, 0, +1} once into two small stack buffers, then writes the block of every
// eps from them. The inner loops are branch-free float arithmetic that the compiler vectorizes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../perturb_common.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace recapfast {
namespace {

constexpr int64_t kBlock = 2048;          // 2 x 8 KiB of float scratch per task: stays in L1
constexpr int64_t kGrainElems = 1 << 15;  // minimum elements per parallel task

// 1.5 * 2^23: adding and subtracting it rounds a float in [0, 2^22) to the nearest integer with
// ties to even (the IEEE default mode, what torch.round does); used for the scalar tail.
constexpr float kRoundMagic = 12582912.0f;

inline float clip_0_255(float v) {
  // Ternaries (not std::min/max) so that NaN propagates exactly as torch.clamp does.
  v = v < 0.0f ? 0.0f : v;
  return v > 255.0f ? 255.0f : v;
}

// o[i] = uint8(round_half_even(clip(xf[i] + step * dir[i], 0, 255))) for i < n.
// Rounding then clipping equals clipping then rounding because the bounds are integers.
inline void store_quantized(const float* __restrict xf, const float* __restrict dir, float step,
                            uint8_t* __restrict o, int64_t n) {
  int64_t i = 0;
#if defined(__SSE2__)
  // 16 per iteration: clip in float (so huge values cannot overflow int32), cvtps2dq rounds with the
  // MXCSR mode (nearest, ties to even: torch.round), the two saturating packs narrow to uint8.
  const __m128 lo = _mm_setzero_ps(), hi = _mm_set1_ps(255.0f), vstep = _mm_set1_ps(step);
  for (; i + 16 <= n; i += 16) {
    __m128i q[4];
    for (int k = 0; k < 4; ++k) {
      const __m128 v = _mm_add_ps(_mm_loadu_ps(xf + i + 4 * k), _mm_mul_ps(vstep, _mm_loadu_ps(dir + i + 4 * k)));
      q[k] = _mm_cvtps_epi32(_mm_min_ps(_mm_max_ps(v, lo), hi));
    }
    const __m128i packed = _mm_packus_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), packed);
  }
#endif
  for (; i < n; ++i) {
    const float v = (xf[i] + step * dir[i] + kRoundMagic) - kRoundMagic;
    o[i] = static_cast<uint8_t>(static_cast<int32_t>(clip_0_255(v)));
  }
}

template <typename in_t, bool kQuantize>
void perturb_range(const in_t* __restrict x, const float* __restrict g, const std::vector<float>& steps,
                   void* out_raw, int64_t numel, int64_t begin, int64_t end) {
  alignas(64) float xf[kBlock];
  alignas(64) float dir[kBlock];
  const int64_t num_eps = static_cast<int64_t>(steps.size());
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    const int64_t n = std::min(kBlock, end - b0);
    const in_t* __restrict xs = x + b0;
    const float* __restrict gs = g + b0;
    for (int64_t i = 0; i < n; ++i) {
      xf[i] = static_cast<float>(xs[i]);
      // torch.sign: +1 / -1, and 0 for +-0 and NaN.
      dir[i] = static_cast<float>(gs[i] > 0.0f) - static_cast<float>(gs[i] < 0.0f);
    }
    for (int64_t e = 0; e < num_eps; ++e) {
      const float step = steps[e];
      if constexpr (kQuantize) {
        uint8_t* __restrict o = static_cast<uint8_t*>(out_raw) + e * numel + b0;
        store_quantized(xf, dir, step, o, n);
      } else {
        float* __restrict o = static_cast<float*>(out_raw) + e * numel + b0;
        for (int64_t i = 0; i < n; ++i) o[i] = clip_0_255(xf[i] + step * dir[i]);
      }
    }
  }
}

at::Tensor perturb_cpu(const at::Tensor& x, const at::Tensor& grad, at::ArrayRef<double> eps,
                       at::ArrayRef<double> signs, bool quantize) {
  perturb_check_arguments(x, grad, eps, signs);
  TORCH_CHECK(x.device().is_cpu() && grad.device().is_cpu(), "perturb_cpu: tensors must be on the CPU");

  const int64_t num_eps = static_cast<int64_t>(eps.size());
  at::Tensor out = perturb_empty_output(x, num_eps, quantize);
  const int64_t numel = x.numel();
  if (numel == 0 || num_eps == 0) return out;

  // The reference computes float32(sign * eps) in double then rounds once; so do we.
  std::vector<float> steps(num_eps);
  for (int64_t e = 0; e < num_eps; ++e) steps[e] = static_cast<float>(signs[e] * eps[e]);

  // The reference takes sign(grad.to(float32)): cast first so tiny float64 values that underflow agree.
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = grad.to(at::kFloat).contiguous();
  const float* g = gc.data_ptr<float>();
  void* o = out.data_ptr();
  at::parallel_for(0, numel, kGrainElems, [&](int64_t begin, int64_t end) {
    if (xc.scalar_type() == at::kByte) {
      const uint8_t* xp = xc.data_ptr<uint8_t>();
      quantize ? perturb_range<uint8_t, true>(xp, g, steps, o, numel, begin, end)
               : perturb_range<uint8_t, false>(xp, g, steps, o, numel, begin, end);
    } else {
      const float* xp = xc.data_ptr<float>();
      quantize ? perturb_range<float, true>(xp, g, steps, o, numel, begin, end)
               : perturb_range<float, false>(xp, g, steps, o, numel, begin, end);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CPU, m) { m.impl("perturb", &perturb_cpu); }

}  // namespace recapfast
