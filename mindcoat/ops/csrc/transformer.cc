// Transformer-side CPU kernels for CoaT, called through ops.Custom(func_type="aot"):
// exact GELU, CoaT's factorized attention and LayerNorm (forward and backward), a bias gradient.
//
// GELU:
// MindSpore 2.10's CPU erf/GELU are scalar (~8 ns per element); CoaT's MLPs apply GELU to
// 25M values per stage-1 block at batch 16. Here erf and exp are written as branch-free
// polynomials so that the loops vectorise (AVX2: 8 lanes), in float32 with errors of a few
// 1e-7 relative, i.e. at the level of float32 rounding of the reference.
//   GeluFwd (x)     -> y  = x * Phi(x),            Phi(x) = (1 + erf(x / sqrt 2)) / 2
//   GeluBwd (x, dy) -> dx = dy * (Phi(x) + x * phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//
// Factorized attention, on the fused projection qkv (B, N, 3C) in token layout (no split into
// heads, no transposes): per batch b and head h (Ch = C / heads channels),
//   out = scale * q (softmax_N(k)^T v) + crpe,   scale = Ch^-1/2
//   FactorAttFwd (qkv, crpe, heads) -> out (B, N, C)       `heads`: only its shape (heads,) is read
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
#pragma omp simd
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
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      const float pdf = 0.39894228040143268f * ExpNeg(-0.5f * v * v);
      dx[i] = dy[i] * (Phi(v) + v * pdf);
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

// Softmax statistics over the tokens for columns [c0, c1) of k: max and 1 / sum of exp.
void SoftmaxStats(const float *k, const AttShape &s, int64_t c0, int64_t c1, float *mx,
                  float *inv) {
  for (int64_t c = c0; c < c1; ++c) {
    mx[c] = -INFINITY;
    inv[c] = 0.0f;
  }
  for (int64_t n = 0; n < s.N; ++n) {
    const float *kn = k + n * s.row;
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) mx[c] = kn[c] > mx[c] ? kn[c] : mx[c];
  }
  for (int64_t n = 0; n < s.N; ++n) {
    const float *kn = k + n * s.row;
#pragma omp simd
    for (int64_t c = c0; c < c1; ++c) inv[c] += ExpNeg(kn[c] - mx[c]);
  }
  for (int64_t c = c0; c < c1; ++c) inv[c] = 1.0f / inv[c];
}

// Heads of ch <= P channels, P a multiple of 8: the ch x ch products (kv, dkv and their
// transposes) are stored P wide, zero past ch, so that every inner loop has the compile-time
// length P, runs in whole vectors and keeps its accumulators in registers; tokens go in blocks
// of T so that each product row is loaded once per block. (With loops of length ch = 19,
// CoaT's head width, the accumulators went through memory: half PyTorch's speed.)
constexpr int T = 4;

// dst (T rows of P) = head h's ch channels of T token rows of src (row stride `stride`);
// rows past t_n are zeroed (a short last block adds nothing), as are columns past ch.
template <int P>
inline void PadRows(const float *src, int64_t stride, int64_t t_n, int64_t h, int64_t ch,
                    float *dst) {
  for (int64_t t = 0; t < T; ++t) {
    float *d = dst + t * P;
    std::fill(d, d + P, 0.0f);
    if (t < t_n) std::copy(src + t * stride + h * ch, src + t * stride + (h + 1) * ch, d);
  }
}

// Rows c of head h of m (P wide) += sum_t a[t * stride + c] * bp[t * P + :], over a block of T
// tokens (a's rows past the block's end must be zero, or bp's).
template <int P>
inline void OuterAcc(const float *a, int64_t stride, const float *bp, int64_t h, int64_t ch,
                     float *m) {
  const float *b0 = bp, *b1 = bp + P, *b2 = bp + 2 * P, *b3 = bp + 3 * P;
  for (int64_t c = h * ch; c < (h + 1) * ch; ++c) {
    const float a0 = a[c], a1 = a[stride + c], a2 = a[2 * stride + c], a3 = a[3 * stride + c];
    float *r = m + c * P;
#pragma omp simd
    for (int j = 0; j < P; ++j) r[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
  }
}

// out[0:ch) = sum_j a[j] * m[(h*ch + j) * P + :], accumulated in registers.
template <int P>
inline void RowTimes(const float *a, const float *m, int64_t h, int64_t ch, float *out) {
  float acc[P] = {};
  for (int64_t j = 0; j < ch; ++j) {
    const float x = a[j];
    const float *r = m + (h * ch + j) * P;
#pragma omp simd
    for (int i = 0; i < P; ++i) acc[i] += x * r[i];
  }
  std::copy(acc, acc + ch, out);
}

template <int P>
void FactorAttForward(const float *qkv, const float *crpe, float *out, const AttShape &s,
                      float scale) {
  const int64_t ch = s.ch, C = s.C;
  ParallelFor(s.B * s.blocks, [&](int64_t begin, int64_t end) {
    std::vector<float> mx(C), inv(C), e(T * C), kv(s.heads * ch * P), vp(T * P), o(P);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.blocks;
      const int64_t h0 = (task % s.blocks) * s.per_block;
      const int64_t h1 = std::min(s.heads, h0 + s.per_block);
      const int64_t c0 = h0 * ch, c1 = h1 * ch;
      const float *q = qkv + b * s.N * s.row, *k = q + C, *v = q + 2 * C;
      SoftmaxStats(k, s, c0, c1, mx.data(), inv.data());
      std::fill(kv.begin(), kv.end(), 0.0f);
      for (int64_t n0 = 0; n0 < s.N; n0 += T) {  // kv = exp(k - max)^T v, per head
        const int64_t t_n = std::min<int64_t>(T, s.N - n0);
        for (int64_t t = 0; t < T; ++t) {
          const float *kn = k + (n0 + t) * s.row;
          float *et = e.data() + t * C;
          if (t < t_n) {
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) et[c] = ExpNeg(kn[c] - mx[c]);
          } else {
            std::fill(et + c0, et + c1, 0.0f);
          }
        }
        for (int64_t h = h0; h < h1; ++h) {
          PadRows<P>(v + n0 * s.row, s.row, t_n, h, ch, vp.data());
          OuterAcc<P>(e.data(), C, vp.data(), h, ch, kv.data());
        }
      }
      for (int64_t c = c0; c < c1; ++c) {  // softmax normalisation and the scale, once
        float *r = kv.data() + c * P;
        for (int j = 0; j < P; ++j) r[j] *= inv[c] * scale;
      }
      for (int64_t n = 0; n < s.N; ++n) {  // out = q kv + crpe
        const int64_t at = (b * s.N + n) * C;
        for (int64_t h = h0; h < h1; ++h) {
          RowTimes<P>(q + n * s.row + h * ch, kv.data(), h, ch, o.data());
          for (int64_t j = 0; j < ch; ++j) out[at + h * ch + j] = o[j] + crpe[at + h * ch + j];
        }
      }
    }
  });
}

// With G = scale * dout, kv = softmax(k)^T v, ks = softmax(k), per head:
//   dq = G kv^T,  dkv = q^T G,  dv = ks dkv,  dks = v dkv^T,
//   dk = ks * (dks - sum_n ks * dks)   (softmax backward along the token axis)
template <int P>
void FactorAttBackward(const float *qkv, const float *dout, float *dqkv, const AttShape &s,
                       float scale) {
  const int64_t ch = s.ch, C = s.C;
  ParallelFor(s.B * s.blocks, [&](int64_t begin, int64_t end) {
    std::vector<float> mx(C), inv(C), ks(T * C), qb(T * C), r(C), o(P);
    std::vector<float> kv(s.heads * ch * P), dkv(s.heads * ch * P), vp(T * P), gp(T * P);
    std::vector<float> kvt(s.heads * ch * P), dkvt(s.heads * ch * P);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.blocks;
      const int64_t h0 = (task % s.blocks) * s.per_block;
      const int64_t h1 = std::min(s.heads, h0 + s.per_block);
      const int64_t c0 = h0 * ch, c1 = h1 * ch;
      const float *q = qkv + b * s.N * s.row, *k = q + C, *v = q + 2 * C;
      float *dq = dqkv + b * s.N * s.row, *dk = dq + C, *dv = dq + 2 * C;
      const float *dy = dout + b * s.N * C;
      SoftmaxStats(k, s, c0, c1, mx.data(), inv.data());
      std::fill(kv.begin(), kv.end(), 0.0f);
      std::fill(dkv.begin(), dkv.end(), 0.0f);
      std::fill(r.begin(), r.end(), 0.0f);
      for (int64_t n0 = 0; n0 < s.N; n0 += T) {  // kv = ks^T v, dkv = q^T G
        const int64_t t_n = std::min<int64_t>(T, s.N - n0);
        for (int64_t t = 0; t < T; ++t) {
          const float *kn = k + (n0 + t) * s.row, *qn = q + (n0 + t) * s.row;
          float *kst = ks.data() + t * C, *qt = qb.data() + t * C;
          if (t < t_n) {
#pragma omp simd
            for (int64_t c = c0; c < c1; ++c) kst[c] = ExpNeg(kn[c] - mx[c]) * inv[c];
            std::copy(qn + c0, qn + c1, qt + c0);
          } else {
            std::fill(kst + c0, kst + c1, 0.0f);
            std::fill(qt + c0, qt + c1, 0.0f);
          }
        }
        for (int64_t h = h0; h < h1; ++h) {
          PadRows<P>(v + n0 * s.row, s.row, t_n, h, ch, vp.data());
          PadRows<P>(dy + n0 * C, C, t_n, h, ch, gp.data());
          OuterAcc<P>(ks.data(), C, vp.data(), h, ch, kv.data());
          OuterAcc<P>(qb.data(), C, gp.data(), h, ch, dkv.data());
        }
      }
      for (int64_t c = c0; c < c1; ++c)  // G = scale * dout, applied once to dkv
        for (int j = 0; j < P; ++j) dkv[c * P + j] *= scale;
      // transposed copies (P wide, zero past ch): each product below is then a row times them
      std::fill(kvt.begin(), kvt.end(), 0.0f);
      std::fill(dkvt.begin(), dkvt.end(), 0.0f);
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t i = 0; i < ch; ++i)
          for (int64_t j = 0; j < ch; ++j) {
            kvt[(h * ch + j) * P + i] = kv[(h * ch + i) * P + j];
            dkvt[(h * ch + j) * P + i] = dkv[(h * ch + i) * P + j];
          }
      for (int64_t n = 0; n < s.N; ++n) {
        const float *kn = k + n * s.row, *vn = v + n * s.row, *dyn = dy + n * C;
        float *dqn = dq + n * s.row, *dkn = dk + n * s.row, *dvn = dv + n * s.row;
        float *kst = ks.data();
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) kst[c] = ExpNeg(kn[c] - mx[c]) * inv[c];
        for (int64_t h = h0; h < h1; ++h) {
          RowTimes<P>(dyn + h * ch, kvt.data(), h, ch, o.data());  // dq = G kv^T
          for (int64_t i = 0; i < ch; ++i) dqn[h * ch + i] = scale * o[i];
          RowTimes<P>(vn + h * ch, dkvt.data(), h, ch, dkn + h * ch);  // dks = v dkv^T
          RowTimes<P>(kst + h * ch, dkv.data(), h, ch, dvn + h * ch);  // dv = ks dkv
        }
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) r[c] += kst[c] * dkn[c];
      }
      for (int64_t n = 0; n < s.N; ++n) {  // dk = ks * (dks - r)
        const float *kn = k + n * s.row;
        float *dkn = dk + n * s.row;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dkn[c] = ExpNeg(kn[c] - mx[c]) * inv[c] * (dkn[c] - r[c]);
      }
    }
  });
}

template <int P>
void FactorAtt(bool backward, const float *qkv, const float *other, float *out, const AttShape &s,
               float scale) {
  if (backward) FactorAttBackward<P>(qkv, other, out, s, scale);
  else FactorAttForward<P>(qkv, other, out, s, scale);
}

// params: qkv, crpe (forward) or dout (backward), heads; out (forward) or dqkv (backward).
// Runs with the smallest P (a multiple of 8) that holds a head.
int FactorAtt(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
              bool backward) {
  AttShape s;
  if (nparam != 4 || !GetAttShape(ndims, shapes, dtypes, 2, &s)) return 1;
  const float scale = static_cast<float>(std::pow(static_cast<double>(s.ch), -0.5));
  const float *qkv = static_cast<const float *>(params[0]);
  const float *other = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[3]);
  switch ((s.ch + 7) / 8) {  // heads of up to 64 channels (CoaT's widest: 512 / 8)
    case 1: FactorAtt<8>(backward, qkv, other, out, s, scale); return 0;
    case 2: FactorAtt<16>(backward, qkv, other, out, s, scale); return 0;
    case 3: FactorAtt<24>(backward, qkv, other, out, s, scale); return 0;
    case 4: FactorAtt<32>(backward, qkv, other, out, s, scale); return 0;
    case 5: FactorAtt<40>(backward, qkv, other, out, s, scale); return 0;
    case 6: FactorAtt<48>(backward, qkv, other, out, s, scale); return 0;
    case 7: FactorAtt<56>(backward, qkv, other, out, s, scale); return 0;
    case 8: FactorAtt<64>(backward, qkv, other, out, s, scale); return 0;
    default: return 1;  // the Python side sends wider heads to the native path
  }
}

}  // namespace

extern "C" int FactorAttFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  return FactorAtt(nparam, params, ndims, shapes, dtypes, false);
}

extern "C" int FactorAttBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  return FactorAtt(nparam, params, ndims, shapes, dtypes, true);
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
    for (int64_t ch = begin; ch < end; ++ch) {
      float *pg = partial.data() + ch * 2 * C, *pb = pg + C;
      std::vector<float> xhat(C);
      for (int64_t r = rows * ch / chunks; r < rows * (ch + 1) / chunks; ++r) {
        const float *xr = x + r * C, *dyr = dy + r * C;
        float *dxr = dx + r * C;
        float mean, rstd;
        RowStats(xr, C, eps, &mean, &rstd);
        float s1 = 0.0f, s2 = 0.0f;  // sums of dy*gamma and dy*gamma*xhat
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t c = 0; c < C; ++c) {
          const float xh = (xr[c] - mean) * rstd;
          const float dg = dyr[c] * gamma[c];
          xhat[c] = xh;
          s1 += dg;
          s2 += dg * xh;
          pg[c] += dyr[c] * xh;
          pb[c] += dyr[c];
        }
        const float m1 = s1 / static_cast<float>(C), m2 = s2 / static_cast<float>(C);
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dxr[c] = rstd * (dyr[c] * gamma[c] - m1 - xhat[c] * m2);
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
// MindSpore 2.10's CPU BiasAddGrad took ~4 ms per call on CoaT's (50k, 608) activations.
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
  const int status = GeluFwd(2, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  return mindcoat::Verdict("GeluFwd", status, y, want, 1e-5f, message, length);
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
  const int64_t B = 2, N = 7, heads = 3, ch = 5, C = heads * ch;
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
  const int status = FactorAttFwd(4, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  return mindcoat::Verdict("FactorAttFwd", status, y, want, 1e-4f, message, length);
}

}  // namespace

extern "C" int MindcoatSelfCheck(char *message, int length) {
  return CheckGelu(message, length) || CheckLayerNorm(message, length) ||
         CheckColSum(message, length) || CheckFactorAtt(message, length);
}
