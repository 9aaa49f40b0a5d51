// The masks op: schema, argument checks, and the pybind11 module that reports how it was built.
// Kernels register themselves in csrc/cpu/masks_cpu.cpp and csrc/cuda/masks_cuda.cu.
#include "masks.h"

#include <torch/extension.h>
#include <torch/library.h>

#include "masks_hash.h"

namespace patchgan_fast {

MaskArgs check_mask_args(const at::Tensor& keys, int64_t height, int64_t width, int64_t layout,
                         int64_t patch_size, int64_t num_copies, int64_t seed, int64_t min_boxes,
                         int64_t max_boxes, int64_t min_size, int64_t max_size) {
  TORCH_CHECK(keys.dim() == 1, "expected keys of shape [B], got ", keys.dim(), "-D ", keys.sizes());
  TORCH_CHECK(keys.scalar_type() == at::kLong, "expected int64 keys, got ", keys.scalar_type());
  TORCH_CHECK(keys.numel() > 0, "expected a non-empty batch, got 0 keys");
  TORCH_CHECK(height > 0 && width > 0, "expected positive image size, got ", height, "x", width);
  TORCH_CHECK(layout >= kNone && layout <= kBoxes, "expected layout code 0..3 (none, phases, random, boxes), got ",
              layout);
  TORCH_CHECK(seed >= 0 && seed <= 0xFFFFFFFFLL, "expected seed in [0, 2**32), got ", seed);
  TORCH_CHECK(num_copies >= 1 && num_copies <= 255, "expected num_copies in [1, 255], got ", num_copies);
  MaskArgs a{keys.numel(), height, width, layout, patch_size, num_copies, static_cast<uint32_t>(seed),
             min_boxes, max_boxes, min_size, max_size};
  if (layout == kNone) {
    TORCH_CHECK(num_copies == 1, "layout 'none' hides nothing and needs num_copies=1, got ", num_copies);
  } else if (layout == kBoxes) {
    TORCH_CHECK(min_boxes >= 0 && min_boxes <= max_boxes && max_boxes <= 64,
                "expected 0 <= min_boxes <= max_boxes <= 64, got ", min_boxes, ", ", max_boxes);
    TORCH_CHECK(min_size >= 1 && min_size <= max_size && max_size <= std::min(height, width),
                "expected 1 <= min_size <= max_size <= min(H, W) = ", std::min(height, width), ", got ",
                min_size, ", ", max_size);
  } else {
    TORCH_CHECK(patch_size > 0 && height % patch_size == 0 && width % patch_size == 0,
                "expected image size divisible by patch_size ", patch_size, ", got ", height, "x", width);
    const int64_t patches = a.grid_h() * a.grid_w();
    TORCH_CHECK(patches <= (int64_t(1) << 30), "too many patches per image: ", patches);
    TORCH_CHECK(num_copies >= 2 && num_copies <= patches,
                "scoring layouts need 2 <= num_copies <= patches per image (", patches, "), got ", num_copies);
    if (layout == kPhases) {
      int64_t s = 1;
      while (s * s < num_copies) ++s;
      TORCH_CHECK(s * s == num_copies, "layout 'phases' needs a square num_copies (4, 9, 16, ...), got ",
                  num_copies);
    }
  }
  return a;
}

MaskArgs check_assignment_args(const at::Tensor& keys, int64_t grid_h, int64_t grid_w, int64_t layout,
                               int64_t num_copies, int64_t seed) {
  TORCH_CHECK(layout == kPhases || layout == kRandom,
              "patch_assignment needs a scoring layout (1 = phases, 2 = random), got ", layout);
  TORCH_CHECK(grid_h > 0 && grid_w > 0, "expected a positive patch grid, got ", grid_h, "x", grid_w);
  return check_mask_args(keys, grid_h, grid_w, layout, 1, num_copies, seed, 0, 0, 1, 1);
}

MaskImagesCall prepare_mask_images(const at::Tensor& images, const at::Tensor& keys, int64_t layout,
                                   int64_t patch_size, int64_t num_copies, int64_t seed, int64_t min_boxes,
                                   int64_t max_boxes, int64_t min_size, int64_t max_size, at::ArrayRef<double> mean,
                                   at::ArrayRef<double> std, at::ScalarType dtype, bool channels_last,
                                   const std::optional<at::Tensor>& assignment) {
  TORCH_CHECK(images.dim() == 4, "expected images of shape [B, C, H, W], got ", images.dim(), "-D ",
              images.sizes());
  MaskImagesCall call;
  call.args = check_mask_args(keys, images.size(2), images.size(3), layout, patch_size, num_copies, seed,
                              min_boxes, max_boxes, min_size, max_size);
  TORCH_CHECK(images.size(0) == keys.numel(), "expected one key per image: ", images.size(0), " images, ",
              keys.numel(), " keys");
  TORCH_CHECK(images.device() == keys.device(), "images are on ", images.device(), " but keys on ",
              keys.device());
  const auto t = images.scalar_type();
  TORCH_CHECK(t == at::kByte || at::isFloatingType(t), "expected uint8 or floating images, got ", t);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "expected output dtype float32, float16 or bfloat16, got ", dtype);
  const int64_t b = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  TORCH_CHECK(mean.size() == std.size(), "mean and std differ in length: ", mean.size(), " vs ", std.size());
  TORCH_CHECK(mean.empty() || static_cast<int64_t>(mean.size()) == c,
              "expected mean/std with one value per channel (", c, "), got ", mean.size());
  for (size_t i = 0; i < mean.size(); ++i) {
    TORCH_CHECK(std[i] > 0, "expected positive std, got ", std[i], " for channel ", i);
    call.mean.push_back(static_cast<float>(mean[i]));
    call.std.push_back(static_cast<float>(std[i]));
  }
  if (assignment.has_value() && assignment->defined()) {  // computed once by the caller, shared with the score kernel
    const auto& g = *assignment;
    TORCH_CHECK(layout == 1 || layout == 2, "an assignment goes with layout 'phases' or 'random', got layout code ",
                layout);
    TORCH_CHECK(g.scalar_type() == at::kByte && g.dim() == 3 && g.size(0) == b && g.size(1) == call.args.grid_h() &&
                    g.size(2) == call.args.grid_w(),
                "expected the assignment as uint8 [", b, ", ", call.args.grid_h(), ", ", call.args.grid_w(), "], got ",
                g.scalar_type(), " ", g.sizes());
    TORCH_CHECK(g.device() == images.device(), "images are on ", images.device(), " but the assignment on ",
                g.device());
    call.assignment = g.contiguous();
  }
  call.out = at::empty({num_copies * b, c, h, w}, images.options().dtype(dtype),
                       channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous)
                 .view({num_copies, b, c, h, w});
  return call;
}

}  // namespace patchgan_fast

TORCH_LIBRARY(patchgan_fast, m) {
  m.def(
      "build_masks(Tensor keys, int height, int width, int layout, int patch_size, int num_copies, "
      "int seed, int min_boxes, int max_boxes, int min_size, int max_size) -> Tensor");
  m.def("patch_assignment(Tensor keys, int grid_h, int grid_w, int layout, int num_copies, int seed) -> Tensor");
  m.def(
      "mask_images(Tensor images, Tensor keys, int layout, int patch_size, int num_copies, int seed, "
      "int min_boxes, int max_boxes, int min_size, int max_size, float[] mean, float[] std, float fill, "
      "ScalarType dtype, bool channels_last, Tensor? assignment=None) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "patchgan_fast compiled ops (registered as torch.ops.patchgan_fast.*)";
  m.def("build_info", []() {
    pybind11::dict info;
#ifdef PGF_WITH_CUDA
    info["cuda"] = true;
#else
    info["cuda"] = false;
#endif
    info["torch"] = PGF_TORCH_VERSION;
    info["cuda_version"] = PGF_CUDA_VERSION;
#if defined(__clang__)
    info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    info["compiler"] = std::string("GCC ") + __VERSION__;
#else
    info["compiler"] = std::string(__VERSION__);
#endif
    return info;
  });
}
