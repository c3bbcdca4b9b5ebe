// recapfast::laplace_conv and its backward on CPU.
//
// The fixed Laplacian is computed here (uint8 -> float conversion fused, rows in parallel, the
// interior of each row vectorized); the trainable 3x3 convolution goes to ATen/oneDNN. See
// ../laplace_conv_common.h for why this is exact at the borders.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../laplace_conv_common.h"

namespace recapfast {
namespace {

// One output row: out = 4*c - up - down - left - right, zero outside the image.
template <typename in_t, typename out_t>
inline void laplacian_row(const in_t* __restrict up, const in_t* __restrict row, const in_t* __restrict down,
                          out_t* __restrict out, int64_t W) {
  if (W == 1) {
    out[0] = out_t(4) * out_t(row[0]) - out_t(up[0]) - out_t(down[0]);
    return;
  }
  out[0] = out_t(4) * out_t(row[0]) - out_t(up[0]) - out_t(down[0]) - out_t(row[1]);
  for (int64_t x = 1; x < W - 1; ++x) {
    out[x] = out_t(4) * out_t(row[x]) - out_t(up[x]) - out_t(down[x]) - out_t(row[x - 1]) - out_t(row[x + 1]);
  }
  out[W - 1] = out_t(4) * out_t(row[W - 1]) - out_t(up[W - 1]) - out_t(down[W - 1]) - out_t(row[W - 2]);
}

template <typename in_t, typename out_t>
void laplacian_kernel(const in_t* src, out_t* dst, int64_t planes, int64_t H, int64_t W) {
  const int64_t rows = planes * H;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(W, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    const std::vector<in_t> zeros(W, in_t(0));  // the zero padding above the first / below the last row
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = r % H;
      const in_t* row = src + r * W;
      const in_t* up = y > 0 ? row - W : zeros.data();
      const in_t* down = y < H - 1 ? row + W : zeros.data();
      laplacian_row<in_t, out_t>(up, row, down, dst + r * W, W);
    }
  });
}

// lap(src) for src [B, C, H, W] of any supported dtype; result contiguous, float32 (float64 for float64).
at::Tensor laplacian_cpu(const at::Tensor& src_any) {
  const at::Tensor src = src_any.contiguous();
  const auto dtype = laplace_compute_dtype(src);
  at::Tensor dst = at::empty(src.sizes(), src.options().dtype(dtype));
  if (src.numel() == 0) return dst;
  const int64_t H = src.size(2), W = src.size(3), planes = src.size(0) * src.size(1);
  switch (src.scalar_type()) {
    case at::kByte:
      laplacian_kernel<uint8_t, float>(src.data_ptr<uint8_t>(), dst.data_ptr<float>(), planes, H, W);
      break;
    case at::kFloat:
      laplacian_kernel<float, float>(src.data_ptr<float>(), dst.data_ptr<float>(), planes, H, W);
      break;
    case at::kDouble:
      laplacian_kernel<double, double>(src.data_ptr<double>(), dst.data_ptr<double>(), planes, H, W);
      break;
    default:
      TORCH_CHECK(false, "laplace_conv: unsupported dtype ", src.scalar_type());
  }
  return dst;
}

at::Tensor laplace_conv_cpu(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  return laplace_conv_forward(x, weight, bias, laplacian_cpu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> laplace_conv_backward_cpu(const at::Tensor& grad_out,
                                                                         const at::Tensor& x,
                                                                         const at::Tensor& weight,
                                                                         std::array<bool, 3> output_mask) {
  return laplace_conv_backward_impl(grad_out, x, weight, output_mask, laplacian_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(recapfast, CPU, m) {
  m.impl("laplace_conv", &laplace_conv_cpu);
  m.impl("laplace_conv_backward", &laplace_conv_backward_cpu);
}

}  // namespace recapfast
