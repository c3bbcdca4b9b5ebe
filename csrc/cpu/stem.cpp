// recapfast::stem_pool and stem_pool_backward on CPU: the LaplacianCNN's first unit in one pass.
//
// Forward, per image: the fixed Laplacian (zero padding) of every input channel into a zero-bordered
// scratch plane, the 3x3 convolution (+ bias: BatchNorm folded in by the caller) computed per pixel for
// all output channels at once, optionally stored as the pre-activation, then ReLU and the 5x5 / 2 / pad 2
// average pooling from a ring of the last five rows, summed in the same row-major window order as
// relu_pool (so pooled == relu_pool(pre) bit for bit). The pre-activation is channels_last.
//
// Backward (input gradient only), per cotangent image m of k*N: grad_out / window count, gathered into
// every input of its windows in row-major window order and masked by pre > 0 (as relu_pool_backward),
// into zero-bordered planes; the convolution's adjoint as row-wise multiply-adds over the planes; the
// Laplacian's adjoint (itself: it is symmetric) written to grad_x [k*N, Cin, H, W] (contiguous).
//
// The convolution sums differ in order from oneDNN's, so outputs match the reference composition
// (laplace_conv, relu_pool) to float rounding, not bit for bit. Compute-bound parts run 8 floats wide
// with FMA on CPUs that have AVX2 (cpu_features.h), else in the portable copy of the same code.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace recapfast {
namespace {

constexpr int64_t kK = 5, kS = 2, kP = 2;  // pooling window, stride, padding

inline int64_t pooled_size(int64_t n) { return (n + 2 * kP - kK) / kS + 1; }
inline float relu(float v) { return v < 0.0f ? 0.0f : v; }

struct Dims {
  int64_t N, Cin, Cout, H, W, H2, W2;
};

// One row of the Laplacian: o[x] = 4 r[x] - up[x] - down[x] - r[x-1] - r[x+1], zero outside the image
// (up/down null at the first/last row). The interior is a branch-free loop the compiler vectorizes.
template <typename in_t>
RECAPFAST_ALWAYS_INLINE void laplacian_row(const in_t* __restrict up, const in_t* __restrict row,
                                           const in_t* __restrict down, float* __restrict o, int64_t W) {
  for (int64_t xx = 0; xx < W; ++xx) o[xx] = 4.0f * static_cast<float>(row[xx]);
  if (up)
    for (int64_t xx = 0; xx < W; ++xx) o[xx] -= static_cast<float>(up[xx]);
  if (down)
    for (int64_t xx = 0; xx < W; ++xx) o[xx] -= static_cast<float>(down[xx]);
  for (int64_t xx = 1; xx < W; ++xx) o[xx] -= static_cast<float>(row[xx - 1]);
  for (int64_t xx = 0; xx + 1 < W; ++xx) o[xx] -= static_cast<float>(row[xx + 1]);
}

// Laplacian of one image's Cin planes into lap[(Cin)(H+2)(W+2)] with a zero border (the zero padding
// the convolution applies to the Laplacian's output). Input planes are zero padded as well.
template <typename in_t>
RECAPFAST_ALWAYS_INLINE void laplacian_planes(const in_t* __restrict x, float* __restrict lap, const Dims& d) {
  const int64_t H = d.H, W = d.W, PW = W + 2;
  for (int64_t c = 0; c < d.Cin; ++c) {
    const in_t* plane = x + c * H * W;
    float* out = lap + c * (H + 2) * PW;
    std::fill(out, out + PW, 0.0f);
    std::fill(out + (H + 1) * PW, out + (H + 2) * PW, 0.0f);
    for (int64_t y = 0; y < H; ++y) {
      const in_t* row = plane + y * W;
      float* o = out + (y + 1) * PW;
      o[0] = 0.0f;
      o[W + 1] = 0.0f;
      laplacian_row<in_t>(y > 0 ? row - W : nullptr, row, y + 1 < H ? row + W : nullptr, o + 1, W);
    }
  }
}

// Conv + bias of P consecutive pixels (xx .. xx+P-1) of row y for all kC (a multiple of 8) channels.
template <int64_t kC, int P>
RECAPFAST_ALWAYS_INLINE void conv_pixels(const float* __restrict lap, const float* __restrict wt,
                                         const float* __restrict bias, int64_t y, int64_t xx, const Dims& d,
                                         v8f (&acc)[P][kC / 8]) {
  constexpr int64_t V = kC / 8;
  const int64_t PW = d.W + 2;
  for (int p = 0; p < P; ++p)
    for (int64_t j = 0; j < V; ++j) acc[p][j] = load8(bias + 8 * j);
  for (int64_t ci = 0; ci < d.Cin; ++ci)
    for (int64_t ky = 0; ky < 3; ++ky) {
      const float* __restrict lrow = lap + (ci * (d.H + 2) + y + ky) * PW + xx;
      for (int64_t kx = 0; kx < 3; ++kx) {
        const float* __restrict w = wt + ((ci * 3 + ky) * 3 + kx) * kC;
        v8f s[P];
        for (int p = 0; p < P; ++p) s[p] = bcast8(lrow + kx + p);
        for (int64_t j = 0; j < V; ++j) {
          const v8f wv = load8(w + 8 * j);
          for (int p = 0; p < P; ++p) acc[p][j] += s[p] * wv;
        }
      }
    }
}

// conv_pixels, then store the pre-activation (if kept) and its ReLU into the ring row.
template <int64_t kC, int P>
RECAPFAST_ALWAYS_INLINE void conv_store(const float* __restrict lap, const float* __restrict wt,
                                        const float* __restrict bias, int64_t y, int64_t xx, const Dims& d,
                                        float* __restrict pre, float* __restrict slot) {
  constexpr int64_t V = kC / 8;
  v8f acc[P][V];
  conv_pixels<kC, P>(lap, wt, bias, y, xx, d, acc);
  for (int p = 0; p < P; ++p)
    for (int64_t j = 0; j < V; ++j) {
      if (pre) store8(pre + ((y * d.W + xx + p) * kC + 8 * j), acc[p][j]);
      store8(slot + (xx + p) * kC + 8 * j, relu8(acc[p][j]));
    }
}

// kC: Cout when it is a multiple of 8 (vector path), 0 for any other count (scalar path). wt is [Cin][3][3][Cout].
template <int64_t kC, typename in_t>
RECAPFAST_ALWAYS_INLINE void stem_forward_image(const in_t* __restrict x, const float* __restrict wt,
                                                const float* __restrict bias, float* __restrict pooled,
                                                float* __restrict pre, float* __restrict lap,
                                                float* __restrict ring, const Dims& d) {
  const int64_t C = kC > 0 ? kC : d.Cout, H = d.H, W = d.W, PW = W + 2;
  laplacian_planes<in_t>(x, lap, d);
  std::vector<float> acc_rt(kC > 0 ? 0 : C);
  int64_t next_oy = 0;
  for (int64_t y = 0; y < H; ++y) {
    float* slot = ring + (y % kK) * W * C;
    if constexpr (kC > 0) {
      int64_t xx = 0;
      for (; xx + 4 <= W; xx += 4) conv_store<kC, 4>(lap, wt, bias, y, xx, d, pre, slot);
      for (; xx < W; ++xx) conv_store<kC, 1>(lap, wt, bias, y, xx, d, pre, slot);
    } else {
      for (int64_t xx = 0; xx < W; ++xx) {
        float* __restrict acc = acc_rt.data();
        for (int64_t c = 0; c < C; ++c) acc[c] = bias[c];
        for (int64_t ci = 0; ci < d.Cin; ++ci)
          for (int64_t ky = 0; ky < 3; ++ky) {
            const float* __restrict lrow = lap + (ci * (H + 2) + y + ky) * PW + xx;
            for (int64_t kx = 0; kx < 3; ++kx) {
              const float sv = lrow[kx];
              const float* __restrict w = wt + ((ci * 3 + ky) * 3 + kx) * C;
              for (int64_t c = 0; c < C; ++c) acc[c] += sv * w[c];
            }
          }
        if (pre) std::memcpy(pre + (y * W + xx) * C, acc, C * sizeof(float));
        float* __restrict r = slot + xx * C;
        for (int64_t c = 0; c < C; ++c) r[c] = relu(acc[c]);
      }
    }
    // Emit every pooled row whose window ends at this row (its rows are all in the ring); the window is
    // summed in row-major order from zero and divided by the number of valid taps, as relu_pool does.
    while (next_oy < d.H2 && std::min<int64_t>(next_oy * kS - kP + kK, H) - 1 == y) {
      const int64_t oy = next_oy++;
      const int64_t ih0 = std::max<int64_t>(oy * kS - kP, 0), ih1 = std::min<int64_t>(oy * kS - kP + kK, H);
      const float* rows[kK];
      for (int64_t ih = ih0; ih < ih1; ++ih) rows[ih - ih0] = ring + (ih % kK) * W * C;
      const int64_t nrows = ih1 - ih0;
      for (int64_t ox = 0; ox < d.W2; ++ox) {
        const int64_t iw0 = std::max<int64_t>(ox * kS - kP, 0), iw1 = std::min<int64_t>(ox * kS - kP + kK, W);
        const float divide = static_cast<float>(nrows * (iw1 - iw0));
        float* __restrict o = pooled + (oy * d.W2 + ox) * C;
        if constexpr (kC > 0) {
          constexpr int64_t V = kC / 8;
          v8f acc[V];
          for (int64_t j = 0; j < V; ++j) acc[j] = splat8(0.0f);
          for (int64_t r = 0; r < nrows; ++r) {
            const float* __restrict base = rows[r] + iw0 * kC;
            if (iw1 - iw0 == kK) {  // full window row: five taps, unrolled
              for (int64_t j = 0; j < V; ++j)
                acc[j] = ((((acc[j] + load8(base + 8 * j)) + load8(base + kC + 8 * j)) + load8(base + 2 * kC + 8 * j)) +
                          load8(base + 3 * kC + 8 * j)) + load8(base + 4 * kC + 8 * j);
            } else {
              for (int64_t iw = 0; iw < iw1 - iw0; ++iw)
                for (int64_t j = 0; j < V; ++j) acc[j] += load8(base + iw * kC + 8 * j);
            }
          }
          const v8f div = splat8(divide);
          for (int64_t j = 0; j < V; ++j) store8(o + 8 * j, acc[j] / div);
        } else {
          float* __restrict acc = acc_rt.data();
          for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
          for (int64_t r = 0; r < nrows; ++r)
            for (int64_t iw = iw0; iw < iw1; ++iw)
              for (int64_t c = 0; c < C; ++c) acc[c] += rows[r][iw * C + c];
          for (int64_t c = 0; c < C; ++c) o[c] = acc[c] / divide;
        }
      }
    }
  }
}

// Input gradient of one cotangent image. g: [H2][W2][C] grad of the pooled output; pre: [H][W][C];
// w: [C][Cin][3][3]; out: [Cin][H][W]. Scratch: scaled [H2*W2*C], gp [C][(H+2)(W+2)], t [Cin][(H+2)(W+2)].
template <int64_t kC>
RECAPFAST_ALWAYS_INLINE void stem_backward_image(const float* __restrict g, const float* __restrict pre,
                                                 const float* __restrict w, float* __restrict out,
                                                 float* __restrict scaled, float* __restrict gp,
                                                 float* __restrict t, const Dims& d) {
  const int64_t C = kC > 0 ? kC : d.Cout, H = d.H, W = d.W, H2 = d.H2, W2 = d.W2, PW = W + 2;
  const int64_t plane = (H + 2) * PW;
  // 1. grad_out / count per window (the value the average pooling's backward distributes).
  for (int64_t oh = 0; oh < H2; ++oh) {
    const int64_t ih0 = std::max<int64_t>(oh * kS - kP, 0), ih1 = std::min<int64_t>(oh * kS - kP + kK, H);
    for (int64_t ow = 0; ow < W2; ++ow) {
      const int64_t iw0 = std::max<int64_t>(ow * kS - kP, 0), iw1 = std::min<int64_t>(ow * kS - kP + kK, W);
      const float divide = static_cast<float>((ih1 - ih0) * (iw1 - iw0));
      const int64_t at = (oh * W2 + ow) * C;
      for (int64_t c = 0; c < C; ++c) scaled[at + c] = g[at + c] / divide;
    }
  }
  // 2. gather into the pre-activation grid in row-major window order, mask (threshold_backward), store as
  //    zero-bordered planes.
  std::fill(gp, gp + C * plane, 0.0f);
  std::vector<float> acc_rt(C);
  for (int64_t ih = 0; ih < H; ++ih) {
    const int64_t oh0 = ih + kP - kK + 1 <= 0 ? 0 : (ih + kP - kK + 1 + kS - 1) / kS;
    const int64_t oh1 = std::min<int64_t>(H2, (ih + kP) / kS + 1);
    for (int64_t iw = 0; iw < W; ++iw) {
      const int64_t ow0 = iw + kP - kK + 1 <= 0 ? 0 : (iw + kP - kK + 1 + kS - 1) / kS;
      const int64_t ow1 = std::min<int64_t>(W2, (iw + kP) / kS + 1);
      const float* __restrict p = pre + (ih * W + iw) * C;
      float* __restrict acc = acc_rt.data();
      if constexpr (kC > 0) {
        constexpr int64_t V = kC / 8;
        v8f a[V];
        for (int64_t j = 0; j < V; ++j) a[j] = splat8(0.0f);
        for (int64_t oh = oh0; oh < oh1; ++oh)
          for (int64_t ow = ow0; ow < ow1; ++ow)
            for (int64_t j = 0; j < V; ++j) a[j] += load8(scaled + (oh * W2 + ow) * kC + 8 * j);
        const v8f zero = splat8(0.0f);
        for (int64_t j = 0; j < V; ++j) store8(acc + 8 * j, load8(p + 8 * j) <= zero ? zero : a[j]);
      } else {
        for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
        for (int64_t oh = oh0; oh < oh1; ++oh)
          for (int64_t ow = ow0; ow < ow1; ++ow)
            for (int64_t c = 0; c < C; ++c) acc[c] += scaled[(oh * W2 + ow) * C + c];
        for (int64_t c = 0; c < C; ++c) acc[c] = p[c] <= 0.0f ? 0.0f : acc[c];
      }
      const int64_t at = (ih + 1) * PW + iw + 1;
      for (int64_t c = 0; c < C; ++c) gp[c * plane + at] = acc[c];
    }
  }
  // 3. adjoint of the 3x3 convolution (pad 1): t[ci][u][v] = sum_{co,ky,kx} w[co][ci][ky][kx] * G[u+1-ky][v+1-kx],
  //    8 pixels of a row at a time, the 9 * Cout products accumulated in a register.
  std::fill(t, t + d.Cin * plane, 0.0f);
  for (int64_t ci = 0; ci < d.Cin; ++ci)
    for (int64_t u = 0; u < H; ++u) {
      float* __restrict trow = t + ci * plane + (u + 1) * PW + 1;
      int64_t v = 0;
      for (; v + 8 <= W; v += 8) {
        v8f acc = splat8(0.0f);
        for (int64_t co = 0; co < C; ++co)
          for (int64_t ky = 0; ky < 3; ++ky) {
            const float* __restrict src = gp + co * plane + (u + 2 - ky) * PW + v + 2;
            const float* __restrict wk = w + ((co * d.Cin + ci) * 3 + ky) * 3;
            acc += bcast8(wk) * load8(src) + bcast8(wk + 1) * load8(src - 1) + bcast8(wk + 2) * load8(src - 2);
          }
        store8(trow + v, acc);
      }
      for (; v < W; ++v) {
        float acc = 0.0f;
        for (int64_t co = 0; co < C; ++co)
          for (int64_t ky = 0; ky < 3; ++ky) {
            const float* __restrict src = gp + co * plane + (u + 2 - ky) * PW + v + 2;
            const float* __restrict wk = w + ((co * d.Cin + ci) * 3 + ky) * 3;
            acc += wk[0] * src[0] + wk[1] * src[-1] + wk[2] * src[-2];
          }
        trow[v] = acc;
      }
    }
  // 4. Laplacian (zero padding) of t.
  for (int64_t ci = 0; ci < d.Cin; ++ci)
    for (int64_t u = 0; u < H; ++u) {
      const float* __restrict row = t + ci * plane + (u + 1) * PW + 1;
      float* __restrict o = out + (ci * H + u) * W;
      for (int64_t v = 0; v < W; ++v) o[v] = 4.0f * row[v] - row[v - PW] - row[v + PW] - row[v - 1] - row[v + 1];
    }
}

// ---- the two compiled copies of each kernel (AVX2+FMA and portable), chosen at run time ----------------

template <int64_t kC, typename in_t>
struct ForwardArgs {
  const in_t* x;
  const float* wt;
  const float* bias;
  float* pooled;
  float* pre;
  Dims d;
};

template <int64_t kC, typename in_t>
void forward_images(const ForwardArgs<kC, in_t>& a, int64_t begin, int64_t end, bool avx2);

template <int64_t kC, typename in_t>
RECAPFAST_ALWAYS_INLINE void forward_images_body(const ForwardArgs<kC, in_t>& a, int64_t begin, int64_t end) {
  const Dims& d = a.d;
  std::vector<float> lap(d.Cin * (d.H + 2) * (d.W + 2)), ring(kK * d.W * d.Cout);
  for (int64_t n = begin; n < end; ++n)
    stem_forward_image<kC, in_t>(a.x + n * d.Cin * d.H * d.W, a.wt, a.bias, a.pooled + n * d.H2 * d.W2 * d.Cout,
                                 a.pre ? a.pre + n * d.H * d.W * d.Cout : nullptr, lap.data(), ring.data(), d);
}

template <int64_t kC, typename in_t>
RECAPFAST_TARGET_AVX2 void forward_images_avx2(const ForwardArgs<kC, in_t>& a, int64_t begin, int64_t end) {
  forward_images_body<kC, in_t>(a, begin, end);
}

template <int64_t kC, typename in_t>
void forward_images_portable(const ForwardArgs<kC, in_t>& a, int64_t begin, int64_t end) {
  forward_images_body<kC, in_t>(a, begin, end);
}

template <int64_t kC, typename in_t>
void forward_images(const ForwardArgs<kC, in_t>& a, int64_t begin, int64_t end, bool avx2) {
  if (avx2) {
    forward_images_avx2<kC, in_t>(a, begin, end);
  } else {
    forward_images_portable<kC, in_t>(a, begin, end);
  }
}

struct BackwardArgs {
  const float* g;
  const float* pre;
  const float* w;
  float* out;
  Dims d;
};

template <int64_t kC>
RECAPFAST_ALWAYS_INLINE void backward_images_body(const BackwardArgs& a, int64_t begin, int64_t end) {
  const Dims& d = a.d;
  const int64_t plane = (d.H + 2) * (d.W + 2);
  std::vector<float> scaled(d.H2 * d.W2 * d.Cout), gp(d.Cout * plane), t(d.Cin * plane);
  for (int64_t m = begin; m < end; ++m)
    stem_backward_image<kC>(a.g + m * d.H2 * d.W2 * d.Cout, a.pre + (m % d.N) * d.H * d.W * d.Cout, a.w,
                            a.out + m * d.Cin * d.H * d.W, scaled.data(), gp.data(), t.data(), d);
}

template <int64_t kC>
RECAPFAST_TARGET_AVX2 void backward_images_avx2(const BackwardArgs& a, int64_t begin, int64_t end) {
  backward_images_body<kC>(a, begin, end);
}

template <int64_t kC>
void backward_images_portable(const BackwardArgs& a, int64_t begin, int64_t end) {
  backward_images_body<kC>(a, begin, end);
}

template <typename Fn>
void dispatch_cout(int64_t C, Fn&& fn) {
  switch (C) {
    case 8: fn(std::integral_constant<int64_t, 8>{}); break;
    case 16: fn(std::integral_constant<int64_t, 16>{}); break;
    case 32: fn(std::integral_constant<int64_t, 32>{}); break;
    default: fn(std::integral_constant<int64_t, 0>{}); break;
  }
}

Dims check_stem(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 4, "stem_pool: x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kByte || x.scalar_type() == at::kFloat,
              "stem_pool: x must be uint8 or float32, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3 && weight.size(1) == x.size(1),
              "stem_pool: weight must be [Cout, ", x.size(1), ", 3, 3], got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat, "stem_pool: weight must be float32");
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "stem_pool: x has an empty image plane ", x.sizes());
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "stem_pool: CPU tensors expected");
  return Dims{x.size(0), x.size(1), weight.size(0), x.size(2), x.size(3), pooled_size(x.size(2)),
              pooled_size(x.size(3))};
}

std::tuple<at::Tensor, at::Tensor> stem_pool_cpu(const at::Tensor& x_any, const at::Tensor& weight,
                                                 const at::Tensor& bias, bool keep_pre) {
  const Dims d = check_stem(x_any, weight);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == d.Cout && bias.scalar_type() == at::kFloat,
              "stem_pool: bias must be float32 [", d.Cout, "]");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const auto opts = x_any.options().dtype(at::kFloat);
  at::Tensor pooled = at::empty({d.N, d.Cout, d.H2, d.W2}, opts.memory_format(cl));
  at::Tensor pre = keep_pre ? at::empty({d.N, d.Cout, d.H, d.W}, opts.memory_format(cl)) : at::empty({0}, opts);
  if (d.N == 0 || d.Cout == 0) return {pooled, pre};
  const at::Tensor x = x_any.contiguous();
  const at::Tensor wt = weight.permute({1, 2, 3, 0}).contiguous();  // [Cin][3][3][Cout]
  const at::Tensor b = bias.contiguous();
  const bool avx2 = cpu_use_avx2();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(d.H * d.W, 1));
  dispatch_cout(d.Cout, [&](auto kc) {
    constexpr int64_t kC = decltype(kc)::value;
    auto run = [&](auto* xp) {
      using in_t = std::remove_const_t<std::remove_pointer_t<decltype(xp)>>;
      const ForwardArgs<kC, in_t> a{xp, wt.data_ptr<float>(), b.data_ptr<float>(), pooled.data_ptr<float>(),
                                    keep_pre ? pre.data_ptr<float>() : nullptr, d};
      at::parallel_for(0, d.N, grain, [&](int64_t begin, int64_t end) { forward_images<kC, in_t>(a, begin, end, avx2); });
    };
    if (x.scalar_type() == at::kByte) {
      run(x.data_ptr<uint8_t>());
    } else {
      run(x.data_ptr<float>());
    }
  });
  return {pooled, pre};
}

at::Tensor stem_pool_backward_cpu(const at::Tensor& grad_out_any, const at::Tensor& pre_any, const at::Tensor& weight) {
  TORCH_CHECK(pre_any.dim() == 4 && pre_any.scalar_type() == at::kFloat, "stem_pool_backward: pre must be float32 4-d");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == pre_any.size(1) && weight.size(2) == 3 && weight.size(3) == 3 &&
                  weight.scalar_type() == at::kFloat,
              "stem_pool_backward: weight must be float32 [", pre_any.size(1), ", Cin, 3, 3], got ", weight.sizes());
  TORCH_CHECK(pre_any.size(2) > 0 && pre_any.size(3) > 0, "stem_pool_backward: empty image plane");
  const Dims d{pre_any.size(0), weight.size(1), weight.size(0), pre_any.size(2), pre_any.size(3),
               pooled_size(pre_any.size(2)), pooled_size(pre_any.size(3))};
  const int64_t M = grad_out_any.size(0);
  TORCH_CHECK(grad_out_any.dim() == 4 && grad_out_any.scalar_type() == at::kFloat && grad_out_any.size(1) == d.Cout &&
                  grad_out_any.size(2) == d.H2 && grad_out_any.size(3) == d.W2,
              "stem_pool_backward: grad_out has shape ", grad_out_any.sizes(), " for pre of shape ", pre_any.sizes());
  TORCH_CHECK(d.N > 0 ? M % d.N == 0 : M == 0, "stem_pool_backward: grad_out batch ", M,
              " is not a multiple of pre batch ", d.N);
  at::Tensor out = at::empty({M, d.Cin, d.H, d.W}, pre_any.options());
  if (M == 0 || d.Cin == 0) return out;
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor g = grad_out_any.contiguous(cl), pre = pre_any.contiguous(cl), w = weight.contiguous();
  const BackwardArgs a{g.data_ptr<float>(), pre.data_ptr<float>(), w.data_ptr<float>(), out.data_ptr<float>(), d};
  const bool avx2 = cpu_use_avx2();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(d.H * d.W, 1));
  dispatch_cout(d.Cout, [&](auto kc) {
    constexpr int64_t kC = decltype(kc)::value;
    at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
      if (avx2) {
        backward_images_avx2<kC>(a, begin, end);
      } else {
        backward_images_portable<kC>(a, begin, end);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CPU, m) {
  m.impl("stem_pool", &stem_pool_cpu);
  m.impl("stem_pool_backward", &stem_pool_backward_cpu);
}

}  // namespace recapfast
