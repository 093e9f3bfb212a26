// Transformer-side CPU kernels for CoaT, called through ops.Custom(func_type="aot"):
// exact GELU and CoaT's factorized attention, forward and backward.
//
// GELU:
// MindSpore 2.10's CPU erf/GELU are scalar (~8 ns per element); CoaT's MLPs apply GELU to
// 25M values per stage-1 block at batch 16. Here erf and exp are written as branch-free
// polynomials so that the loops vectorise (AVX-512: 16 lanes), in float32 with errors of a few
// 1e-7 relative, i.e. at the level of float32 rounding of the reference.
//   GeluFwd (x)     -> y  = x * Phi(x),            Phi(x) = (1 + erf(x / sqrt 2)) / 2
//   GeluBwd (x, dy) -> dx = dy * (Phi(x) + x * phi(x)),   phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//
// Factorized attention, on the fused projection qkv (B, N, 3C) in token layout (no split into
// heads, no transposes): per batch b and head h (Ch = C / heads channels),
//   out = scale * q (softmax_N(k)^T v) + crpe,   scale = Ch^-1/2
//   FactorAttFwd (qkv, crpe, heads) -> out (B, N, C)       `heads`: only its shape (heads,) is read
//   FactorAttBwd (qkv, dout, heads) -> dqkv (B, N, 3C)     (d crpe = dout)
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

namespace {

int NumThreads() {
  static const int n = [] {
    const char *env = std::getenv("OMP_NUM_THREADS");
    int v = env ? std::atoi(env) : 0;
    return v > 0 ? v : omp_get_num_procs();
  }();
  return n;
}

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

bool IsF32(const char *dtype) { return std::strcmp(dtype, "float32") == 0; }

int64_t Numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

}  // namespace

extern "C" int GeluFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *stream, void *extra) {
  if (nparam != 2 || !IsF32(dtypes[0])) return 1;
  const int64_t n = Numel(ndims[0], shapes[0]);
  const float *__restrict x = static_cast<const float *>(params[0]);
  float *__restrict y = static_cast<float *>(params[1]);
#pragma omp parallel for simd schedule(static) num_threads(NumThreads())
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * Phi(x[i]);
  return 0;
}

extern "C" int GeluBwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                       void *stream, void *extra) {
  if (nparam != 3 || !IsF32(dtypes[0])) return 1;
  const int64_t n = Numel(ndims[0], shapes[0]);
  const float *__restrict x = static_cast<const float *>(params[0]);
  const float *__restrict dy = static_cast<const float *>(params[1]);
  float *__restrict dx = static_cast<float *>(params[2]);
#pragma omp parallel for simd schedule(static) num_threads(NumThreads())
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float pdf = 0.39894228040143268f * ExpNeg(-0.5f * v * v);
    dx[i] = dy[i] * (Phi(v) + v * pdf);
  }
  return 0;
}

// ---- factorized attention --------------------------------------------------------------------

namespace {

struct AttShape {
  int64_t B, N, C, heads, ch, row;  // row: floats per token in qkv (3C)
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
  return true;
}

// Column-wise softmax statistics of this head's k over the N tokens: max and sum of exp.
void SoftmaxStats(const float *k, const AttShape &s, float *mx, float *sum) {
  const int64_t ch = s.ch;
  for (int64_t c = 0; c < ch; ++c) {
    mx[c] = -INFINITY;
    sum[c] = 0.0f;
  }
  for (int64_t n = 0; n < s.N; ++n) {
    const float *kn = k + n * s.row;
#pragma omp simd
    for (int64_t c = 0; c < ch; ++c) mx[c] = kn[c] > mx[c] ? kn[c] : mx[c];
  }
  for (int64_t n = 0; n < s.N; ++n) {
    const float *kn = k + n * s.row;
#pragma omp simd
    for (int64_t c = 0; c < ch; ++c) sum[c] += ExpNeg(kn[c] - mx[c]);
  }
}

inline void SoftmaxRow(const float *kn, const float *mx, const float *sum, int64_t ch, float *ks) {
#pragma omp simd
  for (int64_t c = 0; c < ch; ++c) ks[c] = ExpNeg(kn[c] - mx[c]) / sum[c];
}

}  // namespace

extern "C" int FactorAttFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  AttShape s;
  if (nparam != 4 || !GetAttShape(ndims, shapes, dtypes, 2, &s)) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  const float *crpe = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[3]);
  const float scale = static_cast<float>(std::pow(static_cast<double>(s.ch), -0.5));
  const int64_t ch = s.ch;
  // One task per (batch, head): each owns its output columns, so no two tasks write alike.
#pragma omp parallel for schedule(dynamic) num_threads(NumThreads())
  for (int64_t task = 0; task < s.B * s.heads; ++task) {
    const int64_t b = task / s.heads, h = task % s.heads;
    const float *q = qkv + b * s.N * s.row + h * ch, *k = q + s.C, *v = q + 2 * s.C;
    std::vector<float> mx(ch), sum(ch), ks(ch), kv(ch * ch, 0.0f), acc(ch);
    SoftmaxStats(k, s, mx.data(), sum.data());
    for (int64_t n = 0; n < s.N; ++n) {  // kv = softmax(k)^T v
      SoftmaxRow(k + n * s.row, mx.data(), sum.data(), ch, ks.data());
      const float *vn = v + n * s.row;
      for (int64_t ck = 0; ck < ch; ++ck) {
        float *kvr = kv.data() + ck * ch;
        const float a = ks[ck];
#pragma omp simd
        for (int64_t cv = 0; cv < ch; ++cv) kvr[cv] += a * vn[cv];
      }
    }
    for (int64_t n = 0; n < s.N; ++n) {  // out = scale * q kv + crpe
      const float *qn = q + n * s.row;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t ck = 0; ck < ch; ++ck) {
        const float a = qn[ck];
        const float *kvr = kv.data() + ck * ch;
#pragma omp simd
        for (int64_t cv = 0; cv < ch; ++cv) acc[cv] += a * kvr[cv];
      }
      const int64_t at = (b * s.N + n) * s.C + h * ch;
#pragma omp simd
      for (int64_t cv = 0; cv < ch; ++cv) out[at + cv] = scale * acc[cv] + crpe[at + cv];
    }
  }
  return 0;
}

// With G = scale * dout (this head's columns), kv = softmax(k)^T v, ks = softmax(k):
//   dq = G kv^T,  dkv = q^T G,  dv = ks dkv,  dks = v dkv^T,
//   dk = ks * (dks - sum_n ks * dks)   (softmax backward along the token axis)
extern "C" int FactorAttBwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  AttShape s;
  if (nparam != 4 || !GetAttShape(ndims, shapes, dtypes, 2, &s)) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  const float *dout = static_cast<const float *>(params[1]);
  float *dqkv = static_cast<float *>(params[3]);
  const float scale = static_cast<float>(std::pow(static_cast<double>(s.ch), -0.5));
  const int64_t ch = s.ch;
#pragma omp parallel for schedule(dynamic) num_threads(NumThreads())
  for (int64_t task = 0; task < s.B * s.heads; ++task) {
    const int64_t b = task / s.heads, h = task % s.heads;
    const int64_t base = b * s.N * s.row + h * ch;
    const float *q = qkv + base, *k = q + s.C, *v = q + 2 * s.C;
    float *dq = dqkv + base, *dk = dq + s.C, *dv = dq + 2 * s.C;
    const float *dy = dout + b * s.N * s.C + h * ch;
    std::vector<float> mx(ch), sum(ch), ks(ch), g(ch), r(ch, 0.0f);
    std::vector<float> kv(ch * ch, 0.0f), dkv(ch * ch, 0.0f);
    SoftmaxStats(k, s, mx.data(), sum.data());
    for (int64_t n = 0; n < s.N; ++n) {
      SoftmaxRow(k + n * s.row, mx.data(), sum.data(), ch, ks.data());
      const float *vn = v + n * s.row, *qn = q + n * s.row, *dyn = dy + n * s.C;
#pragma omp simd
      for (int64_t c = 0; c < ch; ++c) g[c] = scale * dyn[c];
      for (int64_t ck = 0; ck < ch; ++ck) {
        float *kvr = kv.data() + ck * ch, *dkvr = dkv.data() + ck * ch;
        const float a = ks[ck], qa = qn[ck];
#pragma omp simd
        for (int64_t cv = 0; cv < ch; ++cv) {
          kvr[cv] += a * vn[cv];
          dkvr[cv] += qa * g[cv];
        }
      }
    }
    for (int64_t n = 0; n < s.N; ++n) {
      SoftmaxRow(k + n * s.row, mx.data(), sum.data(), ch, ks.data());
      const float *vn = v + n * s.row, *dyn = dy + n * s.C;
      float *dqn = dq + n * s.row, *dkn = dk + n * s.row, *dvn = dv + n * s.row;
#pragma omp simd
      for (int64_t cv = 0; cv < ch; ++cv) dvn[cv] = 0.0f;
      for (int64_t ck = 0; ck < ch; ++ck) {
        const float *kvr = kv.data() + ck * ch, *dkvr = dkv.data() + ck * ch;
        float sq = 0.0f, sk = 0.0f;
        const float a = ks[ck];
#pragma omp simd reduction(+ : sq, sk)
        for (int64_t cv = 0; cv < ch; ++cv) {
          sq += scale * dyn[cv] * kvr[cv];
          sk += vn[cv] * dkvr[cv];
          dvn[cv] += a * dkvr[cv];
        }
        dqn[ck] = sq;
        dkn[ck] = sk;  // dks for now
        r[ck] += a * sk;
      }
    }
    for (int64_t n = 0; n < s.N; ++n) {
      SoftmaxRow(k + n * s.row, mx.data(), sum.data(), ch, ks.data());
      float *dkn = dk + n * s.row;
#pragma omp simd
      for (int64_t c = 0; c < ch; ++c) dkn[c] = ks[c] * (dkn[c] - r[c]);
    }
  }
  return 0;
}
