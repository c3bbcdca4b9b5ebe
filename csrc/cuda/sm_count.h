// Streaming multiprocessors per device (sizes the grid-stride launches), queried once per device and
// process, then served from a cache: no driver call on the per-launch path.
#pragma once

#include <cuda_runtime.h>

#include <array>
#include <atomic>

namespace recapfast {
namespace cuda {

// 0 when the query fails (the launchers then use a default grid); a failure is not cached.
inline int cached_sm_count(int device) {
  static std::array<std::atomic<int>, 64> cache{};  // 0: not known yet
  const bool cacheable = device >= 0 && device < static_cast<int>(cache.size());
  if (cacheable) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();  // clear this (non-sticky) error
    return 0;
  }
  if (cacheable) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

}  // namespace cuda
}  // namespace recapfast
