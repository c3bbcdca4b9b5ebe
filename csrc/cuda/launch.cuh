// Kernel launches for the framework-free kernels in *_kernels.cuh.
//
//   RECAPFAST_LAUNCH(grid, block, stream, kernel<T...>)(args...);
//
// Under nvcc this is the usual kernel<<<grid, block, 0, stream>>>(args...). Under a plain C++ compiler
// the host shim (csrc/host_shim/cuda_runtime.h, which the kernels then get as <cuda_runtime.h>) runs
// the kernel over the whole grid sequentially on the CPU, so the kernels and their host launchers are
// tested bit for bit in every CI run (tests/test_kernels_host.py). The kernel comes last so that the
// commas of its template arguments need no parentheses.
#ifndef RECAPFAST_CUDA_LAUNCH_CUH_
#define RECAPFAST_CUDA_LAUNCH_CUH_

#include <cuda_runtime.h>

#if defined(__CUDACC__)
#define RECAPFAST_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<(grid), (block), 0, (stream)>>>
#elif defined(RECAPFAST_HOST_SHIM)
#define RECAPFAST_LAUNCH(grid, block, stream, ...) \
  ::recapfast_host_shim::launch((grid), (block), (stream), &__VA_ARGS__)
#else
#error "csrc/cuda kernels need nvcc or the host shim (csrc/host_shim/cuda_runtime.h)"
#endif

namespace recapfast {
namespace cuda {

// 1 only in the tests' deliberately broken build of the host shim (-DRECAPFAST_PLANT_INDEX_BUG): kernels
// subtract it from a window or loop bound, so tests/test_fastpath_kernels_host.py can show that an
// off-by-one index fails the same checks that pass for the real kernels. 0 (no effect) everywhere else.
#if defined(RECAPFAST_PLANT_INDEX_BUG)
constexpr int kPlantedIndexBug = 1;
#else
constexpr int kPlantedIndexBug = 0;
#endif

}  // namespace cuda
}  // namespace recapfast

#endif  // RECAPFAST_CUDA_LAUNCH_CUH_
