// Counter-based randomness for the masks op, shared by the CPU and CUDA kernels.
//
// Every random number is a pure function of (seed, image key, stream, index), so an image's masks do
// not depend on its batch or its position in it, and the Python reference
// (patchgan_fast/_reference.py), the C++ CPU kernel and the CUDA kernel agree bit for bit. Only
// 32-bit unsigned integer arithmetic is used; no floating point enters mask generation.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define PGF_HD __host__ __device__ __forceinline__
#else
#define PGF_HD inline
#endif

namespace patchgan_fast {

// Layout codes shared with patchgan_fast/_reference.py (LAYOUTS).
enum Layout : int64_t { kNone = 0, kPhases = 1, kRandom = 2, kBoxes = 3 };

// Hash streams: kind in the low 4 bits, a sub-index (copy or Feistel round) above.
constexpr uint32_t kStreamBoxCount = 1;
constexpr uint32_t kStreamBox = 2;
constexpr uint32_t kStreamPerm = 3;
constexpr int kFeistelRounds = 4;

PGF_HD uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

PGF_HD uint32_t hash_u32(uint32_t seed, int64_t key, uint32_t stream, uint32_t index) {
  const uint64_t k = static_cast<uint64_t>(key);
  uint32_t h = fmix32(seed ^ 0x9E3779B9u);
  h = fmix32(h ^ static_cast<uint32_t>(k & 0xFFFFFFFFu));
  h = fmix32(h ^ static_cast<uint32_t>(k >> 32));
  h = fmix32(h ^ stream);
  return fmix32(h ^ index);
}

// Uniform integer in [lo, hi] (inclusive).
PGF_HD int64_t uniform_int(uint32_t h, int64_t lo, int64_t hi) {
  return lo + static_cast<int64_t>(h % static_cast<uint32_t>(hi - lo + 1));
}

// Bits of the Feistel domain for a permutation of n items: at least 2, even.
PGF_HD int feistel_bits(int64_t n) {
  int bits = 0;
  while ((int64_t(1) << bits) < n) ++bits;
  if (bits < 2) bits = 2;
  return bits + (bits & 1);
}

// A seeded bijection of [0, n): a balanced Feistel network on `bits` bits with cycle walking.
PGF_HD uint32_t feistel_permute(uint32_t v, int64_t n, int bits, uint32_t seed, int64_t key) {
  const int half = bits / 2;
  const uint32_t mask = (1u << half) - 1u;
  do {
    uint32_t left = v >> half;
    uint32_t right = v & mask;
    for (int r = 0; r < kFeistelRounds; ++r) {
      const uint32_t f = hash_u32(seed, key, kStreamPerm | (uint32_t(r) << 4), right) & mask;
      const uint32_t next = left ^ f;
      left = right;
      right = next;
    }
    v = (left << half) | right;
  } while (static_cast<int64_t>(v) >= n);
  return v;
}

// The copy (0..num_copies-1) that hides patch (gy, gx) of an image, for the scoring layouts.
PGF_HD int64_t patch_copy(int64_t layout, int64_t gy, int64_t gx, int64_t grid_w, int64_t num_patches,
                          int feistel_bits_, int64_t num_copies, uint32_t seed, int64_t key) {
  if (layout == kPhases) {
    int64_t s = 1;
    while (s * s < num_copies) ++s;
    return (gy % s) * s + (gx % s);
  }
  if (layout == kRandom) {
    const uint32_t g = static_cast<uint32_t>(gy * grid_w + gx);
    return static_cast<int64_t>(feistel_permute(g, num_patches, feistel_bits_, seed, key)) % num_copies;
  }
  return 0;
}

// Box j of copy k, for the training layout: writes (y0, x0, h, w); h = w = 0 when the box is unused.
PGF_HD void box_params(int64_t k, int64_t j, int64_t height, int64_t width, int64_t min_boxes,
                       int64_t max_boxes, int64_t min_size, int64_t max_size, uint32_t seed,
                       int64_t key, int64_t* out) {
  const uint32_t sub = static_cast<uint32_t>(k) << 4;
  const int64_t count = uniform_int(hash_u32(seed, key, kStreamBoxCount | sub, 0), min_boxes, max_boxes);
  if (j >= count) {
    out[0] = out[1] = out[2] = out[3] = 0;
    return;
  }
  const uint32_t base = static_cast<uint32_t>(4 * j);
  const int64_t h = uniform_int(hash_u32(seed, key, kStreamBox | sub, base + 0), min_size, max_size);
  const int64_t w = uniform_int(hash_u32(seed, key, kStreamBox | sub, base + 1), min_size, max_size);
  out[0] = uniform_int(hash_u32(seed, key, kStreamBox | sub, base + 2), 0, height - h);
  out[1] = uniform_int(hash_u32(seed, key, kStreamBox | sub, base + 3), 0, width - w);
  out[2] = h;
  out[3] = w;
}

}  // namespace patchgan_fast
