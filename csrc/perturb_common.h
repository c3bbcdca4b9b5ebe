// Device-independent part of recapfast::perturb shared by the CPU op (cpu/perturb.cpp) and the CUDA glue
// (cuda/perturb_glue.h): the argument checks (one set of messages) and the output allocation.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace recapfast {

inline void perturb_check_arguments(const at::Tensor& x, const at::Tensor& grad, at::ArrayRef<double> eps,
                                    at::ArrayRef<double> signs) {
  TORCH_CHECK(eps.size() == signs.size(), "perturb: eps and signs must have the same length, got ", eps.size(),
              " and ", signs.size());
  TORCH_CHECK(x.scalar_type() == at::kByte || x.scalar_type() == at::kFloat,
              "perturb: x must be uint8 or float32, got ", x.scalar_type());
  TORCH_CHECK(grad.is_floating_point(), "perturb: grad must be a floating tensor, got ", grad.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), "perturb: grad shape ", grad.sizes(), " differs from x shape ", x.sizes());
}

// The [E, *x.shape] result, uninitialized: uint8 when quantizing, else float32.
inline at::Tensor perturb_empty_output(const at::Tensor& x, int64_t num_eps, bool quantize) {
  std::vector<int64_t> shape{num_eps};
  shape.insert(shape.end(), x.sizes().begin(), x.sizes().end());
  return at::empty(shape, x.options().dtype(quantize ? at::kByte : at::kFloat));
}

}  // namespace recapfast
