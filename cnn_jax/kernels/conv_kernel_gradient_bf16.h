// Kernel gradient of a stride-1 2-D convolution with bfloat16 activations, written directly with
// AVX-512 BF16 dot products, for conv_onednn.cc on CPUs with them, where it beats oneDNN's own
// (jit_bf16:avx512_core_bf16) kernel gradient (docs/cpu.md).
//
// vdpbf16ps adds to each of 16 float32 lanes the dot product of two pairs of bf16 values. The
// pair runs over images: images n and n + 1 are interleaved into 32-bit pairs, x2 (x zero-padded
// to the kernel's reach) and dy2, so that for the kernel tap (i, j)
//   dw[i, j, ci, co] += sum over output positions (oh, ow) of
//                       x2[oh + i * dil_h, ow + j * dil_w, ci] . dy2[oh, ow, co]
// ("." the pair's dot product) is a small matrix product accumulated in registers, as in
// conv_kernel_gradient.h: CI input channels (each pair broadcast) times 16 * CO output channels
// (CO vectors of 16 pairs), over the positions whose input lies inside the image. Products of
// bf16 values are exact in float32 and summed in float32 (denormals flushed, as in oneDNN's); an
// odd last image is paired with zeros.
#ifndef CNN_JAX_KERNELS_CONV_KERNEL_GRADIENT_BF16_H_
#define CNN_JAX_KERNELS_CONV_KERNEL_GRADIENT_BF16_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "conv_kernel_gradient.h"  // KernelGradientGeometry
#include "parallel_for.h"          // ThreadScratch

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512BF16__)
#define CNN_JAX_DIRECT_KERNEL_GRADIENT_BF16 1
#include <immintrin.h>

namespace cnn_jax {

// Where the bf16 kernel gradient applies: stride 1, output channels in 16s, 6 input channels or
// more (with 3 or 4, too few accumulators: oneDNN's was faster).
inline bool DirectKernelGradientBf16Applies(int64_t stride_h, int64_t stride_w, int64_t c,
                                            int64_t k) {
  return stride_h == 1 && stride_w == 1 && k % 16 == 0 && k > 0 && c >= 6;
}

namespace bf16_gradient {

// out[i] = a[i] | b[i] << 16 for i < len: the pairs (a[i], b[i]); b null: (a[i], 0).
inline void Interleave(const uint16_t* a, const uint16_t* b, int64_t len, uint32_t* out) {
  static const __m512i lo = _mm512_set_epi16(
      47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  for (int64_t i = 0; i < len; i += 32) {
    const int64_t left = std::min<int64_t>(32, len - i);
    const __mmask32 m = left == 32 ? ~__mmask32{0} : (__mmask32{1} << left) - 1;
    const __m512i va = _mm512_maskz_loadu_epi16(m, a + i);
    const __m512i vb = b ? _mm512_maskz_loadu_epi16(m, b + i) : _mm512_setzero_si512();
    const __mmask16 m0 = static_cast<__mmask16>(m), m1 = static_cast<__mmask16>(m >> 16);
    _mm512_mask_storeu_epi32(out + i, m0, _mm512_permutex2var_epi16(va, lo, vb));
    _mm512_mask_storeu_epi32(out + i + 16, m1, _mm512_permutex2var_epi16(va, hi, vb));
  }
}

// Strides, in pairs, of a block of output positions: `pairs` image pairs of `rows` rows of `len`
// positions; x positions c apart, rows xr apart, pairs xp apart; dy positions k apart, rows dr
// apart, pairs dp apart. Rows of out (input channels) are k apart.
struct Block {
  int64_t c, k, len, rows, pairs, xr, xp, dr, dp;
};

// out[ci * k + co] += sum over the block of x2[.., ci] . dy2[.., co], for CI input channels
// (broadcasts) and 16 * CO output channels (vectors), in CI * CO accumulators.
template <int CI, int CO>
void Micro(const uint32_t* x, const uint32_t* dy, float* out, const Block& b) {
  __m512 acc[CI][CO];
#pragma GCC unroll 16
  for (int i = 0; i < CI; ++i)
#pragma GCC unroll 4
    for (int o = 0; o < CO; ++o) acc[i][o] = _mm512_setzero_ps();
  for (int64_t m = 0; m < b.pairs; ++m) {
    for (int64_t q = 0; q < b.rows; ++q) {
      const uint32_t* xr = x + m * b.xp + q * b.xr;
      const uint32_t* dr = dy + m * b.dp + q * b.dr;
      for (int64_t r = 0; r < b.len; ++r, xr += b.c, dr += b.k) {
        __m512bh d[CO];
#pragma GCC unroll 4
        for (int o = 0; o < CO; ++o) d[o] = (__m512bh)_mm512_loadu_si512(dr + 16 * o);
#pragma GCC unroll 16
        for (int i = 0; i < CI; ++i) {
          const __m512bh s = (__m512bh)_mm512_set1_epi32(static_cast<int>(xr[i]));
#pragma GCC unroll 4
          for (int o = 0; o < CO; ++o) acc[i][o] = _mm512_dpbf16_ps(acc[i][o], s, d[o]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < CI; ++i)
#pragma GCC unroll 4
    for (int o = 0; o < CO; ++o) {
      float* p = out + i * b.k + 16 * o;
      _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), acc[i][o]));
    }
}

using MicroFn = void (*)(const uint32_t*, const uint32_t*, float*, const Block&);

// Micro<1, CO> ... Micro<kMaxCI, CO>, by CI - 1.
constexpr int kMaxCI = 16;
template <int CO, size_t... I>
constexpr std::array<MicroFn, sizeof...(I)> MicroTable(std::index_sequence<I...>) {
  return {&Micro<static_cast<int>(I) + 1, CO>...};
}
template <int CO>
constexpr auto kMicro = MicroTable<CO>(std::make_index_sequence<kMaxCI>());

// The widest input-channel block with CO output vectors: CI * CO accumulators, CO vectors and a
// broadcast in 32 registers.
constexpr int MostCI(int co) { return std::min(kMaxCI, 28 / co); }

// One block of output positions and one tap: every (input, output channel) block. Input channels
// in blocks of at most MostCI(CO), as even as possible (few accumulators starve vdpbf16ps).
template <int CO>
void Channels(const uint32_t* x, const uint32_t* dy, float* dw, const Block& b, int64_t co0,
              int64_t co1) {
  const int64_t blocks = (b.c + MostCI(CO) - 1) / MostCI(CO), base = b.c / blocks;
  const int64_t extra = b.c % blocks;
  for (int64_t co = co0; co + 16 * CO <= co1; co += 16 * CO) {
    for (int64_t blk = 0, ci = 0; blk < blocks; ++blk) {
      const int64_t size = base + (blk < extra);
      kMicro<CO>[size - 1](x + ci, dy + co, dw + ci * b.k + co, b);
      ci += size;
    }
  }
}

inline void Segment(const uint32_t* x, const uint32_t* dy, float* dw, const Block& b) {
  const int64_t wide = b.k / 32 * 32;  // two vectors at a time, then one
  Channels<2>(x, dy, dw, b, 0, wide);
  Channels<1>(x, dy, dw, b, wide, b.k);
}

// Scratch for a block of image pairs and output rows [oh0, oh0 + rows): per pair, x2 (the input
// rows these reach, padded to wp positions of c pairs; xs pairs) and dy2 (wo positions of k
// pairs a row; ds pairs).
struct Pairs {
  int64_t oh0, rows, wp, xs, ds;
  uint32_t* x2;
  uint32_t* dy2;
};

// Pair m of p: images a and b of x and dy (b < 0: zeros). x2 row r is padded input row oh0 + r,
// i.e. input row oh0 + r - pad_t, zero outside the image.
inline void FillPair(const KernelGradientGeometry& g, const uint16_t* x, const uint16_t* dy,
                     int64_t a, int64_t b, const Pairs& p, int64_t m) {
  const int64_t wp = p.wp, lead = std::min(g.pad_l, wp);
  const int64_t cols = std::clamp<int64_t>(wp - g.pad_l, 0, g.w);
  const int64_t image = g.h * g.w * g.c, x_rows = p.rows + g.dil_h * (g.kh - 1);
  for (int64_t r = 0; r < x_rows; ++r) {
    uint32_t* row = p.x2 + m * p.xs + r * wp * g.c;
    const int64_t ih = p.oh0 + r - g.pad_t;
    if (ih < 0 || ih >= g.h || cols == 0) {
      std::memset(row, 0, wp * g.c * sizeof(uint32_t));
      continue;
    }
    const uint16_t* xa = x + a * image + ih * g.w * g.c;
    std::memset(row, 0, lead * g.c * sizeof(uint32_t));
    Interleave(xa, b < 0 ? nullptr : xa + (b - a) * image, cols * g.c, row + lead * g.c);
    std::memset(row + (lead + cols) * g.c, 0, (wp - lead - cols) * g.c * sizeof(uint32_t));
  }
  const int64_t out_image = g.ho * g.wo * g.k;
  const uint16_t* da = dy + a * out_image + p.oh0 * g.wo * g.k;
  Interleave(da, b < 0 ? nullptr : da + (b - a) * out_image, p.rows * g.wo * g.k,
             p.dy2 + m * p.ds);
}

// dw += the kernel gradient of `pairs` image pairs in p: per tap, the output positions whose
// input lies inside the image.
inline void PairsGradient(const KernelGradientGeometry& g, const Pairs& p, int64_t pairs,
                          float* dw) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t offh = i * g.dil_h;  // output row oh reads padded input row oh + offh
    const int64_t h0 = std::max(p.oh0, g.pad_t - offh);
    const int64_t h1 = std::min(p.oh0 + p.rows, g.h + g.pad_t - offh);
    if (h1 <= h0) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t offw = j * g.dil_w;
      const int64_t w0 = std::max<int64_t>(0, g.pad_l - offw);
      const int64_t w1 = std::min(g.wo, g.w + g.pad_l - offw);
      if (w1 <= w0) continue;
      const Block b{g.c, g.k, w1 - w0, h1 - h0, pairs, p.wp * g.c, p.xs, g.wo * g.k, p.ds};
      Segment(p.x2 + ((h0 - p.oh0 + offh) * p.wp + w0 + offw) * g.c,
              p.dy2 + ((h0 - p.oh0) * g.wo + w0) * g.k, dw + (i * g.kw + j) * g.c * g.k, b);
    }
  }
}

}  // namespace bf16_gradient

// dw (HWIO, kh * kw * c * k floats) += the kernel gradient over images [n0, n1) of x and dy
// (bf16 as uint16_t). The pairs' scratch is kept to about the L2 cache: blocks of whole image
// pairs, or of output rows of one pair where a pair is larger.
inline void KernelGradientBf16(const KernelGradientGeometry& g, const uint16_t* x,
                               const uint16_t* dy, float* dw, int64_t n0, int64_t n1) {
  using namespace bf16_gradient;
  if (n1 <= n0) return;
  constexpr int64_t kScratchPairs = (int64_t{768} << 10) / sizeof(uint32_t);
  const int64_t span = g.dil_h * (g.kh - 1), wp = g.wo + g.dil_w * (g.kw - 1);
  const int64_t row = wp * g.c + g.wo * g.k;  // pairs of x2 and dy2 per output row
  const int64_t rows = std::clamp<int64_t>(kScratchPairs / row - span, 1, g.ho);
  auto round = [](int64_t pairs) { return (pairs + 15) / 16 * 16; };  // whole 64-byte lines
  const int64_t xs = round((rows + span) * wp * g.c), ds = round(rows * g.wo * g.k);
  const int64_t most = rows < g.ho ? 1 : std::clamp<int64_t>(kScratchPairs / (xs + ds), 1,
                                                           (n1 - n0 + 1) / 2);
  auto* scratch =
      static_cast<uint32_t*>(ThreadScratch<Pairs>(most * (xs + ds) * sizeof(uint32_t)));
  Pairs p{0, rows, wp, xs, ds, scratch, scratch + most * xs};
  for (int64_t n = n0; n < n1; n += 2 * most) {
    const int64_t pairs = std::min(most, (n1 - n + 1) / 2);
    for (p.oh0 = 0; p.oh0 < g.ho; p.oh0 += rows) {
      p.rows = std::min(rows, g.ho - p.oh0);
      for (int64_t m = 0, a = n; m < pairs; ++m, a += 2) {
        FillPair(g, x, dy, a, a + 1 < n1 ? a + 1 : -1, p, m);
      }
      PairsGradient(g, p, pairs, dw);
    }
  }
}

// out[i] = sum[i] rounded to bfloat16 (to nearest even, as oneDNN's reorder), for i < count.
inline void RoundToBf16(const float* sum, int64_t count, uint16_t* out) {
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 m = count - i >= 16 ? 0xffff : (1u << (count - i)) - 1;
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, sum + i));
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)v);
  }
}

}  // namespace cnn_jax

#endif  // AVX-512 BF16
#endif  // CNN_JAX_KERNELS_CONV_KERNEL_GRADIENT_BF16_H_
