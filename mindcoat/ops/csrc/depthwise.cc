// Channels-last multi-group depthwise 'same' convolution (stride 1, odd kernels) for CoaT on the
// CPU, called from MindSpore through ops.Custom(func_type="aot").
//
// Layout: x, y are (B, H, W, C) float32. The channels are split into consecutive groups, each
// with its own PyTorch-layout kernel (C_g, 1, k_g, k_g) and bias (C_g,). Channels-last keeps
// the innermost loop over contiguous channels, so it vectorises without any transposes.
//
// Two layouts: x of rank 4 is an image (B, H, W, C); x of rank 3 is CoaT's token sequence
// (B, 1 + H*W, C) whose row 0 is the class token, followed by an extra input `hw` whose *shape*
// is (H, W) (its values are unused). On tokens the convolution covers rows 1..H*W; row 0 of the
// result is 0, or the class token itself for the residual variants (y = x + conv(x), CoaT's
// position encoding), which fold the identity into the centre tap. No split/pad/concat needed.
//
// Entry points follow MindSpore's AOT ABI: params = inputs..., outputs...; the group count is
// recovered from nparam, the shapes from `shapes`. [hw] only with tokens.
//   DwFwd / DwResFwd    (x, [hw], w_1..w_n, b_1..b_n) -> y
//   DwBwdX / DwResBwdX  (dy, [hw], w_1..w_n)          -> dx  (the convolution, kernels flipped)
//   DwBwdW              (x, dy, [hw], w_1..w_n)       -> flat [dw_1, ..., dw_n, db]
//   CrpeFwd             (qkv, hw, w_1..w_n, b_1..b_n) -> q * (conv(v) + b)   (see below)
//   CrpeConvFwd         (qkv, hw, w_1..w_n, b_1..b_n) -> conv(v) + b         (q * left to the caller)
//   CrpeBwdX, CrpeBwdXKept, CrpeBwdW  the gradients, straight into qkv's layout (see below)
#include "common.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

using mindcoat::IsF32;
using mindcoat::ParallelFor;

namespace {

struct Group {
  int64_t c0, cg, k;
  std::vector<float> taps;  // (k, k, cg): channel-contiguous per tap
};

// Where pixel (b, h, w) lives: x + b * batch + (off + h * W + w) * C.
struct Layout {
  int64_t B, H, W, C, off, batch;
};

// Layout of params[i]; with tokens (rank 3) the (H, W) come from the shape of params[hw].
bool GetLayout(int *ndims, int64_t **shapes, int i, int hw, Layout *l) {
  if (ndims[i] == 4) {
    *l = {shapes[i][0], shapes[i][1], shapes[i][2], shapes[i][3], 0, 0};
  } else if (ndims[i] == 3 && ndims[hw] == 2) {
    *l = {shapes[i][0], shapes[hw][0], shapes[hw][1], shapes[i][2],
          shapes[i][1] - shapes[hw][0] * shapes[hw][1], 0};
    if (l->off != 0 && l->off != 1) return false;
  } else {
    return false;
  }
  l->batch = (l->off + l->H * l->W) * l->C;
  return true;
}

// Kernel (cg, 1, k, k) -> taps (k, k, cg); `flip` rotates by 180 degrees (for dL/dx);
// `identity` adds 1 to the centre tap (y = x + conv(x)).
std::vector<Group> MakeGroups(void **params, int64_t **shapes, int first, int n, bool flip,
                              float identity) {
  std::vector<Group> groups(n);
  int64_t c0 = 0;
  for (int g = 0; g < n; ++g) {
    const float *w = static_cast<const float *>(params[first + g]);
    Group &gr = groups[g];
    gr.c0 = c0;
    gr.cg = shapes[first + g][0];
    gr.k = shapes[first + g][3];
    const int64_t kk = gr.k * gr.k;
    gr.taps.resize(kk * gr.cg);
    for (int64_t c = 0; c < gr.cg; ++c) {
      for (int64_t t = 0; t < kk; ++t) gr.taps[(flip ? kk - 1 - t : t) * gr.cg + c] = w[c * kk + t];
      gr.taps[(kk / 2) * gr.cg + c] += identity;
    }
    c0 += gr.cg;
  }
  return groups;
}

// Where the input (and a multiplier) live when they are not laid out like y: token rows of
// `stride` floats (e.g. v and q inside CoaT's fused qkv rows of 3C), same grid and class row.
struct Strided {
  const float *data;
  int64_t stride;
};

// The channels in runs of kLanes, each run convolved with one square kernel: the largest of the
// groups it overlaps, the smaller ones centred in it with zero taps around. One vector register
// then holds a run's lanes whatever the group widths (CoaT's 38/57/57 of 152), at a few zero taps.
constexpr int64_t kLanes = 8, kBlock = 8;  // lanes per run, pixels per block
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

struct Run {
  int64_t c0, width, k;      // channels c0 .. c0 + width - 1 (width < kLanes only at the end)
  std::vector<float> taps;  // (k, k, kLanes)
};

std::vector<Run> MakeRuns(const std::vector<Group> &groups, int64_t C) {
  std::vector<Run> runs;
  for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
    Run run{c0, std::min(kLanes, C - c0), 1, {}};
    for (const Group &g : groups)
      if (g.c0 < c0 + run.width && c0 < g.c0 + g.cg) run.k = std::max(run.k, g.k);
    run.taps.assign(run.k * run.k * kLanes, 0.0f);
    for (const Group &g : groups)
      for (int64_t c = std::max(c0, g.c0); c < std::min(c0 + run.width, g.c0 + g.cg); ++c) {
        const int64_t shift = (run.k - g.k) / 2;
        for (int64_t i = 0; i < g.k; ++i)
          for (int64_t j = 0; j < g.k; ++j)
            run.taps[((i + shift) * run.k + j + shift) * kLanes + c - c0] =
                g.taps[(i * g.k + j) * g.cg + c - g.c0];
      }
    runs.push_back(std::move(run));
  }
  return runs;
}

// Lanes of a run: all kLanes of them (kFull), or the first `width` (zeros beyond, never read or
// written past the run's channels).
template <bool kFull>
inline Vec Load(const float *p, int64_t width) {
  Vec v = {};
  std::memcpy(&v, p, (kFull ? kLanes : width) * sizeof(float));
  return v;
}

template <bool kFull>
inline void Store(float *p, Vec v, int64_t width) {
  std::memcpy(p, &v, (kFull ? kLanes : width) * sizeof(float));
}

// One run of one image row: y[w] = bias + sum_{i,j} x[h + i - p][w + j - p] * tap[i][j], for
// the run's lanes. xb: the image's first pixel at the run's first channel (pixels xs apart); y:
// the row's first pixel at the run's first channel (pixels C apart). Clear of the left and right
// edges, kBlock pixels share each tap load (the last block overlaps the one before rather than
// leaving a remainder: its pixels come out the same either time).
template <bool kFull>
void ConvRun(const float *xb, int64_t xs, const Run &run, const Vec &bias, float *y, int64_t C,
             int64_t H, int64_t W, int64_t h) {
  const int64_t k = run.k, p = k / 2, width = run.width;
  const int64_t i0 = std::max<int64_t>(0, p - h), i1 = std::min<int64_t>(k, H + p - h);
  const float *taps = run.taps.data();
  auto pixel = [&](int64_t w) {  // taps clipped at the edges
    const int64_t j0 = std::max<int64_t>(0, p - w), j1 = std::min<int64_t>(k, W + p - w);
    Vec acc = bias;
    for (int64_t i = i0; i < i1; ++i) {
      const float *xr = xb + (h + i - p) * W * xs;
      for (int64_t j = j0; j < j1; ++j)
        acc += Load<kFull>(xr + (w + j - p) * xs, width) *
               Load<true>(taps + (i * k + j) * kLanes, 0);
    }
    Store<kFull>(y + w * C, acc, width);
  };
  auto block = [&](int64_t w0) {  // pixels w0 .. w0 + kBlock - 1, all taps inside the row
    Vec a[kBlock];
    for (int64_t q = 0; q < kBlock; ++q) a[q] = bias;
    for (int64_t i = i0; i < i1; ++i) {
      const float *xr = xb + ((h + i - p) * W + w0 - p) * xs;
      for (int64_t j = 0; j < k; ++j) {
        const Vec t = Load<true>(taps + (i * k + j) * kLanes, 0);
        const float *xp = xr + j * xs;
#pragma GCC unroll 8
        for (int64_t q = 0; q < kBlock; ++q) a[q] += Load<kFull>(xp + q * xs, width) * t;
      }
    }
#pragma GCC unroll 8
    for (int64_t q = 0; q < kBlock; ++q) Store<kFull>(y + (w0 + q) * C, a[q], width);
  };
  const int64_t inner0 = std::min(p, W), inner1 = std::max(inner0, W - p);
  for (int64_t w = 0; w < inner0; ++w) pixel(w);
  if (inner1 - inner0 >= kBlock) {
    for (int64_t w0 = inner0; w0 < inner1; w0 += kBlock) block(std::min(w0, inner1 - kBlock));
  } else {
    for (int64_t w = inner0; w < inner1; ++w) pixel(w);
  }
  for (int64_t w = inner1; w < W; ++w) pixel(w);
}

// A convolution's kernels in the two forms its rows are computed from: with one kernel size
// (CoaT's 3x3 position encoding), tap by tap over all channels of a row, streaming the input as
// stored; with several (the relative position encoding's 3/5/7), by runs (ConvRun). Measured on
// CoaT's stage-1 shapes (16 x 56 x 56 x 152): tap by tap 9 ms against 13 ms by runs for one 3x3,
// by runs 23 ms against 37 ms tap by tap for the 3/5/7 groups.
struct Kernels {
  std::vector<Group> groups;
  std::vector<Run> runs;  // empty: tap by tap
};

Kernels MakeKernels(std::vector<Group> groups, int64_t C) {
  std::vector<Run> runs = groups.size() > 1 ? MakeRuns(groups, C) : std::vector<Run>();
  return {std::move(groups), std::move(runs)};
}

// One image row (b, h) of bias + depthwise(x) into yrow (W pixels of C channels, contiguous).
void ConvRow(Strided x, const Kernels &kernels, const float *bias, float *yrow, const Layout &l,
             int64_t b, int64_t h) {
  const int64_t H = l.H, W = l.W, C = l.C, xs = x.stride;
  const float *xb = x.data + (b * (l.off + H * W) + l.off) * xs;
  for (const Run &run : kernels.runs) {
    if (run.width == kLanes)
      ConvRun<true>(xb + run.c0, xs, run, bias ? Load<true>(bias + run.c0, 0) : Vec{},
                    yrow + run.c0, C, H, W, h);
    else
      ConvRun<false>(xb + run.c0, xs, run, bias ? Load<false>(bias + run.c0, run.width) : Vec{},
                     yrow + run.c0, C, H, W, h);
  }
  if (!kernels.runs.empty()) return;
  for (int64_t w = 0; w < W; ++w) {
    float *yp = yrow + w * C;
    if (bias) std::memcpy(yp, bias, C * sizeof(float));
    else std::memset(yp, 0, C * sizeof(float));
  }
  for (const Group &g : kernels.groups) {
    const int64_t p = g.k / 2, cg = g.cg;
    for (int64_t i = 0; i < g.k; ++i) {
      const int64_t hin = h + i - p;
      if (hin < 0 || hin >= H) continue;
      const float *xrow = xb + hin * W * xs + g.c0;
      for (int64_t j = 0; j < g.k; ++j) {
        const int64_t dj = j - p;
        const float *__restrict t = g.taps.data() + (i * g.k + j) * cg;
        const int64_t w0 = std::max<int64_t>(0, -dj), w1 = std::min<int64_t>(W, W - dj);
        for (int64_t w = w0; w < w1; ++w) {
          const float *__restrict xp = xrow + (w + dj) * xs;
          float *__restrict yp = yrow + w * C + g.c0;
#pragma omp simd
          for (int64_t c = 0; c < cg; ++c) yp[c] += xp[c] * t[c];
        }
      }
    }
  }
}

// y = bias + depthwise(x) on the image rows, times `mul` if given; rows (b, h) are independent,
// so they are split across threads. The class-token row (off == 1) gets x's (cls_copy) or zeros.
void Conv(Strided x, const std::vector<Group> &groups, const float *bias, float *y,
          const Layout &l, bool cls_copy, Strided mul = {nullptr, 0}) {
  const int64_t H = l.H, W = l.W, C = l.C, xs = x.stride, tokens = l.off + H * W;
  const Kernels kernels = MakeKernels(groups, C);
  ParallelFor(l.B * H, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H;
      float *yrow = y + b * l.batch + (l.off + h * W) * C;
      if (l.off && h == 0) {
        if (cls_copy) std::memcpy(y + b * l.batch, x.data + b * tokens * xs, C * sizeof(float));
        else std::memset(y + b * l.batch, 0, C * sizeof(float));
      }
      ConvRow(x, kernels, bias, yrow, l, b, h);
      if (mul.data) {
        const float *mrow = mul.data + (b * tokens + l.off + h * W) * mul.stride;
        for (int64_t w = 0; w < W; ++w) {
          const float *__restrict m = mrow + w * mul.stride;
          float *__restrict yp = yrow + w * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yp[c] *= m[c];
        }
      }
    }
  });
}

int Forward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
            bool residual) {
  Layout l;
  if (!IsF32(dtypes[0]) || !GetLayout(ndims, shapes, 0, 1, &l)) return 1;
  const int first = ndims[0] == 3 ? 2 : 1;
  const int n = (nparam - 1 - first) / 2;
  if (n < 1) return 1;
  std::vector<Group> groups = MakeGroups(params, shapes, first, n, false, residual ? 1.0f : 0.0f);
  std::vector<float> bias(l.C);
  for (int g = 0; g < n; ++g)
    std::memcpy(bias.data() + groups[g].c0, params[first + n + g], groups[g].cg * sizeof(float));
  Conv({static_cast<const float *>(params[0]), l.C}, groups, bias.data(),
       static_cast<float *>(params[nparam - 1]), l, residual);
  return 0;
}

int BackwardX(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
              bool residual) {
  Layout l;
  if (!IsF32(dtypes[0]) || !GetLayout(ndims, shapes, 0, 1, &l)) return 1;
  const int first = ndims[0] == 3 ? 2 : 1;
  const int n = nparam - 1 - first;
  if (n < 1) return 1;
  std::vector<Group> groups = MakeGroups(params, shapes, first, n, true, residual ? 1.0f : 0.0f);
  Conv({static_cast<const float *>(params[0]), l.C}, groups, nullptr,
       static_cast<float *>(params[nparam - 1]), l, residual);
  return 0;
}

}  // namespace

extern "C" int DwFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                     void *stream, void *extra) {
  return Forward(nparam, params, ndims, shapes, dtypes, false);
}

extern "C" int DwResFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                        const char **dtypes, void *stream, void *extra) {
  return Forward(nparam, params, ndims, shapes, dtypes, true);
}

extern "C" int DwBwdX(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                      void *stream, void *extra) {
  return BackwardX(nparam, params, ndims, shapes, dtypes, false);
}

extern "C" int DwResBwdX(int nparam, void **params, int *ndims, int64_t **shapes,
                         const char **dtypes, void *stream, void *extra) {
  return BackwardX(nparam, params, ndims, shapes, dtypes, true);
}

// CoaT's relative position encoding straight from the fused projection qkv (B, 1 + H*W, 3C):
//   CrpeFwd (qkv, hw, w_1..w_n, b_1..b_n) -> q * (conv(v) + b)  (B, 1 + H*W, C), class row 0
// (no split of qkv into q, k, v and no separate product pass); CrpeConvFwd: conv(v) + b alone
// (the attention kernel multiplies by q, and the backward reuses it instead of convolving again).
namespace {

int CrpeForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                bool times_q) {
  Layout l;
  if (!IsF32(dtypes[0]) || ndims[0] != 3 || !GetLayout(ndims, shapes, nparam - 1, 1, &l) ||
      l.off != 1 || shapes[0][2] != 3 * l.C || shapes[0][1] != 1 + l.H * l.W)
    return 1;
  const int n = (nparam - 3) / 2;
  if (n < 1) return 1;
  std::vector<Group> groups = MakeGroups(params, shapes, 2, n, false, 0.0f);
  std::vector<float> bias(l.C);
  for (int g = 0; g < n; ++g)
    std::memcpy(bias.data() + groups[g].c0, params[2 + n + g], groups[g].cg * sizeof(float));
  const float *qkv = static_cast<const float *>(params[0]);
  Conv({qkv + 2 * l.C, 3 * l.C}, groups, bias.data(), static_cast<float *>(params[nparam - 1]), l,
       false, times_q ? Strided{qkv, 3 * l.C} : Strided{nullptr, 0});
  return 0;
}

}  // namespace

extern "C" int CrpeFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                       const char **dtypes, void *stream, void *extra) {
  return CrpeForward(nparam, params, ndims, shapes, dtypes, true);
}

extern "C" int CrpeConvFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                           const char **dtypes, void *stream, void *extra) {
  return CrpeForward(nparam, params, ndims, shapes, dtypes, false);
}

namespace {

// One run of one image row (b, h) of the weight gradient: acc[i][j] += sum_w g[w] x[h+i-p][w+j-p]
// and bias_acc += sum_w g[w], for the run's lanes. xb: the image's first pixel at the run's first
// channel (pixels xs apart); g: the row's first pixel at the run's first channel (pixels C apart).
template <bool kFull>
void GradRun(const float *xb, int64_t xs, const float *g, int64_t C, const Run &run, int64_t H,
             int64_t W, int64_t h, float *acc, float *bias_acc) {
  const int64_t k = run.k, p = k / 2, width = run.width;
  Vec sum = {};
  for (int64_t w = 0; w < W; ++w) sum += Load<kFull>(g + w * C, width);
  Store<true>(bias_acc, Load<true>(bias_acc, 0) + sum, 0);
  for (int64_t i = std::max<int64_t>(0, p - h); i < std::min<int64_t>(k, H + p - h); ++i) {
    const float *xr = xb + (h + i - p) * W * xs;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t w0 = std::max<int64_t>(0, p - j), w1 = std::min<int64_t>(W, W + p - j);
      Vec a0 = {}, a1 = {}, a2 = {}, a3 = {};
      int64_t w = w0;
      for (; w + 4 <= w1; w += 4) {
        const float *xp = xr + (w + j - p) * xs, *gp = g + w * C;
        a0 += Load<kFull>(gp, width) * Load<kFull>(xp, width);
        a1 += Load<kFull>(gp + C, width) * Load<kFull>(xp + xs, width);
        a2 += Load<kFull>(gp + 2 * C, width) * Load<kFull>(xp + 2 * xs, width);
        a3 += Load<kFull>(gp + 3 * C, width) * Load<kFull>(xp + 3 * xs, width);
      }
      for (; w < w1; ++w)
        a0 += Load<kFull>(g + w * C, width) * Load<kFull>(xr + (w + j - p) * xs, width);
      float *a = acc + (i * k + j) * kLanes;
      Store<true>(a, Load<true>(a, 0) + ((a0 + a1) + (a2 + a3)), 0);
    }
  }
}

// dw[c, i, j] = sum_{b,h,w} g[b,h,w,c] * x[b, h+i-p, w+j-p, c]; db[c] = sum g[b,h,w,c], with
// g = dy (laid out as l), times `mul` if given; out = flat [dw_1, ..., dw_n, db] in PyTorch
// layout. Deterministic in parallel: the rows go into a fixed number of chunks (independent of
// the thread count), each summed into its own buffer; the buffers are then added in chunk order.
// Per run and tap, a row's sum over w runs in four registers (one tap's range of w has no edge
// tests); the runs' zero taps are computed and dropped.
void WeightGrad(Strided x, const float *dy, Strided mul, const std::vector<Group> &groups,
                const Layout &l, float *out) {
  const int64_t H = l.H, W = l.W, C = l.C, xs = x.stride, tokens = l.off + H * W;
  const Kernels kernels = MakeKernels(groups, C);
  const std::vector<Run> &runs = kernels.runs;
  // The accumulator: tap by tap (one group), (k, k, C); by runs, each run's (k, k, kLanes). Then
  // the bias's C (run r's lanes are channels r kLanes on, in both).
  std::vector<int64_t> offset(runs.size());
  int64_t size = runs.empty() ? groups[0].k * groups[0].k * C : 0;
  for (size_t r = 0; r < runs.size(); ++r) {
    offset[r] = size;
    size += runs[r].k * runs[r].k * kLanes;
  }
  const int64_t bias_at = size;
  size += runs.empty() ? C : runs.size() * kLanes;
  const int64_t rows = l.B * H, chunks = std::min<int64_t>(rows, 64);
  std::vector<float> partial(chunks * size, 0.0f);
  ParallelFor(chunks, [&](int64_t begin, int64_t end) {
    std::vector<float> scaled(mul.data ? W * C : 0);  // one row of dy * mul
    for (int64_t ch = begin; ch < end; ++ch) {
      float *acc = partial.data() + ch * size;
      for (int64_t row = rows * ch / chunks; row < rows * (ch + 1) / chunks; ++row) {
        const int64_t b = row / H, h = row % H;
        const float *xb = x.data + (b * tokens + l.off) * xs;
        const float *dyrow = dy + b * l.batch + (l.off + h * W) * C;
        if (mul.data) {
          const float *mrow = mul.data + (b * tokens + l.off + h * W) * mul.stride;
          for (int64_t w = 0; w < W; ++w) {
            const float *__restrict d = dyrow + w * C;
            const float *__restrict m = mrow + w * mul.stride;
            float *__restrict s = scaled.data() + w * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) s[c] = d[c] * m[c];
          }
          dyrow = scaled.data();
        }
        for (size_t r = 0; r < runs.size(); ++r) {
          const Run &run = runs[r];
          if (run.width == kLanes)
            GradRun<true>(xb + run.c0, xs, dyrow + run.c0, C, run, H, W, h, acc + offset[r],
                          acc + bias_at + r * kLanes);
          else
            GradRun<false>(xb + run.c0, xs, dyrow + run.c0, C, run, H, W, h, acc + offset[r],
                           acc + bias_at + r * kLanes);
        }
        if (!runs.empty()) continue;
        for (int64_t w = 0; w < W; ++w) {
          const float *__restrict d = dyrow + w * C;
          float *__restrict a = acc + bias_at;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) a[c] += d[c];
        }
        const int64_t k = groups[0].k, p = k / 2;
        for (int64_t i = 0; i < k; ++i) {
          const int64_t hin = h + i - p;
          if (hin < 0 || hin >= H) continue;
          const float *xrow = xb + hin * W * xs;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t dj = j - p;
            float *__restrict a = acc + (i * k + j) * C;
            const int64_t w0 = std::max<int64_t>(0, -dj), w1 = std::min<int64_t>(W, W - dj);
            for (int64_t w = w0; w < w1; ++w) {
              const float *__restrict xp = xrow + (w + dj) * xs;
              const float *__restrict d = dyrow + w * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) a[c] += d[c] * xp[c];
            }
          }
        }
      }
    }
  });
  // Sum the chunks in a fixed order (parallel over elements), then write PyTorch layout.
  std::vector<float> total(size);
  ParallelFor(size, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      float s = 0.0f;
      for (int64_t ch = 0; ch < chunks; ++ch) s += partial[ch * size + e];
      total[e] = s;
    }
  });
  int64_t o = 0;
  for (const Group &g : groups)
    for (int64_t c = g.c0; c < g.c0 + g.cg; ++c) {
      const int64_t r = c / kLanes, lane = c % kLanes;
      const int64_t k = runs.empty() ? g.k : runs[r].k, shift = (k - g.k) / 2;
      for (int64_t i = 0; i < g.k; ++i)
        for (int64_t j = 0; j < g.k; ++j)
          out[o++] = runs.empty()
                         ? total[(i * k + j) * C + c]
                         : total[offset[r] + ((i + shift) * k + j + shift) * kLanes + lane];
    }
  std::memcpy(out + o, total.data() + bias_at, C * sizeof(float));
}

}  // namespace

// DwBwdW (x, dy, [hw], w_1..w_n) -> flat [dw_1, ..., dw_n, db].
extern "C" int DwBwdW(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                      void *stream, void *extra) {
  Layout l;
  if (!IsF32(dtypes[0]) || !GetLayout(ndims, shapes, 0, 2, &l)) return 1;
  const int first = ndims[0] == 3 ? 3 : 2;
  const int n = nparam - 1 - first;
  if (n < 1) return 1;
  WeightGrad({static_cast<const float *>(params[0]), l.C}, static_cast<const float *>(params[1]),
             {nullptr, 0}, MakeGroups(params, shapes, first, n, false, 0.0f), l,
             static_cast<float *>(params[nparam - 1]));
  return 0;
}

// The gradients of CrpeFwd, y = q * (conv(v) + b) on the image rows (0 on the class row):
//   CrpeBwdX (qkv, dy, dqkv_in, hw, w_1..w_n, b_1..b_n) -> dqkv_in + [dy * (conv(v) + b), 0,
//            conv^T(dy * q)]   (B, 1 + H*W, 3C)
//   CrpeBwdXKept (qkv, e, dy, dqkv_in, hw, w_1..w_n)  -> the same, with e = conv(v) + b as
//            CrpeConvFwd returned it (no second convolution)
//   CrpeBwdW (qkv, dy, hw, w_1..w_n)                    -> flat [dw_1, ..., dw_n, db] of conv
// dqkv_in is the attention's gradient of the same qkv: adding it here saves the concatenation
// of the three parts and the sum of the two gradients as separate passes.
namespace {

int CrpeGradX(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
              bool kept) {
  const int at = kept ? 1 : 0;  // CrpeBwdXKept: e after qkv
  Layout l;
  if (!IsF32(dtypes[0]) || !GetLayout(ndims, shapes, 1 + at, 3 + at, &l) || l.off != 1) return 1;
  const int64_t B = l.B, H = l.H, W = l.W, C = l.C, N = 1 + H * W;
  const int n = kept ? nparam - 6 : (nparam - 5) / 2;
  if (n < 1 || nparam != (kept ? 6 + n : 5 + 2 * n)) return 1;
  for (int i : {0, 2 + at, nparam - 1})  // qkv, dqkv_in, dqkv
    if (ndims[i] != 3 || shapes[i][0] != B || shapes[i][1] != N || shapes[i][2] != 3 * C) return 1;
  if (kept && (ndims[1] != 3 || shapes[1][0] != B || shapes[1][1] != N || shapes[1][2] != C))
    return 1;
  const int first_w = 4 + at;
  const std::vector<Group> groups = MakeGroups(params, shapes, first_w, n, false, 0.0f);
  const Kernels kernels = MakeKernels(groups, C);
  const Kernels flipped = MakeKernels(MakeGroups(params, shapes, first_w, n, true, 0.0f), C);
  std::vector<float> bias(C);
  if (!kept)
    for (int g = 0; g < n; ++g)
      std::memcpy(bias.data() + groups[g].c0, params[4 + n + g], groups[g].cg * sizeof(float));
  const float *qkv = static_cast<const float *>(params[0]);
  const float *kept_e = kept ? static_cast<const float *>(params[1]) : nullptr;
  const float *dy = static_cast<const float *>(params[1 + at]);
  const float *din = static_cast<const float *>(params[2 + at]);
  float *dqkv = static_cast<float *>(params[nparam - 1]);
  // dy * q, laid out like dy (class rows 0): the input of conv^T
  std::vector<float> dconv(B * N * C);
  ParallelFor(B * N, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *__restrict d = dy + r * C;
      const float *__restrict q = qkv + r * 3 * C;
      float *__restrict o = dconv.data() + r * C;
      if (r % N == 0) {
        std::memset(o, 0, C * sizeof(float));
        continue;
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) o[c] = d[c] * q[c];
    }
  });
  ParallelFor(B * H, [&](int64_t begin, int64_t end) {
    std::vector<float> conv(kept ? 0 : W * C), back(W * C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H;
      if (h == 0)  // the class row: only the attention's gradient
        std::memcpy(dqkv + b * N * 3 * C, din + b * N * 3 * C, 3 * C * sizeof(float));
      const int64_t first = b * N + 1 + h * W;
      if (!kept) ConvRow({qkv + 2 * C, 3 * C}, kernels, bias.data(), conv.data(), l, b, h);
      ConvRow({dconv.data(), C}, flipped, nullptr, back.data(), l, b, h);
      const float *e = kept ? kept_e + first * C : conv.data();
      for (int64_t w = 0; w < W; ++w) {
        const int64_t r = first + w;
        const float *__restrict d = dy + r * C;
        const float *__restrict cv = e + w * C;
        const float *__restrict bk = back.data() + w * C;
        const float *__restrict in = din + r * 3 * C;
        float *__restrict o = dqkv + r * 3 * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = in[c] + d[c] * cv[c];
        std::memcpy(o + C, in + C, C * sizeof(float));
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[2 * C + c] = in[2 * C + c] + bk[c];
      }
    }
  });
  return 0;
}

}  // namespace

extern "C" int CrpeBwdX(int nparam, void **params, int *ndims, int64_t **shapes,
                        const char **dtypes, void *stream, void *extra) {
  return CrpeGradX(nparam, params, ndims, shapes, dtypes, false);
}

extern "C" int CrpeBwdXKept(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  return CrpeGradX(nparam, params, ndims, shapes, dtypes, true);
}

extern "C" int CrpeBwdW(int nparam, void **params, int *ndims, int64_t **shapes,
                        const char **dtypes, void *stream, void *extra) {
  Layout l;
  if (!IsF32(dtypes[0]) || ndims[0] != 3 || !GetLayout(ndims, shapes, 1, 2, &l) || l.off != 1 ||
      shapes[0][0] != l.B || shapes[0][1] != 1 + l.H * l.W || shapes[0][2] != 3 * l.C)
    return 1;
  const int n = nparam - 4;
  if (n < 1) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  WeightGrad({qkv + 2 * l.C, 3 * l.C}, static_cast<const float *>(params[1]), {qkv, 3 * l.C},
             MakeGroups(params, shapes, 3, n, false, 0.0f), l,
             static_cast<float *>(params[nparam - 1]));
  return 0;
}

// ---- self-check (see common.h) ---------------------------------------------------------------
// Two groups (3x3 over 8 channels, 5x5 over 11: a run of lanes that straddles both, and a partial
// run at the end) on the token layout (B, 1 + H*W, C), rows wide enough for whole pixel blocks at
// both sizes: DwResFwd (CoaT's position encoding), CrpeFwd, CrpeConvFwd and the gradients,
// against direct loops with zero padding.

namespace {

// ref[b, 1 + h*W + w, c] = bias[c] + sum_{i,j} x[b, 1 + (h+i-p)*W + (w+j-p), c] * w_g[c][i][j]
// (+ x itself with `residual`); class rows: x's (residual) or 0.
std::vector<float> ReferenceConv(const std::vector<float> &x, int64_t xs, int64_t xoff,
                                 const std::vector<std::vector<float>> &w,
                                 const std::vector<float> &bias, const int64_t (*groups)[2],
                                 int64_t B, int64_t H, int64_t W, int64_t C, bool residual) {
  std::vector<float> y(B * (1 + H * W) * C, 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      int g = 0, c0 = 0;
      while (c >= c0 + groups[g][0]) c0 += groups[g++][0];
      const int64_t k = groups[g][1], p = k / 2, cl = c - c0;
      const float *xb = x.data() + b * (1 + H * W) * xs + xoff;
      if (residual) y[b * (1 + H * W) * C + c] = xb[c];
      for (int64_t h = 0; h < H; ++h)
        for (int64_t ww = 0; ww < W; ++ww) {
          float acc = bias[c] + (residual ? xb[(1 + h * W + ww) * xs + c] : 0.0f);
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j) {
              const int64_t hi = h + i - p, wj = ww + j - p;
              if (hi >= 0 && hi < H && wj >= 0 && wj < W)
                acc += xb[(1 + hi * W + wj) * xs + c] * w[g][(cl * k + i) * k + j];
            }
          y[(b * (1 + H * W) + 1 + h * W + ww) * C + c] = acc;
        }
    }
  return y;
}

}  // namespace

extern "C" int MindcoatSelfCheck(char *message, int length) {
  const int64_t B = 2, H = 5, W = 13, C = 19, N = 1 + H * W;
  const int64_t groups[2][2] = {{8, 3}, {11, 5}};
  std::vector<std::vector<float>> w = {mindcoat::TestData(8 * 9, 1.0f),
                                       mindcoat::TestData(11 * 25, 2.0f)};
  std::vector<float> b0 = mindcoat::TestData(8, 3.0f), b1 = mindcoat::TestData(11, 4.0f);
  std::vector<float> bias(b0);
  bias.insert(bias.end(), b1.begin(), b1.end());
  std::vector<float> hw(H * W), y(B * N * C);
  const char **dtypes = mindcoat::F32Types();
  int64_t s_x[3] = {B, N, C}, s_qkv[3] = {B, N, 3 * C}, s_hw[2] = {H, W};
  int64_t s_w0[4] = {8, 1, 3, 3}, s_w1[4] = {11, 1, 5, 5}, s_b0[1] = {8}, s_b1[1] = {11};

  std::vector<float> x = mindcoat::TestData(B * N * C, 0.5f);
  void *with_out[7] = {x.data(), hw.data(), w[0].data(), w[1].data(), b0.data(), b1.data(),
                       y.data()};
  int64_t *shapes[7] = {s_x, s_hw, s_w0, s_w1, s_b0, s_b1, s_x};
  int nd[7] = {3, 2, 4, 4, 1, 1, 3};
  int status = DwResFwd(7, with_out, nd, shapes, dtypes, nullptr, nullptr);
  std::vector<float> want = ReferenceConv(x, C, 0, w, bias, groups, B, H, W, C, true);
  if (mindcoat::Verdict("DwResFwd", status, y, want, 1e-4f, message, length)) return 1;

  // one kernel size (tap by tap rather than by runs): the first group alone
  const int64_t one_group[1][2] = {{8, 3}};
  std::vector<float> x1 = mindcoat::TestData(B * N * 8, 0.9f), y1(B * N * 8);
  int64_t s_x1[3] = {B, N, 8};
  void *one[5] = {x1.data(), hw.data(), w[0].data(), b0.data(), y1.data()};
  int64_t *one_shapes[5] = {s_x1, s_hw, s_w0, s_b0, s_x1};
  int one_nd[5] = {3, 2, 4, 1, 3};
  status = DwResFwd(5, one, one_nd, one_shapes, dtypes, nullptr, nullptr);
  want = ReferenceConv(x1, 8, 0, {w[0]}, b0, one_group, B, H, W, 8, true);
  if (mindcoat::Verdict("DwResFwd", status, y1, want, 1e-4f, message, length)) return 1;

  std::vector<float> qkv = mindcoat::TestData(B * N * 3 * C, 0.25f);
  with_out[0] = qkv.data();
  shapes[0] = s_qkv;
  status = CrpeFwd(7, with_out, nd, shapes, dtypes, nullptr, nullptr);
  want = ReferenceConv(qkv, 3 * C, 2 * C, w, bias, groups, B, H, W, C, false);
  for (int64_t r = 0; r < B * N; ++r)
    for (int64_t c = 0; c < C; ++c)
      want[r * C + c] = r % N == 0 ? 0.0f : want[r * C + c] * qkv[r * 3 * C + c];
  if (mindcoat::Verdict("CrpeFwd", status, y, want, 1e-4f, message, length)) return 1;
  status = CrpeConvFwd(7, with_out, nd, shapes, dtypes, nullptr, nullptr);
  want = ReferenceConv(qkv, 3 * C, 2 * C, w, bias, groups, B, H, W, C, false);
  for (int64_t r = 0; r < B * N; r += N)  // class rows
    std::fill(want.begin() + r * C, want.begin() + (r + 1) * C, 0.0f);
  if (mindcoat::Verdict("CrpeConvFwd", status, y, want, 1e-4f, message, length)) return 1;
  const std::vector<float> e = y;

  // CrpeBwdX / CrpeBwdW for a cotangent dy: g = dy * q on the image rows; dq = dy * (conv(v) + b),
  // dv = the adjoint of the convolution applied to g, dw / db correlate g with v.
  std::vector<float> dy = mindcoat::TestData(B * N * C, 0.75f);
  std::vector<float> din = mindcoat::TestData(B * N * 3 * C, 0.6f), dqkv(B * N * 3 * C);
  std::vector<float> dw(8 * 9 + 11 * 25 + C);
  std::vector<float> conv = ReferenceConv(qkv, 3 * C, 2 * C, w, bias, groups, B, H, W, C, false);
  std::vector<float> dqkv_want(din), dw_want(dw.size(), 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      int g = 0, c0 = 0, w_at = 0;
      while (c >= c0 + groups[g][0]) {
        w_at += groups[g][0] * groups[g][1] * groups[g][1];
        c0 += groups[g++][0];
      }
      const int64_t k = groups[g][1], p = k / 2, cl = c - c0;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t ww = 0; ww < W; ++ww) {
          const int64_t r = b * N + 1 + h * W + ww;
          const float gr = dy[r * C + c] * qkv[r * 3 * C + c];
          dqkv_want[r * 3 * C + c] += dy[r * C + c] * conv[r * C + c];
          dw_want[8 * 9 + 11 * 25 + c] += gr;
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j) {
              const int64_t hi = h + i - p, wj = ww + j - p;
              if (hi < 0 || hi >= H || wj < 0 || wj >= W) continue;
              const int64_t src = b * N + 1 + hi * W + wj;
              dqkv_want[src * 3 * C + 2 * C + c] += gr * w[g][(cl * k + i) * k + j];
              dw_want[w_at + (cl * k + i) * k + j] += gr * qkv[src * 3 * C + 2 * C + c];
            }
        }
    }
  void *bwd_x[9] = {qkv.data(), dy.data(), din.data(), hw.data(), w[0].data(), w[1].data(),
                    b0.data(), b1.data(), dqkv.data()};
  int64_t *bwd_x_shapes[9] = {s_qkv, s_x, s_qkv, s_hw, s_w0, s_w1, s_b0, s_b1, s_qkv};
  int bwd_x_nd[9] = {3, 3, 3, 2, 4, 4, 1, 1, 3};
  status = CrpeBwdX(9, bwd_x, bwd_x_nd, bwd_x_shapes, dtypes, nullptr, nullptr);
  if (mindcoat::Verdict("CrpeBwdX", status, dqkv, dqkv_want, 1e-4f, message, length)) return 1;
  void *kept_x[8] = {qkv.data(), const_cast<float *>(e.data()), dy.data(), din.data(), hw.data(),
                     w[0].data(), w[1].data(), dqkv.data()};
  int64_t *kept_x_shapes[8] = {s_qkv, s_x, s_x, s_qkv, s_hw, s_w0, s_w1, s_qkv};
  int kept_x_nd[8] = {3, 3, 3, 3, 2, 4, 4, 3};
  std::fill(dqkv.begin(), dqkv.end(), 0.0f);
  status = CrpeBwdXKept(8, kept_x, kept_x_nd, kept_x_shapes, dtypes, nullptr, nullptr);
  if (mindcoat::Verdict("CrpeBwdXKept", status, dqkv, dqkv_want, 1e-4f, message, length))
    return 1;
  int64_t s_dw[1] = {static_cast<int64_t>(dw.size())};
  void *bwd_w[6] = {qkv.data(), dy.data(), hw.data(), w[0].data(), w[1].data(), dw.data()};
  int64_t *bwd_w_shapes[6] = {s_qkv, s_x, s_hw, s_w0, s_w1, s_dw};
  int bwd_w_nd[6] = {3, 3, 2, 4, 4, 1};
  status = CrpeBwdW(6, bwd_w, bwd_w_nd, bwd_w_shapes, dtypes, nullptr, nullptr);
  return mindcoat::Verdict("CrpeBwdW", status, dw, dw_want, 1e-3f, message, length);
}
