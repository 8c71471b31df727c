// 3x3 stride-1 convolutions in float32 by Winograd's F(2x2, 3x3), written with AVX-512 (or AVX2
// and FMA), for conv_onednn.cc: the forward and (with the kernel flipped and transposed) the input gradient.
//
// Every 2x2 block of outputs ("tile") reads a 4x4 block of the padded input d; with
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1],
// the tile is A^T [sum over c of (G g G^T) (.) (B^T d B)] A, (.) the elementwise product: 16
// small matrix products (one per position e of the 4x4 transforms) over the input channels,
// with 16 multiplications per 4 outputs and input channel where the direct convolution has 36.
// The kernel gradient is the adjoint: G^T [sum over tiles of (B^T d B) (.) (A dy A^T)] G, 16
// products over the tiles. Channels are the vector lanes (NHWC), so the transforms are
// additions of 16-float (AVX2: 8) vectors.
#ifndef CNN_JAX_KERNELS_CONV_WINOGRAD_H_
#define CNN_JAX_KERNELS_CONV_WINOGRAD_H_

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "parallel_for.h"  // ThreadScratch

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define CNN_JAX_WINOGRAD 1
#include <immintrin.h>

namespace cnn_jax {

// Where F(2x2, 3x3) applies to a convolution of c input and k output channels: a 3x3 kernel,
// stride 1, no dilation, channels in 16s, 32 input channels or more (with 16 the transforms cost
// about what the products save, in all three passes), padding of at most 2 on every side (so that the input gradient is
// such a convolution too).
inline bool WinogradApplies(int64_t kh, int64_t kw, int64_t stride_h, int64_t stride_w,
                            int64_t dil_h, int64_t dil_w, int64_t c, int64_t k,
                            std::initializer_list<int64_t> pads) {
  bool ok = kh == 3 && kw == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 && dil_w == 1 &&
            c % 16 == 0 && k % 16 == 0 && c >= 32 && k > 0;
  for (int64_t p : pads) ok = ok && p >= 0 && p <= 2;
  return ok;
}

struct WinogradGeometry {
  int64_t n, h, w, c;    // input (NHWC)
  int64_t ho, wo, k;     // output
  int64_t pad_t, pad_l;  // padding before the image
};

namespace winograd {

constexpr int kTiles = 24;  // tiles per block
constexpr int kGradientTiles = 24;  // tiles per block of the kernel gradient

// The vectors: 16 floats in 32 registers (AVX-512) or 8 in 16 (AVX2).
#if defined(__AVX512F__)
using V = __m512;
constexpr int kLanes = 16, kRegisters = 32;
inline V Load(const float* p) { return _mm512_loadu_ps(p); }
inline void Store(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V Zero() { return _mm512_setzero_ps(); }
inline V Broadcast(const float* p) { return _mm512_set1_ps(*p); }
inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
inline V Sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
#else
using V = __m256;
constexpr int kLanes = 8, kRegisters = 16;
inline V Load(const float* p) { return _mm256_loadu_ps(p); }
inline void Store(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V Zero() { return _mm256_setzero_ps(); }
inline V Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
inline V Sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
#endif

// u[e][ci][co] (16 x c x k) = G g G^T at position e, g[i][j] = w[i][j][ci][co] of an HWIO kernel
// (c x k), or, transposed, w[2 - i][2 - j][co][ci] of a kernel k x c: the input gradient's.
inline void TransformKernel(const float* w, int64_t c, int64_t k, bool transposed, float* u) {
  std::vector<float> g(9 * k), t(12 * k);
  for (int64_t ci = 0; ci < c; ++ci) {
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        for (int64_t co = 0; co < k; ++co) {
          g[(i * 3 + j) * k + co] = transposed ? w[(((2 - i) * 3 + 2 - j) * k + co) * c + ci]
                                               : w[((i * 3 + j) * c + ci) * k + co];
        }
    for (int j = 0; j < 3; ++j)  // t = G g (4 x 3)
      for (int64_t co = 0; co < k; ++co) {
        const float g0 = g[j * k + co], g1 = g[(3 + j) * k + co], g2 = g[(6 + j) * k + co];
        t[j * k + co] = g0;
        t[(3 + j) * k + co] = 0.5f * (g0 + g1 + g2);
        t[(6 + j) * k + co] = 0.5f * (g0 - g1 + g2);
        t[(9 + j) * k + co] = g2;
      }
    for (int a = 0; a < 4; ++a)  // u = t G^T (4 x 4)
      for (int64_t co = 0; co < k; ++co) {
        const float t0 = t[(a * 3) * k + co], t1 = t[(a * 3 + 1) * k + co];
        const float t2 = t[(a * 3 + 2) * k + co];
        const float v[4] = {t0, 0.5f * (t0 + t1 + t2), 0.5f * (t0 - t1 + t2), t2};
        for (int b = 0; b < 4; ++b) u[((a * 4 + b) * c + ci) * k + co] = v[b];
      }
  }
}

// v[e][slot][c] = (B^T d B)[e] for the tile at output (oh, ow) of image x (h x w x c), blocks
// of `block` tiles.
inline void TransformInput(const WinogradGeometry& g, const float* x, int64_t oh, int64_t ow,
                           float* v, int64_t slot, int64_t block = kTiles) {
  const int64_t ih0 = oh - g.pad_t, iw0 = ow - g.pad_l;
  const int64_t stride = block * g.c;
  for (int64_t c = 0; c < g.c; c += kLanes) {
    V d[4][4];
    for (int a = 0; a < 4; ++a) {
      const int64_t ih = ih0 + a;
      for (int b = 0; b < 4; ++b) {
        const int64_t iw = iw0 + b;
        d[a][b] = ih >= 0 && ih < g.h && iw >= 0 && iw < g.w
                      ? Load(x + (ih * g.w + iw) * g.c + c)
                      : Zero();
      }
    }
    V r[4][4];  // B^T d
    for (int b = 0; b < 4; ++b) {
      r[0][b] = Sub(d[0][b], d[2][b]);
      r[1][b] = Add(d[1][b], d[2][b]);
      r[2][b] = Sub(d[2][b], d[1][b]);
      r[3][b] = Sub(d[1][b], d[3][b]);
    }
    float* out = v + slot * g.c + c;
    for (int a = 0; a < 4; ++a) {  // (B^T d) B
      Store(out + (a * 4 + 0) * stride, Sub(r[a][0], r[a][2]));
      Store(out + (a * 4 + 1) * stride, Add(r[a][1], r[a][2]));
      Store(out + (a * 4 + 2) * stride, Sub(r[a][2], r[a][1]));
      Store(out + (a * 4 + 3) * stride, Sub(r[a][1], r[a][3]));
    }
  }
}

// One register tile of R rows x CO output vectors of a product over `depth` terms (v rows c
// apart; b and out rows k apart): the forward's out[t][.] = sum over ci of v[t][ci] b[ci][.]
// (rows: tiles, depth: c), or with kGradient the kernel gradient's
// out[ci][.] += sum over t of v[t][ci] b[t][.] (rows: input channels, depth: tiles).
template <int R, int CO, bool kGradient>
void RegisterTile(const float* v, const float* b, float* out, int64_t c, int64_t k,
                  int64_t depth) {
  V acc[R][CO];
#pragma GCC unroll 24
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int o = 0; o < CO; ++o) acc[r][o] = kGradient ? Load(out + r * k + kLanes * o) : Zero();
  for (int64_t d = 0; d < depth; ++d) {
    V w[CO];
#pragma GCC unroll 4
    for (int o = 0; o < CO; ++o) w[o] = Load(b + d * k + kLanes * o);
#pragma GCC unroll 24
    for (int r = 0; r < R; ++r) {
      const V s = Broadcast(kGradient ? v + d * c + r : v + r * c + d);
#pragma GCC unroll 4
      for (int o = 0; o < CO; ++o) acc[r][o] = Fma(s, w[o], acc[r][o]);
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int o = 0; o < CO; ++o) Store(out + r * k + kLanes * o, acc[r][o]);
}

// y at the tile's 2x2 outputs (those inside ho x wo) = A^T m A, m[e][slot][k].
inline void TransformOutput(const WinogradGeometry& g, const float* m, int64_t slot, float* y,
                            int64_t oh, int64_t ow) {
  const int64_t stride = kTiles * g.k;
  const bool down = oh + 1 < g.ho, right = ow + 1 < g.wo;
  for (int64_t k = 0; k < g.k; k += kLanes) {
    const float* in = m + slot * g.k + k;
    V s[2][4];  // A^T m
    for (int b = 0; b < 4; ++b) {
      const V m0 = Load(in + (0 * 4 + b) * stride);
      const V m1 = Load(in + (1 * 4 + b) * stride);
      const V m2 = Load(in + (2 * 4 + b) * stride);
      const V m3 = Load(in + (3 * 4 + b) * stride);
      s[0][b] = Add(Add(m0, m1), m2);
      s[1][b] = Sub(Sub(m1, m2), m3);
    }
    for (int a = 0; a < 1 + down; ++a) {  // (A^T m) A
      float* row = y + ((oh + a) * g.wo + ow) * g.k + k;
      Store(row, Add(Add(s[a][0], s[a][1]), s[a][2]));
      if (right) {
        Store(row + g.k, Sub(Sub(s[a][1], s[a][2]), s[a][3]));
      }
    }
  }
}

// m[e] = v[e] u[e] for every position e, kTiles tiles: register tiles of T tiles x 2 vectors
// of output channels, then T2 tiles x 1 vector (T * 2 and T2 accumulators, with the vectors and
// a broadcast, in the registers).
inline void Products(const float* v, const float* u, float* m, int64_t c, int64_t k) {
  constexpr int T = kRegisters == 32 ? 12 : 6, T2 = kRegisters == 32 ? 24 : 12;
  static_assert(kTiles % T == 0 && kTiles % T2 == 0);
  for (int e = 0; e < 16; ++e) {
    const float* ve = v + e * kTiles * c;
    const float* ue = u + e * c * k;
    float* me = m + e * kTiles * k;
    int64_t co = 0;
    for (; co + 2 * kLanes <= k; co += 2 * kLanes)
      for (int t = 0; t < kTiles; t += T)
        RegisterTile<T, 2, false>(ve + t * c, ue + co, me + t * k + co, c, k, c);
    for (; co < k; co += kLanes)
      for (int t = 0; t < kTiles; t += T2)
        RegisterTile<T2, 1, false>(ve + t * c, ue + co, me + t * k + co, c, k, c);
  }
}


// m[e][slot][k] = (A dy A^T)[e] for the tile at output (oh, ow) of an output gradient dy
// (ho x wo x k), zero outside it: the adjoint of TransformOutput.
inline void TransformOutputGradient(const WinogradGeometry& g, const float* dy, int64_t oh,
                                    int64_t ow, float* m, int64_t slot) {
  const int64_t stride = kGradientTiles * g.k;
  const bool down = oh + 1 < g.ho, right = ow + 1 < g.wo;
  for (int64_t k = 0; k < g.k; k += kLanes) {
    const float* row = dy + (oh * g.wo + ow) * g.k + k;
    const V p = Load(row), q = right ? Load(row + g.k) : Zero();
    const V r = down ? Load(row + g.wo * g.k) : Zero();
    const V s = down && right ? Load(row + (g.wo + 1) * g.k) : Zero();
    // A dy (4 x 2), then each row (a, b) times A^T: (a, a + b, a - b, -b).
    const V a[4] = {p, Add(p, r), Sub(p, r), Sub(Zero(), r)};
    const V b[4] = {q, Add(q, s), Sub(q, s), Sub(Zero(), s)};
    float* out = m + slot * g.k + k;
    for (int i = 0; i < 4; ++i) {
      Store(out + (i * 4 + 0) * stride, a[i]);
      Store(out + (i * 4 + 1) * stride, Add(a[i], b[i]));
      Store(out + (i * 4 + 2) * stride, Sub(a[i], b[i]));
      Store(out + (i * 4 + 3) * stride, Sub(Zero(), b[i]));
    }
  }
}

// The kernel gradient's RegisterTile for `size` (<= CI) input channels.
template <int CI, int CO>
void GradientProductOf(int64_t size, const float* v, const float* m, float* du, int64_t c,
                       int64_t k, int64_t tiles) {
  if constexpr (CI > 1) {
    if (size < CI) return GradientProductOf<CI - 1, CO>(size, v, m, du, c, k, tiles);
  }
  RegisterTile<CI, CO, true>(v, m, du, c, k, tiles);
}

// The output vectors [co, co + CO kLanes) of du[e] += v[e]^T m[e], in register tiles of as even
// a number of input channels as fit beside CO vectors and a broadcast.
template <int CO>
void GradientColumns(const float* v, const float* m, float* du, int64_t c, int64_t k,
                     int64_t tiles, int64_t co) {
  constexpr int kMaxCi = std::min(24, (kRegisters - CO - 2) / CO);
  const int64_t blocks = (c + kMaxCi - 1) / kMaxCi, base = c / blocks, extra = c % blocks;
  for (int64_t b = 0, ci = 0; b < blocks; ++b) {
    const int64_t size = base + (b < extra);
    GradientProductOf<kMaxCi, CO>(size, v + ci, m + co, du + ci * k + co, c, k, tiles);
    ci += size;
  }
}

// du[e] += v[e]^T m[e] (c x k) over the block's first `tiles` tiles, every position e.
inline void GradientProducts(const float* v, const float* m, float* du, int64_t c, int64_t k,
                             int64_t tiles) {
  constexpr int kWide = kRegisters == 32 ? 4 : 2;  // output vectors per register tile
  for (int e = 0; e < 16; ++e) {
    const float* ve = v + e * kGradientTiles * c;
    const float* me = m + e * kGradientTiles * k;
    float* due = du + e * c * k;
    int64_t co = 0;
    for (; co + kWide * kLanes <= k; co += kWide * kLanes)
      GradientColumns<kWide>(ve, me, due, c, k, tiles, co);
    if (kWide > 2 && co + 2 * kLanes <= k) {
      GradientColumns<2>(ve, me, due, c, k, tiles, co);
      co += 2 * kLanes;
    }
    for (; co < k; co += kLanes) GradientColumns<1>(ve, me, due, c, k, tiles, co);
  }
}

}  // namespace winograd

// y (images [n0, n1), NHWC) = the convolution of x with the kernel whose transform is u
// (winograd::TransformKernel), tile blocks of kTiles.
inline void WinogradConvolution(const WinogradGeometry& g, const float* x, const float* u,
                                float* y, int64_t n0, int64_t n1) {
  using namespace winograd;
  const int64_t th = (g.ho + 1) / 2, tw = (g.wo + 1) / 2, per_image = th * tw;
  const int64_t tiles = (n1 - n0) * per_image;
  auto* v = static_cast<float*>(ThreadScratch<WinogradGeometry>(
      16 * kTiles * (g.c + g.k) * sizeof(float)));
  float* m = v + 16 * kTiles * g.c;
  for (int64_t t0 = 0; t0 < tiles; t0 += kTiles) {
    const int64_t count = std::min<int64_t>(kTiles, tiles - t0);
    for (int64_t s = 0; s < kTiles; ++s) {
      if (s >= count) {  // zeros past the last tile
        for (int e = 0; e < 16; ++e)
          std::fill_n(v + (e * kTiles + s) * g.c, g.c, 0.f);
        continue;
      }
      const int64_t t = t0 + s, n = n0 + t / per_image, r = t % per_image;
      TransformInput(g, x + n * g.h * g.w * g.c, r / tw * 2, r % tw * 2, v, s);
    }
    Products(v, u, m, g.c, g.k);
    for (int64_t s = 0; s < count; ++s) {
      const int64_t t = t0 + s, n = n0 + t / per_image, r = t % per_image;
      TransformOutput(g, m, s, y + n * g.ho * g.wo * g.k, r / tw * 2, r % tw * 2);
    }
  }
}

// du (16 x c x k, as the caller left it) += the transform of the kernel gradient over images
// [n0, n1), x the forward's input and dy its output gradient (NHWC), tile blocks of
// kGradientTiles.
inline void WinogradKernelGradient(const WinogradGeometry& g, const float* x, const float* dy,
                                   float* du, int64_t n0, int64_t n1) {
  using namespace winograd;
  const int64_t th = (g.ho + 1) / 2, tw = (g.wo + 1) / 2, per_image = th * tw;
  const int64_t tiles = (n1 - n0) * per_image;
  auto* v = static_cast<float*>(ThreadScratch<WinogradGeometry>(
      16 * kGradientTiles * (g.c + g.k) * sizeof(float)));
  float* m = v + 16 * kGradientTiles * g.c;
  for (int64_t t0 = 0; t0 < tiles; t0 += kGradientTiles) {
    const int64_t count = std::min<int64_t>(kGradientTiles, tiles - t0);
    for (int64_t s = 0; s < count; ++s) {
      const int64_t t = t0 + s, n = n0 + t / per_image, r = t % per_image;
      TransformInput(g, x + n * g.h * g.w * g.c, r / tw * 2, r % tw * 2, v, s, kGradientTiles);
      TransformOutputGradient(g, dy + n * g.ho * g.wo * g.k, r / tw * 2, r % tw * 2, m, s);
    }
    GradientProducts(v, m, du, g.c, g.k, count);
  }
}

// dw (HWIO, 3 x 3 x c x k) = G^T du G, du[e][ci][co] as WinogradKernelGradient sums it.
inline void KernelGradientFromTransform(const float* du, int64_t c, int64_t k, float* dw) {
  const int64_t ck = c * k;
  for (int64_t j = 0; j < ck; ++j) {
    float t[4][3];  // du G
    for (int a = 0; a < 4; ++a) {
      const float* d = du + a * 4 * ck + j;
      const float d0 = d[0], d1 = d[ck], d2 = d[2 * ck], d3 = d[3 * ck];
      t[a][0] = d0 + 0.5f * (d1 + d2);
      t[a][1] = 0.5f * (d1 - d2);
      t[a][2] = 0.5f * (d1 + d2) + d3;
    }
    for (int b = 0; b < 3; ++b) {  // G^T (du G)
      dw[(0 * 3 + b) * ck + j] = t[0][b] + 0.5f * (t[1][b] + t[2][b]);
      dw[(1 * 3 + b) * ck + j] = 0.5f * (t[1][b] - t[2][b]);
      dw[(2 * 3 + b) * ck + j] = 0.5f * (t[1][b] + t[2][b]) + t[3][b];
    }
  }
}

}  // namespace cnn_jax

#endif  // AVX-512, or AVX2 and FMA
#endif  // CNN_JAX_KERNELS_CONV_WINOGRAD_H_
