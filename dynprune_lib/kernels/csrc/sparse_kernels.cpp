// Register-blocked sparse kernels for inference on the CPU (dynprune_lib.kernels, built by native.py).
//
// Every sparse layer is one product (Park et al. 2017, direct sparse convolution; SparseProp's
// batch-innermost layout, Nikdan et al. 2023):
//
//     out[o, p] = bias[o] + sum over the non-zeros k of row o:  value[k] * src[offset[k] + p]
//
// for the positions p of a flat grid whose innermost axis is the batch. A stride-1 convolution reads
// its zero-padded input (C, Hp, Wp, B) directly, tap (c, ky, kx) being the offset
// ((c*Hp + ky*dy)*Wp + kx*dx)*B; other strides read an im2col matrix; a linear layer reads x^T.
//
// A tile of up to 8 vectors of outputs stays in registers while all non-zeros of one output channel
// stream past it: each non-zero costs one broadcast, and per vector one load and one FMA (Elsen et
// al. 2020 block the same way on GPUs). Narrow tiles split the non-zeros over several accumulator
// sets so that eight FMAs are always in flight. Tiles of one channel land in an L1 scratch strip;
// its epilogue (2x2 max pool, ReLU) writes the output, possibly straight into the next layer's
// padded input, which is how Chain runs a whole network in one call.
//
// The vectors are GCC/Clang vector extensions: the compiler maps them to the widest registers the
// build targets (-march=native at set-up, or a portable build), so no intrinsics are needed.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;               // floats per vector
constexpr int64_t kTile = 8 * kLanes;        // outputs of one register tile
constexpr int64_t kSlack = kTile;            // floats a tile may read or write past a range's end
constexpr int64_t kTileBytes = 256 * 1024;   // input one work item reads: stays in L2
constexpr int64_t kTileOutputs = 4096;       // scratch of one channel in one work item: stays in L1
constexpr int64_t kTiles = 16;               // work items per layer at least (threads get work)
constexpr int64_t kParallelWork = 1 << 16;   // multiply-adds below which a layer runs on one thread

typedef float vec __attribute__((vector_size(64)));
typedef float uvec __attribute__((vector_size(64), aligned(4), __may_alias__));

inline vec load(const float* p) { return *reinterpret_cast<const uvec*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<uvec*>(p) = v; }
inline vec splat(float x) { return vec{} + x; }
inline float floor_of(bool relu) { return relu ? 0.0f : -std::numeric_limits<float>::infinity(); }
inline float clamp(float m, float floor) { return m < floor ? floor : m; }  // a NaN passes, as through F.relu
inline float max4(float a, float b, float c, float d) {
  const float m = a > b ? a : b, n = c > d ? c : d;
  return m > n ? m : n;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// NV vectors of outputs at dst = bias + sum_k val[k] * src[off[k] + (0 .. NV*kLanes)], the non-zeros
// split round-robin over NS accumulator sets (NV * NS = 8 registers in flight).
template <int NV, int NS>
inline void tile(const float* __restrict src, const int32_t* __restrict off, const float* __restrict val, int64_t k,
                 const int64_t end, const float bias, float* __restrict dst) {
  vec acc[NS][NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    acc[0][j] = splat(bias);
#pragma GCC unroll 8
    for (int s = 1; s < NS; ++s) acc[s][j] = vec{};
  }
  for (; k + NS <= end; k += NS) {
#pragma GCC unroll 8
    for (int s = 0; s < NS; ++s) {
      const vec v = splat(val[k + s]);
      const float* p = src + off[k + s];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[s][j] += v * load(p + j * kLanes);
    }
  }
  for (; k < end; ++k) {
    const vec v = splat(val[k]);
    const float* p = src + off[k];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[0][j] += v * load(p + j * kLanes);
  }
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
#pragma GCC unroll 8
    for (int s = 1; s < NS; ++s) acc[0][j] += acc[s][j];
    store(dst + j * kLanes, acc[0][j]);
  }
}

// Positions [0, n) of one channel: full tiles, then one narrower tile (rounded up to whole vectors).
inline void span(const float* src, const int32_t* off, const float* val, int64_t k0, int64_t k1, float bias, int64_t n,
                 float* dst) {
  int64_t i = 0;
  for (; i + kTile <= n; i += kTile) tile<8, 1>(src + i, off, val, k0, k1, bias, dst + i);
  switch (ceil_div(n - i, kLanes)) {
    case 0: break;
    case 1: tile<1, 8>(src + i, off, val, k0, k1, bias, dst + i); break;
    case 2: tile<2, 4>(src + i, off, val, k0, k1, bias, dst + i); break;
    case 3: tile<3, 2>(src + i, off, val, k0, k1, bias, dst + i); break;
    case 4: tile<4, 2>(src + i, off, val, k0, k1, bias, dst + i); break;
    case 5: tile<5, 1>(src + i, off, val, k0, k1, bias, dst + i); break;
    case 6: tile<6, 1>(src + i, off, val, k0, k1, bias, dst + i); break;
    case 7: tile<7, 1>(src + i, off, val, k0, k1, bias, dst + i); break;
    default: tile<8, 1>(src + i, off, val, k0, k1, bias, dst + i); break;  // 113 to 127 positions
  }
}

// sum_k val[k] * x[cols[k]] over [k, end): gathers of 16 lanes where the CPU has them (AVX-512), else
// eight independent partial sums (no chain of dependent adds); either way the sum is reordered, so it
// differs from a sequential one by rounding only.
inline float dot(const float* __restrict val, const int32_t* __restrict cols, const float* __restrict x, int64_t k,
                 const int64_t end) {
#ifdef __AVX512F__
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  for (; k + 32 <= end; k += 32) {
    const __m512i i0 = _mm512_loadu_si512(cols + k), i1 = _mm512_loadu_si512(cols + k + 16);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + k), _mm512_i32gather_ps(i0, x, 4), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + k + 16), _mm512_i32gather_ps(i1, x, 4), a1);
  }
  if (k + 16 <= end) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + k), _mm512_i32gather_ps(_mm512_loadu_si512(cols + k), x, 4), a0);
    k += 16;
  }
  if (k < end) {
    const __mmask16 m = static_cast<__mmask16>((1u << (end - k)) - 1);
    const __m512i i = _mm512_maskz_loadu_epi32(m, cols + k);
    a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, val + k), _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, i, x, 4), a1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#else
  float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (; k + 8 <= end; k += 8)
    for (int j = 0; j < 8; ++j) part[j] += val[k + j] * x[cols[k + j]];
  for (int j = 0; k < end; ++k, ++j) part[j] += val[k] * x[cols[k]];
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
#endif
}

// A dense layer (every weight kept) shares its taps across output channels: G channels at once reuse
// each loaded input vector G times (the register blocking of a dense direct convolution), NV vectors
// of positions each. val holds the G channels' weights `k_count` apart.
template <int NV, int G>
inline void group_tile(const float* __restrict src, const int32_t* __restrict off, const float* __restrict val,
                       int64_t k_count, const float* bias, float* __restrict dst, int64_t dst_stride) {
  vec acc[G][NV];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[g][j] = splat(bias[g]);
  for (int64_t k = 0; k < k_count; ++k) {
    const float* p = src + off[k];
    vec x[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) x[j] = load(p + j * kLanes);
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const vec v = splat(val[g * k_count + k]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[g][j] += v * x[j];
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) store(dst + g * dst_stride + j * kLanes, acc[g][j]);
}

constexpr int kGroup = 4;  // output channels per group tile (4 x 4 vectors: 16 accumulators)

// Positions [0, n) of kGroup dense channels, into dst, dst + dst_stride, ...
inline void group_span(const float* src, const int32_t* off, const float* val, int64_t k_count, const float* bias,
                       int64_t n, float* dst, int64_t dst_stride) {
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) group_tile<4, kGroup>(src + i, off, val, k_count, bias, dst + i, dst_stride);
  switch (ceil_div(n - i, kLanes)) {
    case 0: break;
    case 1: group_tile<1, kGroup>(src + i, off, val, k_count, bias, dst + i, dst_stride); break;
    case 2: group_tile<2, kGroup>(src + i, off, val, k_count, bias, dst + i, dst_stride); break;
    default: group_tile<3, kGroup>(src + i, off, val, k_count, bias, dst + i, dst_stride); break;
  }
}

// Where a layer writes: element (c, y, x, b) goes to at[c*cs + y*rs + x*batch + b].
struct Dest {
  float* at;
  int64_t cs, rs;
};

// How one layer's product is cut into work items of `strip` grid rows by `oblock` output channels.
struct Grid {
  int64_t rows = 0;      // grid rows computed (even when pooling)
  int64_t rs = 0;        // positions between two grid rows in src
  int64_t width = 0;     // valid positions per grid row (output width x batch)
  int64_t batch = 1;
  bool full_rows = false;  // compute whole strips as one range (padding columns too) when rows are short
  bool dense = false;      // every weight kept: all channels share one list of offsets
  int64_t strip = 1, oblock = 1;
};

// The tiling plan (the loop order of a blocked GEMM): as many grid rows as keep the input a work item
// reads within kTileBytes and its scratch within kTileOutputs, and enough items for every thread.
void plan_tiles(Grid& g, int64_t src_rows, int64_t max_shift, int64_t out_channels, bool pool) {
  const int64_t fit = std::min((kTileBytes / (4 * src_rows) - max_shift) / g.rs, kTileOutputs / g.rs);
  int64_t strip = std::min(g.rows, std::max<int64_t>(pool ? 2 : 1, fit));
  if (pool) strip -= strip % 2;
  const int64_t blocks = std::min(out_channels, ceil_div(kTiles, ceil_div(g.rows, strip)));
  g.strip = strip;
  g.oblock = ceil_div(out_channels, blocks);
}

// The epilogue of grid rows [y0, y1) of one channel, positions [c0, c0 + n) of each (held in s, rows
// rs apart): the 2x2 max pool (grid rows 2y, 2y + 1 and columns 2x, 2x + 1 into y, x), then the ReLU.
inline void epilogue(const float* s, int64_t rs, int64_t y0, int64_t y1, int64_t c0, int64_t n, int64_t batch,
                     bool pool, float floor, float* out, int64_t out_rs) {
  if (pool) {
    for (int64_t y = y0 / 2; y < y1 / 2; ++y) {
      const float* top = s + (2 * y - y0) * rs - c0;
      const float* bottom = top + rs;
      float* line = out + y * out_rs;
      for (int64_t x = c0 / (2 * batch), e = (c0 + n) / (2 * batch); x < e; ++x) {
        for (int64_t i = 2 * x * batch, end = i + batch; i < end; ++i)
          line[i - x * batch] = clamp(max4(top[i], top[i + batch], bottom[i], bottom[i + batch]), floor);
      }
    }
  } else {
    for (int64_t y = y0; y < y1; ++y) {
      const float* from = s + (y - y0) * rs;
      float* line = out + y * out_rs + c0;
      for (int64_t i = 0; i < n; ++i) line[i] = clamp(from[i], floor);
    }
  }
}

void sparse_rows(const float* src, const int32_t* off, const int64_t* indptr, const float* val, const float* bias,
                 int64_t out_channels, const Grid& g, bool pool, bool relu, Dest dst) {
  const int64_t strips = ceil_div(g.rows, g.strip), blocks = ceil_div(out_channels, g.oblock);
  const float floor = floor_of(relu);
  // Long rows are cut into chunks (whole 2x2 pooling windows each): the input a chunk reads stays in L1
  // while every channel of the block runs over it. Short rows are computed whole, strip by strip.
  const int64_t pair = 2 * g.batch;
  const int64_t chunk = !pool ? kTile : pair >= kTile ? pair : (kTile / pair) * pair;
  const int64_t columns = pool ? (g.width / pair) * pair : g.width;
  // a dense layer: every channel has the same offsets, so channels are computed in groups
  const int64_t k_count = out_channels ? indptr[1] : 0;
  const bool dense = g.dense && k_count > 0;
  const int64_t rows_held = g.full_rows ? g.strip * g.rs : g.strip * chunk;  // scratch per channel
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(kGroup * (rows_held + kSlack));
    float* s = scratch.data();
    const int64_t held = rows_held + kSlack;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t y0 = (item / blocks) * g.strip, y1 = std::min(y0 + g.strip, g.rows);
      const int64_t o0 = (item % blocks) * g.oblock, o1 = std::min(o0 + g.oblock, out_channels);
      // (the strip's first grid row, positions [c0, c0 + n) of each row) of channels [o, o + count)
      auto compute = [&](int64_t o, int64_t c0, int64_t n, int64_t rs) {
        const int64_t count = dense && o + kGroup <= o1 ? kGroup : 1;
        const int64_t rows = g.full_rows ? 1 : y1 - y0;
        const int64_t len = g.full_rows ? (y1 - 1 - y0) * g.rs + g.width : n;
        for (int64_t y = 0; y < rows; ++y) {
          const float* from = src + (y0 + y) * g.rs + c0;
          if (count == kGroup) {
            group_span(from, off, val + indptr[o], k_count, bias + o, len, s + y * rs, held);
          } else {
            span(from, off, val, indptr[o], indptr[o + 1], bias[o], len, s + y * rs);
          }
        }
        for (int64_t j = 0; j < count; ++j)
          epilogue(s + j * held, rs, y0, y1, c0, n, g.batch, pool, floor, dst.at + (o + j) * dst.cs, dst.rs);
        return count;
      };
      if (g.full_rows) {
        for (int64_t o = o0; o < o1;) o += compute(o, 0, columns, g.rs);
        continue;
      }
      for (int64_t c0 = 0; c0 < columns; c0 += chunk)
        for (int64_t o = o0; o < o1;) o += compute(o, c0, std::min(chunk, columns - c0), chunk);
    }
  };
  const int64_t items = strips * blocks;
  if (indptr[out_channels] * g.rows * g.width >= kParallelWork && items > 1) {
    at::parallel_for(0, items, 1, work);
  } else {
    work(0, items);
  }
}

// x (B, C, H, W), any strides, into dst (c, y, x, b): a transposing copy through a block that stays in L1.
void to_grid(const at::Tensor& x, Dest dst) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const float* p = x.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, kParallelWork / std::max<int64_t>(1, W * B));
  if (sb == 1 || B == 1) {  // already batch-innermost (a grid viewed as NCHW) or one image: row by row
    at::parallel_for(0, C * H, grain, [&](int64_t begin, int64_t end) {
      for (int64_t cy = begin; cy < end; ++cy) {
        const int64_t c = cy / H, y = cy % H;
        float* line = dst.at + c * dst.cs + y * dst.rs;
        const float* from = p + c * sc + y * sh;
        for (int64_t w = 0; w < W; ++w)
          for (int64_t b = 0; b < B; ++b) line[w * B + b] = from[w * sw + b * sb];
      }
    });
  } else if (sw <= sc) {  // NCHW: one (c, y) row of all images at a time
    at::parallel_for(0, C * H, grain, [&](int64_t begin, int64_t end) {
      std::vector<float> block(W * B);
      for (int64_t cy = begin; cy < end; ++cy) {
        const int64_t c = cy / H, y = cy % H;
        for (int64_t b = 0; b < B; ++b) {
          const float* from = p + b * sb + c * sc + y * sh;
          for (int64_t w = 0; w < W; ++w) block[w * B + b] = from[w * sw];
        }
        std::memcpy(dst.at + c * dst.cs + y * dst.rs, block.data(), sizeof(float) * W * B);
      }
    });
  } else {  // channels_last: one pixel of all images at a time
    at::parallel_for(0, H * W, std::max<int64_t>(1, grain / std::max<int64_t>(1, C)), [&](int64_t begin, int64_t end) {
      std::vector<float> block(C * B);
      for (int64_t yw = begin; yw < end; ++yw) {
        const int64_t y = yw / W, w = yw % W;
        for (int64_t b = 0; b < B; ++b) {
          const float* from = p + b * sb + y * sh + w * sw;
          for (int64_t c = 0; c < C; ++c) block[c * B + b] = from[c * sc];
        }
        for (int64_t c = 0; c < C; ++c)
          std::memcpy(dst.at + c * dst.cs + y * dst.rs + w * B, block.data() + c * B, sizeof(float) * B);
      }
    });
  }
}

void check_input(const at::Tensor& x, int64_t dims, int64_t axis, int64_t size, const char* what) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "the compiled kernels run on the CPU, got a tensor on ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "the compiled kernels compute in float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == dims && x.size(axis) == size, "expected ", what, " of size ", size, " on axis ", axis,
              ", got shape ", x.sizes());
}

at::Tensor flat_buffer(int64_t n) { return at::zeros({n + kSlack}, at::kFloat); }

int32_t* checked_offsets(at::Tensor& offsets, int64_t buffer) {
  TORCH_CHECK_VALUE(buffer < std::numeric_limits<int32_t>::max(), "the input (", buffer,
              " floats) is too large for 32-bit offsets: run a smaller batch");
  offsets = offsets.to(at::kInt).contiguous();
  return offsets.data_ptr<int32_t>();
}

}  // namespace

// One convolution's non-zeros, its epilogue, and a plan per input size (buffers planned once).
class SparseConv {
 public:
  struct Plan {
    int64_t batch, height, width, hp, wp, ho, wo, out_h, out_w;
    bool flat;
    at::Tensor padded, cols, offsets;
    Grid grid;
  };

  SparseConv(at::Tensor indptr, at::Tensor channel, at::Tensor tap_y, at::Tensor tap_x, at::Tensor values,
             at::Tensor bias, int64_t in_channels, int64_t kh, int64_t kw, std::vector<int64_t> stride,
             std::vector<int64_t> dilation, std::vector<int64_t> pads, bool pool, bool relu)
      : indptr_(indptr.to(at::kLong).contiguous()), channel_(channel.to(at::kLong).contiguous()),
        tap_y_(tap_y.to(at::kLong).contiguous()), tap_x_(tap_x.to(at::kLong).contiguous()),
        values_(values.to(at::kFloat).contiguous()), bias_(bias.to(at::kFloat).contiguous()),
        in_channels_(in_channels), out_channels_(indptr.numel() - 1), kh_(kh), kw_(kw), sy_(stride.at(0)),
        sx_(stride.at(1)), dy_(dilation.at(0)), dx_(dilation.at(1)), top_(pads.at(0)), bottom_(pads.at(1)),
        left_(pads.at(2)), right_(pads.at(3)), pool_(pool), relu_(relu) {
    TORCH_CHECK(bias_.numel() == out_channels_, "bias has ", bias_.numel(), " values for ", out_channels_, " channels");
  }

  int64_t out_channels() const { return out_channels_; }
  int64_t in_channels() const { return in_channels_; }

  Plan& plan(int64_t batch, int64_t height, int64_t width) {
    auto key = std::make_tuple(batch, height, width);
    auto found = plans_.find(key);
    if (found != plans_.end()) return found->second;
    Plan p{};
    p.batch = batch, p.height = height, p.width = width;
    p.hp = height + top_ + bottom_, p.wp = width + left_ + right_;
    p.ho = (p.hp - dy_ * (kh_ - 1) - 1) / sy_ + 1, p.wo = (p.wp - dx_ * (kw_ - 1) - 1) / sx_ + 1;
    TORCH_CHECK_VALUE(p.ho > 0 && p.wo > 0, "input ", height, "x", width, " (padded ", p.hp, "x", p.wp,
                ") is smaller than the dilated kernel");
    TORCH_CHECK_VALUE(!pool_ || (p.ho >= 2 && p.wo >= 2), "output ", p.ho, "x", p.wo, " is too small for the 2x2 max pool");
    p.out_h = pool_ ? p.ho / 2 : p.ho, p.out_w = pool_ ? p.wo / 2 : p.wo;
    p.flat = sy_ == 1 && sx_ == 1;
    const int64_t plane = p.hp * p.wp * batch;
    p.padded = flat_buffer(in_channels_ * plane);
    Grid& g = p.grid;
    g.batch = batch, g.rows = pool_ ? 2 * (p.ho / 2) : p.ho, g.width = p.wo * batch;
    int64_t src_rows, max_shift = 0;
    if (p.flat) {
      at::Tensor shift = (tap_y_ * (dy_ * p.wp) + tap_x_ * dx_) * batch;
      p.offsets = channel_ * plane + shift;
      if (shift.numel()) max_shift = shift.max().item<int64_t>();
      checked_offsets(p.offsets, p.padded.numel());
      src_rows = in_channels_, g.rs = p.wp * batch;
      g.full_rows = g.width < kTile;
    } else {
      const int64_t columns = p.ho * p.wo * batch;
      src_rows = in_channels_ * kh_ * kw_;
      p.cols = flat_buffer(src_rows * columns);
      p.offsets = (channel_ * (kh_ * kw_) + tap_y_ * kw_ + tap_x_) * columns;
      checked_offsets(p.offsets, p.cols.numel());
      g.rs = g.width, g.full_rows = true;
    }
    plan_tiles(g, src_rows, max_shift, out_channels_, pool_);
    g.dense = values_.numel() == out_channels_ * in_channels_ * kh_ * kw_;  // groups == 1, nothing pruned
    return plans_.emplace(key, std::move(p)).first->second;
  }

  // where this layer's input (c, y, x, b) lives in its padded buffer
  Dest input(Plan& p) {
    const int64_t rs = p.wp * p.batch;
    return {p.padded.data_ptr<float>() + top_ * rs + left_ * p.batch, p.hp * rs, rs};
  }

  void run(Plan& p, Dest dst) {
    const float* src = p.padded.data_ptr<float>();
    if (!p.flat) {
      im2col(p);
      src = p.cols.data_ptr<float>();
    }
    sparse_rows(src, p.offsets.data_ptr<int32_t>(), indptr_.data_ptr<int64_t>(), values_.data_ptr<float>(),
                bias_.data_ptr<float>(), out_channels_, p.grid, pool_, relu_, dst);
  }

  // (B, C, H, W) in any memory layout -> (B, O, H', W'), a view of a (O, H', W', B) buffer
  at::Tensor forward(const at::Tensor& x) {
    check_input(x, 4, 1, in_channels_, "a (B, C, H, W) input with channels");
    Plan& p = plan(x.size(0), x.size(2), x.size(3));
    to_grid(x, input(p));
    at::Tensor out = at::empty({out_channels_, p.out_h, p.out_w, p.batch}, at::kFloat);
    run(p, {out.data_ptr<float>(), p.out_h * p.out_w * p.batch, p.out_w * p.batch});
    return out.permute({3, 0, 1, 2});
  }

 private:
  void im2col(Plan& p) {
    // cols[(c*kh + ky)*kw + kx, (y*Wo + x)*B + b] = padded[c, y*sy + ky*dy, x*sx + kx*dx, b]
    const int64_t B = p.batch, columns = p.ho * p.wo * B;
    const float* padded = p.padded.data_ptr<float>();
    float* cols = p.cols.data_ptr<float>();
    at::parallel_for(0, in_channels_ * kh_ * kw_, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r / (kh_ * kw_), ky = (r / kw_) % kh_, kx = r % kw_;
        float* out = cols + r * columns;
        for (int64_t y = 0; y < p.ho; ++y) {
          const float* line = padded + ((c * p.hp + y * sy_ + ky * dy_) * p.wp + kx * dx_) * B;
          for (int64_t x = 0; x < p.wo; ++x)
            std::memcpy(out + (y * p.wo + x) * B, line + x * sx_ * B, sizeof(float) * B);
        }
      }
    });
  }

  at::Tensor indptr_, channel_, tap_y_, tap_x_, values_, bias_;
  int64_t in_channels_, out_channels_, kh_, kw_, sy_, sx_, dy_, dx_, top_, bottom_, left_, right_;
  bool pool_, relu_;
  std::map<std::tuple<int64_t, int64_t, int64_t>, Plan> plans_;
};

// One linear layer's non-zeros: a register-blocked product over x^T (the batch innermost), or at
// batch 1 a gather-dot per row (CSR matrix-vector product).
class SparseLinear {
 public:
  struct Plan {
    at::Tensor src, offsets;
    Grid grid;
  };

  SparseLinear(at::Tensor indptr, at::Tensor cols, at::Tensor values, at::Tensor bias, int64_t in_features, bool relu)
      : indptr_(indptr.to(at::kLong).contiguous()), cols_(cols.to(at::kInt).contiguous()),
        values_(values.to(at::kFloat).contiguous()), bias_(bias.to(at::kFloat).contiguous()),
        in_features_(in_features), out_features_(indptr.numel() - 1), relu_(relu) {
    TORCH_CHECK(bias_.numel() == out_features_, "bias has ", bias_.numel(), " values for ", out_features_, " rows");
  }

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  Plan& plan(int64_t batch) {
    auto found = plans_.find(batch);
    if (found != plans_.end()) return found->second;
    Plan p;
    p.src = flat_buffer(in_features_ * batch);
    p.offsets = cols_.to(at::kLong) * batch;
    checked_offsets(p.offsets, p.src.numel());
    Grid& g = p.grid;
    g.batch = batch, g.rows = 1, g.rs = batch, g.width = batch, g.full_rows = true;
    plan_tiles(g, in_features_, 0, out_features_, false);
    g.dense = values_.numel() == out_features_ * in_features_;
    return plans_.emplace(batch, std::move(p)).first->second;
  }

  Dest input(Plan& p, int64_t batch) { return {p.src.data_ptr<float>(), batch, batch}; }

  void run(Plan& p, Dest dst) {
    const int64_t batch = p.grid.batch;
    if (batch == 1) return spmv(p.src.data_ptr<float>(), dst);
    sparse_rows(p.src.data_ptr<float>(), p.offsets.data_ptr<int32_t>(), indptr_.data_ptr<int64_t>(),
                values_.data_ptr<float>(), bias_.data_ptr<float>(), out_features_, p.grid, false, relu_, dst);
  }

  // (N, in_features), any strides -> (N, out_features), a view of an (out_features, N) buffer
  at::Tensor forward(const at::Tensor& x) {
    check_input(x, 2, 1, in_features_, "an (N, in_features) input with features");
    const int64_t batch = x.size(0);
    Plan& p = plan(batch);
    // x^T into the plan's buffer: (N, F) read as a (N, F, 1, 1) batch of grids
    to_grid(x.view({batch, in_features_, 1, 1}), input(p, batch));
    at::Tensor out = at::empty({out_features_, batch}, at::kFloat);
    run(p, {out.data_ptr<float>(), batch, batch});
    return out.t();
  }

 private:
  void spmv(const float* x, Dest dst) {
    const int64_t* indptr = indptr_.data_ptr<int64_t>();
    const int32_t* cols = cols_.data_ptr<int32_t>();
    const float* val = values_.data_ptr<float>();
    const float* bias = bias_.data_ptr<float>();
    const float floor = floor_of(relu_);
    float* out = dst.at;
    const int64_t stride = dst.cs;
    auto rows = [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) out[o * stride] = clamp(dot(val, cols, x, indptr[o], indptr[o + 1]) + bias[o], floor);
    };
    if (indptr[out_features_] >= kParallelWork) {
      at::parallel_for(0, out_features_, 1, rows);
    } else {
      rows(0, out_features_);
    }
  }

  at::Tensor indptr_, cols_, values_, bias_;
  int64_t in_features_, out_features_;
  bool relu_;
  std::map<int64_t, Plan> plans_;
};

// A straight chain of layers run in one call: each layer writes into the next one's input buffer,
// so no Python runs between layers and no layout is converted but at the two ends.
class Chain {
 public:
  void add_conv(std::shared_ptr<SparseConv> conv) { steps_.push_back({conv, nullptr, false}); }
  void add_linear(std::shared_ptr<SparseLinear> linear) { steps_.push_back({nullptr, linear, false}); }
  void add_mean() { steps_.push_back({nullptr, nullptr, true}); }  // adaptive average pool to 1x1

  // (B, C, H, W) (or (B, F) when the chain starts with a linear layer) -> the last layer's output
  at::Tensor forward(const at::Tensor& x) {
    TORCH_CHECK(!steps_.empty(), "an empty chain");
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "the chain computes float32 on the CPU");
    const int64_t B = x.size(0);
    int64_t C = x.size(1), H = x.dim() == 4 ? x.size(2) : 1, W = x.dim() == 4 ? x.size(3) : 1;
    TORCH_CHECK_VALUE(x.dim() == 4 || x.dim() == 2, "the chain takes (B, C, H, W) or (B, F), got shape ", x.sizes());
    // plan every step for this input, and where each one reads its input
    std::vector<Dest> inputs;
    std::vector<std::tuple<int64_t, int64_t, int64_t>> shapes;  // (C, H, W) each step reads
    std::vector<void*> plans;
    for (Step& s : steps_) {
      shapes.emplace_back(C, H, W);
      if (s.conv) {
        TORCH_CHECK_VALUE(C == s.conv->in_channels(), "a convolution of ", s.conv->in_channels(), " channels got ", C);
        auto& p = s.conv->plan(B, H, W);
        inputs.push_back(s.conv->input(p));
        plans.push_back(&p);
        C = s.conv->out_channels(), H = p.out_h, W = p.out_w;
      } else if (s.linear) {
        TORCH_CHECK_VALUE(C * H * W == s.linear->in_features(), "a linear layer of ", s.linear->in_features(),
                    " features got ", C * H * W);
        auto& p = s.linear->plan(B);
        Dest d = s.linear->input(p, B);
        inputs.push_back({d.at, H * W * B, W * B});  // (C, H, W) flattened in that order: x^T
        plans.push_back(&p);
        C = s.linear->out_features(), H = 1, W = 1;
      } else {
        auto& buffer = means_[std::make_tuple(B, C, H, W)];
        if (!buffer.defined()) buffer = at::empty({C * H * W * B}, at::kFloat);
        inputs.push_back({buffer.data_ptr<float>(), H * W * B, W * B});
        plans.push_back(nullptr);
        H = 1, W = 1;
      }
    }
    at::Tensor out = at::empty({C, H, W, B}, at::kFloat);
    Dest last{out.data_ptr<float>(), H * W * B, W * B};
    to_grid(x.dim() == 4 ? x : x.view({B, x.size(1), 1, 1}), inputs[0]);
    for (size_t i = 0; i < steps_.size(); ++i) {
      Dest dst = i + 1 < steps_.size() ? inputs[i + 1] : last;
      Step& s = steps_[i];
      if (s.conv) {
        s.conv->run(*static_cast<SparseConv::Plan*>(plans[i]), dst);
      } else if (s.linear) {
        s.linear->run(*static_cast<SparseLinear::Plan*>(plans[i]), dst);
      } else {
        auto [c_in, h_in, w_in] = shapes[i];
        mean(inputs[i].at, c_in, h_in * w_in, B, dst);
      }
    }
    return steps_.back().linear ? out.view({C, B}).t().contiguous() : out.permute({3, 0, 1, 2}).contiguous();
  }

 private:
  struct Step {
    std::shared_ptr<SparseConv> conv;
    std::shared_ptr<SparseLinear> linear;
    bool mean;
  };
  static void mean(const float* in, int64_t C, int64_t pixels, int64_t B, Dest dst) {
    for (int64_t c = 0; c < C; ++c) {
      float* out = dst.at + c * dst.cs;
      for (int64_t b = 0; b < B; ++b) out[b] = 0.0f;
      for (int64_t q = 0; q < pixels; ++q)
        for (int64_t b = 0; b < B; ++b) out[b] += in[(c * pixels + q) * B + b];
      for (int64_t b = 0; b < B; ++b) out[b] /= static_cast<float>(pixels);
    }
  }
  std::vector<Step> steps_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t>, at::Tensor> means_;
};

// 2x2/2 max pool (then ReLU) of a (B, C, H, W) batch in any memory layout, as a (C, H/2, W/2, B) grid
at::Tensor pool_to_grid(const at::Tensor& x, bool relu) {
  check_input(x, 4, 1, x.size(1), "a (B, C, H, W) input with channels");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2) / 2, W = x.size(3) / 2;
  const int64_t sb = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const float* p = x.data_ptr<float>();
  at::Tensor out = at::empty({C, H, W, B}, at::kFloat);
  float* o = out.data_ptr<float>();
  const float floor = floor_of(relu);
  at::parallel_for(0, C * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t cy = begin; cy < end; ++cy) {
      const int64_t c = cy / H, y = cy % H;
      for (int64_t w = 0; w < W; ++w)
        for (int64_t b = 0; b < B; ++b) {
          const float* a = p + b * sb + c * sc + 2 * y * sh + 2 * w * sw;
          o[(cy * W + w) * B + b] = clamp(max4(a[0], a[sw], a[sh], a[sh + sw]), floor);
        }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Register-blocked sparse inference kernels of dynprune (see dynprune_lib/kernels)";
  py::class_<SparseConv, std::shared_ptr<SparseConv>>(m, "SparseConv")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t, int64_t, int64_t,
                    std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>, bool, bool>())
      .def("forward", &SparseConv::forward, py::call_guard<py::gil_scoped_release>())
      .def("tiling", [](SparseConv& self, int64_t b, int64_t h, int64_t w) {
        auto& p = self.plan(b, h, w);
        return std::make_tuple(p.grid.strip, p.grid.oblock, p.flat, p.grid.full_rows);
      });
  py::class_<SparseLinear, std::shared_ptr<SparseLinear>>(m, "SparseLinear")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t, bool>())
      .def("forward", &SparseLinear::forward, py::call_guard<py::gil_scoped_release>());
  py::class_<Chain, std::shared_ptr<Chain>>(m, "Chain")
      .def(py::init<>())
      .def("add_conv", &Chain::add_conv)
      .def("add_linear", &Chain::add_linear)
      .def("add_mean", &Chain::add_mean)
      .def("forward", &Chain::forward, py::call_guard<py::gil_scoped_release>());
  m.def("pool_to_grid", &pool_to_grid, py::call_guard<py::gil_scoped_release>());
}
