// Kernel gradient of a stride-1 2-D convolution written directly with AVX2 FMAs, for
// conv_onednn.cc: on AVX2 CPUs (without AVX-512) it runs 20-35% faster than oneDNN's own
// (jit:avx2) kernel gradient for 16 to 64 channels (benchmarks/results/levers.md, section 11).
//
// With stride 1, the kernel tap (i, j) pairs output position (oh, ow) with input position
// (oh + i * dil_h - pad_t, ow + j * dil_w - pad_l); over the output positions whose input lies
// inside the image, both sides are a 2-D block of rows with fixed strides in NHWC, so
//   dw[i, j, ci, co] += sum over the block of x[.., ci] * dy[.., co]
// is a small matrix product accumulated in registers: 4 to 6 input channels (broadcast) times 16
// output channels (two 8-float vectors), or 8 where fewer are left. No padded copies are made.
#ifndef CNN_JAX_KERNELS_CONV_KERNEL_GRADIENT_H_
#define CNN_JAX_KERNELS_CONV_KERNEL_GRADIENT_H_

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define CNN_JAX_DIRECT_KERNEL_GRADIENT 1
#include <immintrin.h>

namespace cnn_jax {

struct KernelGradientGeometry {
  int64_t h, w, c;       // input image (NHWC)
  int64_t kh, kw, k;     // kernel taps, output channels
  int64_t ho, wo;        // output image
  int64_t pad_t, pad_l;  // padding before the image
  int64_t dil_h, dil_w;  // dilation (1: none)
};

// CNN_JAX_CONV_KERNEL_GRADIENT=onednn keeps oneDNN's everywhere (to compare; default: direct).
inline bool DirectKernelGradientWanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("CNN_JAX_CONV_KERNEL_GRADIENT");
    return v == nullptr || std::strcmp(v, "onednn") != 0;
  }();
  return wanted;
}

// Where the direct kernel gradient applies: stride 1, output channels in 8s, 8 input channels or
// more (with fewer, oneDNN's is faster).
inline bool DirectKernelGradientApplies(int64_t stride_h, int64_t stride_w, int64_t c, int64_t k) {
  return stride_h == 1 && stride_w == 1 && k % 8 == 0 && k > 0 && c >= 8;
}

// acc[ci][co] over `rows` rows of `len` positions: x rows xrs apart (positions xs apart), dy rows
// drs apart (positions ds apart); added to out[ci * ld + co]. CI input channels x 16 outputs.
template <int CI>
inline void Micro(const float* x, int64_t xs, const float* dy, int64_t ds, int64_t len, float* out, int64_t ld,
                  int64_t rows, int64_t xrs, int64_t drs) {
  __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps(); __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps(); __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps(); __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps(); __m256 a40 = _mm256_setzero_ps(), a41 = _mm256_setzero_ps(); __m256 a50 = _mm256_setzero_ps(), a51 = _mm256_setzero_ps();
  for (int64_t q = 0; q < rows; ++q, x += xrs, dy += drs)
  for (int64_t r = 0; r < len; ++r) {
    const __m256 d0 = _mm256_loadu_ps(dy + r * ds), d1 = _mm256_loadu_ps(dy + r * ds + 8);
    const float* xr = x + r * xs;
    if constexpr (CI > 0) { const __m256 b = _mm256_broadcast_ss(xr + 0); a00 = _mm256_fmadd_ps(b, d0, a00); a01 = _mm256_fmadd_ps(b, d1, a01); }
    if constexpr (CI > 1) { const __m256 b = _mm256_broadcast_ss(xr + 1); a10 = _mm256_fmadd_ps(b, d0, a10); a11 = _mm256_fmadd_ps(b, d1, a11); }
    if constexpr (CI > 2) { const __m256 b = _mm256_broadcast_ss(xr + 2); a20 = _mm256_fmadd_ps(b, d0, a20); a21 = _mm256_fmadd_ps(b, d1, a21); }
    if constexpr (CI > 3) { const __m256 b = _mm256_broadcast_ss(xr + 3); a30 = _mm256_fmadd_ps(b, d0, a30); a31 = _mm256_fmadd_ps(b, d1, a31); }
    if constexpr (CI > 4) { const __m256 b = _mm256_broadcast_ss(xr + 4); a40 = _mm256_fmadd_ps(b, d0, a40); a41 = _mm256_fmadd_ps(b, d1, a41); }
    if constexpr (CI > 5) { const __m256 b = _mm256_broadcast_ss(xr + 5); a50 = _mm256_fmadd_ps(b, d0, a50); a51 = _mm256_fmadd_ps(b, d1, a51); }
  }
  if constexpr (CI > 0) { float* o = out + 0 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a00)); _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), a01)); }
  if constexpr (CI > 1) { float* o = out + 1 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a10)); _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), a11)); }
  if constexpr (CI > 2) { float* o = out + 2 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a20)); _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), a21)); }
  if constexpr (CI > 3) { float* o = out + 3 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a30)); _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), a31)); }
  if constexpr (CI > 4) { float* o = out + 4 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a40)); _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), a41)); }
  if constexpr (CI > 5) { float* o = out + 5 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a50)); _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(o + 8), a51)); }
}
// The same with 8 output channels and up to 12 input channels.
template <int CI>
inline void Micro8(const float* x, int64_t xs, const float* dy, int64_t ds, int64_t len, float* out, int64_t ld,
                  int64_t rows, int64_t xrs, int64_t drs) {
  __m256 a0 = _mm256_setzero_ps(); __m256 a1 = _mm256_setzero_ps(); __m256 a2 = _mm256_setzero_ps(); __m256 a3 = _mm256_setzero_ps(); __m256 a4 = _mm256_setzero_ps(); __m256 a5 = _mm256_setzero_ps(); __m256 a6 = _mm256_setzero_ps(); __m256 a7 = _mm256_setzero_ps(); __m256 a8 = _mm256_setzero_ps(); __m256 a9 = _mm256_setzero_ps(); __m256 a10 = _mm256_setzero_ps(); __m256 a11 = _mm256_setzero_ps();
  for (int64_t q = 0; q < rows; ++q, x += xrs, dy += drs)
  for (int64_t r = 0; r < len; ++r) {
    const __m256 d0 = _mm256_loadu_ps(dy + r * ds);
    const float* xr = x + r * xs;
    if constexpr (CI > 0) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 0), d0, a0);
    if constexpr (CI > 1) a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 1), d0, a1);
    if constexpr (CI > 2) a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 2), d0, a2);
    if constexpr (CI > 3) a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 3), d0, a3);
    if constexpr (CI > 4) a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 4), d0, a4);
    if constexpr (CI > 5) a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 5), d0, a5);
    if constexpr (CI > 6) a6 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 6), d0, a6);
    if constexpr (CI > 7) a7 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 7), d0, a7);
    if constexpr (CI > 8) a8 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 8), d0, a8);
    if constexpr (CI > 9) a9 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 9), d0, a9);
    if constexpr (CI > 10) a10 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 10), d0, a10);
    if constexpr (CI > 11) a11 = _mm256_fmadd_ps(_mm256_broadcast_ss(xr + 11), d0, a11);
  }
  if constexpr (CI > 0) { float* o = out + 0 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a0)); }
  if constexpr (CI > 1) { float* o = out + 1 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a1)); }
  if constexpr (CI > 2) { float* o = out + 2 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a2)); }
  if constexpr (CI > 3) { float* o = out + 3 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a3)); }
  if constexpr (CI > 4) { float* o = out + 4 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a4)); }
  if constexpr (CI > 5) { float* o = out + 5 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a5)); }
  if constexpr (CI > 6) { float* o = out + 6 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a6)); }
  if constexpr (CI > 7) { float* o = out + 7 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a7)); }
  if constexpr (CI > 8) { float* o = out + 8 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a8)); }
  if constexpr (CI > 9) { float* o = out + 9 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a9)); }
  if constexpr (CI > 10) { float* o = out + 10 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a10)); }
  if constexpr (CI > 11) { float* o = out + 11 * ld; _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), a11)); }
}

// One block of rows x len positions: every (input, output channel) block.
inline void Segment(const float* x, int64_t c, const float* dy, int64_t k, int64_t len, float* dw,
                    int64_t rows, int64_t xrs, int64_t drs) {
#define R rows, xrs, drs
  // Input channels in blocks of 4 to 6 (as even as possible: few accumulators starve the FMAs).
  const int64_t blocks = (c + 5) / 6, base = c / blocks, extra = c % blocks;
  for (int64_t co = 0; co + 16 <= k; co += 16) {
    for (int64_t b = 0, ci = 0; b < blocks; ++b) {
      const int64_t size = base + (b < extra);
      const float* xb = x + ci;
      float* out = dw + ci * k + co;
      switch (size) {
        case 6: Micro<6>(xb, c, dy + co, k, len, out, k, R); break;
        case 5: Micro<5>(xb, c, dy + co, k, len, out, k, R); break;
        case 4: Micro<4>(xb, c, dy + co, k, len, out, k, R); break;
        case 3: Micro<3>(xb, c, dy + co, k, len, out, k, R); break;
        case 2: Micro<2>(xb, c, dy + co, k, len, out, k, R); break;
        default: Micro<1>(xb, c, dy + co, k, len, out, k, R); break;
      }
      ci += size;
    }
  }
  if (k % 16) {
    const int64_t co = k - 8;
    int64_t ci = 0;
    for (; ci + 12 <= c; ci += 12) Micro8<12>(x + ci, c, dy + co, k, len, dw + ci * k + co, k, R);
    for (; ci + 4 <= c; ci += 4) Micro8<4>(x + ci, c, dy + co, k, len, dw + ci * k + co, k, R);
    for (; ci < c; ++ci) Micro8<1>(x + ci, c, dy + co, k, len, dw + ci * k + co, k, R);
  }
#undef R
}

// dw (HWIO, kh * kw * c * k floats) += the kernel gradient over images [n0, n1).
inline void KernelGradient(const KernelGradientGeometry& g, const float* x, const float* dy, float* dw, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * g.h * g.w * g.c;
    const float* dyn = dy + n * g.ho * g.wo * g.k;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t offh = i * g.dil_h - g.pad_t;  // ih = oh + offh in [0, h)
      const int64_t oh0 = std::max<int64_t>(0, -offh), oh1 = std::min<int64_t>(g.ho, g.h - offh);
      if (oh1 <= oh0) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t offw = j * g.dil_w - g.pad_l;
        const int64_t ow0 = std::max<int64_t>(0, -offw), ow1 = std::min<int64_t>(g.wo, g.w - offw);
        if (ow1 <= ow0) continue;
        Segment(xn + ((oh0 + offh) * g.w + ow0 + offw) * g.c, g.c, dyn + (oh0 * g.wo + ow0) * g.k, g.k,
                ow1 - ow0, dw + (i * g.kw + j) * g.c * g.k, oh1 - oh0, g.w * g.c, g.wo * g.k);
      }
    }
  }
}

}  // namespace cnn_jax

#endif  // AVX2, FMA, no AVX-512
#endif  // CNN_JAX_KERNELS_CONV_KERNEL_GRADIENT_H_
