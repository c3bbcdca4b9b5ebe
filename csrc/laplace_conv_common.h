// Device-independent part of laplace_conv: the Laplacian is a device kernel (cpu/ or cuda/), the 3x3
// convolution and its backward go to ATen (oneDNN / cuDNN), which are hard to beat for this shape.
//
// Why this is exact at the borders: the reference zero-pads the Laplacian's input AND the Laplacian's
// output; we materialise lap(x) (with x zero-padded) and hand it to a pad-1 convolution, which zero-pads
// lap(x) -- the same two paddings. Folding both filters into one 5x5 kernel would not be exact at borders.
#pragma once

#include <ATen/ATen.h>
#include <array>

namespace recapfast {

inline at::ScalarType laplace_compute_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void laplace_check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 4, "laplace_conv: x must be [B, C, H, W], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kByte || x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "laplace_conv: x must be uint8, float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3,
              "laplace_conv: weight must be [Cout, C, 3, 3], got ", weight.sizes());
  TORCH_CHECK(weight.size(1) == x.size(1), "laplace_conv: weight has ", weight.size(1),
              " input channels but x has ", x.size(1));
  TORCH_CHECK(weight.device() == x.device(), "laplace_conv: x and weight must be on the same device");
}

// The 3x3 convolution runs channels_last on the CPU: oneDNN's NCHW kernels are several times slower for
// the stem's 3 input channels (measured 5 vs 30 ms for 128 images at 64 px, bench/NOTES.md). Outputs are
// handed back contiguous (NCHW), as the op's schema and fake kernels promise.
inline at::MemoryFormat laplace_conv_layout(const at::Tensor& x) {
  return x.device().is_cpu() ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// LapFn: (const Tensor& src) -> Tensor lap of src, contiguous, in laplace_compute_dtype(src).
template <typename LapFn>
at::Tensor laplace_conv_forward(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, LapFn lap) {
  laplace_check_inputs(x, weight);
  const auto dtype = laplace_compute_dtype(x);
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "laplace_conv: bias must be [Cout]");
    b = bias->to(dtype);
  }
  const auto fmt = laplace_conv_layout(x);
  return at::conv2d(lap(x).contiguous(fmt), weight.to(dtype).contiguous(fmt), b, /*stride=*/{1, 1},
                    /*padding=*/{1, 1})
      .contiguous();
}

template <typename LapFn>
std::tuple<at::Tensor, at::Tensor, at::Tensor> laplace_conv_backward_impl(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, std::array<bool, 3> mask,
    LapFn lap) {
  laplace_check_inputs(x, weight);
  const auto dtype = laplace_compute_dtype(x);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == x.size(0) && grad_out.size(1) == weight.size(0) &&
                  grad_out.size(2) == x.size(2) && grad_out.size(3) == x.size(3),
              "laplace_conv_backward: grad_out has shape ", grad_out.sizes());
  auto opts = x.options().dtype(dtype);
  at::Tensor grad_input = at::empty({0}, opts), grad_weight = at::empty({0}, opts),
             grad_bias = at::empty({0}, opts);
  if (!(mask[0] || mask[1] || mask[2])) return {grad_input, grad_weight, grad_bias};
  if (x.numel() == 0) {
    if (mask[0]) grad_input = at::zeros(x.sizes(), opts);
    if (mask[1]) grad_weight = at::zeros(weight.sizes(), opts);
    if (mask[2]) grad_bias = at::zeros({weight.size(0)}, opts);
    return {grad_input, grad_weight, grad_bias};
  }
  const auto fmt = laplace_conv_layout(x);
  const at::Tensor go = grad_out.to(dtype).contiguous(fmt);
  const at::Tensor w = weight.to(dtype).contiguous(fmt);
  // The convolution input is only read for grad_weight; otherwise its shape suffices.
  const at::Tensor lap_x = mask[1] ? lap(x).contiguous(fmt) : at::empty(x.sizes(), opts.memory_format(fmt));
  auto grads = at::convolution_backward(go, lap_x, w, at::OptionalIntArrayRef(at::IntArrayRef{weight.size(0)}),
                                        /*stride=*/{1, 1}, /*padding=*/{1, 1}, /*dilation=*/{1, 1},
                                        /*transposed=*/false, /*output_padding=*/{0, 0}, /*groups=*/1,
                                        {mask[0], mask[1], mask[2]});
  // The Laplacian is symmetric, so the adjoint of "correlate with zero padding" is the Laplacian itself.
  if (mask[0]) grad_input = lap(std::get<0>(grads));
  if (mask[1]) grad_weight = std::get<1>(grads).contiguous();
  if (mask[2]) grad_bias = std::get<2>(grads);
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace recapfast
