// Host shim: the part of the CUDA runtime and device language that the framework-free kernels in
// csrc/cuda/*_kernels.cuh use, implemented for a plain C++17 compiler (g++/clang++), so the kernels
// compile UNCHANGED and run on the CPU. Put this directory first on the include path: the kernels'
// #include <cuda_runtime.h> then finds this file.
//
// Execution model: RECAPFAST_LAUNCH (csrc/cuda/launch.cuh) calls launch(), which validates the launch
// configuration like the CUDA runtime (a bad one becomes cudaGetLastError()'s cudaErrorInvalidConfiguration
// and nothing runs) and then runs the kernel for every block and every thread of the grid, one after
// another, with threadIdx/blockIdx/blockDim/gridDim set (thread-local, so two host threads can launch at
// once). That is exactly CUDA's semantics for kernels whose threads do not communicate: the current
// kernels (grid-stride loops, no shared memory, no warp intrinsics).
//
// NOT emulated: __shared__ memory, __syncthreads(), warp shuffles/votes, atomics, cooperative groups.
// A kernel using them stays GPU-only (the declarations below make such a use a compile error saying
// so) until the shim gains a per-thread emulation (e.g. fibers per block).
//
// Compile with -ffp-contract=off: __fadd_rn/__fmul_rn must round each operation like the GPU does.
#ifndef RECAPFAST_HOST_SHIM_CUDA_RUNTIME_H_
#define RECAPFAST_HOST_SHIM_CUDA_RUNTIME_H_

#if defined(__CUDACC__)
#error "csrc/host_shim/cuda_runtime.h is for host compilers; nvcc must use the real CUDA runtime"
#endif

#define RECAPFAST_HOST_SHIM 1

#include <math.h>  // ::rintf, ::fminf, ::fmaxf, as device code calls them

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

// ----------------------------------------------------------------------------- language keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

// ----------------------------------------------------------------------------- vector types
struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// Sizes and alignments as in CUDA's vector_types.h (a vector load needs its natural alignment).
struct alignas(2) uchar2 { unsigned char x, y; };
struct alignas(4) uchar4 { unsigned char x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(16) int4 { int x, y, z, w; };

inline uchar2 make_uchar2(unsigned char x, unsigned char y) { return {x, y}; }
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline double2 make_double2(double x, double y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

// ----------------------------------------------------------------------------- built-in variables
// Thread-local: launches from different host threads do not see each other's indices.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ----------------------------------------------------------------------------- intrinsics
// IEEE single/double operations rounded to nearest even; with -ffp-contract=off none is fused.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }  // one rounding, like the GPU
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }  // NaN -> 0 like CUDA
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// CUDA's global min/max overloads (device code calls them unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// Thread cooperation has no sequential emulation here: using it is a compile error that says so.
template <typename T = void>
inline void __syncthreads() {
  static_assert(!std::is_void<T>::value, "host shim: __syncthreads() is not emulated; this kernel stays GPU-only");
}
#define __shared__ static_assert(false, "host shim: __shared__ memory is not emulated; this kernel stays GPU-only");

// ----------------------------------------------------------------------------- runtime API subset
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace recapfast_host_shim {
inline thread_local cudaError_t last_error = cudaSuccess;
}  // namespace recapfast_host_shim

inline cudaError_t cudaGetLastError() {
  const cudaError_t err = recapfast_host_shim::last_error;
  recapfast_host_shim::last_error = cudaSuccess;
  return err;
}

inline cudaError_t cudaPeekAtLastError() { return recapfast_host_shim::last_error; }

inline const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
  }
  return "unknown error";
}

namespace recapfast_host_shim {

// Launch statistics of this host thread, for tests: how many launches ran and over what grids.
struct LaunchRecord {
  dim3 grid, block;
};
inline thread_local unsigned long long launches = 0;
inline thread_local LaunchRecord last_launch{};

template <typename... Params>
class Launch {
 public:
  Launch(dim3 grid, dim3 block, void (*kernel)(Params...)) : grid_(grid), block_(block), kernel_(kernel) {}

  // Arguments are converted to the kernel's parameter types and copied, as a CUDA launch does.
  template <typename... Args>
  void operator()(Args&&... args) const {
    static_assert(sizeof...(Args) == sizeof...(Params), "host shim: wrong number of kernel arguments");
    const unsigned long long threads = 1ull * block_.x * block_.y * block_.z;
    if (grid_.x == 0 || grid_.y == 0 || grid_.z == 0 || threads == 0 || threads > 1024 || block_.x > 1024 ||
        block_.y > 1024 || block_.z > 64 || grid_.x > 2147483647u || grid_.y > 65535 || grid_.z > 65535) {
      last_error = cudaErrorInvalidConfiguration;  // like the runtime: nothing runs, the error is sticky until read
      return;
    }
    ++launches;
    last_launch = {grid_, block_};
    const dim3 saved_grid = gridDim, saved_block = blockDim;
    const uint3 saved_bidx = blockIdx, saved_tidx = threadIdx;
    gridDim = grid_;
    blockDim = block_;
    for (unsigned int bz = 0; bz < grid_.z; ++bz)
      for (unsigned int by = 0; by < grid_.y; ++by)
        for (unsigned int bx = 0; bx < grid_.x; ++bx) {
          blockIdx = {bx, by, bz};
          for (unsigned int tz = 0; tz < block_.z; ++tz)
            for (unsigned int ty = 0; ty < block_.y; ++ty)
              for (unsigned int tx = 0; tx < block_.x; ++tx) {
                threadIdx = {tx, ty, tz};
                kernel_(static_cast<Params>(args)...);
              }
        }
    gridDim = saved_grid;
    blockDim = saved_block;
    blockIdx = saved_bidx;
    threadIdx = saved_tidx;
  }

 private:
  dim3 grid_, block_;
  void (*kernel_)(Params...);
};

template <typename... Params>
Launch<Params...> launch(dim3 grid, dim3 block, cudaStream_t /*stream: launches run synchronously*/,
                         void (*kernel)(Params...)) {
  return Launch<Params...>(grid, block, kernel);
}

}  // namespace recapfast_host_shim

#endif  // RECAPFAST_HOST_SHIM_CUDA_RUNTIME_H_
