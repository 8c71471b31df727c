// BatchNorm over the last axis (channels-last activations seen as rows x C), training mode,
// with an optional ReLU in the same passes: the forward and backward of
// cnn_jax.models.layers.BatchNorm as XLA FFI handlers for the CPU.
//
// Forward, two passes over x: per-channel sums of d = x - k and d^2, where k is the channel's
// value in the first row (a shift that keeps E[d^2] - E[d]^2 accurate when the mean is far from
// zero; float partials over 64 rows, accumulated in double), then y = x * a + b
// (a = scale / sqrt(var + eps), b = bias - mean * a), max(y, 0) if fused. Backward, two passes: with g = dy (masked by x * a + b > 0 if fused),
// sum(g) and sum(g * (x - mean)), then
//   dx = k1 * g + k2 * (x - mean) + k3,  k1 = scale * inv, inv = 1 / sqrt(var + eps),
//   k2 = (2 dvar - k1 * inv * dscale) / n,  k3 = (dmean - k1 * dbias) / n,
// where dmean, dvar are the cotangents of the returned statistics (zero in a training step).
// The ReLU mask is recomputed from x, so nothing but x is kept for the backward pass.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowsPerPiece = 512;  // rows of C channels per parallel piece
constexpr int64_t kFlushRows = 64;      // float partial sums are moved to double this often

int64_t Channels(const ffi::Buffer<ffi::F32>& x) {
  auto dims = x.dimensions();
  return dims.size() == 0 ? 1 : dims[dims.size() - 1];
}

// Per-piece sums over rows [r0, r1): out[0:C] += sum u(r, c), out[C:2C] += sum v(r, c), where
// (u, v) = term(x_rc, g_rc, c) for the rows of `x` (and `g`, may be null).
template <typename Term>
void RowSums(const float* __restrict__ x, const float* __restrict__ g, int64_t c_dim, int64_t r0,
             int64_t r1, double* __restrict__ out, Term term) {
  std::vector<float> su(c_dim, 0.f), sv(c_dim, 0.f);
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict__ xr = x + r * c_dim;
    const float* __restrict__ gr = g ? g + r * c_dim : nullptr;
    float* __restrict__ pu = su.data();
    float* __restrict__ pv = sv.data();
    for (int64_t c = 0; c < c_dim; ++c) {
      float u, v;
      term(xr[c], gr ? gr[c] : 0.f, c, u, v);
      pu[c] += u;
      pv[c] += v;
    }
    if ((r - r0) % kFlushRows == kFlushRows - 1 || r + 1 == r1) {
      for (int64_t c = 0; c < c_dim; ++c) {
        out[c] += su[c];
        out[c_dim + c] += sv[c];
        su[c] = sv[c] = 0.f;
      }
    }
  }
}

// Sums the per-piece partials (in piece order: the result does not depend on the threads).
void Reduce(const std::vector<double>& partial, int64_t pieces, int64_t c_dim, double* u,
            double* v) {
  for (int64_t c = 0; c < c_dim; ++c) {
    double su = 0, sv = 0;
    for (int64_t p = 0; p < pieces; ++p) {
      su += partial[p * 2 * c_dim + c];
      sv += partial[p * 2 * c_dim + c_dim + c];
    }
    u[c] = su;
    v[c] = sv;
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> mean_out, ffi::ResultBuffer<ffi::F32> var_out,
                   float eps, bool relu) {
  try {
    const int64_t c_dim = Channels(x);
    const int64_t rows = c_dim ? x.element_count() / c_dim : 0;
    if (rows == 0) return ffi::Error::InvalidArgument("batch_norm: empty input");
    const int64_t pieces = (rows + kRowsPerPiece - 1) / kRowsPerPiece;
    const float* xd = x.typed_data();
    std::vector<double> partial(pieces * 2 * c_dim, 0.0);
    const float* shift = xd;  // the first row
    cnn_jax::ParallelFor(pool, pieces, pieces, [&](int64_t p) {
      int64_t r0 = p * kRowsPerPiece, r1 = std::min(rows, r0 + kRowsPerPiece);
      RowSums(xd, nullptr, c_dim, r0, r1, partial.data() + p * 2 * c_dim,
              [shift](float xv, float, int64_t c, float& u, float& v) {
                u = xv - shift[c];
                v = u * u;
              });
    });
    std::vector<double> sum(c_dim), sum_sq(c_dim);
    Reduce(partial, pieces, c_dim, sum.data(), sum_sq.data());
    std::vector<float> a(c_dim), b(c_dim);
    const float* s = scale.typed_data();
    const float* bi = bias.typed_data();
    float* mean = mean_out->typed_data();
    float* var = var_out->typed_data();
    for (int64_t c = 0; c < c_dim; ++c) {
      double d = sum[c] / rows;  // E[x - k]
      double m = shift[c] + d;
      double v = std::max(sum_sq[c] / rows - d * d, 0.0);
      mean[c] = static_cast<float>(m);
      var[c] = static_cast<float>(v);
      float inv = 1.0f / std::sqrt(var[c] + eps);
      a[c] = s[c] * inv;
      b[c] = bi[c] - mean[c] * a[c];
    }
    float* yd = y->typed_data();
    cnn_jax::ParallelFor(pool, pieces, pieces, [&](int64_t p) {
      int64_t r0 = p * kRowsPerPiece, r1 = std::min(rows, r0 + kRowsPerPiece);
      const float* __restrict__ pa = a.data();
      const float* __restrict__ pb = b.data();
      for (int64_t r = r0; r < r1; ++r) {
        const float* __restrict__ xr = xd + r * c_dim;
        float* __restrict__ yr = yd + r * c_dim;
        if (relu) {
          for (int64_t c = 0; c < c_dim; ++c) yr[c] = std::max(xr[c] * pa[c] + pb[c], 0.f);
        } else {
          for (int64_t c = 0; c < c_dim; ++c) yr[c] = xr[c] * pa[c] + pb[c];
        }
      }
    });
  } catch (const std::exception& e) {
    return cnn_jax::Internal("batch_norm_forward", e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                    ffi::Buffer<ffi::F32> mean_in, ffi::Buffer<ffi::F32> var_in,
                    ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                    ffi::Buffer<ffi::F32> dmean, ffi::Buffer<ffi::F32> dvar,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale_out,
                    ffi::ResultBuffer<ffi::F32> dbias_out, float eps, bool relu) {
  try {
    const int64_t c_dim = Channels(x);
    const int64_t rows = c_dim ? x.element_count() / c_dim : 0;
    if (rows == 0) return ffi::Error::InvalidArgument("batch_norm: empty input");
    const int64_t pieces = (rows + kRowsPerPiece - 1) / kRowsPerPiece;
    const float* xd = x.typed_data();
    const float* gd = dy.typed_data();
    const float* mean = mean_in.typed_data();
    const float* var = var_in.typed_data();
    const float* s = scale.typed_data();
    const float* bi = bias.typed_data();
    std::vector<float> inv(c_dim), a(c_dim), b(c_dim);
    for (int64_t c = 0; c < c_dim; ++c) {
      inv[c] = 1.0f / std::sqrt(var[c] + eps);
      a[c] = s[c] * inv[c];
      b[c] = bi[c] - mean[c] * a[c];
    }
    std::vector<double> partial(pieces * 2 * c_dim, 0.0);
    const float* pa = a.data();
    const float* pb = b.data();
    cnn_jax::ParallelFor(pool, pieces, pieces, [&](int64_t p) {
      int64_t r0 = p * kRowsPerPiece, r1 = std::min(rows, r0 + kRowsPerPiece);
      if (relu) {
        RowSums(xd, gd, c_dim, r0, r1, partial.data() + p * 2 * c_dim,
                [=](float xv, float g, int64_t c, float& u, float& v) {
                  g = xv * pa[c] + pb[c] > 0.f ? g : 0.f;
                  u = g;
                  v = g * (xv - mean[c]);
                });
      } else {
        RowSums(xd, gd, c_dim, r0, r1, partial.data() + p * 2 * c_dim,
                [=](float xv, float g, int64_t c, float& u, float& v) {
                  u = g;
                  v = g * (xv - mean[c]);
                });
      }
    });
    std::vector<double> sum_g(c_dim), sum_gx(c_dim);
    Reduce(partial, pieces, c_dim, sum_g.data(), sum_gx.data());
    std::vector<float> k1(c_dim), k2(c_dim), k3(c_dim);
    const float* dm = dmean.typed_data();
    const float* dv = dvar.typed_data();
    float* dscale = dscale_out->typed_data();
    float* dbias = dbias_out->typed_data();
    for (int64_t c = 0; c < c_dim; ++c) {
      float db = static_cast<float>(sum_g[c]);
      float ds = static_cast<float>(sum_gx[c]) * inv[c];
      dbias[c] = db;
      dscale[c] = ds;
      k1[c] = s[c] * inv[c];
      k2[c] = (2 * dv[c] - k1[c] * inv[c] * ds) / rows;
      k3[c] = (dm[c] - k1[c] * db) / rows;
    }
    float* dxd = dx->typed_data();
    cnn_jax::ParallelFor(pool, pieces, pieces, [&](int64_t p) {
      int64_t r0 = p * kRowsPerPiece, r1 = std::min(rows, r0 + kRowsPerPiece);
      const float* __restrict__ q1 = k1.data();
      const float* __restrict__ q2 = k2.data();
      const float* __restrict__ q3 = k3.data();
      for (int64_t r = r0; r < r1; ++r) {
        const float* __restrict__ xr = xd + r * c_dim;
        const float* __restrict__ gr = gd + r * c_dim;
        float* __restrict__ out = dxd + r * c_dim;
        if (relu) {
          for (int64_t c = 0; c < c_dim; ++c) {
            float g = xr[c] * pa[c] + pb[c] > 0.f ? gr[c] : 0.f;
            out[c] = q1[c] * g + q2[c] * (xr[c] - mean[c]) + q3[c];
          }
        } else {
          for (int64_t c = 0; c < c_dim; ++c)
            out[c] = q1[c] * gr[c] + q2[c] * (xr[c] - mean[c]) + q3[c];
        }
      }
    });
  } catch (const std::exception& e) {
    return cnn_jax::Internal("batch_norm_backward", e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxBatchNormForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Ret<ffi::Buffer<ffi::F32>>()  // batch mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // batch variance (biased)
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxBatchNormBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Arg<ffi::Buffer<ffi::F32>>()  // batch mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // batch variance
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of the mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // cotangent of the variance
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dx
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dscale
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dbias
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));
