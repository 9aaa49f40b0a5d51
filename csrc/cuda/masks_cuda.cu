// CUDA kernels of the masks op, bit-identical to the CPU kernels (csrc/cpu/masks_cpu.cpp): the same
// integer hash (masks_hash.h) decides every mask bit, and the normalization is the same IEEE fp32
// sequence (divide by 255, subtract the mean, divide by the std) without fused multiply-adds.
//
// mask_images is a memory-bound expansion: it reads the batch once and writes K copies. Threads walk
// the output in its own memory order (NCHW or NHWC), so every store of a warp is coalesced; each
// thread handles kUnroll elements spaced a block apart to keep several loads in flight. The
// per-image parameters (patch assignment or boxes) are tiny and stay in L1/L2.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../masks.h"
#include "../masks_hash.h"

namespace patchgan_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

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

struct Hidden {
  int64_t layout, batch, grid_h, grid_w, patch_size, max_boxes, nb;
  const uint8_t* assign;
  const int64_t* boxes;

  __device__ __forceinline__ bool operator()(int64_t k, int64_t b, int64_t y, int64_t x) const {
    if (layout == kNone) return false;
    if (layout == kBoxes) {
      const int64_t* bx = boxes + (k * batch + b) * nb * 4;
      for (int64_t j = 0; j < max_boxes; ++j, bx += 4)
        if (y >= bx[0] && y < bx[0] + bx[2] && x >= bx[1] && x < bx[1] + bx[3]) return true;
      return false;
    }
    return assign[(b * grid_h + y / patch_size) * grid_w + x / patch_size] == k;
  }
};

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
  body(Hidden{a.layout, a.batch, a.grid_h(), a.grid_w(), a.patch_size, a.max_boxes, nb,
              assign.defined() ? assign.data_ptr<uint8_t>() : nullptr,
              boxes.defined() ? boxes.data_ptr<int64_t>() : nullptr},
       stream);
}

__global__ void build_masks_kernel_cuda(Hidden hidden, bool* __restrict__ out, int64_t num_copies, int64_t batch,
                                        int64_t height, int64_t width) {
  const int64_t n = num_copies * batch * height * width;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t x = i % width, y = (i / width) % height, kb = i / (width * height);
    out[i] = hidden(kb / batch, kb % batch, y, x);
  }
}

template <typename in_t>
__device__ __forceinline__ float to_unit(in_t v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_unit<uint8_t>(uint8_t v) {
  return __fdiv_rn(static_cast<float>(v), 255.0f);
}

struct Norm {
  float mean[4];
  float std[4];
  const float* mean_ptr;  // used when C > 4
  const float* std_ptr;
  bool enabled;
  __device__ __forceinline__ float operator()(float v, int64_t c) const {
    if (!enabled) return v;
    const float m = c < 4 ? mean[c] : mean_ptr[c];
    const float s = c < 4 ? std[c] : std_ptr[c];
    return __fdiv_rn(__fsub_rn(v, m), s);
  }
};

// One thread per output position of copy 0, walked in the output's memory order; writes all K copies.
template <typename in_t, typename out_t, bool kChannelsLast>
__global__ void mask_images_kernel_cuda(Hidden hidden, Norm norm, const in_t* __restrict__ src, out_t* __restrict__ dst,
                                        int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t is0,
                                        int64_t is1, int64_t is2, int64_t is3, int64_t os_k, int64_t num_copies,
                                        float fill) {
  const int64_t n = batch * channels * height * width;
  const int64_t step = int64_t(blockDim.x) * gridDim.x * kUnroll;
  for (int64_t base = blockIdx.x * int64_t(blockDim.x) * kUnroll + threadIdx.x; base < n; base += step) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + int64_t(u) * blockDim.x;
      if (i >= n) break;
      int64_t b, c, y, x;
      if (kChannelsLast) {  // i = ((b * H + y) * W + x) * C + c
        c = i % channels;
        x = (i / channels) % width;
        y = (i / (channels * width)) % height;
        b = i / (channels * width * height);
      } else {  // i = ((b * C + c) * H + y) * W + x
        x = i % width;
        y = (i / width) % height;
        c = (i / (width * height)) % channels;
        b = i / (width * height * channels);
      }
      const float v = norm(to_unit(src[b * is0 + c * is1 + y * is2 + x * is3]), c);
      for (int64_t k = 0; k < num_copies; ++k) dst[k * os_k + i] = static_cast<out_t>(hidden(k, b, y, x) ? fill : v);
    }
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
  with_hidden(keys, a, [&](const Hidden& h, cudaStream_t stream) {
    build_masks_kernel_cuda<<<blocks_for(out.numel(), kThreads), kThreads, 0, stream>>>(
        h, out.data_ptr<bool>(), num_copies, a.batch, height, width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  const int64_t n = images.numel();
  if (n == 0) return out;  // an empty batch: no launch (a grid of 0 blocks is an error)
  const auto is = images.strides();
  const int64_t os_k = out.stride(0);
  with_hidden(keys, a, [&](const Hidden& h, cudaStream_t stream) {
    AT_DISPATCH_FLOATING_TYPES_AND3(at::kByte, at::kHalf, at::kBFloat16, images.scalar_type(), "mask_images_in", [&] {
      using in_t = scalar_t;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "mask_images_out", [&] {
        using out_t = scalar_t;
        const auto blocks = blocks_for(n, int64_t(kThreads) * kUnroll);
        if (channels_last) {
          mask_images_kernel_cuda<in_t, out_t, true><<<blocks, kThreads, 0, stream>>>(
              h, norm, images.const_data_ptr<in_t>(), out.data_ptr<out_t>(), a.batch, channels, a.height, a.width,
              is[0], is[1], is[2], is[3], os_k, num_copies, static_cast<float>(fill));
        } else {
          mask_images_kernel_cuda<in_t, out_t, false><<<blocks, kThreads, 0, stream>>>(
              h, norm, images.const_data_ptr<in_t>(), out.data_ptr<out_t>(), a.batch, channels, a.height, a.width,
              is[0], is[1], is[2], is[3], os_k, num_copies, static_cast<float>(fill));
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
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
