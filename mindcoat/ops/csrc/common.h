// Shared by the kernels in this directory (each is built as its own library).
//
// Threads: a small pool per library instead of OpenMP. MindSpore loads libgomp at import with
// its default busy-waiting, so OpenMP workers spinning between our kernels would take the cores
// from MindSpore's own operators running in between (unless OMP_WAIT_POLICY=passive were set
// before MindSpore is imported). These workers sleep on a condition variable instead. OpenMP
// remains for `#pragma omp simd` only.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

// Lanes for GELU's loops (erf and exp as long polynomial chains), as `simdlen` of their
// `omp simd`. On AVX-512 CPUs gcc vectorises for 256-bit registers unless told otherwise
// (-mprefer-vector-width=256); these loops are bound by arithmetic and run faster at 512 bits.
// Chosen per CPU, as the build is for this machine (-march=native). Not for every loop: the
// memory-bound ones (LayerNorm, the attention's exp) gain nothing or lose (docs/performance.md).
#if defined(__AVX512F__)
#define MINDCOAT_MATH_LANES 16
#else
#define MINDCOAT_MATH_LANES 8
#endif

namespace mindcoat {

// Threads per kernel: MINDCOAT_NUM_THREADS, which mindcoat.ops.build sets from the user's
// OMP_NUM_THREADS or the CPUs the process may use. OMP_NUM_THREADS itself cannot be trusted
// here: unless the user set it, MindSpore sets it to half the cores (1 on 2 cores) in its own
// environment at start-up.
inline int NumThreads() {
  static const int n = [] {
    const char *env = std::getenv("MINDCOAT_NUM_THREADS");
    const int v = env ? std::atoi(env) : 0;
    if (v > 0) return v;
    cpu_set_t set;
    return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
  }();
  return n;
}

class ThreadPool {
 public:
  // Calls fn(begin, end) over contiguous chunks covering [0, n), on NumThreads() threads (the
  // caller is one of them), and returns when all are done. Chunks are handed out in order of
  // request, so unequal chunks balance; every index is visited exactly once.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)> &fn) {
    if (n <= 0) return;
    const int threads = NumThreads();
    if (threads <= 1 || n == 1 || in_worker_) {  // nested calls run serially
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> one_job(run_mutex_);  // kernels may come from several threads
    Start(threads - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &fn;
      n_ = n;
      chunks_ = std::min<int64_t>(n, 4 * threads);
      next_.store(0);
      busy_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    Work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
    job_ = nullptr;
  }

  static bool InWorker() { return in_worker_; }

 private:
  void Start(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      // a new worker waits for the next generation, whenever its thread gets going
      const uint64_t current = generation_;
      workers_.emplace_back([this, current] { Loop(current); });
      workers_.back().detach();  // the pool lives as long as the process (never destroyed)
    }
  }

  void Work() {
    for (int64_t c = next_.fetch_add(1); c < chunks_; c = next_.fetch_add(1))
      (*job_)(n_ * c / chunks_, n_ * (c + 1) / chunks_);
  }

  void Loop(uint64_t seen) {
    in_worker_ = true;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      lock.unlock();
      Work();
      lock.lock();
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)> *job_ = nullptr;
  int64_t n_ = 0, chunks_ = 0;
  std::atomic<int64_t> next_{0};
  int busy_ = 0;
  uint64_t generation_ = 0;
  static thread_local bool in_worker_;
};

inline thread_local bool ThreadPool::in_worker_ = false;

// The library's pool (leaked on purpose: workers must not be joined during process exit).
inline ThreadPool &Pool() {
  static ThreadPool *pool = new ThreadPool();
  return *pool;
}

inline void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)> &fn) {
  Pool().ParallelFor(n, fn);
}

inline bool IsF32(const char *dtype) { return std::strcmp(dtype, "float32") == 0; }

inline int64_t Numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

// ---- self-checks ----------------------------------------------------------------------------
// Each library exports `extern "C" int MindcoatSelfCheck(char *message, int length)`, which
// mindcoat.ops.build runs in a subprocess before the library is first used: its kernels on small
// deterministic inputs against plain loops. 0 = pass; otherwise `message` says what differed.

inline std::vector<float> TestData(size_t n, float seed) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::sin(seed + 0.7311f * static_cast<float>(i));
  return v;
}

// The dtypes argument of a call with up to 16 float32 parameters.
inline const char **F32Types() {
  static const char *types[16] = {"float32", "float32", "float32", "float32", "float32", "float32",
                                  "float32", "float32", "float32", "float32", "float32", "float32",
                                  "float32", "float32", "float32", "float32"};
  return types;
}

// 0 if the kernel returned 0 and its output is within `tol` of the reference, else 1 with a
// message.
inline int Verdict(const char *kernel, int status, const std::vector<float> &got,
                   const std::vector<float> &want, float tol, char *message, int length) {
  if (status != 0) {
    std::snprintf(message, length, "%s returned status %d", kernel, status);
    return 1;
  }
  float diff = 0.0f;
  for (size_t i = 0; i < got.size() && diff == diff; ++i) {
    const float d = std::fabs(got[i] - want[i]);
    if (!(d <= diff)) diff = d;  // a NaN is kept (std::max would drop it)
  }
  if (!(diff <= tol)) {
    std::snprintf(message, length, "%s differs from the reference by %g", kernel, diff);
    return 1;
  }
  return 0;
}

}  // namespace mindcoat
