// CPU kernels of the masks op. Two stages, as on CUDA: per-image parameters (the patch assignment,
// or the boxes), then one pass over the pixels that builds the masks or writes the masked copies.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "../masks.h"
#include "../masks_hash.h"

namespace patchgan_fast {
namespace {

// [B, Gh, Gw] uint8: the copy that hides each patch (scoring layouts).
at::Tensor assignment_cpu(const at::Tensor& keys_in, const MaskArgs& a) {
  const auto keys = keys_in.contiguous();
  const int64_t gh = a.grid_h(), gw = a.grid_w(), n = gh * gw;
  auto out = at::empty({a.batch, gh, gw}, keys.options().dtype(at::kByte));
  const int64_t* key = keys.data_ptr<int64_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int bits = feistel_bits(n);
  at::parallel_for(0, a.batch * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / n, g = i % n;
      dst[i] = static_cast<uint8_t>(
          patch_copy(a.layout, g / gw, g % gw, gw, n, bits, a.num_copies, a.seed, key[b]));
    }
  });
  return out;
}

// [K, B, max_boxes, 4] int64 boxes (y0, x0, h, w) for the training layout.
at::Tensor boxes_cpu(const at::Tensor& keys_in, const MaskArgs& a) {
  const auto keys = keys_in.contiguous();
  const int64_t nb = std::max<int64_t>(a.max_boxes, 1);
  auto out = at::zeros({a.num_copies, a.batch, nb, 4}, keys.options());
  const int64_t* key = keys.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t k = 0; k < a.num_copies; ++k)
    for (int64_t b = 0; b < a.batch; ++b)
      for (int64_t j = 0; j < a.max_boxes; ++j)
        box_params(k, j, a.height, a.width, a.min_boxes, a.max_boxes, a.min_size, a.max_size, a.seed,
                   key[b], dst + ((k * a.batch + b) * nb + j) * 4);
  return out;
}

// The per-image parameters of one call: the patch assignment or the boxes.
struct Hidden {
  const uint8_t* assign;  // scoring layouts: [B, Gh, Gw]
  const int64_t* boxes;   // boxes layout: [K, B, nb, 4]
  int64_t nb;
};

template <typename F>
void with_hidden(const at::Tensor& keys, const MaskArgs& a, F&& body, const at::Tensor& given = at::Tensor()) {
  at::Tensor assign = given, boxes;
  if ((a.layout == kPhases || a.layout == kRandom) && !assign.defined()) assign = assignment_cpu(keys, a);
  if (a.layout == kBoxes) boxes = boxes_cpu(keys, a);
  body(Hidden{assign.defined() ? assign.data_ptr<uint8_t>() : nullptr,
              boxes.defined() ? boxes.data_ptr<int64_t>() : nullptr, std::max<int64_t>(a.max_boxes, 1)});
}

// Row (b, y) of every copy's mask: hid[k * width + x] = 1 where copy k hides pixel x.
void mask_row(const MaskArgs& a, const Hidden& hidden, int64_t b, int64_t y, uint8_t* hid) {
  const int64_t width = a.width;
  std::fill(hid, hid + a.num_copies * width, uint8_t(0));
  if (a.layout == kNone) return;
  if (a.layout == kBoxes) {
    for (int64_t k = 0; k < a.num_copies; ++k) {
      const int64_t* bx = hidden.boxes + (k * a.batch + b) * hidden.nb * 4;
      for (int64_t j = 0; j < a.max_boxes; ++j, bx += 4)
        if (y >= bx[0] && y < bx[0] + bx[2]) std::fill(hid + k * width + bx[1], hid + k * width + bx[1] + bx[3], uint8_t(1));
    }
    return;
  }
  const uint8_t* owner = hidden.assign + (b * a.grid_h() + y / a.patch_size) * a.grid_w();
  for (int64_t gx = 0; gx < a.grid_w(); ++gx) {
    uint8_t* h = hid + owner[gx] * width + gx * a.patch_size;
    std::fill(h, h + a.patch_size, uint8_t(1));
  }
}

at::Tensor patch_assignment_kernel(const at::Tensor& keys, int64_t grid_h, int64_t grid_w, int64_t layout,
                                   int64_t num_copies, int64_t seed) {
  const MaskArgs a = check_assignment_args(keys, grid_h, grid_w, layout, num_copies, seed);
  return assignment_cpu(keys, a);
}

at::Tensor build_masks_kernel(const at::Tensor& keys, int64_t height, int64_t width, int64_t layout,
                              int64_t patch_size, int64_t num_copies, int64_t seed, int64_t min_boxes,
                              int64_t max_boxes, int64_t min_size, int64_t max_size) {
  const MaskArgs a = check_mask_args(keys, height, width, layout, patch_size, num_copies, seed, min_boxes,
                                     max_boxes, min_size, max_size);
  auto out = at::empty({a.num_copies, a.batch, height, width}, keys.options().dtype(at::kBool));
  bool* dst = out.data_ptr<bool>();
  with_hidden(keys, a, [&](const Hidden& hidden) {
    at::parallel_for(0, a.batch * height, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint8_t> hid(a.num_copies * width);
      for (int64_t by = begin; by < end; ++by) {
        const int64_t b = by / height, y = by % height;
        mask_row(a, hidden, b, y, hid.data());
        for (int64_t k = 0; k < a.num_copies; ++k) {
          bool* o = dst + ((k * a.batch + b) * height + y) * width;
          for (int64_t x = 0; x < width; ++x) o[x] = hid[k * width + x] != 0;
        }
      }
    });
  });
  return out;
}

at::Tensor mask_images_kernel(const at::Tensor& images, const at::Tensor& keys, int64_t layout,
                              int64_t patch_size, int64_t num_copies, int64_t seed, int64_t min_boxes,
                              int64_t max_boxes, int64_t min_size, int64_t max_size, at::ArrayRef<double> mean,
                              at::ArrayRef<double> std, double fill, at::ScalarType dtype, bool channels_last,
                              const std::optional<at::Tensor>& assignment) {
  auto call = prepare_mask_images(images, keys, layout, patch_size, num_copies, seed, min_boxes, max_boxes, min_size,
                                  max_size, mean, std, dtype, channels_last, assignment);
  const MaskArgs& a = call.args;
  const std::vector<float>&mu = call.mean, &sd = call.std;
  auto out = call.out;
  const int64_t channels = images.size(1), height = a.height, width = a.width;
  const float fill_f = static_cast<float>(fill);
  const auto is = images.strides();
  const auto os = out.strides();
  with_hidden(keys, a, [&](const Hidden& hidden) {
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, images.scalar_type(), "mask_images_in", [&] {
      using in_t = scalar_t;
      const in_t* src = images.const_data_ptr<in_t>();
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mask_images_out", [&] {
        using out_t = scalar_t;
        out_t* dst = out.data_ptr<out_t>();
        // uint8 input: a 256-entry table per channel holds exactly the values the divisions give.
        std::vector<float> lut;
        if (std::is_same<in_t, uint8_t>::value) {
          lut.resize(channels * 256);
          for (int64_t c = 0; c < channels; ++c)
            for (int v = 0; v < 256; ++v) {
              float u = static_cast<float>(v) / 255.0f;
              lut[c * 256 + v] = mu.empty() ? u : (u - mu[c]) / sd[c];
            }
        }
        at::parallel_for(0, a.batch * height, 1, [&](int64_t begin, int64_t end) {
          std::vector<uint8_t> hid(a.num_copies * width);
          std::vector<float> vals(width);
          for (int64_t by = begin; by < end; ++by) {
            const int64_t b = by / height, y = by % height;
            mask_row(a, hidden, b, y, hid.data());
            for (int64_t c = 0; c < channels; ++c) {
              const in_t* row = src + b * is[0] + c * is[1] + y * is[2];
              if (!lut.empty()) {
                const float* t = lut.data() + c * 256;
                for (int64_t x = 0; x < width; ++x) vals[x] = t[static_cast<uint8_t>(row[x * is[3]])];
              } else {
                for (int64_t x = 0; x < width; ++x) vals[x] = static_cast<float>(row[x * is[3]]);
                if (!mu.empty())
                  for (int64_t x = 0; x < width; ++x) vals[x] = (vals[x] - mu[c]) / sd[c];
              }
              for (int64_t k = 0; k < a.num_copies; ++k) {
                out_t* o = dst + k * os[0] + b * os[1] + c * os[2] + y * os[3];
                const uint8_t* h = hid.data() + k * width;
                if (os[4] == 1) {
                  for (int64_t x = 0; x < width; ++x) o[x] = static_cast<out_t>(h[x] ? fill_f : vals[x]);
                } else {
                  for (int64_t x = 0; x < width; ++x) o[x * os[4]] = static_cast<out_t>(h[x] ? fill_f : vals[x]);
                }
              }
            }
          }
        });
      });
    });
  }, call.assignment);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(patchgan_fast, CPU, m) {
  m.impl("build_masks", &build_masks_kernel);
  m.impl("patch_assignment", &patch_assignment_kernel);
  m.impl("mask_images", &mask_images_kernel);
}

}  // namespace patchgan_fast
