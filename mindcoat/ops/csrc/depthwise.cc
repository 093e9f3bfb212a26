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
//   CrpeBwdX, CrpeBwdW  its gradients, straight into qkv's layout (see below)
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

// One image row (b, h) of bias + depthwise(x) into yrow (W pixels of C channels, contiguous).
void ConvRow(Strided x, const std::vector<Group> &groups, const float *bias, float *yrow,
             const Layout &l, int64_t b, int64_t h) {
  const int64_t H = l.H, W = l.W, C = l.C, xs = x.stride;
  const float *xb = x.data + (b * (l.off + H * W) + l.off) * xs;
  for (int64_t w = 0; w < W; ++w) {
    float *yp = yrow + w * C;
    if (bias) std::memcpy(yp, bias, C * sizeof(float));
    else std::memset(yp, 0, C * sizeof(float));
  }
  for (const Group &g : groups) {
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
  ParallelFor(l.B * H, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H;
      float *yrow = y + b * l.batch + (l.off + h * W) * C;
      if (l.off && h == 0) {
        if (cls_copy) std::memcpy(y + b * l.batch, x.data + b * tokens * xs, C * sizeof(float));
        else std::memset(y + b * l.batch, 0, C * sizeof(float));
      }
      ConvRow(x, groups, bias, yrow, l, b, h);
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
// (no split of qkv into q, k, v and no separate product pass).
extern "C" int CrpeFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                       const char **dtypes, void *stream, void *extra) {
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
       false, {qkv, 3 * l.C});
  return 0;
}

namespace {

// dw[c, i, j] = sum_{b,h,w} g[b,h,w,c] * x[b, h+i-p, w+j-p, c]; db[c] = sum g[b,h,w,c], with
// g = dy (laid out as l), times `mul` if given; out = flat [dw_1, ..., dw_n, db] in PyTorch
// layout. Deterministic in parallel: the rows go into a fixed number of chunks (independent of
// the thread count), each summed into its own buffer; the buffers are then added in chunk order.
void WeightGrad(Strided x, const float *dy, Strided mul, const std::vector<Group> &groups,
                const Layout &l, float *out) {
  const int64_t H = l.H, W = l.W, C = l.C, xs = x.stride, tokens = l.off + H * W;
  const int n = static_cast<int>(groups.size());
  std::vector<int64_t> offset(n);  // where group g's (k, k, cg) accumulator starts
  int64_t size = 0;
  for (int g = 0; g < n; ++g) {
    offset[g] = size;
    size += groups[g].k * groups[g].k * groups[g].cg;
  }
  const int64_t bias_at = size;
  size += C;
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
        for (int64_t w = 0; w < W; ++w) {
          const float *__restrict d = dyrow + w * C;
          float *__restrict a = acc + bias_at;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) a[c] += d[c];
        }
        for (int g = 0; g < n; ++g) {
          const Group &gr = groups[g];
          const int64_t p = gr.k / 2, cg = gr.cg;
          for (int64_t i = 0; i < gr.k; ++i) {
            const int64_t hin = h + i - p;
            if (hin < 0 || hin >= H) continue;
            const float *xrow = xb + hin * W * xs + gr.c0;
            for (int64_t j = 0; j < gr.k; ++j) {
              const int64_t dj = j - p;
              float *__restrict a = acc + offset[g] + (i * gr.k + j) * cg;
              const int64_t w0 = std::max<int64_t>(0, -dj), w1 = std::min<int64_t>(W, W - dj);
              for (int64_t w = w0; w < w1; ++w) {
                const float *__restrict xp = xrow + (w + dj) * xs;
                const float *__restrict d = dyrow + w * C + gr.c0;
#pragma omp simd
                for (int64_t c = 0; c < cg; ++c) a[c] += d[c] * xp[c];
              }
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
  for (int g = 0; g < n; ++g) {
    const Group &gr = groups[g];
    const int64_t kk = gr.k * gr.k;
    for (int64_t c = 0; c < gr.cg; ++c)
      for (int64_t t = 0; t < kk; ++t) out[o++] = total[offset[g] + t * gr.cg + c];
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
//   CrpeBwdW (qkv, dy, hw, w_1..w_n)                    -> flat [dw_1, ..., dw_n, db] of conv
// dqkv_in is the attention's gradient of the same qkv: adding it here saves the concatenation
// of the three parts and the sum of the two gradients as separate passes.
extern "C" int CrpeBwdX(int nparam, void **params, int *ndims, int64_t **shapes,
                        const char **dtypes, void *stream, void *extra) {
  Layout l;
  if (!IsF32(dtypes[0]) || !GetLayout(ndims, shapes, 1, 3, &l) || l.off != 1) return 1;
  const int64_t B = l.B, H = l.H, W = l.W, C = l.C, N = 1 + H * W;
  const int n = (nparam - 5) / 2;
  if (n < 1 || nparam != 5 + 2 * n) return 1;
  for (int i : {0, 2, nparam - 1})  // qkv, dqkv_in, dqkv
    if (ndims[i] != 3 || shapes[i][0] != B || shapes[i][1] != N || shapes[i][2] != 3 * C) return 1;
  const std::vector<Group> groups = MakeGroups(params, shapes, 4, n, false, 0.0f);
  const std::vector<Group> flipped = MakeGroups(params, shapes, 4, n, true, 0.0f);
  std::vector<float> bias(C);
  for (int g = 0; g < n; ++g)
    std::memcpy(bias.data() + groups[g].c0, params[4 + n + g], groups[g].cg * sizeof(float));
  const float *qkv = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  const float *din = static_cast<const float *>(params[2]);
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
    std::vector<float> conv(W * C), back(W * C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H;
      if (h == 0)  // the class row: only the attention's gradient
        std::memcpy(dqkv + b * N * 3 * C, din + b * N * 3 * C, 3 * C * sizeof(float));
      ConvRow({qkv + 2 * C, 3 * C}, groups, bias.data(), conv.data(), l, b, h);
      ConvRow({dconv.data(), C}, flipped, nullptr, back.data(), l, b, h);
      const int64_t first = b * N + 1 + h * W;
      for (int64_t w = 0; w < W; ++w) {
        const int64_t r = first + w;
        const float *__restrict d = dy + r * C;
        const float *__restrict cv = conv.data() + w * C;
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
// Two groups (3x3 over 8 channels, 5x5 over 11: a width that is not a vector multiple) on the
// token layout (B, 1 + H*W, C): DwResFwd (CoaT's position encoding), CrpeFwd and its two
// gradients, against direct loops with zero padding.

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
  const int64_t B = 2, H = 5, W = 6, C = 19, N = 1 + H * W;
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

  std::vector<float> qkv = mindcoat::TestData(B * N * 3 * C, 0.25f);
  with_out[0] = qkv.data();
  shapes[0] = s_qkv;
  status = CrpeFwd(7, with_out, nd, shapes, dtypes, nullptr, nullptr);
  want = ReferenceConv(qkv, 3 * C, 2 * C, w, bias, groups, B, H, W, C, false);
  for (int64_t r = 0; r < B * N; ++r)
    for (int64_t c = 0; c < C; ++c)
      want[r * C + c] = r % N == 0 ? 0.0f : want[r * C + c] * qkv[r * 3 * C + c];
  if (mindcoat::Verdict("CrpeFwd", status, y, want, 1e-4f, message, length)) return 1;

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
  int64_t s_dw[1] = {static_cast<int64_t>(dw.size())};
  void *bwd_w[6] = {qkv.data(), dy.data(), hw.data(), w[0].data(), w[1].data(), dw.data()};
  int64_t *bwd_w_shapes[6] = {s_qkv, s_x, s_hw, s_w0, s_w1, s_dw};
  int bwd_w_nd[6] = {3, 3, 2, 4, 4, 1};
  status = CrpeBwdW(6, bwd_w, bwd_w_nd, bwd_w_shapes, dtypes, nullptr, nullptr);
  return mindcoat::Verdict("CrpeBwdW", status, dw, dw_want, 1e-3f, message, length);
}
