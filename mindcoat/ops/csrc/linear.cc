// Fully connected layers y = x W^T + b for CoaT, and the detection heads' convolutions, on the CPU
// through ops.Custom(func_type="aot").
//
// MindSpore's CPU MatMul is a oneDNN matmul primitive; its Dense then adds the bias in a separate
// BiasAdd pass over the whole output (~10% of a CoaT forward). Here the same oneDNN library that
// MindSpore ships (libdnnl.so.3, linked at build time) runs a matmul primitive with the bias fused
// into it. That library is built for a caller-supplied thread pool: it gets the package's own
// (common.h).
//   LinearFwd     (x (..., K), w (N, K), b (N,))        -> y = x W^T + b    (..., N)
//   LinearResFwd  (x, w, b, r (..., N))                 -> r + x W^T + b    (a residual branch)
//   LinearGeluFwd (x, w, b)                             -> GELU(x W^T + b)  (exact, erf)
//   LinearGradX   (dy (..., N), w (N, K))               -> dy W             (..., K)
//   LinearGradXMul (dy, w, m (..., K))                  -> (dy W) * m       (m: GELU's slope)
//   LinearGradW   (dy (..., N), x (..., K))             -> dy^T x           (N, K)
//   Conv2dFwd     (x (B, H, W, Cin), w (Cout, Cin, k, k), b (Cout,)) -> (B, H, W, Cout)
//   Conv2dReluFwd (the same)                                          -> ReLU of it
//   DeconvReluFwd (x (B, H, W, Cin), w (Cin, Cout, k, k), b (Cout,)) -> ReLU of (B, kH, kW, Cout)
// (convolutions: stride 1, zero padding k / 2; the transposed one: stride k, no padding, as the
// mask head's 2x2 upsampling; channels-last, PyTorch's weight layouts). oneDNN's (de)convolution
// primitive on the channels-last tensors as stored; the weights are reordered on each call into
// the blocked layout the primitive chose (0.6 MB for 256 channels, 3x3). MindSpore's CPU Conv2d
// took about 100 times as long on these shapes, k * k shifted MatMuls 2.5 times.
// The residual add and GELU are oneDNN post-ops applied while the output tile is in cache: the
// separate passes over the whole output go away. The weight gradient reads dy^T (or x^T) as a
// strided view; MindSpore's MatMul (the same oneDNN) was 10-35% slower on CoaT's shapes.
//
// oneDNN's headers are not shipped with MindSpore, so the few C API entry points used are
// declared here, from oneDNN 3.x's dnnl.h / dnnl_types.h (stable within the major version; the
// library's version is checked before use).
#include "common.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

using mindcoat::IsF32;
using mindcoat::Numel;
using mindcoat::NumThreads;
using mindcoat::ParallelFor;

extern "C" {
typedef struct dnnl_opaque *dnnl_handle;  // engines, streams, descriptors, primitives, memories
typedef int64_t dnnl_dims[12];            // DNNL_MAX_NDIMS
typedef struct {
  int arg;
  dnnl_handle memory;
} dnnl_exec_arg;
typedef struct {
  int major, minor, patch;
  const char *hash;
  unsigned cpu_runtime, gpu_runtime;
} dnnl_version_info;

const dnnl_version_info *dnnl_version(void);
int dnnl_engine_create(dnnl_handle *engine, int kind, size_t index);
int dnnl_threadpool_interop_stream_create(dnnl_handle *stream, dnnl_handle engine,
                                          void *threadpool);
int dnnl_memory_desc_create_with_strides(dnnl_handle *md, int ndims, const dnnl_dims dims,
                                         int data_type, const dnnl_dims strides);
int dnnl_memory_desc_destroy(dnnl_handle md);
int dnnl_matmul_primitive_desc_create(dnnl_handle *pd, dnnl_handle engine, dnnl_handle src,
                                      dnnl_handle weights, dnnl_handle bias, dnnl_handle dst,
                                      dnnl_handle attr);
int dnnl_primitive_desc_destroy(dnnl_handle pd);
int dnnl_primitive_create(dnnl_handle *primitive, dnnl_handle pd);
int dnnl_memory_create(dnnl_handle *memory, dnnl_handle md, dnnl_handle engine, void *handle);
int dnnl_memory_destroy(dnnl_handle memory);
int dnnl_primitive_execute(dnnl_handle primitive, dnnl_handle stream, int nargs,
                           const dnnl_exec_arg *args);
int dnnl_stream_wait(dnnl_handle stream);
int dnnl_get_effective_cpu_isa(void);
int dnnl_primitive_attr_create(dnnl_handle *attr);
int dnnl_primitive_attr_destroy(dnnl_handle attr);
int dnnl_primitive_attr_set_post_ops(dnnl_handle attr, dnnl_handle post_ops);
int dnnl_post_ops_create(dnnl_handle *post_ops);
int dnnl_post_ops_destroy(dnnl_handle post_ops);
int dnnl_post_ops_append_eltwise(dnnl_handle post_ops, int alg, float alpha, float beta);
int dnnl_post_ops_append_binary(dnnl_handle post_ops, int alg, dnnl_handle src1_desc);
int dnnl_memory_desc_create_with_tag(dnnl_handle *md, int ndims, const dnnl_dims dims,
                                     int data_type, int tag);
int dnnl_memory_desc_clone(dnnl_handle *md, dnnl_handle existing);
int dnnl_memory_desc_equal(dnnl_handle lhs, dnnl_handle rhs);
size_t dnnl_memory_desc_get_size(dnnl_handle md);
dnnl_handle dnnl_primitive_desc_query_md(dnnl_handle pd, int what, int index);
int dnnl_convolution_forward_primitive_desc_create(dnnl_handle *pd, dnnl_handle engine,
                                                   int prop_kind, int alg, dnnl_handle src,
                                                   dnnl_handle weights, dnnl_handle bias,
                                                   dnnl_handle dst, const dnnl_dims strides,
                                                   const dnnl_dims dilates,
                                                   const dnnl_dims padding_l,
                                                   const dnnl_dims padding_r, dnnl_handle attr);
int dnnl_deconvolution_forward_primitive_desc_create(dnnl_handle *pd, dnnl_handle engine,
                                                     int prop_kind, int alg, dnnl_handle src,
                                                     dnnl_handle weights, dnnl_handle bias,
                                                     dnnl_handle dst, const dnnl_dims strides,
                                                     const dnnl_dims dilates,
                                                     const dnnl_dims padding_l,
                                                     const dnnl_dims padding_r, dnnl_handle attr);
int dnnl_reorder_primitive_desc_create(dnnl_handle *pd, dnnl_handle src, dnnl_handle src_engine,
                                       dnnl_handle dst, dnnl_handle dst_engine, dnnl_handle attr);
}

namespace {

constexpr int kCpuEngine = 1, kF32 = 3;                         // dnnl_cpu, dnnl_f32
constexpr int kSrc = 1, kDst = 17, kWeights = 33, kBias = 41;  // DNNL_ARG_*
constexpr int kPostOp0Src1 = 32768 * 1 | 2;  // DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1
constexpr int kAvx512Core = 0x27;  // dnnl_cpu_isa_avx512_core, a subset of every AVX-512 ISA
constexpr int kGeluErf = 0x31, kRelu = 0x20;  // dnnl_eltwise_gelu_erf, dnnl_eltwise_relu
constexpr int kInference = 96;                   // dnnl_forward_inference
constexpr int kConvDirect = 1, kDeconvDirect = 0xa;  // dnnl_(de)convolution_direct
constexpr int kFormatAny = 1, kQueryWeights = 131;  // dnnl_format_tag_any, dnnl_query_weights_md
constexpr int kBinaryAdd = 0x1fff0, kBinaryMul = 0x1fff1;  // dnnl_binary_add, dnnl_binary_mul

// kResidual adds, kMultiply multiplies by, a tensor laid out like the output.
enum class Epilogue { kNone, kResidual, kGelu, kMultiply, kRelu };

// The layout of oneDNN's dnnl::threadpool_interop::threadpool_iface (dnnl_threadpool_iface.hpp):
// these virtual functions, in this order. Synchronous: parallel_for returns when all are done.
struct DnnlPool {
  virtual int get_num_threads() const { return NumThreads(); }
  virtual bool get_in_parallel() const { return mindcoat::ThreadPool::InWorker(); }
  virtual void parallel_for(int n, const std::function<void(int, int)> &fn) {
    ParallelFor(n, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) fn(static_cast<int>(i), n);
    });
  }
  virtual uint64_t get_flags() const { return 0; }
  virtual ~DnnlPool() {}
};

// Row-major (rows, cols) float32, with the given strides (a transposed view needs no copy).
dnnl_handle Desc(int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  dnnl_dims dims = {rows, cols}, strides = {row_stride, col_stride};
  dnnl_handle md = nullptr;
  return dnnl_memory_desc_create_with_strides(&md, 2, dims, kF32, strides) == 0 ? md : nullptr;
}

struct MatMul {
  dnnl_handle primitive = nullptr, src = nullptr, weights = nullptr, bias = nullptr, dst = nullptr;
};

// A convolution on channels-last tensors; `weights` is the layout the primitive chose, filled from
// the plain (Cout, Cin, k, k) weights by `reorder` (nullptr when the two layouts are the same).
struct Conv {
  dnnl_handle primitive = nullptr, reorder = nullptr, src = nullptr, plain = nullptr,
              weights = nullptr, bias = nullptr, dst = nullptr;
  size_t weight_bytes = 0;
};

// A 4-D float32 descriptor with logical dims (a, b, c, d) and these strides.
dnnl_handle Desc4(const dnnl_dims dims, const dnnl_dims strides) {
  dnnl_handle md = nullptr;
  return dnnl_memory_desc_create_with_strides(&md, 4, dims, kF32, strides) == 0 ? md : nullptr;
}

// Attributes holding the epilogue as a post-op (nullptr: none; *ok false on failure).
dnnl_handle EpilogueAttr(Epilogue epilogue, dnnl_handle dst_desc, bool *ok) {
  *ok = true;
  if (epilogue == Epilogue::kNone) return nullptr;
  dnnl_handle attr = nullptr, post_ops = nullptr;
  const bool eltwise = epilogue == Epilogue::kGelu || epilogue == Epilogue::kRelu;
  const int alg = eltwise ? (epilogue == Epilogue::kGelu ? kGeluErf : kRelu)
                          : (epilogue == Epilogue::kMultiply ? kBinaryMul : kBinaryAdd);
  *ok = dnnl_primitive_attr_create(&attr) == 0 && dnnl_post_ops_create(&post_ops) == 0 &&
        (eltwise ? dnnl_post_ops_append_eltwise(post_ops, alg, 0.0f, 0.0f)
                 : dnnl_post_ops_append_binary(post_ops, alg, dst_desc)) == 0 &&
        dnnl_primitive_attr_set_post_ops(attr, post_ops) == 0;
  if (post_ops) dnnl_post_ops_destroy(post_ops);  // the attributes keep a copy
  return attr;
}

// The three products of a linear layer. Forward: x (M, K) . W^T + b -> (M, N). The gradients
// reuse the same (M, K) . (K, N) shape names for their own product:
//   kGradInput:  dy (M, K=out) . W (K=out, N=in)       -> dx (M, N)
//   kGradWeight: dy^T (M=out, K=rows) . x (K=rows, N=in) -> dW (M, N)
// Each operand is a strided view of the tensor as stored, except W in kGradInput where oneDNN
// runs AVX-512 kernels: there W is read from a transposed copy (W^T, (in, out)), the weights
// layout of the forward product, given enough rows: on buffers placed as MindSpore's CPU pool
// places them (16 bytes past a 64-byte boundary) its AVX-512 matmul is faster on that layout,
// copy included (tools/time_kernels.py measures it).
enum class Product { kForward, kGradInput, kGradWeight };

class Runtime {
 public:
  // The primitive for the product [+ epilogue] on these sizes, created on first use (oneDNN picks
  // and JIT-compiles a kernel per shape, as MindSpore's MatMul does).
  const MatMul *Get(int64_t M, int64_t K, int64_t N, Product product, Epilogue epilogue) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ready_ && !Init()) return nullptr;
    auto key = std::make_tuple(M, K, N, static_cast<int>(product), static_cast<int>(epilogue));
    auto it = cache_.find(key);
    if (it != cache_.end()) return &it->second;
    MatMul mm;
    const bool forward = product == Product::kForward;
    mm.src = product == Product::kGradWeight ? Desc(M, K, 1, M) : Desc(M, K, K, 1);
    // forward: W^T as a view of W; kGradInput: W as stored, or as a view of its transposed copy
    const bool transposed = forward || ReadsTransposedW(product, M);
    mm.weights = transposed ? Desc(K, N, 1, K) : Desc(K, N, N, 1);
    mm.dst = Desc(M, N, N, 1);
    bool ok = mm.src && mm.weights && mm.dst;
    if (forward) {
      mm.bias = Desc(1, N, N, 1);
      ok = ok && mm.bias;
    }
    dnnl_handle pd = nullptr;
    dnnl_handle attr = ok ? EpilogueAttr(epilogue, mm.dst, &ok) : nullptr;
    ok = ok &&
         dnnl_matmul_primitive_desc_create(&pd, engine_, mm.src, mm.weights, mm.bias, mm.dst,
                                           attr) == 0 &&
         dnnl_primitive_create(&mm.primitive, pd) == 0;
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (!ok) {
      if (pd) dnnl_primitive_desc_destroy(pd);
      for (dnnl_handle md : {mm.src, mm.weights, mm.bias, mm.dst})
        if (md) dnnl_memory_desc_destroy(md);
      return nullptr;
    }
    dnnl_primitive_desc_destroy(pd);  // the primitive keeps what it needs
    return &cache_.emplace(key, mm).first->second;
  }

  // The convolution (stride 1, padding k / 2) of x (B, H, W, Cin) channels-last with k x k
  // weights (Cout, Cin, k, k), or with `transposed` the transposed convolution (stride k, no
  // padding) with weights (Cin, Cout, k, k); [+ ReLU]. Created on first use.
  const Conv *GetConv(int64_t B, int64_t H, int64_t W, int64_t Cin, int64_t Cout, int64_t k,
                      Epilogue epilogue, bool transposed) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!ready_ && !Init()) return nullptr;
    auto key = std::make_tuple(B, H, W, Cin, Cout, k, static_cast<int>(epilogue), transposed);
    auto it = convs_.find(key);
    if (it != convs_.end()) return &it->second;
    Conv cv;
    const int64_t OH = transposed ? H * k : H, OW = transposed ? W * k : W;
    const dnnl_dims src_dims = {B, Cin, H, W}, src_strides = {H * W * Cin, 1, W * Cin, Cin};
    const dnnl_dims dst_dims = {B, Cout, OH, OW};
    const dnnl_dims dst_strides = {OH * OW * Cout, 1, OW * Cout, Cout};
    // oneDNN's logical weight order is (out, in, k, k) for both
    const dnnl_dims w_dims = {Cout, Cin, k, k};
    const dnnl_dims w_conv = {Cin * k * k, k * k, k, 1}, w_deconv = {k * k, Cout * k * k, k, 1};
    const dnnl_dims strides = {transposed ? k : 1, transposed ? k : 1}, zeros = {0, 0};
    const dnnl_dims pad = {transposed ? 0 : k / 2, transposed ? 0 : k / 2};
    const auto create = transposed ? dnnl_deconvolution_forward_primitive_desc_create
                                   : dnnl_convolution_forward_primitive_desc_create;
    dnnl_handle any = nullptr, pd = nullptr, reorder_pd = nullptr;
    cv.src = Desc4(src_dims, src_strides);
    cv.dst = Desc4(dst_dims, dst_strides);
    cv.plain = Desc4(w_dims, transposed ? w_deconv : w_conv);
    const dnnl_dims b_dims = {Cout}, b_strides = {1};
    if (dnnl_memory_desc_create_with_strides(&cv.bias, 1, b_dims, kF32, b_strides) != 0)
      cv.bias = nullptr;
    bool ok = cv.src && cv.dst && cv.plain && cv.bias &&
              dnnl_memory_desc_create_with_tag(&any, 4, w_dims, kF32, kFormatAny) == 0;
    dnnl_handle attr = ok ? EpilogueAttr(epilogue, cv.dst, &ok) : nullptr;
    ok = ok &&
         create(&pd, engine_, kInference, transposed ? kDeconvDirect : kConvDirect, cv.src, any,
                cv.bias, cv.dst, strides, zeros, pad, pad, attr) == 0 &&
         dnnl_primitive_create(&cv.primitive, pd) == 0;
    if (attr) dnnl_primitive_attr_destroy(attr);
    dnnl_handle chosen = ok ? dnnl_primitive_desc_query_md(pd, kQueryWeights, 0) : nullptr;
    ok = ok && chosen && dnnl_memory_desc_clone(&cv.weights, chosen) == 0;
    if (ok && !dnnl_memory_desc_equal(cv.plain, cv.weights)) {
      ok = dnnl_reorder_primitive_desc_create(&reorder_pd, cv.plain, engine_, cv.weights, engine_,
                                              nullptr) == 0 &&
           dnnl_primitive_create(&cv.reorder, reorder_pd) == 0;
    }
    if (ok) cv.weight_bytes = dnnl_memory_desc_get_size(cv.weights);
    for (dnnl_handle d : {pd, reorder_pd})
      if (d) dnnl_primitive_desc_destroy(d);  // the primitives keep what they need
    if (any) dnnl_memory_desc_destroy(any);
    if (!ok) {
      for (dnnl_handle md : {cv.src, cv.dst, cv.plain, cv.weights, cv.bias})
        if (md) dnnl_memory_desc_destroy(md);
      return nullptr;
    }
    return &convs_.emplace(key, cv).first->second;
  }

  int RunConv(const Conv &cv, const float *x, const float *w, const float *b, float *y) {
    std::vector<float> blocked;
    if (cv.reorder) {
      blocked.resize(cv.weight_bytes / sizeof(float) + 1);
      const int status = Execute(cv.reorder, {{kSrc, cv.plain, w}, {kDst, cv.weights,
                                                                    blocked.data()}});
      if (status != 0) return status;
      w = blocked.data();
    }
    return Execute(cv.primitive, {{kSrc, cv.src, x}, {kWeights, cv.weights, w},
                                  {kBias, cv.bias, b}, {kDst, cv.dst, y}});
  }

  // Whether the kGradInput primitive for M rows reads W from a transposed copy (valid once Get
  // has run). Not for few rows: with 800 (coat_lite_medium's last stage) it ran 0.70-0.82x.
  bool ReadsTransposedW(Product product, int64_t M) const {
    return product == Product::kGradInput && transposed_w_ && M >= 2048;
  }

  // `b`: the bias (nullptr for the gradient products); `r`: the operand of a kResidual or
  // kMultiply primitive's post-op (laid out like y), else nullptr.
  int Run(const MatMul &mm, const float *x, const float *w, const float *b, const float *r,
          float *y) {
    return Execute(mm.primitive, {{kSrc, mm.src, x}, {kWeights, mm.weights, w},
                                  {kDst, mm.dst, y}, {kBias, mm.bias, b},
                                  {kPostOp0Src1, mm.dst, r}});
  }

 private:
  struct Operand {
    int arg;
    dnnl_handle md;
    const float *data;  // nullptr: not passed
  };

  // Runs `primitive` on the operands given (those with data) and waits for it.
  int Execute(dnnl_handle primitive, std::initializer_list<Operand> operands) {
    dnnl_exec_arg args[8];
    int nargs = 0, status = 0;
    for (const Operand &op : operands) {
      if (!op.data || status != 0 || nargs == 8) continue;
      args[nargs].arg = op.arg;
      args[nargs].memory = nullptr;
      status = dnnl_memory_create(&args[nargs].memory, op.md, engine_,
                                  const_cast<float *>(op.data));
      if (status == 0) ++nargs;
    }
    if (status == 0) {
      status = dnnl_primitive_execute(primitive, stream_, nargs, args);
      if (status == 0) status = dnnl_stream_wait(stream_);
    }
    for (int i = 0; i < nargs; ++i) dnnl_memory_destroy(args[i].memory);
    return status;
  }

  bool Init() {
    const dnnl_version_info *v = dnnl_version();
    if (!v || v->major != 3) return false;
    transposed_w_ = (dnnl_get_effective_cpu_isa() & kAvx512Core) == kAvx512Core;
    ready_ = dnnl_engine_create(&engine_, kCpuEngine, 0) == 0 &&
             dnnl_threadpool_interop_stream_create(&stream_, engine_, &pool_) == 0;
    return ready_;
  }

  std::mutex mutex_;
  bool ready_ = false, transposed_w_ = false;
  DnnlPool pool_;
  dnnl_handle engine_ = nullptr, stream_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t, int, int>, MatMul> cache_;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, bool>, Conv>
      convs_;
};

Runtime runtime;  // lives as long as the library (never unloaded by MindSpore)

// to (C, R) <- from (R, C), both row-major, in tiles that keep both sides in cache.
void Transpose(const float *from, int64_t R, int64_t C, float *to) {
  constexpr int64_t kTile = 32;
  ParallelFor((R + kTile - 1) / kTile, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = begin * kTile; r0 < std::min(R, end * kTile); r0 += kTile)
      for (int64_t c0 = 0; c0 < C; c0 += kTile)
        for (int64_t r = r0; r < std::min(R, r0 + kTile); ++r)
          for (int64_t c = c0; c < std::min(C, c0 + kTile); ++c) to[c * R + r] = from[r * C + c];
  });
}

// The rows of a (..., C) tensor.
int64_t Rows(int ndim, const int64_t *shape) {
  int64_t rows = 1;
  for (int i = 0; i < ndim - 1; ++i) rows *= shape[i];
  return rows;
}

// params: x, w, b, [r], y.
int Linear(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
           Epilogue epilogue) {
  const int inputs = epilogue == Epilogue::kResidual ? 4 : 3;
  if (nparam != inputs + 1 || !IsF32(dtypes[0]) || ndims[1] != 2) return 1;
  const int64_t M = Rows(ndims[0], shapes[0]);
  const int64_t K = shapes[0][ndims[0] - 1], N = shapes[1][0];
  if (shapes[1][1] != K || shapes[2][0] != N) return 1;
  // the residual is laid out like y
  if (inputs == 4 && (Rows(ndims[3], shapes[3]) != M || shapes[3][ndims[3] - 1] != N)) return 1;
  if (M == 0 || N == 0) return 0;  // an empty output: nothing to compute
  const MatMul *mm = runtime.Get(M, K, N, Product::kForward, epilogue);
  if (!mm) return 1;
  return runtime.Run(*mm, static_cast<const float *>(params[0]),
                     static_cast<const float *>(params[1]), static_cast<const float *>(params[2]),
                     inputs == 4 ? static_cast<const float *>(params[3]) : nullptr,
                     static_cast<float *>(params[inputs]));
}

}  // namespace

namespace {

// A gradient product (M, K) . (K, N) -> out (M, N) with no bias, times `m` (laid out like out)
// if given: an empty output is left alone, an empty sum (K == 0) is zeros.
int Gradient(Product product, int64_t M, int64_t K, int64_t N, void *a, void *b, void *out,
             const void *m = nullptr) {
  if (M == 0 || N == 0) return 0;
  if (K == 0) {
    std::memset(out, 0, sizeof(float) * M * N);
    return 0;
  }
  const MatMul *mm = runtime.Get(M, K, N, product, m ? Epilogue::kMultiply : Epilogue::kNone);
  if (!mm) return 1;
  std::vector<float> transposed;
  if (runtime.ReadsTransposedW(product, M)) {  // b: W (K, N) as stored
    transposed.resize(K * N);
    Transpose(static_cast<const float *>(b), K, N, transposed.data());
    b = transposed.data();
  }
  return runtime.Run(*mm, static_cast<const float *>(a), static_cast<const float *>(b), nullptr,
                     static_cast<const float *>(m), static_cast<float *>(out));
}

}  // namespace

// dx = dy W: params dy (..., N), w (N, K), dx (..., K).
extern "C" int LinearGradX(int nparam, void **params, int *ndims, int64_t **shapes,
                           const char **dtypes, void *stream, void *extra) {
  if (nparam != 3 || !IsF32(dtypes[0]) || ndims[1] != 2 || ndims[0] != ndims[2]) return 1;
  const int64_t rows = Rows(ndims[0], shapes[0]), N = shapes[1][0], K = shapes[1][1];
  if (shapes[0][ndims[0] - 1] != N || shapes[2][ndims[2] - 1] != K ||
      Rows(ndims[2], shapes[2]) != rows)
    return 1;
  return Gradient(Product::kGradInput, rows, N, K, params[0], params[1], params[2]);
}

// dh = (dy W) * m: params dy (..., N), w (N, K), m (..., K), dh (..., K). The input gradient of
// a layer fed by GELU, with GELU's slope at its input as m: GELU's backward pass runs in the
// product's epilogue.
extern "C" int LinearGradXMul(int nparam, void **params, int *ndims, int64_t **shapes,
                              const char **dtypes, void *stream, void *extra) {
  if (nparam != 4 || !IsF32(dtypes[0]) || ndims[1] != 2 || ndims[0] != ndims[3] ||
      ndims[2] != ndims[3])
    return 1;
  const int64_t rows = Rows(ndims[0], shapes[0]), N = shapes[1][0], K = shapes[1][1];
  if (shapes[0][ndims[0] - 1] != N || shapes[3][ndims[3] - 1] != K ||
      Rows(ndims[3], shapes[3]) != rows)
    return 1;
  for (int i = 0; i < ndims[3]; ++i)
    if (shapes[2][i] != shapes[3][i]) return 1;
  return Gradient(Product::kGradInput, rows, N, K, params[0], params[1], params[3], params[2]);
}

// dW = dy^T x, summed over all rows: params dy (..., N), x (..., K), dW (N, K).
// Both orders of the product read one stored tensor transposed; oneDNN runs the order that
// transposes the narrower of dy and x much faster. So for N > K the product is x^T dy, written
// as dW^T and transposed (N K elements, against N K rows multiply-adds). A transposed
// destination in oneDNN itself selects a kernel far too slow to use.
extern "C" int LinearGradW(int nparam, void **params, int *ndims, int64_t **shapes,
                           const char **dtypes, void *stream, void *extra) {
  if (nparam != 3 || !IsF32(dtypes[0]) || ndims[2] != 2 || ndims[0] != ndims[1]) return 1;
  const int64_t rows = Rows(ndims[0], shapes[0]), N = shapes[0][ndims[0] - 1];
  const int64_t K = shapes[1][ndims[1] - 1];
  if (Rows(ndims[1], shapes[1]) != rows || shapes[2][0] != N || shapes[2][1] != K) return 1;
  if (N <= K) return Gradient(Product::kGradWeight, N, rows, K, params[0], params[1], params[2]);
  std::vector<float> transposed(K * N);
  const int status =
      Gradient(Product::kGradWeight, K, rows, N, params[1], params[0], transposed.data());
  if (status != 0) return status;
  Transpose(transposed.data(), K, N, static_cast<float *>(params[2]));
  return 0;
}

namespace {

// params: x (B, H, W, Cin), w (Cout, Cin, k, k) [transposed: (Cin, Cout, k, k)], b (Cout,),
// y (B, H, W, Cout) [transposed: (B, kH, kW, Cout)].
int Conv2d(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
           Epilogue epilogue, bool transposed = false) {
  if (nparam != 4 || !IsF32(dtypes[0]) || !IsF32(dtypes[1]) || ndims[0] != 4 || ndims[1] != 4 ||
      ndims[2] != 1 || ndims[3] != 4)
    return 1;
  const int64_t *x = shapes[0], *w = shapes[1], *y = shapes[3];
  const int64_t k = w[2], cin = transposed ? w[0] : w[1], cout = transposed ? w[1] : w[0];
  const int64_t scale = transposed ? k : 1;
  if (cin != x[3] || w[3] != k || (!transposed && k % 2 != 1) || shapes[2][0] != cout ||
      y[0] != x[0] || y[1] != x[1] * scale || y[2] != x[2] * scale || y[3] != cout)
    return 1;
  if (Numel(4, y) == 0) return 0;
  const Conv *cv = runtime.GetConv(x[0], x[1], x[2], x[3], cout, k, epilogue, transposed);
  if (!cv) return 1;
  return runtime.RunConv(*cv, static_cast<const float *>(params[0]),
                         static_cast<const float *>(params[1]),
                         static_cast<const float *>(params[2]), static_cast<float *>(params[3]));
}

}  // namespace

extern "C" int Conv2dFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                         const char **dtypes, void *stream, void *extra) {
  return Conv2d(nparam, params, ndims, shapes, dtypes, Epilogue::kNone);
}

extern "C" int Conv2dReluFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                             const char **dtypes, void *stream, void *extra) {
  return Conv2d(nparam, params, ndims, shapes, dtypes, Epilogue::kRelu);
}

extern "C" int DeconvReluFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                             const char **dtypes, void *stream, void *extra) {
  return Conv2d(nparam, params, ndims, shapes, dtypes, Epilogue::kRelu, true);
}

extern "C" int LinearFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                         const char **dtypes, void *stream, void *extra) {
  return Linear(nparam, params, ndims, shapes, dtypes, Epilogue::kNone);
}

extern "C" int LinearResFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                            const char **dtypes, void *stream, void *extra) {
  return Linear(nparam, params, ndims, shapes, dtypes, Epilogue::kResidual);
}

extern "C" int LinearGeluFwd(int nparam, void **params, int *ndims, int64_t **shapes,
                             const char **dtypes, void *stream, void *extra) {
  return Linear(nparam, params, ndims, shapes, dtypes, Epilogue::kGelu);
}

// ---- self-check (see common.h) ---------------------------------------------------------------
// LinearFwd and LinearResFwd on (3, 7, 13) x (9, 13)^T, the gradients and the (transposed)
// convolutions, against plain loops:
// this runs oneDNN's initialisation (its version, the engine, the stream on the package's thread
// pool), a matmul with and without a post-op, and the transposed views, so a oneDNN without the
// threadpool runtime fails here.
extern "C" int MindcoatSelfCheck(char *message, int length) {
  const int64_t M = 21, K = 13, N = 9;
  std::vector<float> x = mindcoat::TestData(M * K, 0.4f), w = mindcoat::TestData(N * K, 1.4f);
  std::vector<float> b = mindcoat::TestData(N, 2.4f), r = mindcoat::TestData(M * N, 3.4f);
  std::vector<float> y(M * N), want(M * N);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = b[n];
      for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(x[m * K + k]) * w[n * K + k];
      want[m * N + n] = static_cast<float>(acc);
    }
  int64_t s_x[3] = {3, 7, K}, s_w[2] = {N, K}, s_b[1] = {N}, s_y[3] = {3, 7, N};
  int64_t *shapes[5] = {s_x, s_w, s_b, s_y, s_y};
  int ndims[5] = {3, 2, 1, 3, 3};
  void *params[5] = {x.data(), w.data(), b.data(), y.data(), nullptr};
  int status = LinearFwd(4, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  if (mindcoat::Verdict("LinearFwd", status, y, want, 1e-4f, message, length)) return 1;
  for (int64_t i = 0; i < M * N; ++i) want[i] += r[i];
  params[3] = r.data();
  params[4] = y.data();
  status = LinearResFwd(5, params, ndims, shapes, mindcoat::F32Types(), nullptr, nullptr);
  if (mindcoat::Verdict("LinearResFwd", status, y, want, 1e-4f, message, length)) return 1;
  // the gradients for a cotangent r: dx = r W (M, K), dW = r^T x (N, K)
  std::vector<float> dx(M * K), dx_want(M * K, 0.0f), dw(N * K), dw_want(N * K, 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        dx_want[m * K + k] += r[m * N + n] * w[n * K + k];
        dw_want[n * K + k] += r[m * N + n] * x[m * K + k];
      }
  int64_t *grad_x_shapes[3] = {s_y, s_w, s_x}, *grad_w_shapes[3] = {s_y, s_x, s_w};
  int grad_ndims[3] = {3, 2, 3}, grad_w_ndims[3] = {3, 3, 2};
  void *grad_x_params[3] = {r.data(), w.data(), dx.data()};
  status = LinearGradX(3, grad_x_params, grad_ndims, grad_x_shapes, mindcoat::F32Types(), nullptr,
                       nullptr);
  if (mindcoat::Verdict("LinearGradX", status, dx, dx_want, 1e-4f, message, length)) return 1;
  // the same times x, elementwise
  for (int64_t i = 0; i < M * K; ++i) dx_want[i] *= x[i];
  int64_t *grad_xm_shapes[4] = {s_y, s_w, s_x, s_x};
  int grad_xm_ndims[4] = {3, 2, 3, 3};
  void *grad_xm_params[4] = {r.data(), w.data(), x.data(), dx.data()};
  status = LinearGradXMul(4, grad_xm_params, grad_xm_ndims, grad_xm_shapes, mindcoat::F32Types(),
                          nullptr, nullptr);
  if (mindcoat::Verdict("LinearGradXMul", status, dx, dx_want, 1e-4f, message, length)) return 1;
  void *grad_w_params[3] = {r.data(), x.data(), dw.data()};
  status = LinearGradW(3, grad_w_params, grad_w_ndims, grad_w_shapes, mindcoat::F32Types(),
                       nullptr, nullptr);
  if (mindcoat::Verdict("LinearGradW", status, dw, dw_want, 1e-4f, message, length)) return 1;
  // with more output rows than columns, the other order of the product: x^T r = dW^T (K, N)
  std::vector<float> dwt(K * N), dwt_want(K * N);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) dwt_want[k * N + n] = dw_want[n * K + k];
  int64_t s_wt[2] = {K, N};
  int64_t *grad_wt_shapes[3] = {s_x, s_y, s_wt};
  void *grad_wt_params[3] = {x.data(), r.data(), dwt.data()};
  status = LinearGradW(3, grad_wt_params, grad_w_ndims, grad_wt_shapes, mindcoat::F32Types(),
                       nullptr, nullptr);
  if (mindcoat::Verdict("LinearGradW", status, dwt, dwt_want, 1e-4f, message, length)) return 1;
  // Conv2dFwd and Conv2dReluFwd, 3x3 on (2, 5, 6, 7) channels-last -> 9 channels: the primitive
  // with a weights reorder, zero padding at every edge
  const int64_t B = 2, H = 5, W = 6, C = 7, O = 9;
  std::vector<float> cx = mindcoat::TestData(B * H * W * C, 0.5f);
  std::vector<float> cw = mindcoat::TestData(O * C * 9, 1.5f), cb = mindcoat::TestData(O, 2.5f);
  std::vector<float> cy(B * H * W * O), c_want(B * H * W * O);
  for (int64_t n = 0; n < B; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        for (int64_t o = 0; o < O; ++o) {
          double acc = cb[o];
          for (int64_t i = 0; i < 3; ++i)
            for (int64_t j = 0; j < 3; ++j) {
              const int64_t hh = h + i - 1, ww = w + j - 1;
              if (hh < 0 || hh >= H || ww < 0 || ww >= W) continue;
              for (int64_t c = 0; c < C; ++c)
                acc += static_cast<double>(cx[((n * H + hh) * W + ww) * C + c]) *
                       cw[((o * C + c) * 3 + i) * 3 + j];
            }
          c_want[((n * H + h) * W + w) * O + o] = static_cast<float>(acc);
        }
  int64_t s_cx[4] = {B, H, W, C}, s_cw[4] = {O, C, 3, 3}, s_cb[1] = {O}, s_cy[4] = {B, H, W, O};
  int64_t *conv_shapes[4] = {s_cx, s_cw, s_cb, s_cy};
  int conv_ndims[4] = {4, 4, 1, 4};
  void *conv_params[4] = {cx.data(), cw.data(), cb.data(), cy.data()};
  status = Conv2dFwd(4, conv_params, conv_ndims, conv_shapes, mindcoat::F32Types(), nullptr,
                     nullptr);
  if (mindcoat::Verdict("Conv2dFwd", status, cy, c_want, 1e-4f, message, length)) return 1;
  for (float &v : c_want) v = std::max(v, 0.0f);
  status = Conv2dReluFwd(4, conv_params, conv_ndims, conv_shapes, mindcoat::F32Types(), nullptr,
                         nullptr);
  if (mindcoat::Verdict("Conv2dReluFwd", status, cy, c_want, 1e-4f, message, length)) return 1;
  // DeconvReluFwd, 2x2 stride 2: (2, 5, 6, 7) -> (2, 10, 12, 9), weights (7, 9, 2, 2)
  std::vector<float> tw = mindcoat::TestData(C * O * 4, 3.5f);
  std::vector<float> dy(B * H * 2 * W * 2 * O), d_want(B * H * 2 * W * 2 * O);
  for (int64_t n = 0; n < B; ++n)
    for (int64_t h = 0; h < 2 * H; ++h)
      for (int64_t w = 0; w < 2 * W; ++w)
        for (int64_t o = 0; o < O; ++o) {
          double acc = cb[o];
          for (int64_t c = 0; c < C; ++c)
            acc += static_cast<double>(cx[((n * H + h / 2) * W + w / 2) * C + c]) *
                   tw[((c * O + o) * 2 + h % 2) * 2 + w % 2];
          d_want[((n * 2 * H + h) * 2 * W + w) * O + o] = std::max(static_cast<float>(acc), 0.0f);
        }
  int64_t s_dw[4] = {C, O, 2, 2}, s_dy[4] = {B, 2 * H, 2 * W, O};
  int64_t *deconv_shapes[4] = {s_cx, s_dw, s_cb, s_dy};
  void *deconv_params[4] = {cx.data(), tw.data(), cb.data(), dy.data()};
  status = DeconvReluFwd(4, deconv_params, conv_ndims, deconv_shapes, mindcoat::F32Types(),
                         nullptr, nullptr);
  return mindcoat::Verdict("DeconvReluFwd", status, dy, d_want, 1e-4f, message, length);
}
