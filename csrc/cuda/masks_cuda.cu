// CUDA kernels of the masks op, bit-identical to the CPU kernels (csrc/cpu/masks_cpu.cpp): the same
// integer hash (masks_hash.h) decides every mask bit, and the normalization is the same IEEE fp32
// sequence (divide by 255, subtract the mean, divide by the std) without fused multiply-adds.
//
// mask_images is a memory-bound expansion: it reads the batch once and writes K copies. Each thread owns
// a vector of V consecutive elements in the output's memory order (NCHW or NHWC): one 16-byte store per copy
// and, when the input is dense in that order, one vector load (csrc/masks_tiles.h holds what a thread does,
// host-callable so a CPU test runs it). Indices are split with 32-bit multiply-high divisions; a batch
// whose elements exceed 2**31 runs as several launches. The per-image parameters (patch assignment or
// boxes) are tiny and stay in L1/L2.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../masks.h"
#include "../masks_hash.h"
#include "../masks_tiles.h"

namespace patchgan_fast {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n, int64_t per_block) {
  return static_cast<unsigned int>(std::min<int64_t>((n + per_block - 1) / per_block, 1 << 30));
}

__global__ void assignment_kernel(const int64_t* __restrict__ keys, uint8_t* __restrict__ out, int64_t batch,
                                  int64_t grid_w, int64_t num_patches, int bits, int64_t layout,
                                  int64_t num_copies, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < batch * num_patches;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = i / num_patches, g = i % num_patches;
    out[i] = static_cast<uint8_t>(
        patch_copy(layout, g / grid_w, g % grid_w, grid_w, num_patches, bits, num_copies, seed, keys[b]));
  }
}

__global__ void boxes_kernel(const int64_t* __restrict__ keys, int64_t* __restrict__ out, int64_t num_copies,
                             int64_t batch, int64_t nb, int64_t height, int64_t width, int64_t min_boxes,
                             int64_t max_boxes, int64_t min_size, int64_t max_size, uint32_t seed) {
  const int64_t n = num_copies * batch * max_boxes;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t j = i % max_boxes, kb = i / max_boxes, b = kb % batch, k = kb / batch;
    box_params(k, j, height, width, min_boxes, max_boxes, min_size, max_size, seed, keys[b],
               out + (kb * nb + j) * 4);
  }
}

at::Tensor make_assignment(const at::Tensor& keys, const MaskArgs& a, cudaStream_t stream) {
  const int64_t n = a.grid_h() * a.grid_w();
  auto assign = at::empty({a.batch, a.grid_h(), a.grid_w()}, keys.options().dtype(at::kByte));
  assignment_kernel<<<blocks_for(a.batch * n, kThreads), kThreads, 0, stream>>>(
      keys.data_ptr<int64_t>(), assign.data_ptr<uint8_t>(), a.batch, a.grid_w(), n, feistel_bits(n), a.layout,
      a.num_copies, a.seed);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return assign;
}

// Builds the per-image parameters on the keys' device and calls body(Hidden, stream).
template <typename F>
void with_hidden(const at::Tensor& keys_in, const MaskArgs& a, F&& body, const at::Tensor& given = at::Tensor()) {
  const auto keys = keys_in.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor assign = given, boxes;
  const int64_t nb = std::max<int64_t>(a.max_boxes, 1);
  if ((a.layout == kPhases || a.layout == kRandom) && !assign.defined()) assign = make_assignment(keys, a, stream);
  if (a.layout == kBoxes) {
    boxes = at::zeros({a.num_copies, a.batch, nb, 4}, keys.options());
    const int64_t n = a.num_copies * a.batch * a.max_boxes;
    if (n > 0) {
      boxes_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
          keys.data_ptr<int64_t>(), boxes.data_ptr<int64_t>(), a.num_copies, a.batch, nb, a.height, a.width,
          a.min_boxes, a.max_boxes, a.min_size, a.max_size, a.seed);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  Hidden hidden;
  hidden.layout = a.layout;
  hidden.assign = assign.defined() ? assign.data_ptr<uint8_t>() : nullptr;
  hidden.boxes = boxes.defined() ? boxes.data_ptr<int64_t>() : nullptr;
  hidden.grid_h = static_cast<uint32_t>(a.grid_h());
  hidden.grid_w = static_cast<uint32_t>(a.grid_w());
  hidden.batch = static_cast<uint32_t>(a.batch);
  hidden.max_boxes = static_cast<uint32_t>(a.max_boxes);
  hidden.nb = static_cast<uint32_t>(nb);
  hidden.patch = FastDiv(static_cast<uint32_t>(std::max<int64_t>(a.patch_size, 1)));
  body(hidden, stream);
}

template <int V, bool kChannelsLast, typename in_t, typename out_t>
__global__ void __launch_bounds__(kThreads) mask_images_kernel(MaskImagesTile<in_t, out_t> tile, int64_t vectors) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < vectors; v += int64_t(blockDim.x) * gridDim.x)
    mask_images_vector<V, kChannelsLast>(tile, static_cast<uint32_t>(v));
}

template <int V>
__global__ void __launch_bounds__(kThreads) build_masks_kernel(BuildMasksTile tile, int64_t vectors) {
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < vectors; v += int64_t(blockDim.x) * gridDim.x)
    build_masks_vector<V>(tile, static_cast<uint32_t>(v));
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

void check_launch_size(int64_t elements, const char* what) {
  TORCH_CHECK(elements <= kMaxLaunchElements, "the CUDA masks op handles ", what, " of up to 2**31 - 1 elements, got ",
              elements);
}

// Launches mask_images over images [b0, b0 + n) at a time, n chosen to keep indices below 2**31.
template <typename in_t, typename out_t>
void launch_mask_images(const at::Tensor& images, at::Tensor& out, const MaskArgs& a, const Hidden& hidden,
                        const Norm& norm, float fill, bool channels_last, cudaStream_t stream) {
  constexpr int kVector = 16 / sizeof(out_t);
  const int64_t channels = images.size(1), per_image = channels * a.height * a.width;
  check_launch_size(per_image, "images");
  const int64_t row = channels_last ? a.width * channels : a.width;
  const int64_t size[4] = {a.batch, channels, a.height, a.width};
  const int64_t stride[4] = {images.stride(0), images.stride(1), images.stride(2), images.stride(3)};
  const bool dense = dense_in_order(size, stride, channels_last);
  const in_t* src = images.const_data_ptr<in_t>();
  out_t* dst = out.data_ptr<out_t>();
  const int64_t os_k = out.stride(0);
  const bool vector = row % kVector == 0 && os_k % kVector == 0 && aligned(dst, 16) &&
                      (!dense || aligned(src, sizeof(Pack<in_t, kVector>)));
  const int vec = vector ? kVector : 1;
  const int64_t step = items_per_launch(per_image);
  for (int64_t b0 = 0; b0 < a.batch; b0 += step) {
    const int64_t n = std::min(step, a.batch - b0);
    MaskImagesTile<in_t, out_t> tile{src + b0 * stride[0], dst + b0 * per_image, stride[0], stride[1], stride[2],
                                     stride[3], os_k, static_cast<uint32_t>(b0), static_cast<uint32_t>(a.num_copies),
                                     static_cast<uint32_t>(channels), static_cast<uint32_t>(a.height),
                                     static_cast<uint32_t>(a.width), FastDiv(static_cast<uint32_t>(row / vec)),
                                     FastDiv(static_cast<uint32_t>(a.height)), FastDiv(static_cast<uint32_t>(channels)),
                                     dense, fill, norm, hidden};
    const int64_t vectors = n * per_image / vec;
    const auto blocks = blocks_for(vectors, kThreads);
    if (vector && channels_last) {
      mask_images_kernel<kVector, true><<<blocks, kThreads, 0, stream>>>(tile, vectors);
    } else if (vector) {
      mask_images_kernel<kVector, false><<<blocks, kThreads, 0, stream>>>(tile, vectors);
    } else if (channels_last) {
      mask_images_kernel<1, true><<<blocks, kThreads, 0, stream>>>(tile, vectors);
    } else {
      mask_images_kernel<1, false><<<blocks, kThreads, 0, stream>>>(tile, vectors);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor patch_assignment_cuda(const at::Tensor& keys, int64_t grid_h, int64_t grid_w, int64_t layout,
                                 int64_t num_copies, int64_t seed) {
  const MaskArgs a = check_assignment_args(keys, grid_h, grid_w, layout, num_copies, seed);
  const c10::cuda::CUDAGuard guard(keys.device());
  return make_assignment(keys.contiguous(), a, c10::cuda::getCurrentCUDAStream());
}

at::Tensor build_masks_cuda(const at::Tensor& keys, int64_t height, int64_t width, int64_t layout, int64_t patch_size,
                            int64_t num_copies, int64_t seed, int64_t min_boxes, int64_t max_boxes, int64_t min_size,
                            int64_t max_size) {
  const MaskArgs a = check_mask_args(keys, height, width, layout, patch_size, num_copies, seed, min_boxes, max_boxes,
                                     min_size, max_size);
  const c10::cuda::CUDAGuard guard(keys.device());
  auto out = at::empty({num_copies, a.batch, height, width}, keys.options().dtype(at::kBool));
  if (out.numel() == 0) return out;  // an empty batch: no launch (a grid of 0 blocks is an error)
  const int64_t per_mask = height * width;
  check_launch_size(per_mask, "masks");
  constexpr int kVector = 16;
  const int vec = width % kVector == 0 ? kVector : 1;  // at::empty is 16-byte aligned; rows keep that when W % 16 == 0
  with_hidden(keys, a, [&](const Hidden& h, cudaStream_t stream) {
    const int64_t step = items_per_launch(per_mask);
    for (int64_t kb0 = 0; kb0 < num_copies * a.batch; kb0 += step) {
      const int64_t n = std::min(step, num_copies * a.batch - kb0);
      const BuildMasksTile tile{out.data_ptr<bool>() + kb0 * per_mask, static_cast<uint32_t>(kb0),
                                static_cast<uint32_t>(a.batch), static_cast<uint32_t>(height),
                                static_cast<uint32_t>(width), FastDiv(static_cast<uint32_t>(width / vec)),
                                FastDiv(static_cast<uint32_t>(height)), FastDiv(static_cast<uint32_t>(a.batch)), h};
      const int64_t vectors = n * per_mask / vec;
      if (vec == kVector) {
        build_masks_kernel<kVector><<<blocks_for(vectors, kThreads), kThreads, 0, stream>>>(tile, vectors);
      } else {
        build_masks_kernel<1><<<blocks_for(vectors, kThreads), kThreads, 0, stream>>>(tile, vectors);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

at::Tensor mask_images_cuda(const at::Tensor& images, const at::Tensor& keys, int64_t layout, int64_t patch_size,
                            int64_t num_copies, int64_t seed, int64_t min_boxes, int64_t max_boxes, int64_t min_size,
                            int64_t max_size, at::ArrayRef<double> mean, at::ArrayRef<double> std, double fill,
                            at::ScalarType dtype, bool channels_last, const std::optional<at::Tensor>& assignment) {
  auto call = prepare_mask_images(images, keys, layout, patch_size, num_copies, seed, min_boxes, max_boxes, min_size,
                                  max_size, mean, std, dtype, channels_last, assignment);
  const MaskArgs& a = call.args;
  const std::vector<float>&mu = call.mean, &sd = call.std;
  auto out = call.out;
  const c10::cuda::CUDAGuard guard(images.device());
  const int64_t channels = images.size(1);
  Norm norm{};
  norm.enabled = !mu.empty();
  at::Tensor norm_table;
  if (norm.enabled) {
    for (size_t c = 0; c < mu.size() && c < 4; ++c) {
      norm.mean[c] = mu[c];
      norm.std[c] = sd[c];
    }
    if (mu.size() > 4) {
      std::vector<float> both(mu);
      both.insert(both.end(), sd.begin(), sd.end());
      norm_table = at::tensor(both, at::kFloat).to(images.device());
      norm.mean_ptr = norm_table.data_ptr<float>();
      norm.std_ptr = norm.mean_ptr + channels;
    }
  }
  if (images.numel() == 0) return out;  // an empty batch: no launch (a grid of 0 blocks is an error)
  with_hidden(keys, a, [&](const Hidden& h, cudaStream_t stream) {
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, images.scalar_type(), "mask_images", [&] {
      using in_t = scalar_t;
      const float f = static_cast<float>(fill);
      switch (dtype) {  // the output dtypes prepare_mask_images accepts
        case at::kFloat: launch_mask_images<in_t, float>(images, out, a, h, norm, f, channels_last, stream); break;
        case at::kHalf: launch_mask_images<in_t, at::Half>(images, out, a, h, norm, f, channels_last, stream); break;
        default: launch_mask_images<in_t, at::BFloat16>(images, out, a, h, norm, f, channels_last, stream); break;
      }
    });
  }, call.assignment);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(patchgan_fast, CUDA, m) {
  m.impl("build_masks", &build_masks_cuda);
  m.impl("patch_assignment", &patch_assignment_cuda);
  m.impl("mask_images", &mask_images_cuda);
}

}  // namespace patchgan_fast
