// The machine's peak arithmetic rate, measured: every thread runs independent chains of fused
// multiply-adds on vector registers for a fixed time. Built and called by benchmarks/peak.py.
//   float32: one FMA (2 FLOPs) per lane, 512-bit vectors where the CPU has AVX-512, else 256-bit;
//   bfloat16: AVX-512 BF16 dot products (vdpbf16ps: per float32 lane two bfloat16 products
//   summed into it, 4 FLOPs), only where the compiler targets avx512bf16.
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace {

constexpr int kChains = 10;  // independent accumulators: more than latency x pipes (4 x 2)
constexpr long kBlock = 1 << 16;  // iterations between clock reads

#ifdef __AVX512F__
typedef float Vec __attribute__((vector_size(64)));
#else
typedef float Vec __attribute__((vector_size(32)));
#endif
constexpr int kLanes = sizeof(Vec) / sizeof(float);

// FLOPs of one block of the float32 chains; the sum goes to `sink` so nothing is dropped.
double Float32Block(float* sink) {
  Vec acc[kChains], m, c;
  for (int l = 0; l < kLanes; ++l) { m[l] = 0.999999f; c[l] = 1e-7f; }
  for (int k = 0; k < kChains; ++k) acc[k] = m * static_cast<float>(k);
  for (long i = 0; i < kBlock; ++i) {
#pragma GCC unroll 10
    for (int k = 0; k < kChains; ++k) acc[k] = acc[k] * m + c;
  }
  float total = 0;
  for (int k = 0; k < kChains; ++k) for (int l = 0; l < kLanes; ++l) total += acc[k][l];
  *sink += total;
  return 2.0 * kLanes * kChains * kBlock;
}

#ifdef __AVX512BF16__
double Bfloat16Block(float* sink) {
  __m512 acc[kChains];
  for (int k = 0; k < kChains; ++k) acc[k] = _mm512_set1_ps(static_cast<float>(k));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(-1e-3f));
  for (long i = 0; i < kBlock; ++i) {
#pragma GCC unroll 10
    for (int k = 0; k < kChains; ++k) acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
  }
  float total = 0;
  for (int k = 0; k < kChains; ++k) total += _mm512_reduce_add_ps(acc[k]);
  *sink += total;
  return 4.0 * 16 * kChains * kBlock;
}
#endif

// FLOP/s of `threads` threads each running `block` for at least `seconds`.
double Rate(double (*block)(float*), int threads, double seconds) {
  std::atomic<bool> go{false};
  std::vector<double> flops(threads, 0.0);
  std::vector<float> sinks(threads, 0.0f);
  std::vector<std::thread> pool;
  using Clock = std::chrono::steady_clock;
  Clock::time_point start;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      while (!go.load()) {}
      const auto until = Clock::now() + std::chrono::duration<double>(seconds);
      while (Clock::now() < until) flops[t] += block(&sinks[t]);
    });
  }
  start = Clock::now();
  go.store(true);
  for (auto& thread : pool) thread.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  double total = 0;
  for (double f : flops) total += f;
  volatile float keep = 0;
  for (float s : sinks) keep = keep + s;
  return total / elapsed;
}

}  // namespace

extern "C" double CnnJaxFloat32Peak(int threads, double seconds) {
  return Rate(Float32Block, threads, seconds);
}

// 0 where this build has no bfloat16 dot products (the CPU or the compiler lacks avx512bf16).
extern "C" double CnnJaxBfloat16Peak(int threads, double seconds) {
#ifdef __AVX512BF16__
  return Rate(Bfloat16Block, threads, seconds);
#else
  (void)threads;
  (void)seconds;
  return 0.0;
#endif
}
