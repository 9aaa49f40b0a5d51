// What one CUDA thread of the masks op does, written as host-and-device functions so that a CPU test
// (tests/cpp/masks_tiles_host.cpp) runs exactly this code over every thread index and compares the result
// with the CPU kernel. The CUDA kernels (csrc/cuda/masks_cuda.cu) are grid-stride loops around these.
//
// Each thread owns V consecutive elements in the output's memory order (NCHW or NHWC; V * element size is
// 16 bytes, or V = 1 where a row is not a multiple of V or a pointer is unaligned): one vector load of the
// input when it is dense in that order, one vector store per copy. Indices within one launch stay below
// 2**31 (the host splits a batch into launches), so every index is split with 32-bit multiply-high
// divisions (FastDiv); no 64-bit division runs per element. Values follow the same IEEE fp32 sequence as the
// CPU kernel (divide by 255, subtract the mean, divide by the std; no fused multiply-adds).
#pragma once

#include <algorithm>
#include <cstdint>

#include "masks_hash.h"

namespace patchgan_fast {

// n / d for 0 <= n < 2**31 and 1 <= d <= 2**31 by a multiply-high and a shift (Granlund and Montgomery, as
// ATen's IntDivider): no division instruction.
struct FastDiv {
  uint32_t divisor = 1, magic = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t d) : divisor(d) {
    while ((uint64_t(1) << shift) < d) ++shift;
    magic = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  PGF_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(n, magic);
#else
    const uint32_t t = static_cast<uint32_t>((uint64_t(n) * magic) >> 32);
#endif
    return (t + n) >> shift;
  }
};

PGF_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

PGF_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

template <typename in_t>
PGF_HD float to_unit(in_t v) {
  return static_cast<float>(v);
}
template <>
PGF_HD float to_unit<uint8_t>(uint8_t v) {
  return div_rn(static_cast<float>(v), 255.0f);
}

// V elements loaded or stored as one access of V * sizeof(T) bytes.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

// Per-channel normalization (x - mean[c]) / std[c]; channels past 4 read a device table.
struct Norm {
  float mean[4] = {0, 0, 0, 0};
  float std[4] = {1, 1, 1, 1};
  const float* mean_ptr = nullptr;
  const float* std_ptr = nullptr;
  bool enabled = false;
  PGF_HD float operator()(float v, uint32_t c) const {
    if (!enabled) return v;
    const float m = c < 4 ? mean[c] : mean_ptr[c];
    const float s = c < 4 ? std[c] : std_ptr[c];
    return div_rn(sub_rn(v, m), s);
  }
};

// What hides a pixel: the patch assignment [B, Gh, Gw] (scoring layouts) or the boxes [K, B, nb, 4]
// (training layout), both indexed by the call's image index b.
struct Hidden {
  int64_t layout = kNone;
  const uint8_t* assign = nullptr;
  const int64_t* boxes = nullptr;
  uint32_t grid_h = 0, grid_w = 0, batch = 0, max_boxes = 0, nb = 1;
  FastDiv patch;

  PGF_HD bool in_box(uint32_t k, uint32_t b, uint32_t y, uint32_t x) const {
    const int64_t* bx = boxes + (int64_t(k) * batch + b) * nb * 4;
    for (uint32_t j = 0; j < max_boxes; ++j, bx += 4)
      if (y >= bx[0] && y < bx[0] + bx[2] && x >= bx[1] && x < bx[1] + bx[3]) return true;
    return false;
  }

  // owner[u] = the copy that hides pixel (y, xs[u]) of image b (scoring layouts), 255 (no copy) otherwise:
  // one load when the V pixels share a patch, as they do whenever P is a multiple of V.
  template <int V>
  PGF_HD void owners(uint32_t b, uint32_t y, const uint32_t (&xs)[V], uint8_t (&owner)[V]) const {
    if (layout != kPhases && layout != kRandom) {
      for (int u = 0; u < V; ++u) owner[u] = 255;
      return;
    }
    const uint8_t* row = assign + (int64_t(b) * grid_h + patch.div(y)) * grid_w;
    const uint32_t first = patch.div(xs[0]);
    if (first == patch.div(xs[V - 1])) {
      const uint8_t o = row[first];
      for (int u = 0; u < V; ++u) owner[u] = o;
    } else {
      for (int u = 0; u < V; ++u) owner[u] = row[patch.div(xs[u])];
    }
  }

  PGF_HD bool hides(uint32_t k, uint32_t b, uint32_t y, uint32_t x, uint8_t owner) const {
    return layout == kBoxes ? in_box(k, b, y, x) : owner == k;
  }
};

// One launch of mask_images: images [b0, b0 + n) of the call, src and dst pointing at image b0.
template <typename in_t, typename out_t>
struct MaskImagesTile {
  const in_t* src;
  out_t* dst;
  int64_t is0, is1, is2, is3;  // src strides in elements
  int64_t os_k;                // elements between two copies in dst
  uint32_t b0, num_copies, channels, height, width;
  FastDiv row_vectors, height_div, channels_div;  // vectors per row, H, C
  bool dense;                                     // src is contiguous in dst's memory order
  float fill;
  Norm norm;
  Hidden hidden;
};

// Output vector v of one copy (elements v * V .. v * V + V - 1 in the output's memory order), for all K copies.
template <int V, bool kChannelsLast, typename in_t, typename out_t>
PGF_HD void mask_images_vector(const MaskImagesTile<in_t, out_t>& t, uint32_t v) {
  const uint32_t r = t.row_vectors.div(v);  // row: (b, c, y) in NCHW, (b, y) in NHWC
  const uint32_t j0 = (v - r * t.row_vectors.divisor) * V;
  uint32_t b, y, c0 = 0;
  if (kChannelsLast) {
    b = t.height_div.div(r);
    y = r - b * t.height;
  } else {
    const uint32_t plane = t.height_div.div(r);
    y = r - plane * t.height;
    b = t.channels_div.div(plane);
    c0 = plane - b * t.channels;
  }
  uint32_t xs[V], cs[V];
  for (int u = 0; u < V; ++u) {
    if (kChannelsLast) {
      xs[u] = t.channels_div.div(j0 + u);
      cs[u] = j0 + u - xs[u] * t.channels;
    } else {
      xs[u] = j0 + u;
      cs[u] = c0;
    }
  }
  const int64_t i0 = int64_t(v) * V;
  float val[V];
  if (t.dense) {
    const Pack<in_t, V> p = *reinterpret_cast<const Pack<in_t, V>*>(t.src + i0);
    for (int u = 0; u < V; ++u) val[u] = t.norm(to_unit(p.v[u]), cs[u]);
  } else {
    for (int u = 0; u < V; ++u)
      val[u] = t.norm(to_unit(t.src[b * t.is0 + cs[u] * t.is1 + y * t.is2 + xs[u] * t.is3]), cs[u]);
  }
  uint8_t owner[V];
  t.hidden.owners(t.b0 + b, y, xs, owner);
  for (uint32_t k = 0; k < t.num_copies; ++k) {
    Pack<out_t, V> o;
    for (int u = 0; u < V; ++u)
      o.v[u] = static_cast<out_t>(t.hidden.hides(k, t.b0 + b, y, xs[u], owner[u]) ? t.fill : val[u]);
    *reinterpret_cast<Pack<out_t, V>*>(t.dst + k * t.os_k + i0) = o;
  }
}

// One launch of build_masks: masks [kb0, kb0 + n) of the [K * B, H, W] output, dst pointing at mask kb0.
struct BuildMasksTile {
  bool* dst;
  uint32_t kb0, batch, height, width;
  FastDiv row_vectors, height_div, batch_div;  // vectors per row, H, B
  Hidden hidden;
};

template <int V>
PGF_HD void build_masks_vector(const BuildMasksTile& t, uint32_t v) {
  const uint32_t r = t.row_vectors.div(v);
  const uint32_t x0 = (v - r * t.row_vectors.divisor) * V;
  const uint32_t local = t.height_div.div(r);
  const uint32_t y = r - local * t.height;
  const uint32_t kb = t.kb0 + local;
  const uint32_t k = t.batch_div.div(kb);
  const uint32_t b = kb - k * t.batch;
  uint32_t xs[V];
  for (int u = 0; u < V; ++u) xs[u] = x0 + u;
  uint8_t owner[V];
  t.hidden.owners(b, y, xs, owner);
  Pack<bool, V> o;
  for (int u = 0; u < V; ++u) o.v[u] = t.hidden.hides(k, b, y, xs[u], owner[u]);
  *reinterpret_cast<Pack<bool, V>*>(t.dst + int64_t(v) * V) = o;
}

// Launch planning, shared by the CUDA host code and the CPU test.
constexpr int64_t kMaxLaunchElements = (int64_t(1) << 31) - 1;

// Items (images or masks) per launch so that a launch's element indices stay below 2**31; `limit` lowers the
// bound (the CPU test uses it to exercise several launches on small inputs).
inline int64_t items_per_launch(int64_t elements_per_item, int64_t limit = kMaxLaunchElements) {
  return std::max<int64_t>(1, std::min(limit, kMaxLaunchElements) / std::max<int64_t>(elements_per_item, 1));
}

// Whether a [B, C, H, W] tensor with these strides is contiguous in NHWC (channels_last) or NCHW order;
// the stride of a dimension of size 1 does not matter.
inline bool dense_in_order(const int64_t (&size)[4], const int64_t (&stride)[4], bool channels_last) {
  const int order[4] = {0, channels_last ? 2 : 1, channels_last ? 3 : 2, channels_last ? 1 : 3};  // outer..inner
  int64_t expected = 1;
  for (int i = 3; i >= 0; --i) {
    const int d = order[i];
    if (size[d] != 1 && stride[d] != expected) return false;
    expected *= size[d];
  }
  return true;
}

}  // namespace patchgan_fast
