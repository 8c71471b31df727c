// BatchNorm over the last axis (channels-last activations seen as rows x C), training mode,
// with the ReLU after it, or the residual addition and ReLU that end a ResNet block, in the same
// passes: the forward and backward of cnn_jax.models.layers.BatchNorm as XLA FFI handlers for
// the CPU.
//
// Forward, two passes over x: per-channel sums of d = x - k and d^2, where k is the channel's
// value in the first row (a shift that keeps E[d^2] - E[d]^2 accurate when the mean is far from
// zero; float partials over 64 rows, accumulated in double), then
//   y = x * a + b,  max(0, x * a + b)  or  max(0, x * a + b + residual),
// with a = scale / sqrt(var + eps), b = bias - mean * a.
// Backward, two passes: with g = dy (masked by the ReLU: x * a + b > 0, recomputed from x, or
// y > 0 with a residual, whose gradient is that masked g), sum(g) and sum(g * (x - mean)), then
//   dx = k1 * g + k2 * (x - mean) + k3,  k1 = scale * inv, inv = 1 / sqrt(var + eps),
//   k2 = (2 dvar - k1 * inv * dscale) / n,  k3 = (dmean - k1 * dbias) / n,
// where dmean, dvar are the cotangents of the returned statistics (zero in a training step).
// Rows are split into pieces on XLA's thread pool (parallel_for.h); partial sums are reduced in
// piece order, so the results do not depend on the threads. Activations (x, y, dy, residual, dx)
// are float32 or bfloat16 (read as float32, written rounded to nearest even); statistics, scale
// and bias are float32, and so is all arithmetic.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowsPerPiece = 512;  // rows of C channels per parallel piece
constexpr int64_t kFlushRows = 64;      // float partial sums move to double this often

enum class Act { kNone, kRelu, kAddRelu };

// Activation elements: float, or bfloat16 held as its 16 bits (the top half of a float).
inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const uint16_t* p, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline void Store(float* p, int64_t i, float v) { p[i] = v; }
inline void Store(uint16_t* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) {  // NaN stays NaN
    p[i] = static_cast<uint16_t>((bits >> 16) | 0x40);
    return;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  p[i] = static_cast<uint16_t>(bits >> 16);
}

// f(T{}) with T the activations' element type: float (F32) or uint16_t (BF16).
template <typename F>
ffi::Error ByType(ffi::DataType type, F f) {
  if (type == ffi::DataType::F32) return f(float{});
  if (type == ffi::DataType::BF16) return f(uint16_t{});
  return ffi::Error::InvalidArgument("batch_norm: float32 or bfloat16 activations only");
}

struct Shape {
  int64_t rows, channels, pieces;
  explicit Shape(const ffi::AnyBuffer& x) {
    auto dims = x.dimensions();
    channels = dims.size() == 0 ? 1 : dims[dims.size() - 1];
    rows = channels ? x.element_count() / channels : 0;
    pieces = (rows + kRowsPerPiece - 1) / kRowsPerPiece;
  }
  int64_t Begin(int64_t p) const { return p * kRowsPerPiece; }
  int64_t End(int64_t p) const { return std::min(rows, (p + 1) * kRowsPerPiece); }
};

// Per-channel sums of u and v over every row, u, v = term(row, c): float partials of 64 rows,
// accumulated per piece in double, pieces reduced in order.
template <typename Term>
void ChannelSums(ffi::ThreadPool& pool, const Shape& shape, Term term, std::vector<double>& u,
                 std::vector<double>& v) {
  const int64_t c_dim = shape.channels;
  std::vector<double> partial(shape.pieces * 2 * c_dim, 0.0);
  cnn_jax::ParallelFor(pool, shape.pieces, shape.pieces, [&](int64_t p) {
    std::vector<float> su(c_dim, 0.f), sv(c_dim, 0.f);
    double* out = partial.data() + p * 2 * c_dim;
    for (int64_t r = shape.Begin(p), r1 = shape.End(p), n = 0; r < r1; ++r, ++n) {
      float* __restrict__ pu = su.data();
      float* __restrict__ pv = sv.data();
      term(r, pu, pv);
      if (n % kFlushRows == kFlushRows - 1 || r + 1 == r1) {
        for (int64_t c = 0; c < c_dim; ++c) {
          out[c] += su[c];
          out[c_dim + c] += sv[c];
          su[c] = sv[c] = 0.f;
        }
      }
    }
  });
  u.assign(c_dim, 0.0);
  v.assign(c_dim, 0.0);
  for (int64_t p = 0; p < shape.pieces; ++p) {
    for (int64_t c = 0; c < c_dim; ++c) {
      u[c] += partial[p * 2 * c_dim + c];
      v[c] += partial[p * 2 * c_dim + c_dim + c];
    }
  }
}

template <Act kAct, typename T>
ffi::Error Forward(ffi::ThreadPool& pool, const ffi::AnyBuffer& x, const float* scale,
                   const float* bias, const T* residual, T* y, float* mean, float* var,
                   float eps) {
  const Shape shape(x);
  const int64_t c_dim = shape.channels;
  if (shape.rows == 0) return ffi::Error::InvalidArgument("batch_norm: empty input");
  const T* xd = static_cast<const T*>(x.untyped_data());
  std::vector<float> shift(c_dim);  // the first row
  for (int64_t c = 0; c < c_dim; ++c) shift[c] = Load(xd, c);
  std::vector<double> sum, sum_sq;
  ChannelSums(pool, shape, [&](int64_t r, float* __restrict__ u, float* __restrict__ v) {
    const T* __restrict__ xr = xd + r * c_dim;
    const float* __restrict__ k = shift.data();
    for (int64_t c = 0; c < c_dim; ++c) {
      float d = Load(xr, c) - k[c];
      u[c] += d;
      v[c] += d * d;
    }
  }, sum, sum_sq);
  std::vector<float> a(c_dim), b(c_dim);
  for (int64_t c = 0; c < c_dim; ++c) {
    double d = sum[c] / shape.rows;  // E[x - k]
    mean[c] = static_cast<float>(shift[c] + d);
    var[c] = static_cast<float>(std::max(sum_sq[c] / shape.rows - d * d, 0.0));
    float inv = 1.0f / std::sqrt(var[c] + eps);
    a[c] = scale[c] * inv;
    b[c] = bias[c] - mean[c] * a[c];
  }
  cnn_jax::ParallelFor(pool, shape.pieces, shape.pieces, [&](int64_t p) {
    const float* __restrict__ pa = a.data();
    const float* __restrict__ pb = b.data();
    for (int64_t r = shape.Begin(p), r1 = shape.End(p); r < r1; ++r) {
      const T* __restrict__ xr = xd + r * c_dim;
      T* __restrict__ yr = y + r * c_dim;
      if constexpr (kAct == Act::kNone) {
        for (int64_t c = 0; c < c_dim; ++c) Store(yr, c, Load(xr, c) * pa[c] + pb[c]);
      } else if constexpr (kAct == Act::kRelu) {
        for (int64_t c = 0; c < c_dim; ++c) Store(yr, c, std::max(Load(xr, c) * pa[c] + pb[c], 0.f));
      } else {
        const T* __restrict__ rr = residual + r * c_dim;
        for (int64_t c = 0; c < c_dim; ++c)
          Store(yr, c, std::max(Load(xr, c) * pa[c] + pb[c] + Load(rr, c), 0.f));
      }
    }
  });
  return ffi::Error::Success();
}

// `y` is the forward output (kAddRelu: its mask), `dres` the residual's gradient (kAddRelu).
template <Act kAct, typename T>
ffi::Error Backward(ffi::ThreadPool& pool, const ffi::AnyBuffer& x, const T* y, const T* dy,
                    const float* mean, const float* var, const float* scale, const float* bias,
                    const float* dmean, const float* dvar, T* dx, float* dscale, float* dbias,
                    T* dres, float eps) {
  const Shape shape(x);
  const int64_t c_dim = shape.channels;
  if (shape.rows == 0) return ffi::Error::InvalidArgument("batch_norm: empty input");
  const T* xd = static_cast<const T*>(x.untyped_data());
  std::vector<float> inv(c_dim), a(c_dim), b(c_dim);
  for (int64_t c = 0; c < c_dim; ++c) {
    inv[c] = 1.0f / std::sqrt(var[c] + eps);
    a[c] = scale[c] * inv[c];
    b[c] = bias[c] - mean[c] * a[c];
  }
  const float* pa = a.data();
  const float* pb = b.data();
  std::vector<double> sum_g, sum_gx;
  ChannelSums(pool, shape, [&](int64_t r, float* __restrict__ u, float* __restrict__ v) {
    const T* __restrict__ xr = xd + r * c_dim;
    const T* __restrict__ gr = dy + r * c_dim;
    if constexpr (kAct == Act::kNone) {
      for (int64_t c = 0; c < c_dim; ++c) {
        float g = Load(gr, c);
        u[c] += g;
        v[c] += g * (Load(xr, c) - mean[c]);
      }
    } else if constexpr (kAct == Act::kRelu) {
      for (int64_t c = 0; c < c_dim; ++c) {
        float xc = Load(xr, c);
        float g = xc * pa[c] + pb[c] > 0.f ? Load(gr, c) : 0.f;
        u[c] += g;
        v[c] += g * (xc - mean[c]);
      }
    } else {
      const T* __restrict__ yr = y + r * c_dim;
      T* __restrict__ out = dres + r * c_dim;
      for (int64_t c = 0; c < c_dim; ++c) {
        float g = Load(yr, c) > 0.f ? Load(gr, c) : 0.f;
        Store(out, c, g);
        u[c] += g;
        v[c] += g * (Load(xr, c) - mean[c]);
      }
    }
  }, sum_g, sum_gx);
  std::vector<float> k1(c_dim), k2(c_dim), k3(c_dim);
  for (int64_t c = 0; c < c_dim; ++c) {
    dbias[c] = static_cast<float>(sum_g[c]);
    dscale[c] = static_cast<float>(sum_gx[c]) * inv[c];
    k1[c] = scale[c] * inv[c];
    k2[c] = (2 * dvar[c] - k1[c] * inv[c] * dscale[c]) / shape.rows;
    k3[c] = (dmean[c] - k1[c] * dbias[c]) / shape.rows;
  }
  const T* g_in = kAct == Act::kAddRelu ? dres : dy;  // already masked with a residual
  cnn_jax::ParallelFor(pool, shape.pieces, shape.pieces, [&](int64_t p) {
    const float* __restrict__ q1 = k1.data();
    const float* __restrict__ q2 = k2.data();
    const float* __restrict__ q3 = k3.data();
    for (int64_t r = shape.Begin(p), r1 = shape.End(p); r < r1; ++r) {
      const T* __restrict__ xr = xd + r * c_dim;
      const T* __restrict__ gr = g_in + r * c_dim;
      T* __restrict__ out = dx + r * c_dim;
      if constexpr (kAct == Act::kRelu) {
        for (int64_t c = 0; c < c_dim; ++c) {
          float xc = Load(xr, c);
          float g = xc * pa[c] + pb[c] > 0.f ? Load(gr, c) : 0.f;
          Store(out, c, q1[c] * g + q2[c] * (xc - mean[c]) + q3[c]);
        }
      } else {
        for (int64_t c = 0; c < c_dim; ++c)
          Store(out, c, q1[c] * Load(gr, c) + q2[c] * (Load(xr, c) - mean[c]) + q3[c]);
      }
    }
  });
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using Out = ffi::ResultBuffer<ffi::F32>;
using Any = ffi::AnyBuffer;
using AnyOut = ffi::Result<ffi::AnyBuffer>;

// The activations' buffers all of x's type, else an error.
ffi::Error SameType(const Any& x, std::initializer_list<ffi::DataType> others) {
  for (ffi::DataType t : others) {
    if (t != x.element_type())
      return ffi::Error::InvalidArgument("batch_norm: activations of different types");
  }
  return ffi::Error::Success();
}

template <typename T>
T* Data(const Any& b) { return static_cast<T*>(b.untyped_data()); }
template <typename T>
T* Data(AnyOut& b) { return static_cast<T*>(b->untyped_data()); }

ffi::Error ForwardHandler(ffi::ThreadPool pool, Any x, F32 scale, F32 bias, AnyOut y, Out mean,
                          Out var, float eps, bool relu) {
  try {
    if (auto e = SameType(x, {y->element_type()}); e.failure()) return e;
    return ByType(x.element_type(), [&](auto tag) {
      using T = decltype(tag);
      auto f = relu ? Forward<Act::kRelu, T> : Forward<Act::kNone, T>;
      return f(pool, x, scale.typed_data(), bias.typed_data(), nullptr, Data<T>(y),
               mean->typed_data(), var->typed_data(), eps);
    });
  } catch (const std::exception& e) {
    return cnn_jax::Internal("batch_norm_forward", e.what());
  }
}

ffi::Error AddReluForwardHandler(ffi::ThreadPool pool, Any x, F32 scale, F32 bias, Any residual,
                                 AnyOut y, Out mean, Out var, float eps) {
  try {
    if (auto e = SameType(x, {residual.element_type(), y->element_type()}); e.failure()) return e;
    return ByType(x.element_type(), [&](auto tag) {
      using T = decltype(tag);
      return Forward<Act::kAddRelu, T>(pool, x, scale.typed_data(), bias.typed_data(),
                                       Data<const T>(residual), Data<T>(y), mean->typed_data(),
                                       var->typed_data(), eps);
    });
  } catch (const std::exception& e) {
    return cnn_jax::Internal("batch_norm_add_relu_forward", e.what());
  }
}

ffi::Error BackwardHandler(ffi::ThreadPool pool, Any x, Any dy, F32 mean, F32 var, F32 scale,
                           F32 bias, F32 dmean, F32 dvar, AnyOut dx, Out dscale, Out dbias,
                           float eps, bool relu) {
  try {
    if (auto e = SameType(x, {dy.element_type(), dx->element_type()}); e.failure()) return e;
    return ByType(x.element_type(), [&](auto tag) {
      using T = decltype(tag);
      auto f = relu ? Backward<Act::kRelu, T> : Backward<Act::kNone, T>;
      return f(pool, x, nullptr, Data<const T>(dy), mean.typed_data(), var.typed_data(),
               scale.typed_data(), bias.typed_data(), dmean.typed_data(), dvar.typed_data(),
               Data<T>(dx), dscale->typed_data(), dbias->typed_data(), nullptr, eps);
    });
  } catch (const std::exception& e) {
    return cnn_jax::Internal("batch_norm_backward", e.what());
  }
}

ffi::Error AddReluBackwardHandler(ffi::ThreadPool pool, Any x, Any y, Any dy, F32 mean, F32 var,
                                  F32 scale, F32 bias, F32 dmean, F32 dvar, AnyOut dx, Out dscale,
                                  Out dbias, AnyOut dresidual, float eps) {
  try {
    if (auto e = SameType(x, {y.element_type(), dy.element_type(), dx->element_type(),
                              dresidual->element_type()}); e.failure()) return e;
    return ByType(x.element_type(), [&](auto tag) {
      using T = decltype(tag);
      return Backward<Act::kAddRelu, T>(
          pool, x, Data<const T>(y), Data<const T>(dy), mean.typed_data(), var.typed_data(),
          scale.typed_data(), bias.typed_data(), dmean.typed_data(), dvar.typed_data(),
          Data<T>(dx), dscale->typed_data(), dbias->typed_data(), Data<T>(dresidual), eps);
    });
  } catch (const std::exception& e) {
    return cnn_jax::Internal("batch_norm_add_relu_backward", e.what());
  }
}

}  // namespace

// Forward: (x, scale, bias) -> (y, batch mean, biased batch variance).
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxBatchNormForward, ForwardHandler,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Any>().Arg<F32>().Arg<F32>()
                                  .Ret<Any>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));
// (x, scale, bias, residual) -> (max(0, bn(x) + residual), batch mean, batch variance).
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxBatchNormAddReluForward, AddReluForwardHandler,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Any>().Arg<F32>().Arg<F32>().Arg<Any>()
                                  .Ret<Any>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon"));
// (x, dy, mean, var, scale, bias, dmean, dvar) -> (dx, dscale, dbias).
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxBatchNormBackward, BackwardHandler,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Any>().Arg<Any>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<Any>().Ret<F32>().Ret<F32>()
                                  .Attr<float>("epsilon")
                                  .Attr<bool>("relu"));
// (x, y, dy, mean, var, scale, bias, dmean, dvar) -> (dx, dscale, dbias, dresidual).
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxBatchNormAddReluBackward, AddReluBackwardHandler,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Any>().Arg<Any>().Arg<Any>().Arg<F32>().Arg<F32>()
                                  .Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<Any>().Ret<F32>().Ret<F32>().Ret<Any>()
                                  .Attr<float>("epsilon"));
