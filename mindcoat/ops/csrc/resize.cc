// CoaT's cross-scale sums on the token layout, called through ops.Custom(func_type="aot").
//
// After the attention of a parallel block, each scale adds the other two, bilinearly resized to
// its grid (PyTorch's F.interpolate, align_corners=False, no antialias; the class tokens are
// added unresized). The reference splits off the class token, transposes to NCHW, interpolates,
// transposes back and concatenates, six times per block; here the resize reads the (B, 1+H*W, C)
// tokens directly, with the channels innermost, and all sums land in one output pass.
//   ResizeSumFwd (x, hw, s_1, hw_1, ..., s_n, hw_n) -> x + sum_i resize(s_i, (H, W))
//   ResizeBwd    (dout, hw, hw_s)                   -> d s: the adjoint of one resize
// x, dout: (B, 1 + H*W, C); s_i: (B, 1 + H_i*W_i, C); hw*: tensors whose *shape* is the grid.
#include "common.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

using mindcoat::IsF32;
using mindcoat::NumThreads;
using mindcoat::ParallelFor;

namespace {

// Where output sample d reads from along one axis: PyTorch's area_pixel_compute_source_index
// for align_corners=False with scale in/out (exact for CoaT's power-of-two ratios).
struct Tap {
  int64_t i0, i1;
  float w0, w1;
};

std::vector<Tap> Taps(int64_t in, int64_t out) {
  std::vector<Tap> taps(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t d = 0; d < out; ++d) {
    const float src = std::max(scale * (static_cast<float>(d) + 0.5f) - 0.5f, 0.0f);
    const int64_t i0 = static_cast<int64_t>(src);
    const float lambda = src - static_cast<float>(i0);
    taps[d] = {i0, i0 < in - 1 ? i0 + 1 : i0, 1.0f - lambda, lambda};
  }
  return taps;
}

struct Source {
  const float *data;
  int64_t H, W;
  std::vector<Tap> ty, tx;
};

}  // namespace

extern "C" int ResizeSumFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  if (nparam < 5 || (nparam - 3) % 2 != 0 || !IsF32(dtypes[0]) || ndims[0] != 3) return 1;
  const int64_t B = shapes[0][0], C = shapes[0][2], H = shapes[1][0], W = shapes[1][1];
  if (shapes[0][1] != 1 + H * W) return 1;
  std::vector<Source> srcs;
  for (int i = 2; i + 1 < nparam - 1; i += 2) {
    const int64_t h = shapes[i + 1][0], w = shapes[i + 1][1];
    if (h < 1 || w < 1 || ndims[i] != 3 || shapes[i][0] != B || shapes[i][1] != 1 + h * w ||
        shapes[i][2] != C)
      return 1;
    srcs.push_back({static_cast<const float *>(params[i]), h, w, Taps(h, H), Taps(w, W)});
  }
  const float *x = static_cast<const float *>(params[0]);
  float *out = static_cast<float *>(params[nparam - 1]);
  // one task per output row (b, y); row -1 of each batch is the class token
  ParallelFor(B * (H + 1), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (H + 1), y = task % (H + 1) - 1;
      const int64_t n0 = y < 0 ? 0 : 1 + y * W, count = y < 0 ? 1 : W;
      float *o = out + (b * (1 + H * W) + n0) * C;
      std::memcpy(o, x + (b * (1 + H * W) + n0) * C, count * C * sizeof(float));
      for (const Source &s : srcs) {
        const float *sb = s.data + b * (1 + s.H * s.W) * C;
        if (y < 0) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += sb[c];
          continue;
        }
        const Tap &ty = s.ty[y];
        const float *r0 = sb + (1 + ty.i0 * s.W) * C, *r1 = sb + (1 + ty.i1 * s.W) * C;
        for (int64_t xo = 0; xo < W; ++xo) {
          const Tap &tx = s.tx[xo];
          const float *__restrict p00 = r0 + tx.i0 * C, *__restrict p01 = r0 + tx.i1 * C;
          const float *__restrict p10 = r1 + tx.i0 * C, *__restrict p11 = r1 + tx.i1 * C;
          float *__restrict op = o + xo * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c)
            op[c] += ty.w0 * (tx.w0 * p00[c] + tx.w1 * p01[c]) +
                     ty.w1 * (tx.w0 * p10[c] + tx.w1 * p11[c]);
        }
      }
    }
  });
  return 0;
}

// d s[i0/i1 rows, i0/i1 cols] += weights * dout[y, x]: a scatter, so each task owns a batch and a
// block of channels of d s (no two tasks write alike; the sums are in a fixed order).
extern "C" int ResizeBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                         const char **dtypes, void *stream, void *extra) {
  if (nparam != 4 || !IsF32(dtypes[0]) || ndims[0] != 3) return 1;
  const int64_t B = shapes[0][0], C = shapes[0][2], H = shapes[1][0], W = shapes[1][1];
  const int64_t Hs = shapes[2][0], Ws = shapes[2][1];
  if (shapes[0][1] != 1 + H * W || shapes[3][1] != 1 + Hs * Ws || Hs < 1 || Ws < 1) return 1;
  const std::vector<Tap> ty = Taps(Hs, H), tx = Taps(Ws, W);
  const float *dout = static_cast<const float *>(params[0]);
  float *ds = static_cast<float *>(params[3]);
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(C / 16, (2 * NumThreads() + B - 1) / B));
  ParallelFor(B * blocks, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, blk = task % blocks;
      const int64_t c0 = C * blk / blocks, c1 = C * (blk + 1) / blocks;
      const float *db = dout + b * (1 + H * W) * C;
      float *sb = ds + b * (1 + Hs * Ws) * C;
      std::memcpy(sb + c0, db + c0, (c1 - c0) * sizeof(float));  // class token
      for (int64_t n = 1; n < 1 + Hs * Ws; ++n)
        std::memset(sb + n * C + c0, 0, (c1 - c0) * sizeof(float));
      for (int64_t y = 0; y < H; ++y) {
        float *r0 = sb + (1 + ty[y].i0 * Ws) * C, *r1 = sb + (1 + ty[y].i1 * Ws) * C;
        for (int64_t xo = 0; xo < W; ++xo) {
          const Tap &t = tx[xo];
          const float *__restrict g = db + (1 + y * W + xo) * C;
          const float w00 = ty[y].w0 * t.w0, w01 = ty[y].w0 * t.w1;
          const float w10 = ty[y].w1 * t.w0, w11 = ty[y].w1 * t.w1;
          float *p00 = r0 + t.i0 * C, *p01 = r0 + t.i1 * C;
          float *p10 = r1 + t.i0 * C, *p11 = r1 + t.i1 * C;
          // the four targets may coincide at the borders: separate loops, no restrict
          for (int64_t c = c0; c < c1; ++c) p00[c] += w00 * g[c];
          for (int64_t c = c0; c < c1; ++c) p01[c] += w01 * g[c];
          for (int64_t c = c0; c < c1; ++c) p10[c] += w10 * g[c];
          for (int64_t c = c0; c < c1; ++c) p11[c] += w11 * g[c];
        }
      }
    }
  });
  return 0;
}

// ---- self-check (see common.h) ---------------------------------------------------------------
// ResizeSumFwd with one source upsampled x2 and one downsampled x2 (uneven grid), against the
// bilinear formula (align_corners=False) written out per output pixel.

namespace {

// resize(s)[y, x, c] of a (h, w) grid to (H, W), with PyTorch's source index rule.
float Bilinear(const float *s, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W, int64_t y,
               int64_t x, int64_t c) {
  auto axis = [](int64_t in, int64_t out, int64_t d, int64_t *i0, int64_t *i1, double *l) {
    const double src = std::max((d + 0.5) * in / out - 0.5, 0.0);
    *i0 = static_cast<int64_t>(src);
    *i1 = std::min(*i0 + 1, in - 1);
    *l = src - *i0;
  };
  int64_t y0, y1, x0, x1;
  double ly, lx;
  axis(h, H, y, &y0, &y1, &ly);
  axis(w, W, x, &x0, &x1, &lx);
  auto at = [&](int64_t r, int64_t q) { return static_cast<double>(s[(1 + r * w + q) * C + c]); };
  return static_cast<float>((1 - ly) * ((1 - lx) * at(y0, x0) + lx * at(y0, x1)) +
                            ly * ((1 - lx) * at(y1, x0) + lx * at(y1, x1)));
}

}  // namespace

extern "C" int MindcoatSelfCheck(char *message, int length) {
  const int64_t B = 2, C = 5, H = 4, W = 6;
  const int64_t grids[2][2] = {{2, 3}, {8, 12}};
  std::vector<float> x = mindcoat::TestData(B * (1 + H * W) * C, 0.2f), out(x.size());
  std::vector<std::vector<float>> src;
  for (int i = 0; i < 2; ++i)
    src.push_back(mindcoat::TestData(B * (1 + grids[i][0] * grids[i][1]) * C, 1.0f + i));
  std::vector<float> want(x);
  for (int64_t b = 0; b < B; ++b)
    for (int i = 0; i < 2; ++i) {
      const int64_t h = grids[i][0], w = grids[i][1];
      const float *sb = src[i].data() + b * (1 + h * w) * C;
      float *wb = want.data() + b * (1 + H * W) * C;
      for (int64_t c = 0; c < C; ++c) wb[c] += sb[c];  // class tokens
      for (int64_t y = 0; y < H; ++y)
        for (int64_t xo = 0; xo < W; ++xo)
          for (int64_t c = 0; c < C; ++c)
            wb[(1 + y * W + xo) * C + c] += Bilinear(sb, h, w, C, H, W, y, xo, c);
    }
  std::vector<float> grid(8 * 12);  // only the shapes of the grid inputs are read
  int64_t s_x[3] = {B, 1 + H * W, C}, s_hw[2] = {H, W};
  int64_t s_a[3] = {B, 1 + 2 * 3, C}, s_b[3] = {B, 1 + 8 * 12, C};
  int64_t g_a[2] = {2, 3}, g_b[2] = {8, 12};
  int64_t *shapes[7] = {s_x, s_hw, s_a, g_a, s_b, g_b, s_x};
  int ndims[7] = {3, 2, 3, 2, 3, 2, 3};
  void *params[7] = {x.data(), grid.data(), src[0].data(), grid.data(), src[1].data(),
                     grid.data(), out.data()};
  const int status = ResizeSumFwd(7, params, ndims, shapes, mindcoat::F32Types(), nullptr,
                                  nullptr);
  return mindcoat::Verdict("ResizeSumFwd", status, out, want, 1e-5f, message, length);
}
