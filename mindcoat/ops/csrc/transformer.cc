// Transformer-side CPU kernels for CoaT, called through ops.Custom(func_type="aot"):
// exact GELU, CoaT's factorized attention and LayerNorm (forward and backward), a bias gradient,
// stochastic depth's residual add.
//
// GELU:
// MindSpore 2.10's CPU erf/GELU are scalar (~8 ns per element); CoaT's MLPs apply GELU to
// 25M values per stage-1 block at batch 16. Here erf and exp are written as branch-free
// polynomials so that the loops vectorise (AVX2: 8 lanes), in float32 with errors of a few
// 1e-7 relative, i.e. at the level of float32 rounding of the reference.
//   GeluFwd (x)     -> y  = x * Phi(x),            Phi(x) = (1 + erf(x / sqrt 2)) / 2
//   GeluBwd (x, dy) -> dx = dy * (Phi(x) + x * phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//   GeluFwdGrad (x) -> y, and the slope Phi(x) + x * phi(x)
//
// Factorized attention, on the fused projection qkv (B, N, 3C) in token layout (no split into
// heads, no transposes): per batch b and head h (Ch = C / heads channels),
//   out = scale * q (softmax_N(k)^T v) + crpe,   scale = Ch^-1/2
//   FactorAttFwd (qkv, crpe, heads) -> out (B, N, C)       `heads`: only its shape (heads,) is read
//   FactorAttQFwd (qkv, e, heads)   -> the same with crpe = q * e (e: CrpeConvFwd's conv(v) + b)
//   FactorAttBwd (qkv, dout, heads) -> dqkv (B, N, 3C)     (d crpe = dout)
#include "common.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

using mindcoat::IsF32;
using mindcoat::Numel;
using mindcoat::NumThreads;
using mindcoat::ParallelFor;

namespace {

// exp(x) for x <= 0 (all callers pass -z^2 or similar): x = n ln2 + r, |r| <= ln2 / 2,
// exp(r) by its degree-7 Taylor polynomial (truncation < 2e-8 relative), 2^n via the exponent
// bits. Inputs below -87 flush to 0 (the true value is below float32's normal range anyway).
#pragma omp declare simd
inline float ExpNeg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;  // ln2 split hi/lo
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Phi(x) = erfc(-x / sqrt 2) / 2, with erfc(z) for z >= 0 from the classical Chebyshev fit
// erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2) (relative error < 1.2e-7 for all z >= 0).
#pragma omp declare simd
inline float Phi(float x) {
  const float z = std::fabs(x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  const float erfc_z = t * ExpNeg(p - z * z);
  const float tail = 0.5f * erfc_z;  // = Phi(-|x|)
  return x >= 0.0f ? 1.0f - tail : tail;
}

}  // namespace

extern "C" int GeluFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *stream, void *extra) {
  if (nparam != 2 || !IsF32(dtypes[0])) return 1;
  const int64_t n = Numel(ndims[0], shapes[0]);
  const float *__restrict x = static_cast<const float *>(params[0]);
  float *__restrict y = static_cast<float *>(params[1]);
  ParallelFor(n, [&](int64_t begin, int64_t end) {
#pragma omp simd simdlen(MINDCOAT_MATH_LANES)
    for (int64_t i = begin; i < end; ++i) y[i] = x[i] * Phi(x[i]);
  });
  return 0;
}

extern "C" int GeluBwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *stream, void *extra) {
  if (nparam != 3 || !IsF32(dtypes[0])) return 1;
  const int64_t n = Numel(ndims[0], shapes[0]);
  const float *__restrict x = static_cast<const float *>(params[0]);
  const float *__restrict dy = static_cast<const float *>(params[1]);
  float *__restrict dx = static_cast<float *>(params[2]);
  ParallelFor(n, [&](int64_t begin, int64_t end) {
#pragma omp simd simdlen(MINDCOAT_MATH_LANES)
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      const float pdf = 0.39894228040143268f * ExpNeg(-0.5f * v * v);
      dx[i] = dy[i] * (Phi(v) + v * pdf);
    }
  });
  return 0;
}

// GeluFwdGrad (x) -> (y, d): y = GELU(x) and its slope d = Phi(x) + x * phi(x), for a training
// graph whose backward multiplies by d inside the next layer's product (LinearGradXMul).
extern "C" int GeluFwdGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                           const char **dtypes, void *stream, void *extra) {
  if (nparam != 3 || !IsF32(dtypes[0])) return 1;
  const int64_t n = Numel(ndims[0], shapes[0]);
  const float *__restrict x = static_cast<const float *>(params[0]);
  float *__restrict y = static_cast<float *>(params[1]);
  float *__restrict d = static_cast<float *>(params[2]);
  ParallelFor(n, [&](int64_t begin, int64_t end) {
#pragma omp simd simdlen(MINDCOAT_MATH_LANES)
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i], cdf = Phi(v);
      y[i] = v * cdf;
      d[i] = cdf + v * 0.39894228040143268f * ExpNeg(-0.5f * v * v);
    }
  });
  return 0;
}

// ---- factorized attention --------------------------------------------------------------------
// Work is split into tasks of (batch, block of heads); each task streams the token rows of its
// batch in order (contiguous reads; walking one head's columns down the rows instead was
// memory-bound), and owns its output columns, so no two tasks write alike. Softmax over tokens:
// kv = (sum_n exp(k_n - max) v_n^T) / sum_n exp(k_n - max), the normalisation applied once.

namespace {

struct AttShape {
  int64_t B, N, C, heads, ch, row;  // row: floats per token in qkv (3C)
  int64_t blocks, per_block;        // head blocks per batch, heads per block
};

bool GetAttShape(int *ndims, int64_t **shapes, const char **dtypes, int heads_at, AttShape *s) {
  if (ndims[0] != 3 || ndims[heads_at] != 1 || !IsF32(dtypes[0])) return false;
  s->B = shapes[0][0];
  s->N = shapes[0][1];
  s->row = shapes[0][2];
  s->C = s->row / 3;
  s->heads = shapes[heads_at][0];
  if (s->C * 3 != s->row || s->heads < 1 || s->C % s->heads != 0) return false;
  s->ch = s->C / s->heads;
  // enough tasks to keep every thread busy even at batch 1
  const int64_t want = (2 * NumThreads() + s->B - 1) / s->B;
  s->blocks = std::min<int64_t>(s->heads, std::max<int64_t>(1, want));
  s->per_block = (s->heads + s->blocks - 1) / s->blocks;
  s->blocks = (s->heads + s->per_block - 1) / s->per_block;
  return true;
}

// Heads of ch <= P channels, P a multiple of 8: the ch x ch matrices (kv, dkv and their
// transposes) are stored P wide, zero past ch. Every product is a small matrix product whose
// right factor has rows of P floats; `Tile` keeps an R x W block of 8-lane vectors of the result
// in registers across the whole sum (as a GEMM micro-kernel does), so that each loaded row
// feeds R broadcasts. (Accumulating into memory, or one row at a time, ran at a tenth of the
// CPU's peak.) Tokens go in chunks of kChunk: one pass over k, v (and q, dout) gathers kv
// (and dkv) with the softmax's running maximum (rescaled when it grows), a second pass writes
// the outputs.
typedef float Vec __attribute__((vector_size(8 * sizeof(float))));
constexpr int64_t kChunk = 32, kTokens = 4;

inline Vec LoadVec(const float *p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void StoreVec(float *p, Vec v) { std::memcpy(p, &v, sizeof(v)); }

// c[r, w] (+)= sum_k a[r * ars + k * aks] * b[k * bks + w], for R rows and W vectors of columns;
// c's rows are `crs` apart.
template <int R, int W>
inline void Tile(const float *a, int64_t ars, int64_t aks, const float *b, int64_t bks, int64_t K,
                 float *c, int64_t crs, bool accumulate) {
  Vec acc[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) acc[r][w] = accumulate ? LoadVec(c + r * crs + 8 * w) : Vec{};
  for (int64_t k = 0; k < K; ++k) {
    Vec bk[W];
    for (int w = 0; w < W; ++w) bk[w] = LoadVec(b + k * bks + 8 * w);
    for (int r = 0; r < R; ++r) {
      const float x = a[r * ars + k * aks];
      for (int w = 0; w < W; ++w) acc[r][w] += x * bk[w];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) StoreVec(c + r * crs + 8 * w, acc[r][w]);
}

// `rows` rows in blocks of R (the last one shorter), W vectors of columns.
template <int W, int R>
void TileRows(int64_t rows, const float *a, int64_t ars, int64_t aks, const float *b,
              int64_t bks, int64_t K, float *c, int64_t crs, bool accumulate) {
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    Tile<R, W>(a + r * ars, ars, aks, b, bks, K, c + r * crs, crs, accumulate);
  if constexpr (R > 1) {
    if (r < rows)
      TileRows<W, R - 1>(rows - r, a + r * ars, ars, aks, b, bks, K, c + r * crs, crs,
                         accumulate);
  }
}

// c (rows x P) (+)= a (rows x K) b (K x P), b's rows `bks` apart: column blocks of up to three
// vectors, with as many rows as leave registers for one row of b and a broadcast (16 on AVX2).
template <int P>
void SmallProduct(int64_t rows, int64_t K, const float *a, int64_t ars, int64_t aks,
                  const float *b, int64_t bks, float *c, int64_t crs, bool accumulate) {
  for (int w0 = 0; w0 < P / 8; w0 += 3) {
    const float *bw = b + 8 * w0;
    float *cw = c + 8 * w0;
    switch (std::min(3, P / 8 - w0)) {
      case 3: TileRows<3, 4>(rows, a, ars, aks, bw, bks, K, cw, crs, accumulate); break;
      case 2: TileRows<2, 6>(rows, a, ars, aks, bw, bks, K, cw, crs, accumulate); break;
      default: TileRows<1, 8>(rows, a, ars, aks, bw, bks, K, cw, crs, accumulate); break;
    }
  }
}

// dst (t_n rows of heads h0 .. h1, each P wide, zero past ch) = those heads' channels of t_n
// token rows of src (`stride` apart): one contiguous read per row.
template <int P>
inline void PadRows(const float *src, int64_t stride, int64_t t_n, int64_t h0, int64_t h1,
                    int64_t ch, float *dst) {
  for (int64_t t = 0; t < t_n; ++t)
    for (int64_t h = h0; h < h1; ++h) {
      float *d = dst + (t * (h1 - h0) + h - h0) * P;
      std::copy(src + t * stride + h * ch, src + t * stride + (h + 1) * ch, d);
      std::fill(d + ch, d + P, 0.0f);
    }
}

// Per thread: chunk buffers (exps, q, padded v and dout rows) and the ch x ch matrices, kept
// from call to call (every float is written before it is read).
struct AttBuffers {
  float *mx, *sum, *top, *r, *e, *qc, *vp, *gp, *prod, *kv, *dkv, *kvt, *dkvt;
  AttBuffers(const AttShape &s, int64_t P) {
    static thread_local std::vector<float> store;
    const int64_t C = s.C, sizes[13] = {C, C, C, C, kChunk * C, kChunk * C, kChunk * s.heads * P,
                                        kChunk * s.heads * P, 3 * kTokens * P, C * P, C * P,
                                        C * P, C * P};
    float **parts[13] = {&mx, &sum, &top, &r, &e, &qc, &vp, &gp, &prod, &kv, &dkv, &kvt, &dkvt};
    int64_t total = 0;
    for (int64_t n : sizes) total += n;
    if (static_cast<int64_t>(store.size()) < total) store.resize(total);
    float *at = store.data();
    for (int i = 0; i < 13; ++i) {
      *parts[i] = at;
      at += sizes[i];
    }
  }
};

// The first pass of a task (batch b, heads h0 .. h1, channels c0 .. c1): over all tokens,
// kv = exp(k - mx)^T v per head, unnormalised, with sum[c] = sum_n exp(k[n, c] - mx[c]) and mx
// the maximum so far (when a chunk raises mx[c], row c of kv and sum[c] are rescaled); with
// `q`, also dkv = q^T dy per head (dy: rows of C). Leaves kv, dkv, sum and mx in w.
template <int P>
void GatherKv(const float *k, const float *v, const float *q, const float *dy,
              const AttShape &s, int64_t h0, int64_t h1, AttBuffers &w) {
  const int64_t ch = s.ch, C = s.C, c0 = h0 * ch, c1 = h1 * ch, hp = (h1 - h0) * P;
  float *kv = w.kv, *dkv = w.dkv, *mx = w.mx, *sum = w.sum, *top = w.top, *e = w.e, *qc = w.qc;
  std::fill(kv + c0 * P, kv + c1 * P, 0.0f);
  std::fill(dkv + c0 * P, dkv + c1 * P, 0.0f);
  std::fill(mx + c0, mx + c1, -INFINITY);
  std::fill(sum + c0, sum + c1, 0.0f);
  for (int64_t n0 = 0; n0 < s.N; n0 += kChunk) {
    const int64_t t_n = std::min(kChunk, s.N - n0);
    const float *kc = k + n0 * s.row;
    std::copy(mx + c0, mx + c1, top + c0);
    for (int64_t t = 0; t < t_n; ++t) {
      const float *kt = kc + t * s.row;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) top[c] = kt[c] > top[c] ? kt[c] : top[c];
    }
    for (int64_t c = c0; c < c1; ++c) {
      if (!(top[c] > mx[c])) continue;
      const float f = ExpNeg(mx[c] - top[c]);
      sum[c] *= f;
      for (int j = 0; j < P; ++j) kv[c * P + j] *= f;
      mx[c] = top[c];
    }
    for (int64_t t = 0; t < t_n; ++t) {
      const float *kt = kc + t * s.row;
      float *et = e + t * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {
        et[c] = ExpNeg(kt[c] - mx[c]);
        sum[c] += et[c];
      }
    }
    PadRows<P>(v + n0 * s.row, s.row, t_n, h0, h1, ch, w.vp);
    for (int64_t h = h0; h < h1; ++h)
      SmallProduct<P>(ch, t_n, e + h * ch, 1, C, w.vp + (h - h0) * P, hp, kv + h * ch * P,
                      P, true);
    if (!q) continue;
    for (int64_t t = 0; t < t_n; ++t)
      std::copy(q + (n0 + t) * s.row + c0, q + (n0 + t) * s.row + c1, qc + t * C + c0);
    PadRows<P>(dy + n0 * C, C, t_n, h0, h1, ch, w.gp);
    for (int64_t h = h0; h < h1; ++h)
      SmallProduct<P>(ch, t_n, qc + h * ch, 1, C, w.gp + (h - h0) * P, hp,
                      dkv + h * ch * P, P, true);
  }
}

// `times_q`: `crpe` is e, and q * e is added.
template <int P>
void FactorAttForward(const float *qkv, const float *crpe, float *out, const AttShape &s,
                      float scale, bool times_q) {
  const int64_t ch = s.ch, C = s.C;
  ParallelFor(s.B * s.blocks, [&](int64_t begin, int64_t end) {
    AttBuffers w(s, P);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.blocks;
      const int64_t h0 = (task % s.blocks) * s.per_block;
      const int64_t h1 = std::min(s.heads, h0 + s.per_block);
      const float *q = qkv + b * s.N * s.row, *k = q + C, *v = q + 2 * C;
      GatherKv<P>(k, v, nullptr, nullptr, s, h0, h1, w);
      for (int64_t c = h0 * ch; c < h1 * ch; ++c) {  // the normalisation and the scale, once
        const float f = scale / w.sum[c];
        for (int j = 0; j < P; ++j) w.kv[c * P + j] *= f;
      }
      for (int64_t n0 = 0; n0 < s.N; n0 += kTokens) {  // out = q kv + crpe
        const int64_t t_n = std::min(kTokens, s.N - n0);
        for (int64_t h = h0; h < h1; ++h) {
          SmallProduct<P>(t_n, ch, q + n0 * s.row + h * ch, s.row, 1, w.kv + h * ch * P,
                          P, w.prod, P, false);
          for (int64_t t = 0; t < t_n; ++t) {
            const int64_t at = (b * s.N + n0 + t) * C + h * ch;
            const float *o = w.prod + t * P, *qt = q + (n0 + t) * s.row + h * ch;
            if (times_q) {
#pragma omp simd
              for (int64_t j = 0; j < ch; ++j) out[at + j] = o[j] + crpe[at + j] * qt[j];
            } else {
#pragma omp simd
              for (int64_t j = 0; j < ch; ++j) out[at + j] = o[j] + crpe[at + j];
            }
          }
        }
      }
    }
  });
}

// With G = scale * dout, kv = softmax(k)^T v, ks = softmax(k), per head:
//   dq = G kv^T,  dkv = q^T G,  dv = ks dkv,  dks = v dkv^T,
//   dk = ks * (dks - r),  r[c] = sum_n ks[n, c] dks[n, c] = sum_j dkv[c, j] kv[c, j]
// (softmax backward along the token axis; r from the ch x ch matrices, not a pass over tokens).
template <int P>
void FactorAttBackward(const float *qkv, const float *dout, float *dqkv, const AttShape &s,
                       float scale) {
  const int64_t ch = s.ch, C = s.C;
  ParallelFor(s.B * s.blocks, [&](int64_t begin, int64_t end) {
    AttBuffers w(s, P);
    float *kv = w.kv, *dkv = w.dkv, *kvt = w.kvt, *dkvt = w.dkvt;
    float *ks = w.e, *p0 = w.prod, *p1 = p0 + kTokens * P, *p2 = p1 + kTokens * P;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.blocks;
      const int64_t h0 = (task % s.blocks) * s.per_block;
      const int64_t h1 = std::min(s.heads, h0 + s.per_block);
      const int64_t c0 = h0 * ch, c1 = h1 * ch;
      const float *q = qkv + b * s.N * s.row, *k = q + C, *v = q + 2 * C;
      float *dq = dqkv + b * s.N * s.row, *dk = dq + C, *dv = dq + 2 * C;
      const float *dy = dout + b * s.N * C;
      GatherKv<P>(k, v, q, dy, s, h0, h1, w);
      for (int64_t c = c0; c < c1; ++c) {
        const float inv = 1.0f / w.sum[c];
        w.sum[c] = inv;
        float rc = 0.0f;
        for (int j = 0; j < P; ++j) {
          kv[c * P + j] *= inv;
          dkv[c * P + j] *= scale;
          rc += dkv[c * P + j] * kv[c * P + j];
        }
        w.r[c] = rc;
      }
      // transposed copies (P wide, zero past ch)
      std::fill(kvt + c0 * P, kvt + c1 * P, 0.0f);
      std::fill(dkvt + c0 * P, dkvt + c1 * P, 0.0f);
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t i = 0; i < ch; ++i)
          for (int64_t j = 0; j < ch; ++j) {
            kvt[(h * ch + j) * P + i] = kv[(h * ch + i) * P + j];
            dkvt[(h * ch + j) * P + i] = dkv[(h * ch + i) * P + j];
          }
      const float *inv = w.sum, *mx = w.mx, *r = w.r;
      for (int64_t n0 = 0; n0 < s.N; n0 += kTokens) {
        const int64_t t_n = std::min(kTokens, s.N - n0);
        for (int64_t t = 0; t < t_n; ++t) {
          const float *kn = k + (n0 + t) * s.row;
          float *kst = ks + t * C;
#pragma omp simd
          for (int64_t c = c0; c < c1; ++c) kst[c] = ExpNeg(kn[c] - mx[c]) * inv[c];
        }
        for (int64_t h = h0; h < h1; ++h) {
          const int64_t hc = h * ch;
          SmallProduct<P>(t_n, ch, dy + n0 * C + hc, C, 1, kvt + hc * P, P, p0, P, false);
          SmallProduct<P>(t_n, ch, v + n0 * s.row + hc, s.row, 1, dkvt + hc * P, P, p1, P, false);
          SmallProduct<P>(t_n, ch, ks + hc, C, 1, dkv + hc * P, P, p2, P, false);
          for (int64_t t = 0; t < t_n; ++t) {
            const int64_t at = (n0 + t) * s.row + hc;
            const float *kst = ks + t * C + hc, *rh = r + hc;
            const float *o0 = p0 + t * P, *o1 = p1 + t * P, *o2 = p2 + t * P;
#pragma omp simd
            for (int64_t j = 0; j < ch; ++j) {
              dq[at + j] = scale * o0[j];
              dk[at + j] = kst[j] * (o1[j] - rh[j]);
              dv[at + j] = o2[j];
            }
          }
        }
      }
    }
  });
}

enum class AttPass { kForward, kForwardTimesQ, kBackward };

template <int P>
void FactorAtt(AttPass pass, const float *qkv, const float *other, float *out, const AttShape &s,
               float scale) {
  if (pass == AttPass::kBackward) FactorAttBackward<P>(qkv, other, out, s, scale);
  else FactorAttForward<P>(qkv, other, out, s, scale, pass == AttPass::kForwardTimesQ);
}

// params: qkv, crpe or e (forward) or dout (backward), heads; out (forward) or dqkv (backward).
// Runs with the smallest P (a multiple of 8) that holds a head.
int FactorAtt(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
              AttPass pass) {
  AttShape s;
  if (nparam != 4 || !GetAttShape(ndims, shapes, dtypes, 2, &s)) return 1;
  const float scale = static_cast<float>(std::pow(static_cast<double>(s.ch), -0.5));
  const float *qkv = static_cast<const float *>(params[0]);
  const float *other = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[3]);
  switch ((s.ch + 7) / 8) {  // heads of up to 64 channels (CoaT's widest: 512 / 8)
    case 1: FactorAtt<8>(pass, qkv, other, out, s, scale); return 0;
    case 2: FactorAtt<16>(pass, qkv, other, out, s, scale); return 0;
    case 3: FactorAtt<24>(pass, qkv, other, out, s, scale); return 0;
    case 4: FactorAtt<32>(pass, qkv, other, out, s, scale); return 0;
    case 5: FactorAtt<40>(pass, qkv, other, out, s, scale); return 0;
    case 6: FactorAtt<48>(pass, qkv, other, out, s, scale); return 0;
    case 7: FactorAtt<56>(pass, qkv, other, out, s, scale); return 0;
    case 8: FactorAtt<64>(pass, qkv, other, out, s, scale); return 0;
    default: return 1;  // the Python side sends wider heads to the native path
  }
}

}  // namespace

extern "C" int FactorAttFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  return FactorAtt(nparam, params, ndims, shapes, dtypes, AttPass::kForward);
}

extern "C" int FactorAttQFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                             const char **dtypes, void *stream, void *extra) {
  return FactorAtt(nparam, params, ndims, shapes, dtypes, AttPass::kForwardTimesQ);
}

extern "C" int FactorAttBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  return FactorAtt(nparam, params, ndims, shapes, dtypes, AttPass::kBackward);
}

// ---- layer norm over the last axis -----------------------------------------------------------
//   LayerNormFwd (x, gamma, beta, eps[1]) -> y
//   LayerNormBwd (x, dy, gamma, eps[1])   -> dx, dgb = [dgamma, dbeta]
// Rows are independent (parallel); the two-pass mean/variance of each row stays in registers.
// dgamma/dbeta reduce over rows deterministically: a fixed number of row chunks, each with its
// own partial sums, added in chunk order.

namespace {

inline void RowStats(const float *x, int64_t C, float eps, float *mean, float *rstd) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t c = 0; c < C; ++c) s += x[c];
  const float m = s / static_cast<float>(C);
  float v = 0.0f;
#pragma omp simd reduction(+ : v)
  for (int64_t c = 0; c < C; ++c) v += (x[c] - m) * (x[c] - m);
  *mean = m;
  *rstd = 1.0f / std::sqrt(v / static_cast<float>(C) + eps);
}

}  // namespace

extern "C" int LayerNormFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  if (nparam != 5 || !IsF32(dtypes[0])) return 1;
  const int64_t C = shapes[0][ndims[0] - 1];
  if (C == 0) return 0;  // nothing to compute (and no division by zero)
  const int64_t rows = Numel(ndims[0], shapes[0]) / C;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  ParallelFor(rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *xr = x + r * C;
      float *yr = y + r * C;
      float mean, rstd;
      RowStats(xr, C, eps, &mean, &rstd);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
    }
  });
  return 0;
}

extern "C" int LayerNormBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  if (nparam != 6 || !IsF32(dtypes[0])) return 1;
  const int64_t C = shapes[0][ndims[0] - 1];
  if (C == 0) return 0;  // nothing to compute (and no division by zero)
  const int64_t rows = Numel(ndims[0], shapes[0]) / C;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  float *dgb = static_cast<float *>(params[5]);
  const int64_t chunks = std::min<int64_t>(rows, 64);
  std::vector<float> partial(chunks * 2 * C, 0.0f);
  ParallelFor(chunks, [&](int64_t begin, int64_t end) {
    // gamma as a local: read through the closure, gcc re-loaded the pointer per element (the
    // stores below might alias it) and vectorized with gathers, 3x slower on Intel
    const float *__restrict g = gamma;
    std::vector<float> xhat_buffer(C);
    float *__restrict xhat = xhat_buffer.data();
    for (int64_t ch = begin; ch < end; ++ch) {
      float *__restrict pg = partial.data() + ch * 2 * C;
      float *__restrict pb = pg + C;
      for (int64_t r = rows * ch / chunks; r < rows * (ch + 1) / chunks; ++r) {
        const float *__restrict xr = x + r * C;
        const float *__restrict dyr = dy + r * C;
        float *__restrict dxr = dx + r * C;
        float mean, rstd;
        RowStats(xr, C, eps, &mean, &rstd);
        float s1 = 0.0f, s2 = 0.0f;  // sums of dy*gamma and dy*gamma*xhat
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t c = 0; c < C; ++c) {
          const float xh = (xr[c] - mean) * rstd;
          const float dg = dyr[c] * g[c];
          xhat[c] = xh;
          s1 += dg;
          s2 += dg * xh;
          pg[c] += dyr[c] * xh;
          pb[c] += dyr[c];
        }
        const float m1 = s1 / static_cast<float>(C), m2 = s2 / static_cast<float>(C);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxr[c] = rstd * (dyr[c] * g[c] - m1 - xhat[c] * m2);
      }
    }
  });
  ParallelFor(2 * C, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      float s = 0.0f;
      for (int64_t ch = 0; ch < chunks; ++ch) s += partial[ch * 2 * C + e];
      dgb[e] = s;
    }
  });
  return 0;
}

// ---- bias gradient ---------------------------------------------------------------------------
//   ColSum (x (..., C)) -> (C,): the sum over all rows (the gradient of a bias add).
// MindSpore 2.10's CPU BiasAddGrad is slow on CoaT's activations.
// Deterministic: fixed row chunks with their own partial sums, added in chunk order.
extern "C" int ColSum(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                      void *stream, void *extra) {
  if (nparam != 2 || !IsF32(dtypes[0])) return 1;
  const int64_t C = shapes[0][ndims[0] - 1];
  if (C == 0) return 0;  // nothing to compute (and no division by zero)
  const int64_t rows = Numel(ndims[0], shapes[0]) / C;
  const float *x = static_cast<const float *>(params[0]);
  float *out = static_cast<float *>(params[1]);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(rows, 64));
  std::vector<float> partial(chunks * C, 0.0f);
  ParallelFor(chunks, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      float *__restrict p = partial.data() + ch * C;
      for (int64_t r = rows * ch / chunks; r < rows * (ch + 1) / chunks; ++r) {
        const float *__restrict xr = x + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) p[c] += xr[c];
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) out[c] = 0.0f;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const float *__restrict p = partial.data() + ch * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) out[c] += p[c];
  }
  return 0;
}

// ---- stochastic depth ------------------------------------------------------------------------
// The residual add of a branch that stochastic depth scales per sample (keep: B values, 0 or
// 1 / (1 - p)); x and branch are (B, ...) alike:
//   ScaledAdd (x, branch, keep) -> y = x + keep[b] * branch
//   RowScale (dy, keep)         -> dbranch = keep[b] * dy      (dx = dy needs no kernel)
// Natively these were a broadcast of keep to the branch's shape, a multiply and an add: ~7
// activation-sized passes and buffers instead of 3.
namespace {

template <typename Fn>
void PerSample(int64_t n, int64_t per_sample, const float *keep, Fn fn) {
  ParallelFor(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {
      const int64_t b = i / per_sample, stop = std::min(end, (b + 1) * per_sample);
      fn(i, stop, keep[b]);
      i = stop;
    }
  });
}

}  // namespace

extern "C" int ScaledAdd(int nparam, void **params, int *ndims, int64_t **shapes,
                         const char **dtypes, void *stream, void *extra) {
  if (nparam != 4 || !IsF32(dtypes[0]) || !IsF32(dtypes[1]) || !IsF32(dtypes[2])) return 1;
  const int64_t n = Numel(ndims[0], shapes[0]), batch = Numel(ndims[2], shapes[2]);
  if (batch <= 0 || n % batch != 0) return 1;
  const float *__restrict x = static_cast<const float *>(params[0]);
  const float *__restrict branch = static_cast<const float *>(params[1]);
  float *__restrict y = static_cast<float *>(params[3]);
  PerSample(n, n / batch, static_cast<const float *>(params[2]),
            [&](int64_t begin, int64_t end, float s) {
#pragma omp simd
              for (int64_t i = begin; i < end; ++i) y[i] = x[i] + s * branch[i];
            });
  return 0;
}

extern "C" int RowScale(int nparam, void **params, int *ndims, int64_t **shapes,
                        const char **dtypes, void *stream, void *extra) {
  if (nparam != 3 || !IsF32(dtypes[0]) || !IsF32(dtypes[1])) return 1;
  const int64_t n = Numel(ndims[0], shapes[0]), batch = Numel(ndims[1], shapes[1]);
  if (batch <= 0 || n % batch != 0) return 1;
  const float *__restrict dy = static_cast<const float *>(params[0]);
  float *__restrict out = static_cast<float *>(params[2]);
  PerSample(n, n / batch, static_cast<const float *>(params[1]),
            [&](int64_t begin, int64_t end, float s) {
#pragma omp simd
              for (int64_t i = begin; i < end; ++i) out[i] = s * dy[i];
            });
  return 0;
}

// ---- self-check (see common.h) ---------------------------------------------------------------
// GELU against std::erf, LayerNorm and the column sum against plain loops, and the factorized
// attention (3 heads of 5 channels, 7 tokens: not vector multiples) against its definition.

namespace {

int CheckGelu(char *message, int length) {
  std::vector<float> x = mindcoat::TestData(301, 0.1f), y(x.size()), want(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] *= 6.0f;
    want[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678f));
  }
  int64_t shape[1] = {static_cast<int64_t>(x.size())};
  int64_t *shapes[2] = {shape, shape};
  int ndims[2] = {1, 1};
  void *params[2] = {x.data(), y.data()};
  int status = GeluFwd(2, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  if (mindcoat::Verdict("GeluFwd", status, y, want, 1e-5f, message, length)) return 1;
  std::vector<float> y2(x.size()), d(x.size()), d_want(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    d_want[i] = 0.5f * (1.0f + std::erf(x[i] * 0.70710678f)) +
                x[i] * std::exp(-0.5f * x[i] * x[i]) * 0.39894228f;
  int64_t *shapes3[3] = {shape, shape, shape};
  int ndims3[3] = {1, 1, 1};
  void *params3[3] = {x.data(), y2.data(), d.data()};
  status = GeluFwdGrad(3, params3, ndims3, shapes3, mindcoat::F32Types(), nullptr, nullptr);
  return mindcoat::Verdict("GeluFwdGrad", status, y2, want, 1e-5f, message, length) ||
         mindcoat::Verdict("GeluFwdGrad", status, d, d_want, 1e-5f, message, length);
}

int CheckLayerNorm(char *message, int length) {
  const int64_t rows = 6, C = 21;
  std::vector<float> x = mindcoat::TestData(rows * C, 0.3f), gamma = mindcoat::TestData(C, 1.1f);
  std::vector<float> beta = mindcoat::TestData(C, 2.2f), y(rows * C), want(rows * C);
  float eps = 1e-6f;
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < C; ++c) mean += x[r * C + c] / static_cast<double>(C);
    for (int64_t c = 0; c < C; ++c) var += std::pow(x[r * C + c] - mean, 2) / C;
    for (int64_t c = 0; c < C; ++c)
      want[r * C + c] = static_cast<float>((x[r * C + c] - mean) / std::sqrt(var + eps)) *
                        gamma[c] + beta[c];
  }
  int64_t s_x[2] = {rows, C}, s_c[1] = {C}, s_eps[1] = {1};
  int64_t *shapes[5] = {s_x, s_c, s_c, s_eps, s_x};
  int ndims[5] = {2, 1, 1, 1, 2};
  void *params[5] = {x.data(), gamma.data(), beta.data(), &eps, y.data()};
  const int status = LayerNormFwd(5, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  return mindcoat::Verdict("LayerNormFwd", status, y, want, 1e-4f, message, length);
}

int CheckColSum(char *message, int length) {
  const int64_t rows = 70, C = 13;
  std::vector<float> x = mindcoat::TestData(rows * C, 0.7f), y(C), want(C, 0.0f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < C; ++c) want[c] += x[r * C + c];
  int64_t s_x[2] = {rows, C}, s_c[1] = {C};
  int64_t *shapes[2] = {s_x, s_c};
  int ndims[2] = {2, 1};
  void *params[2] = {x.data(), y.data()};
  const int status = ColSum(2, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  return mindcoat::Verdict("ColSum", status, y, want, 1e-4f, message, length);
}

// out[n, h, j] = ch^-0.5 * sum_i q[n, h, i] * sum_m softmax_m(k[:, h, i])[m] * v[m, h, j] + crpe
int CheckFactorAtt(char *message, int length) {
  const int64_t B = 2, N = kChunk + 9, heads = 3, ch = 5, C = heads * ch;  // two chunks
  std::vector<float> qkv = mindcoat::TestData(B * N * 3 * C, 0.9f);
  std::vector<float> crpe = mindcoat::TestData(B * N * C, 1.3f), head(heads);
  std::vector<float> y(B * N * C), want(B * N * C);
  const double scale = 1.0 / std::sqrt(static_cast<double>(ch));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<double> kv(ch * ch, 0.0);
      for (int64_t i = 0; i < ch; ++i) {
        const int64_t kc = C + h * ch + i;
        double mx = -1e30, sum = 0.0;
        for (int64_t m = 0; m < N; ++m) mx = std::max<double>(mx, qkv[(b * N + m) * 3 * C + kc]);
        for (int64_t m = 0; m < N; ++m) sum += std::exp(qkv[(b * N + m) * 3 * C + kc] - mx);
        for (int64_t m = 0; m < N; ++m)
          for (int64_t j = 0; j < ch; ++j)
            kv[i * ch + j] += std::exp(qkv[(b * N + m) * 3 * C + kc] - mx) / sum *
                              qkv[(b * N + m) * 3 * C + 2 * C + h * ch + j];
      }
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < ch; ++j) {
          double acc = 0.0;
          for (int64_t i = 0; i < ch; ++i)
            acc += qkv[(b * N + n) * 3 * C + h * ch + i] * kv[i * ch + j];
          const int64_t o = (b * N + n) * C + h * ch + j;
          want[o] = static_cast<float>(scale * acc) + crpe[o];
        }
    }
  int64_t s_qkv[3] = {B, N, 3 * C}, s_y[3] = {B, N, C}, s_h[1] = {heads};
  int64_t *shapes[4] = {s_qkv, s_y, s_h, s_y};
  int ndims[4] = {3, 3, 1, 3};
  void *params[4] = {qkv.data(), crpe.data(), head.data(), y.data()};
  int status = FactorAttFwd(4, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  if (mindcoat::Verdict("FactorAttFwd", status, y, want, 1e-4f, message, length)) return 1;
  for (int64_t r = 0; r < B * N; ++r)  // crpe = q * e, e = crpe
    for (int64_t c = 0; c < C; ++c)
      want[r * C + c] += (qkv[r * 3 * C + c] - 1.0f) * crpe[r * C + c];
  status = FactorAttQFwd(4, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  return mindcoat::Verdict("FactorAttQFwd", status, y, want, 1e-4f, message, length);
}

int CheckScaledAdd(char *message, int length) {
  const int64_t B = 3, per = 37;  // samples split across the threads' chunks
  std::vector<float> x = mindcoat::TestData(B * per, 0.4f), br = mindcoat::TestData(B * per, 0.8f);
  std::vector<float> keep = {0.0f, 1.25f, 1.0f}, y(B * per), want(B * per);
  for (int64_t i = 0; i < B * per; ++i) want[i] = x[i] + keep[i / per] * br[i];
  int64_t s_x[2] = {B, per}, s_k[3] = {B, 1, 1};
  int64_t *shapes[4] = {s_x, s_x, s_k, s_x};
  int ndims[4] = {2, 2, 3, 2};
  void *params[4] = {x.data(), br.data(), keep.data(), y.data()};
  int status = ScaledAdd(4, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  if (mindcoat::Verdict("ScaledAdd", status, y, want, 1e-6f, message, length)) return 1;
  for (int64_t i = 0; i < B * per; ++i) want[i] = keep[i / per] * br[i];
  int64_t *shapes3[3] = {s_x, s_k, s_x};
  int ndims3[3] = {2, 3, 2};
  void *params3[3] = {br.data(), keep.data(), y.data()};
  status = RowScale(3, params3, ndims3, shapes3, mindcoat::F32Types(), nullptr, nullptr);
  return mindcoat::Verdict("RowScale", status, y, want, 1e-6f, message, length);
}

}  // namespace

extern "C" int MindcoatSelfCheck(char *message, int length) {
  return CheckGelu(message, length) || CheckLayerNorm(message, length) ||
         CheckColSum(message, length) || CheckFactorAtt(message, length) ||
         CheckScaledAdd(message, length);
}
