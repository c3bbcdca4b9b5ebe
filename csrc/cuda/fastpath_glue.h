// The device-independent part of the fast-path ops' CUDA glue (relu_pool, relu_pool_backward, stem_pool,
// stem_pool_backward, adv_metrics): argument checks, layouts, output and scratch allocation, and the
// hand-over of raw pointers to the kernels (relu_pool_kernels.cuh, adv_metrics_kernels.cuh).
// fastpath.cu adds the CUDA device guard, stream and SM count; the host shim test extension
// (csrc/host_shim/fastpath_host.cpp) calls the same code on CPU tensors, so the tests cover it too.
//
// stem_pool is the composition its CPU kernel fuses: laplace_conv (the Laplacian kernel, then cuDNN's 3x3
// convolution: laplace_conv_common.h) and the relu_pool kernel; its backward is the relu_pool backward
// kernel, cuDNN's transposed convolution and the Laplacian kernel (the Laplacian is its own adjoint).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>

#include "../laplace_conv_common.h"
#include "adv_metrics_kernels.cuh"
#include "relu_pool_kernels.cuh"

namespace recapfast {
namespace cuda {

inline void fastpath_check_pool_input(const at::Tensor& t, const char* op, const char* what) {
  TORCH_CHECK(t.dim() == 4, op, ": ", what, " must be [N, C, H, W], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", what, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.size(2) > 0 && t.size(3) > 0, op, ": ", what, " has an empty image plane ", t.sizes());
}

inline void fastpath_check_launch(cudaError_t err, const char* who) {
  TORCH_CHECK(err == cudaSuccess, who, ": kernel launch failed: ", cudaGetErrorString(err));
}

// relu_pool(h): [N, C, H2, W2] channels_last.
inline at::Tensor relu_pool_launch(const at::Tensor& h_any, int sm_count, cudaStream_t stream) {
  fastpath_check_pool_input(h_any, "relu_pool", "h");
  const at::Tensor h = h_any.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t N = h.size(0), C = h.size(1), H = h.size(2), W = h.size(3);
  at::Tensor out = at::empty({N, C, pool_out_size(H), pool_out_size(W)},
                             h.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out;
  fastpath_check_launch(launch_relu_pool(h.data_ptr<float>(), out.data_ptr<float>(), N, C, H, W, sm_count, stream),
                        "relu_pool");
  return out;
}

// relu_pool_backward(grad_out [k*N, C, H2, W2], h [N, C, H, W]): [k*N, C, H, W] channels_last.
inline at::Tensor relu_pool_backward_launch(const at::Tensor& grad_out_any, const at::Tensor& h_any, int sm_count,
                                            cudaStream_t stream) {
  fastpath_check_pool_input(h_any, "relu_pool_backward", "h");
  fastpath_check_pool_input(grad_out_any, "relu_pool_backward", "grad_out");
  const int64_t N = h_any.size(0), C = h_any.size(1), H = h_any.size(2), W = h_any.size(3), M = grad_out_any.size(0);
  TORCH_CHECK(grad_out_any.size(1) == C && grad_out_any.size(2) == pool_out_size(H) &&
                  grad_out_any.size(3) == pool_out_size(W),
              "relu_pool_backward: grad_out has shape ", grad_out_any.sizes(), " for h of shape ", h_any.sizes());
  TORCH_CHECK(N > 0 ? M % N == 0 : M == 0, "relu_pool_backward: grad_out batch ", M, " is not a multiple of h batch ",
              N);
  const at::Tensor h = h_any.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor g = grad_out_any.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor gin = at::empty({M, C, H, W}, h.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (gin.numel() == 0) return gin;
  fastpath_check_launch(launch_relu_pool_backward(g.data_ptr<float>(), h.data_ptr<float>(), gin.data_ptr<float>(), M,
                                                  N, C, H, W, sm_count, stream),
                        "relu_pool_backward");
  return gin;
}

// stem_pool(x, weight, bias, keep_pre) -> (pooled, pre or [0]), both channels_last. LapFn: the Laplacian
// launch of this device (laplacian_glue.h's laplacian_launch with its SM count and stream).
template <typename LapFn>
std::tuple<at::Tensor, at::Tensor> stem_pool_launch(const at::Tensor& x, const at::Tensor& weight,
                                                    const at::Tensor& bias, bool keep_pre, LapFn lap, int sm_count,
                                                    cudaStream_t stream) {
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kByte || x.scalar_type() == at::kFloat),
              "stem_pool: x must be uint8 or float32 [N, C, H, W], got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, "stem_pool: x has an empty image plane ", x.sizes());
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat && bias.dim() == 1 &&
                  bias.size(0) == weight.size(0),
              "stem_pool: weight and bias must be float32, bias [Cout]");
  const at::Tensor pre = laplace_conv_forward(x, weight, bias, lap).contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor pooled = relu_pool_launch(pre, sm_count, stream);
  return {pooled, keep_pre ? pre : at::empty({0}, pre.options())};
}

// stem_pool_backward(grad_out [k*N, Cout, H2, W2], pre [N, Cout, H, W], weight) -> [k*N, Cin, H, W] contiguous.
template <typename LapFn>
at::Tensor stem_pool_backward_launch(const at::Tensor& grad_out, const at::Tensor& pre, const at::Tensor& weight,
                                     LapFn lap, int sm_count, cudaStream_t stream) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == pre.size(1) && weight.size(2) == 3 && weight.size(3) == 3 &&
                  weight.scalar_type() == at::kFloat,
              "stem_pool_backward: weight must be float32 [", pre.size(1), ", Cin, 3, 3], got ", weight.sizes());
  const at::Tensor grad_pre = relu_pool_backward_launch(grad_out, pre, sm_count, stream);
  if (grad_pre.numel() == 0 || weight.size(1) == 0)
    return at::zeros({grad_out.size(0), weight.size(1), pre.size(2), pre.size(3)}, pre.options());
  const at::Tensor t = at::conv_transpose2d(grad_pre, weight, std::nullopt, /*stride=*/{1, 1}, /*padding=*/{1, 1});
  return lap(t).contiguous();
}

// The SSIM window as recapfast.metrics.gaussian_window computes it (float64, normalized), then float32.
inline SsimWindow ssim_window() {
  SsimWindow w{};
  double taps[kSsimWin], total = 0.0;
  for (int i = 0; i < kSsimWin; ++i) {
    const double r = static_cast<double>(i) - (kSsimWin - 1) / 2.0;
    taps[i] = std::exp(-(r * r) / (2 * 1.5 * 1.5));
    total += taps[i];
  }
  for (int i = 0; i < kSsimWin; ++i) w.g[i] = static_cast<float>(taps[i] / total);
  w.c1 = static_cast<float>((0.01 * 255.0) * (0.01 * 255.0));
  w.c2 = static_cast<float>((0.03 * 255.0) * (0.03 * 255.0));
  return w;
}

// adv_metrics(x [B, C, H, W], adv [K, B, C, H, W], ssim) -> float64 [K, B, C, 3]. chunk_elems bounds the
// scratch of one chunk of adversarial planes (about 4 floats per pixel; the tests make it small).
inline at::Tensor adv_metrics_launch(const at::Tensor& x_any, const at::Tensor& adv_any, bool ssim, int sm_count,
                                     cudaStream_t stream, int64_t chunk_elems = int64_t(1) << 24) {
  TORCH_CHECK(x_any.dim() == 4, "adv_metrics: x must be [B, C, H, W], got ", x_any.sizes());
  TORCH_CHECK(adv_any.dim() == 5 && adv_any.sizes().slice(1) == x_any.sizes(), "adv_metrics: adv must be [K, ",
              x_any.sizes(), "], got ", adv_any.sizes());
  for (const auto* t : {&x_any, &adv_any})
    TORCH_CHECK(t->scalar_type() == at::kByte || t->scalar_type() == at::kFloat,
                "adv_metrics: uint8 or float32 images expected, got ", t->scalar_type());
  const int64_t K = adv_any.size(0), B = x_any.size(0), C = x_any.size(1), H = x_any.size(2), W = x_any.size(3);
  at::Tensor out = at::empty({K, B, C, 3}, x_any.options().dtype(at::kDouble));
  if (out.numel() == 0) return out;
  const at::Tensor x = x_any.contiguous(), adv = adv_any.contiguous();
  const bool with_ssim = ssim && H >= kSsimWin && W >= kSsimWin;
  const int64_t planes = K * B * C, planes_x = B * C;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(planes, chunk_elems / std::max<int64_t>(H * W, 1)));
  const auto f32 = x.options().dtype(at::kFloat);
  const at::Tensor clean = at::empty({with_ssim ? 4 : 0, planes_x, H, W}, f32);  // ct1, ct2, mu_x, var_x
  const at::Tensor work = at::empty({with_ssim ? 4 : 0, chunk, H, W}, f32);       // t1, t2, t3, map
  const at::Tensor rows = at::empty({chunk, H, 3}, x.options().dtype(at::kDouble));
  AdvMetricsScratch s{};
  if (with_ssim) {
    float* c = clean.data_ptr<float>();
    float* t = work.data_ptr<float>();
    const int64_t cp = planes_x * H * W, tp = chunk * H * W;
    s.ct1 = c;
    s.ct2 = c + cp;
    s.mu_x = c + 2 * cp;
    s.var_x = c + 3 * cp;
    s.t1 = t;
    s.t2 = t + tp;
    s.t3 = t + 2 * tp;
    s.map = t + 3 * tp;
  }
  s.rows = rows.data_ptr<double>();
  s.chunk = chunk;
  const SsimWindow w = ssim_window();
  double* o = out.data_ptr<double>();
  const bool x8 = x.scalar_type() == at::kByte, a8 = adv.scalar_type() == at::kByte;
  cudaError_t err;
  if (a8 && x8) {
    err = launch_adv_metrics<uint8_t, uint8_t>(x.data_ptr<uint8_t>(), adv.data_ptr<uint8_t>(), o, planes, planes_x, H,
                                               W, with_ssim, w, s, sm_count, stream);
  } else if (a8) {
    err = launch_adv_metrics<uint8_t, float>(x.data_ptr<float>(), adv.data_ptr<uint8_t>(), o, planes, planes_x, H, W,
                                             with_ssim, w, s, sm_count, stream);
  } else if (x8) {
    err = launch_adv_metrics<float, uint8_t>(x.data_ptr<uint8_t>(), adv.data_ptr<float>(), o, planes, planes_x, H, W,
                                             with_ssim, w, s, sm_count, stream);
  } else {
    err = launch_adv_metrics<float, float>(x.data_ptr<float>(), adv.data_ptr<float>(), o, planes, planes_x, H, W,
                                           with_ssim, w, s, sm_count, stream);
  }
  fastpath_check_launch(err, "adv_metrics");
  return out;
}

}  // namespace cuda
}  // namespace recapfast
