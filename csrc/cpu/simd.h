// 8-float vectors and run-time ISA dispatch for the CPU kernels of the fused model layers.
//
// The extension is compiled with plain -O3 (it must load on any x86-64 its cache may be shared with), so a
// kernel body is written once as an always-inline template over v8f (GCC vector extension: one AVX register,
// or two SSE registers in the portable copy) and instantiated twice: inside a function marked
// RECAPFAST_TARGET_AVX2 and inside a default one; dispatch asks the CPU once (cpu_use_avx2()).
// v8f arithmetic is IEEE per lane, so sums and divisions written with it round exactly like scalar code;
// a multiply followed by an add may be contracted into an FMA in the AVX2 copy (used only where the
// result is compared to the reference with a tolerance).
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define RECAPFAST_X86_DISPATCH 1
#define RECAPFAST_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define RECAPFAST_X86_DISPATCH 0
#define RECAPFAST_TARGET_AVX2
#endif

#define RECAPFAST_ALWAYS_INLINE inline __attribute__((always_inline))

// __builtin_shufflevector (clang; GCC >= 12). Nested #if: a compiler without __has_builtin (GCC < 10) must not
// see "__has_builtin(...)" in an evaluated #if, where it is a syntax error, not 0.
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define RECAPFAST_HAS_SHUFFLEVECTOR 1
#endif
#endif
#ifndef RECAPFAST_HAS_SHUFFLEVECTOR
#define RECAPFAST_HAS_SHUFFLEVECTOR 0
#endif

namespace recapfast {

typedef float v8f __attribute__((vector_size(32)));

RECAPFAST_ALWAYS_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

RECAPFAST_ALWAYS_INLINE void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }

// Broadcasts. Written as "scalar into lane 0, then shuffle lane 0 everywhere" because GCC compiles that
// to one vbroadcastss, while an initializer list {s, s, ...} became chains of vinsertps in the kernels.
RECAPFAST_ALWAYS_INLINE v8f splat8(float s) {
  v8f v = {};
  v[0] = s;
#if RECAPFAST_HAS_SHUFFLEVECTOR
  return __builtin_shufflevector(v, v, 0, 0, 0, 0, 0, 0, 0, 0);
#else
  return v8f{s, s, s, s, s, s, s, s};
#endif
}

RECAPFAST_ALWAYS_INLINE v8f bcast8(const float* p) { return splat8(*p); }

// ReLU as torch computes it (clamp_min(x, 0)): NaN propagates, -0.0 stays.
RECAPFAST_ALWAYS_INLINE v8f relu8(v8f v) {
  const v8f zero = splat8(0.0f);
  return v < zero ? zero : v;
}

// Whether to run the AVX2+FMA copy of a kernel: the CPU has it and RECAPFAST_CPU_ISA is not "portable"
// (the tests run both copies; read at every call, so a test can switch it).
inline bool cpu_use_avx2() {
#if RECAPFAST_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* isa = std::getenv("RECAPFAST_CPU_ISA");
  return has && !(isa && std::strcmp(isa, "portable") == 0);
#else
  return false;
#endif
}

}  // namespace recapfast
