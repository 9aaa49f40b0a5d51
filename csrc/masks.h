// Declarations shared by the masks op's schema file and its CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace patchgan_fast {

// Validated arguments of one masks call, in the integer form the kernels use.
struct MaskArgs {
  int64_t batch;
  int64_t height;
  int64_t width;
  int64_t layout;
  int64_t patch_size;
  int64_t num_copies;
  uint32_t seed;
  int64_t min_boxes, max_boxes, min_size, max_size;
  int64_t grid_h() const { return patch_size > 0 ? height / patch_size : 0; }  // no grid for 'boxes' (patch_size 0)
  int64_t grid_w() const { return patch_size > 0 ? width / patch_size : 0; }
};

// Checks every argument with TORCH_CHECK (message names what was received and what is expected).
MaskArgs check_mask_args(const at::Tensor& keys, int64_t height, int64_t width, int64_t layout,
                         int64_t patch_size, int64_t num_copies, int64_t seed, int64_t min_boxes,
                         int64_t max_boxes, int64_t min_size, int64_t max_size);

// Checks the arguments of patch_assignment (scoring layouts on a Gh x Gw grid).
MaskArgs check_assignment_args(const at::Tensor& keys, int64_t grid_h, int64_t grid_w, int64_t layout,
                               int64_t num_copies, int64_t seed);

// A checked mask_images call: its arguments, per-channel normalization as floats (empty: none), the
// output [K, B, C, H, W], a view of a [K*B, C, H, W] tensor in the requested memory format, and the patch
// assignment [B, Gh, Gw] the caller computed (undefined: the kernel computes it).
struct MaskImagesCall {
  MaskArgs args;
  std::vector<float> mean, std;
  at::Tensor out;
  at::Tensor assignment;
};

MaskImagesCall prepare_mask_images(const at::Tensor& images, const at::Tensor& keys, int64_t layout,
                                   int64_t patch_size, int64_t num_copies, int64_t seed, int64_t min_boxes,
                                   int64_t max_boxes, int64_t min_size, int64_t max_size, at::ArrayRef<double> mean,
                                   at::ArrayRef<double> std, at::ScalarType dtype, bool channels_last,
                                   const std::optional<at::Tensor>& assignment);

}  // namespace patchgan_fast
