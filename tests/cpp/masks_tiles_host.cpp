// Runs the CUDA masks kernels' per-thread code (csrc/masks_tiles.h) on the CPU, over every thread index of
// every launch, the way csrc/cuda/masks_cuda.cu plans them; tests/test_masks_tiles.py compares the output
// with the CPU kernel. Input and output are raw little-endian files.
//
// masks_tiles_host images B C H W P K LAYOUT SEED ORDER OUT_ORDER VECTOR LIMIT U8 NORM KEYS IN OUT
//   ORDER: nchw | nhwc | strided (NCHW rows padded: not dense); OUT_ORDER: nchw | nhwc;
//   VECTOR: 1 lets the planner use 4-element vectors (fp32 output), 0 forces 1; LIMIT: elements per launch;
//   U8: 1 for uint8 input, 0 for fp32; NORM: "none" or "m0,m1,..:s0,s1,.."; IN: B*C*H*W values in NCHW order.
//   OUT: K*B*C*H*W fp32 in OUT_ORDER; hidden pixels take 0.5; layout boxes: 1-3 boxes of 2-4 pixels.
// masks_tiles_host masks B H W P K LAYOUT SEED MINB MAXB MINS MAXS VECTOR LIMIT KEYS OUT
//   OUT: K*B*H*W bytes (0/1).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../../csrc/masks_tiles.h"

using namespace patchgan_fast;

namespace {

template <typename T>
std::vector<T> read_file(const char* path, size_t n) {
  std::vector<T> v(n);
  FILE* f = std::fopen(path, "rb");
  if (!f || std::fread(v.data(), sizeof(T), n, f) != n) {
    std::fprintf(stderr, "cannot read %zu values from %s\n", n, path);
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

template <typename T>
void write_file(const char* path, const T* data, size_t n) {
  FILE* f = std::fopen(path, "wb");
  if (!f || std::fwrite(data, sizeof(T), n, f) != n) std::exit(3);
  std::fclose(f);
}

// 64-byte aligned storage, as the CUDA allocator gives.
template <typename T>
struct Buffer {
  std::vector<unsigned char> raw;
  T* data;
  explicit Buffer(size_t n) : raw(n * sizeof(T) + 64) {
    auto p = reinterpret_cast<uintptr_t>(raw.data());
    data = reinterpret_cast<T*>((p + 63) / 64 * 64);
  }
};

Hidden make_hidden(int64_t layout, const std::vector<int64_t>& keys, int64_t B, int64_t H, int64_t W, int64_t P,
                   int64_t K, uint32_t seed, int64_t minb, int64_t maxb, int64_t mins, int64_t maxs,
                   std::vector<uint8_t>& assign, std::vector<int64_t>& boxes) {
  Hidden h;
  h.layout = layout;
  h.batch = static_cast<uint32_t>(B);
  if (layout == kPhases || layout == kRandom) {
    const int64_t gh = H / P, gw = W / P, n = gh * gw;
    assign.resize(B * n);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t g = 0; g < n; ++g)
        assign[b * n + g] =
            static_cast<uint8_t>(patch_copy(layout, g / gw, g % gw, gw, n, feistel_bits(n), K, seed, keys[b]));
    h.assign = assign.data();
    h.grid_h = static_cast<uint32_t>(gh);
    h.grid_w = static_cast<uint32_t>(gw);
    h.patch = FastDiv(static_cast<uint32_t>(P));
  }
  if (layout == kBoxes) {
    const int64_t nb = std::max<int64_t>(maxb, 1);
    boxes.assign(K * B * nb * 4, 0);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < maxb; ++j)
          box_params(k, j, H, W, minb, maxb, mins, maxs, seed, keys[b], boxes.data() + ((k * B + b) * nb + j) * 4);
    h.boxes = boxes.data();
    h.max_boxes = static_cast<uint32_t>(maxb);
    h.nb = static_cast<uint32_t>(nb);
  }
  return h;
}

Norm parse_norm(const std::string& s) {
  Norm norm;
  if (s == "none") return norm;
  norm.enabled = true;
  const size_t colon = s.find(':');
  std::vector<float> mean, std;
  for (auto [text, out] : {std::pair<std::string, std::vector<float>*>{s.substr(0, colon), &mean},
                           {s.substr(colon + 1), &std}}) {
    size_t pos = 0;
    while (pos <= text.size()) {
      const size_t comma = text.find(',', pos);
      out->push_back(std::strtof(text.substr(pos, comma - pos).c_str(), nullptr));
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  }
  static std::vector<float> table;  // mean then std, for channels past 4
  table = mean;
  table.insert(table.end(), std.begin(), std.end());
  for (size_t c = 0; c < mean.size() && c < 4; ++c) {
    norm.mean[c] = mean[c];
    norm.std[c] = std[c];
  }
  norm.mean_ptr = table.data();
  norm.std_ptr = table.data() + mean.size();
  return norm;
}

template <typename in_t>
int run_images(char** argv) {
  const int64_t B = std::atoll(argv[2]), C = std::atoll(argv[3]), H = std::atoll(argv[4]), W = std::atoll(argv[5]);
  const int64_t P = std::atoll(argv[6]), K = std::atoll(argv[7]), layout = std::atoll(argv[8]);
  const uint32_t seed = static_cast<uint32_t>(std::atoll(argv[9]));
  const std::string order = argv[10];
  const bool channels_last = std::string(argv[11]) == "nhwc";
  const bool allow_vector = std::atoi(argv[12]) != 0;
  const int64_t limit = std::atoll(argv[13]);
  const Norm norm = parse_norm(argv[15]);
  const auto keys = read_file<int64_t>(argv[16], B);
  const auto nchw = read_file<in_t>(argv[17], B * C * H * W);

  // The input in the requested strides.
  int64_t stride[4];
  if (order == "nhwc") {
    stride[0] = H * W * C, stride[1] = 1, stride[2] = W * C, stride[3] = C;
  } else if (order == "strided") {
    stride[3] = 1, stride[2] = W + 3, stride[1] = H * (W + 3), stride[0] = C * H * (W + 3);
  } else {
    stride[3] = 1, stride[2] = W, stride[1] = H * W, stride[0] = C * H * W;
  }
  Buffer<in_t> src(B * stride[0]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x)
          src.data[b * stride[0] + c * stride[1] + y * stride[2] + x * stride[3]] = nchw[((b * C + c) * H + y) * W + x];

  std::vector<uint8_t> assign;
  std::vector<int64_t> boxes;
  const Hidden hidden = make_hidden(layout, keys, B, H, W, P, K, seed, 1, 3, 2, 4, assign, boxes);  // boxes: 1-3 of 2-4 px
  const int64_t per_image = C * H * W, os_k = B * per_image;
  Buffer<float> dst(K * os_k);

  // The planning of launch_mask_images (masks_cuda.cu), fp32 output.
  constexpr int kVector = 16 / sizeof(float);
  const int64_t row = channels_last ? W * C : W;
  const int64_t size[4] = {B, C, H, W};
  const bool dense = dense_in_order(size, stride, channels_last);
  const bool vector = allow_vector && row % kVector == 0 && os_k % kVector == 0;
  const int vec = vector ? kVector : 1;
  const int64_t step = items_per_launch(per_image, limit);
  for (int64_t b0 = 0; b0 < B; b0 += step) {
    const int64_t n = std::min(step, B - b0);
    MaskImagesTile<in_t, float> tile{src.data + b0 * stride[0], dst.data + b0 * per_image, stride[0], stride[1],
                                     stride[2], stride[3], os_k, static_cast<uint32_t>(b0),
                                     static_cast<uint32_t>(K), static_cast<uint32_t>(C),
                                     static_cast<uint32_t>(H), static_cast<uint32_t>(W),
                                     FastDiv(static_cast<uint32_t>(row / vec)), FastDiv(static_cast<uint32_t>(H)),
                                     FastDiv(static_cast<uint32_t>(C)), dense, 0.5f, norm, hidden};
    const int64_t vectors = n * per_image / vec;
    for (int64_t v = 0; v < vectors; ++v) {
      const uint32_t i = static_cast<uint32_t>(v);
      if (vector && channels_last) mask_images_vector<kVector, true>(tile, i);
      else if (vector) mask_images_vector<kVector, false>(tile, i);
      else if (channels_last) mask_images_vector<1, true>(tile, i);
      else mask_images_vector<1, false>(tile, i);
    }
  }
  write_file(argv[18], dst.data, K * os_k);
  std::printf("vector=%d dense=%d launches=%lld\n", vec, dense ? 1 : 0, static_cast<long long>((B + step - 1) / step));
  return 0;
}

int run_masks(char** argv) {
  const int64_t B = std::atoll(argv[2]), H = std::atoll(argv[3]), W = std::atoll(argv[4]), P = std::atoll(argv[5]);
  const int64_t K = std::atoll(argv[6]), layout = std::atoll(argv[7]);
  const uint32_t seed = static_cast<uint32_t>(std::atoll(argv[8]));
  const int64_t minb = std::atoll(argv[9]), maxb = std::atoll(argv[10]), mins = std::atoll(argv[11]),
                maxs = std::atoll(argv[12]);
  const bool allow_vector = std::atoi(argv[13]) != 0;
  const int64_t limit = std::atoll(argv[14]);
  const auto keys = read_file<int64_t>(argv[15], B);
  std::vector<uint8_t> assign;
  std::vector<int64_t> boxes;
  const Hidden hidden = make_hidden(layout, keys, B, H, W, P, K, seed, minb, maxb, mins, maxs, assign, boxes);
  const int64_t per_mask = H * W;
  Buffer<bool> dst(K * B * per_mask);

  // The planning of build_masks_cuda (masks_cuda.cu).
  constexpr int kVector = 16;
  const int vec = allow_vector && W % kVector == 0 ? kVector : 1;
  const int64_t step = items_per_launch(per_mask, limit);
  for (int64_t kb0 = 0; kb0 < K * B; kb0 += step) {
    const int64_t n = std::min(step, K * B - kb0);
    const BuildMasksTile tile{dst.data + kb0 * per_mask, static_cast<uint32_t>(kb0), static_cast<uint32_t>(B),
                              static_cast<uint32_t>(H), static_cast<uint32_t>(W),
                              FastDiv(static_cast<uint32_t>(W / vec)), FastDiv(static_cast<uint32_t>(H)),
                              FastDiv(static_cast<uint32_t>(B)), hidden};
    const int64_t vectors = n * per_mask / vec;
    for (int64_t v = 0; v < vectors; ++v) {
      if (vec == kVector) build_masks_vector<kVector>(tile, static_cast<uint32_t>(v));
      else build_masks_vector<1>(tile, static_cast<uint32_t>(v));
    }
  }
  std::vector<uint8_t> bytes(dst.data, dst.data + K * B * per_mask);
  write_file(argv[16], bytes.data(), bytes.size());
  std::printf("vector=%d launches=%lld\n", vec, static_cast<long long>((K * B + step - 1) / step));
  return 0;
}

// Checks FastDiv against division on divisors 1..4096 and 2**k +- 1, numerators spread over [0, 2**31).
int run_divide() {
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int k = 12; k <= 31; ++k) {
    divisors.push_back((1u << k) - 1);
    divisors.push_back(1u << k);
    if (k < 31) divisors.push_back((1u << k) + 1);
  }
  uint64_t checked = 0;
  for (uint32_t d : divisors) {
    const FastDiv f(d);
    for (uint64_t n = 0; n < (uint64_t(1) << 31); n += (n >> 6) + 1) {
      for (uint64_t m : {n, n + d - 1, n + d, uint64_t(0x7FFFFFFF)}) {
        if (m >= (uint64_t(1) << 31)) continue;
        const uint32_t x = static_cast<uint32_t>(m);
        if (f.div(x) != x / d) {
          std::printf("FastDiv(%u).div(%u) = %u, expected %u\n", d, x, f.div(x), x / d);
          return 1;
        }
        ++checked;
      }
    }
  }
  std::printf("checked %llu divisions\n", static_cast<unsigned long long>(checked));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "divide") return run_divide();
  if (mode == "masks" && argc == 17) return run_masks(argv);
  if (mode == "images" && argc == 19) return std::atoi(argv[14]) ? run_images<uint8_t>(argv) : run_images<float>(argv);
  std::fprintf(stderr, "usage: see the comment at the top of %s\n", __FILE__);
  return 2;
}
