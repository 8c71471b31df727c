// Kernel gradient of a stride-1 2-D convolution written directly with AVX2 FMAs, for
// conv_onednn.cc on AVX2 CPUs without AVX-512, where it beats oneDNN's own (jit:avx2) kernel
// gradient (docs/cpu.md).
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

namespace cnn_jax {

struct KernelGradientGeometry {
  int64_t h, w, c;       // input image (NHWC)
  int64_t kh, kw, k;     // kernel taps, output channels
  int64_t ho, wo;        // output image
  int64_t pad_t, pad_l;  // padding before the image
  int64_t dil_h, dil_w;  // dilation (1: none)
};

}  // namespace cnn_jax

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define CNN_JAX_DIRECT_KERNEL_GRADIENT 1
#include <immintrin.h>

namespace cnn_jax {

// Where the direct kernel gradient applies: stride 1, output channels in 8s, 12 input channels
// or more (with 3 or 8, oneDNN's was faster).
inline bool DirectKernelGradientApplies(int64_t stride_h, int64_t stride_w, int64_t c, int64_t k) {
  return stride_h == 1 && stride_w == 1 && k % 8 == 0 && k > 0 && c >= 12;
}

// out[ci * ld + co] += sum over `rows` rows of `len` positions of x[ci] * dy[co]: x rows xrs
// apart (positions xs apart), dy rows drs apart (positions ds apart). CI input channels (each a
// broadcast) times 8 * CO output channels (CO vectors), accumulated in CI * CO registers.
template <int CI, int CO>
inline void Micro(const float* x, int64_t xs, const float* dy, int64_t ds, int64_t len,
                  float* out, int64_t ld, int64_t rows, int64_t xrs, int64_t drs) {
  __m256 acc[CI][CO];
#pragma GCC unroll 16
  for (int i = 0; i < CI; ++i)
#pragma GCC unroll 4
    for (int o = 0; o < CO; ++o) acc[i][o] = _mm256_setzero_ps();
  for (int64_t q = 0; q < rows; ++q, x += xrs, dy += drs) {
    for (int64_t r = 0; r < len; ++r) {
      __m256 d[CO];
#pragma GCC unroll 4
      for (int o = 0; o < CO; ++o) d[o] = _mm256_loadu_ps(dy + r * ds + 8 * o);
      const float* xr = x + r * xs;
#pragma GCC unroll 16
      for (int i = 0; i < CI; ++i) {
        const __m256 b = _mm256_broadcast_ss(xr + i);
#pragma GCC unroll 4
        for (int o = 0; o < CO; ++o) acc[i][o] = _mm256_fmadd_ps(b, d[o], acc[i][o]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < CI; ++i)
#pragma GCC unroll 4
    for (int o = 0; o < CO; ++o) {
      float* p = out + i * ld + 8 * o;
      _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), acc[i][o]));
    }
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
        case 6: Micro<6, 2>(xb, c, dy + co, k, len, out, k, R); break;
        case 5: Micro<5, 2>(xb, c, dy + co, k, len, out, k, R); break;
        case 4: Micro<4, 2>(xb, c, dy + co, k, len, out, k, R); break;
        case 3: Micro<3, 2>(xb, c, dy + co, k, len, out, k, R); break;
        case 2: Micro<2, 2>(xb, c, dy + co, k, len, out, k, R); break;
        default: Micro<1, 2>(xb, c, dy + co, k, len, out, k, R); break;
      }
      ci += size;
    }
  }
  if (k % 16) {
    const int64_t co = k - 8;
    int64_t ci = 0;
    for (; ci + 12 <= c; ci += 12) Micro<12, 1>(x + ci, c, dy + co, k, len, dw + ci * k + co, k,
                                                R);
    for (; ci + 4 <= c; ci += 4) Micro<4, 1>(x + ci, c, dy + co, k, len, dw + ci * k + co, k, R);
    for (; ci < c; ++ci) Micro<1, 1>(x + ci, c, dy + co, k, len, dw + ci * k + co, k, R);
  }
#undef R
}

// dw (HWIO, kh * kw * c * k floats) += the kernel gradient over images [n0, n1).
inline void KernelGradient(const KernelGradientGeometry& g, const float* x, const float* dy,
                           float* dw, int64_t n0, int64_t n1) {
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
        Segment(xn + ((oh0 + offh) * g.w + ow0 + offw) * g.c, g.c,
                dyn + (oh0 * g.wo + ow0) * g.k, g.k, ow1 - ow0, dw + (i * g.kw + j) * g.c * g.k,
                oh1 - oh0, g.w * g.c, g.wo * g.k);
      }
    }
  }
}

}  // namespace cnn_jax

#endif  // AVX2, FMA, no AVX-512
#endif  // CNN_JAX_KERNELS_CONV_KERNEL_GRADIENT_H_
