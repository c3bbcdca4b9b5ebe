// recapfast::relu_pool and relu_pool_backward on CPU: ReLU fused with the model's 5x5 / stride 2 /
// pad 2 average pooling (count_include_pad=False), in channels_last (NHWC) layout.
//
// Bit-exact with the reference F.avg_pool2d(F.relu(h), 5, 2, 2, count_include_pad=False) and with
// its autograd backward: ATen sums each window in row-major (ih, iw) order starting from zero and
// divides by the number of valid taps; its backward adds grad_out / count into every input of a
// window, windows visited in row-major (oh, ow) order. We gather in the same orders, so every
// float operation matches; only the memory traffic differs (one pass, no ReLU tensor, no zeroed
// gradient buffer). ATen's channels_last kernel vectorizes across channels and falls back to
// scalar code when there are fewer channels than vector lanes (the model's 8-channel stem); here
// the channel loop has a compile-time length for the common widths.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace recapfast {
namespace {

constexpr int64_t kK = 5, kS = 2, kP = 2;  // the model's pooling window, stride and padding

inline int64_t pooled_size(int64_t n) { return (n + 2 * kP - kK) / kS + 1; }

// ReLU as torch computes it (clamp_min(x, 0)): NaN propagates, -0.0 stays.
RECAPFAST_ALWAYS_INLINE float relu(float v) { return v < 0.0f ? 0.0f : v; }

// Output window rows [lo, hi) of input row i (the outputs whose window contains i).
RECAPFAST_ALWAYS_INLINE void covering(int64_t i, int64_t out_size, int64_t& lo, int64_t& hi) {
  lo = i + kP - kK + 1 <= 0 ? 0 : (i + kP - kK + 1 + kS - 1) / kS;
  hi = std::min<int64_t>(out_size, (i + kP) / kS + 1);
}

// Sum of the ReLU of one window row of n taps (n == 5 unrolled), added to acc in tap order.
template <int64_t kC>
RECAPFAST_ALWAYS_INLINE void add_relu_taps(const float* __restrict p, int64_t n, v8f (&acc)[kC / 8]) {
  constexpr int64_t V = kC / 8;
  if (n == kK) {
    for (int64_t j = 0; j < V; ++j)
      acc[j] = ((((acc[j] + relu8(load8(p + 8 * j))) + relu8(load8(p + kC + 8 * j))) + relu8(load8(p + 2 * kC + 8 * j))) +
                relu8(load8(p + 3 * kC + 8 * j))) + relu8(load8(p + 4 * kC + 8 * j));
  } else {
    for (int64_t t = 0; t < n; ++t)
      for (int64_t j = 0; j < V; ++j) acc[j] += relu8(load8(p + t * kC + 8 * j));
  }
}

// Pooled rows [begin, end) of the flattened (n, oy) range. kC: C when it is a multiple of 8 (vector path),
// 0 for any other channel count (scalar path).
template <int64_t kC>
RECAPFAST_ALWAYS_INLINE void pool_rows(const float* __restrict in, float* __restrict out, int64_t C_rt, int64_t H,
                                       int64_t W, int64_t H2, int64_t W2, int64_t begin, int64_t end) {
  const int64_t C = kC > 0 ? kC : C_rt;
  std::vector<float> acc_buf(kC > 0 ? 0 : C);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / H2, oy = r % H2;
    const int64_t ih0 = std::max<int64_t>(oy * kS - kP, 0), ih1 = std::min<int64_t>(oy * kS - kP + kK, H);
    const float* plane = in + n * H * W * C;
    float* orow = out + (n * H2 + oy) * W2 * C;
    for (int64_t ox = 0; ox < W2; ++ox) {
      const int64_t iw0 = std::max<int64_t>(ox * kS - kP, 0), iw1 = std::min<int64_t>(ox * kS - kP + kK, W);
      const float divide = static_cast<float>((ih1 - ih0) * (iw1 - iw0));
      float* __restrict o = orow + ox * C;
      if constexpr (kC > 0) {
        constexpr int64_t V = kC / 8;
        v8f acc[V];
        for (int64_t j = 0; j < V; ++j) acc[j] = splat8(0.0f);
        for (int64_t ih = ih0; ih < ih1; ++ih) add_relu_taps<kC>(plane + (ih * W + iw0) * kC, iw1 - iw0, acc);
        const v8f div = splat8(divide);
        for (int64_t j = 0; j < V; ++j) store8(o + 8 * j, acc[j] / div);
      } else {
        float* __restrict acc = acc_buf.data();
        std::fill(acc, acc + C, 0.0f);
        for (int64_t ih = ih0; ih < ih1; ++ih)
          for (int64_t iw = iw0; iw < iw1; ++iw) {
            const float* __restrict p = plane + (ih * W + iw) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += relu(p[c]);
          }
        for (int64_t c = 0; c < C; ++c) o[c] = acc[c] / divide;
      }
    }
  }
}

// grad_out / count of every window of one plane (the value ATen adds into each input of the window).
RECAPFAST_ALWAYS_INLINE void scaled_plane(const float* __restrict g, float* __restrict d, int64_t C, int64_t H,
                                          int64_t W, int64_t H2, int64_t W2) {
  for (int64_t oh = 0; oh < H2; ++oh) {
    const int64_t ih0 = std::max<int64_t>(oh * kS - kP, 0), ih1 = std::min<int64_t>(oh * kS - kP + kK, H);
    for (int64_t ow = 0; ow < W2; ++ow) {
      const int64_t iw0 = std::max<int64_t>(ow * kS - kP, 0), iw1 = std::min<int64_t>(ow * kS - kP + kK, W);
      const float divide = static_cast<float>((ih1 - ih0) * (iw1 - iw0));
      const float* __restrict gp = g + (oh * W2 + ow) * C;
      float* __restrict dp = d + (oh * W2 + ow) * C;
      for (int64_t c = 0; c < C; ++c) dp[c] = gp[c] / divide;
    }
  }
}

// grad_h rows: gin[m, ih, iw, :] = (relu(h[m % N, ih, iw, :]) > 0) * sum over the covering windows (row-major)
// of grad_out / count.
template <int64_t kC>
RECAPFAST_ALWAYS_INLINE void unpool_rows(const float* __restrict g, const float* __restrict h, float* __restrict gin,
                                         int64_t N, int64_t C_rt, int64_t H, int64_t W, int64_t H2, int64_t W2,
                                         int64_t begin, int64_t end) {
  const int64_t C = kC > 0 ? kC : C_rt;
  std::vector<float> acc_buf(kC > 0 ? 0 : C);
  std::vector<float> scaled(H2 * W2 * C);
  int64_t scaled_m = -1;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t m = r / H, ih = r % H, n = m % N;
    if (m != scaled_m) {
      scaled_plane(g + m * H2 * W2 * C, scaled.data(), C, H, W, H2, W2);
      scaled_m = m;
    }
    int64_t oh0, oh1;
    covering(ih, H2, oh0, oh1);
    const float* hrow = h + (n * H + ih) * W * C;
    float* grow = gin + (m * H + ih) * W * C;
    for (int64_t iw = 0; iw < W; ++iw) {
      int64_t ow0, ow1;
      covering(iw, W2, ow0, ow1);
      const float* __restrict hp = hrow + iw * C;
      float* __restrict o = grow + iw * C;
      if constexpr (kC > 0) {
        constexpr int64_t V = kC / 8;
        v8f acc[V];
        for (int64_t j = 0; j < V; ++j) acc[j] = splat8(0.0f);
        for (int64_t oh = oh0; oh < oh1; ++oh)
          for (int64_t ow = ow0; ow < ow1; ++ow) {
            const float* __restrict dp = scaled.data() + (oh * W2 + ow) * kC;
            for (int64_t j = 0; j < V; ++j) acc[j] += load8(dp + 8 * j);
          }
        // threshold_backward(grad, relu(h), 0): zero where relu(h) <= 0 (a NaN h passes the gradient).
        const v8f zero = splat8(0.0f);
        for (int64_t j = 0; j < V; ++j) store8(o + 8 * j, load8(hp + 8 * j) <= zero ? zero : acc[j]);
      } else {
        float* __restrict acc = acc_buf.data();
        std::fill(acc, acc + C, 0.0f);
        for (int64_t oh = oh0; oh < oh1; ++oh)
          for (int64_t ow = ow0; ow < ow1; ++ow) {
            const float* __restrict dp = scaled.data() + (oh * W2 + ow) * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += dp[c];
          }
        for (int64_t c = 0; c < C; ++c) o[c] = hp[c] <= 0.0f ? 0.0f : acc[c];
      }
    }
  }
}

// The two compiled copies of each kernel (AVX2 and portable), chosen per call.
template <int64_t kC>
RECAPFAST_TARGET_AVX2 void pool_rows_avx2(const float* in, float* out, int64_t C, int64_t H, int64_t W, int64_t H2,
                                          int64_t W2, int64_t begin, int64_t end) {
  pool_rows<kC>(in, out, C, H, W, H2, W2, begin, end);
}

template <int64_t kC>
void pool_rows_portable(const float* in, float* out, int64_t C, int64_t H, int64_t W, int64_t H2, int64_t W2,
                        int64_t begin, int64_t end) {
  pool_rows<kC>(in, out, C, H, W, H2, W2, begin, end);
}

template <int64_t kC>
RECAPFAST_TARGET_AVX2 void unpool_rows_avx2(const float* g, const float* h, float* gin, int64_t N, int64_t C,
                                            int64_t H, int64_t W, int64_t H2, int64_t W2, int64_t begin, int64_t end) {
  unpool_rows<kC>(g, h, gin, N, C, H, W, H2, W2, begin, end);
}

template <int64_t kC>
void unpool_rows_portable(const float* g, const float* h, float* gin, int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t H2, int64_t W2, int64_t begin, int64_t end) {
  unpool_rows<kC>(g, h, gin, N, C, H, W, H2, W2, begin, end);
}

template <typename Fn>
void dispatch_channels(int64_t C, Fn&& fn) {
  switch (C) {
    case 8: fn(std::integral_constant<int64_t, 8>{}); break;
    case 16: fn(std::integral_constant<int64_t, 16>{}); break;
    case 32: fn(std::integral_constant<int64_t, 32>{}); break;
    case 64: fn(std::integral_constant<int64_t, 64>{}); break;
    case 128: fn(std::integral_constant<int64_t, 128>{}); break;
    default: fn(std::integral_constant<int64_t, 0>{}); break;
  }
}

void check_input(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.dim() == 4, "relu_pool: ", what, " must be [N, C, H, W], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "relu_pool: ", what, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), "relu_pool: ", what, " must be a CPU tensor");
  TORCH_CHECK(t.size(2) > 0 && t.size(3) > 0, "relu_pool: ", what, " has an empty image plane ", t.sizes());
}

int64_t grain_rows(int64_t row_elems) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_elems, 1)); }

at::Tensor relu_pool_cpu(const at::Tensor& h_any) {
  check_input(h_any, "h");
  const at::Tensor h = h_any.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = h.size(0), C = h.size(1), H = h.size(2), W = h.size(3);
  const int64_t H2 = pooled_size(H), W2 = pooled_size(W);
  at::Tensor out = at::empty({N, C, H2, W2}, h.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  const float* in = h.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const bool avx2 = cpu_use_avx2();
  dispatch_channels(C, [&](auto kc) {
    constexpr int64_t kC = decltype(kc)::value;
    at::parallel_for(0, N * H2, grain_rows(W * C * kK), [&](int64_t begin, int64_t end) {
      if (avx2) {
        pool_rows_avx2<kC>(in, o, C, H, W, H2, W2, begin, end);
      } else {
        pool_rows_portable<kC>(in, o, C, H, W, H2, W2, begin, end);
      }
    });
  });
  return out;
}

at::Tensor relu_pool_backward_cpu(const at::Tensor& grad_out_any, const at::Tensor& h_any) {
  check_input(h_any, "h");
  check_input(grad_out_any, "grad_out");
  const int64_t N = h_any.size(0), C = h_any.size(1), H = h_any.size(2), W = h_any.size(3);
  const int64_t H2 = pooled_size(H), W2 = pooled_size(W), M = grad_out_any.size(0);
  TORCH_CHECK(grad_out_any.size(1) == C && grad_out_any.size(2) == H2 && grad_out_any.size(3) == W2,
              "relu_pool_backward: grad_out has shape ", grad_out_any.sizes(), " for h of shape ", h_any.sizes());
  TORCH_CHECK(N > 0 ? M % N == 0 : M == 0, "relu_pool_backward: grad_out batch ", M,
              " is not a multiple of h batch ", N);
  const at::Tensor h = h_any.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor g = grad_out_any.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor gin = at::empty({M, C, H, W}, h.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (gin.numel() == 0) return gin;
  const float* gp = g.data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  float* o = gin.data_ptr<float>();
  const bool avx2 = cpu_use_avx2();
  dispatch_channels(C, [&](auto kc) {
    constexpr int64_t kC = decltype(kc)::value;
    at::parallel_for(0, M * H, grain_rows(W * C), [&](int64_t begin, int64_t end) {
      if (avx2) {
        unpool_rows_avx2<kC>(gp, hp, o, N, C, H, W, H2, W2, begin, end);
      } else {
        unpool_rows_portable<kC>(gp, hp, o, N, C, H, W, H2, W2, begin, end);
      }
    });
  });
  return gin;
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CPU, m) {
  m.impl("relu_pool", &relu_pool_cpu);
  m.impl("relu_pool_backward", &relu_pool_backward_cpu);
}

}  // namespace recapfast
