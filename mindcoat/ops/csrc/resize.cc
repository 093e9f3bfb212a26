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
    if (ndims[i] != 3 || shapes[i][0] != B || shapes[i][1] != 1 + h * w || shapes[i][2] != C)
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
  if (shapes[0][1] != 1 + H * W || shapes[3][1] != 1 + Hs * Ws) return 1;
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
