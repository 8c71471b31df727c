// ParallelFor over XLA's intra-op thread pool, for the FFI handlers of cnn_jax.kernels.
//
// The handlers run on XLA's CPU threads and split their work into independent pieces that the
// same pool runs, so a kernel never brings threads of its own (an OpenMP team beside XLA's pool
// oversubscribes the cores and stalls both). The calling thread works too and takes pieces from a
// shared counter until none is left, then waits only for pieces already running: no deadlock even
// when every pool thread is busy, and a helper scheduled too late finds nothing to do.
#ifndef CNN_JAX_KERNELS_PARALLEL_FOR_H_
#define CNN_JAX_KERNELS_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace cnn_jax {

// Calls fn(i) for every i in [0, n), on up to `max_workers` threads of `pool` (the caller
// included). Rethrows the first exception an fn(i) threw, once all pieces have finished.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, int64_t max_workers,
                        const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
    std::exception_ptr error;
    const std::function<void(int64_t)>* fn;
    int64_t n;
  };
  auto state = std::make_shared<State>();
  state->fn = &fn;  // valid while the caller waits, i.e. while any piece can still start
  state->n = n;
  auto work = [state]() {
    for (;;) {
      int64_t i = state->next.fetch_add(1);
      if (i >= state->n) return;
      std::exception_ptr error;
      try {
        (*state->fn)(i);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(state->mu);
      if (error && !state->error) state->error = error;
      if (++state->done == state->n) state->cv.notify_all();
    }
  };
  int64_t workers = std::min<int64_t>({n, std::max<int64_t>(1, pool.num_threads()),
                                       std::max<int64_t>(1, max_workers)});
  for (int64_t w = 1; w < workers; ++w) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == state->n; });
  if (state->error) std::rethrow_exception(state->error);
}

// A buffer of at least `bytes` bytes, 64-byte aligned, per thread and per `Use` (a tag type, so
// that two uses never share one), kept and grown as needed: pieces on one thread run one after
// another.
template <typename Use>
void* ThreadScratch(size_t bytes) {
  struct alignas(64) Line {
    char bytes[64];
  };
  thread_local std::vector<Line> buffer;
  const size_t lines = (bytes + sizeof(Line) - 1) / sizeof(Line);
  if (buffer.size() < lines) buffer.resize(lines);
  return buffer.data();
}

// The handlers' error: the message of whatever a kernel threw.
inline xla::ffi::Error Internal(const std::string& where, const std::string& what) {
  return xla::ffi::Error(xla::ffi::ErrorCode::kInternal, "cnn_jax." + where + ": " + what);
}

}  // namespace cnn_jax

#endif  // CNN_JAX_KERNELS_PARALLEL_FOR_H_
