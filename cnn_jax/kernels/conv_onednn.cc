// 2-D convolution (forward, input gradient, kernel gradient) through oneDNN, the library PyTorch
// runs convolutions with on CPUs, as XLA FFI handlers: the CPU path of
// cnn_jax.kernels.ops.conv2d.
//
// Layouts are flax's: activations NHWC, kernels HWIO, both row-major; oneDNN reads and writes the
// activations in place (format nhwc) and gets the kernel reordered into its blocked layout once
// per call. Element types: float32, or bfloat16 activations and kernels (bf16 convolutions where
// the CPU has them; the kernel gradient is accumulated in float32 and rounded once). The batch
// is split into pieces that run on XLA's intra-op pool with one oneDNN
// thread each (parallel_for.h), so oneDNN's OpenMP threads never compete with XLA's; the kernel
// gradient sums the pieces' partial gradients in piece order, so results do not depend on the
// threads. Primitives are created once per geometry and cached. Where they apply and are built,
// cnn_jax's own kernels run instead: the direct kernel gradients (conv_kernel_gradient.h,
// conv_kernel_gradient_bf16.h) and Winograd's F(2x2, 3x3) for float32 3x3 convolutions, all three
// passes (conv_winograd.h).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "conv_kernel_gradient.h"
#include "conv_kernel_gradient_bf16.h"
#include "conv_winograd.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;
using Dt = dnnl::memory::data_type;

namespace {

enum class Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// Partial kernel gradients of the pieces are held at once: at most this many bytes of them.
constexpr int64_t kMaxPartialBytes = int64_t{256} << 20;

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// oneDNN's logical dims: src/dst {N, C, H, W}, weights {O, I, KH, KW}; dilation is d - 1; dt the
// element type of activations and kernels.
struct Geometry {
  memory::dims src, weights, dst, strides, dilates, pad_l, pad_r;
  Dt dt = Dt::f32;

  Geometry WithBatch(int64_t n) const {
    Geometry g = *this;
    g.src[0] = g.dst[0] = n;
    return g;
  }
  std::string Key(Kind kind) const {
    std::string key = std::to_string(static_cast<int>(kind)) + '/' +
                      std::to_string(static_cast<int>(dt));
    for (const memory::dims* v : {&src, &weights, &dst, &strides, &dilates, &pad_l, &pad_r}) {
      key += '|';
      for (int64_t d : *v) key += std::to_string(d) + ',';
    }
    return key;
  }
};

memory::desc Activations(const memory::dims& d, Dt dt) { return memory::desc(d, dt, Tag::nhwc); }
memory::desc UserWeights(const memory::dims& d, Dt dt) { return memory::desc(d, dt, Tag::hwio); }
int64_t ByteWidth(Dt dt) { return dt == Dt::f32 ? 4 : 2; }

struct Primitive {
  dnnl::primitive primitive;
  memory::desc weights;  // the layout the primitive reads (or, kernel gradient, writes) weights in
  bool reorder = false;  // weights differs from the user's HWIO
  dnnl::reorder to_primitive, to_user;
  size_t scratchpad_bytes = 0;
};

// The primitive of `Prim` for primitive descriptor `pd`, whose (diff) weights are `weights`.
template <typename Prim, typename Desc>
void Fill(Primitive& p, const Desc& pd, const memory::desc& weights) {
  p.primitive = Prim(pd);
  p.weights = weights;
  p.scratchpad_bytes = pd.scratchpad_desc().get_size();
}

// Implementations passed over where oneDNN offers another (measured on AVX-512 with bf16,
// docs/cpu.md): the brgemm convolutions of avx512_core_bf16, which the direct jit_bf16 kernels
// beat on every ResNet geometry (by up to 2x for strided input gradients), and, in any type,
// the strided brgemm input gradient. AMX and every other implementation keep oneDNN's order.
bool PassedOver(const std::string& impl) {
  const bool brgemm = impl.rfind("brg", 0) == 0;
  return brgemm && (impl.find("brgconv_strided") != std::string::npos ||
                    (impl.find("avx512_core_bf16") != std::string::npos &&
                     impl.find("amx") == std::string::npos));
}

// `pd` moved to the first implementation not passed over, if it has one (else left as made).
template <typename Desc, typename Make>
void PreferImplementation(Desc& pd, Make make) {
  int index = 0;
  for (Desc probe = make();; ++index) {
    if (!PassedOver(probe.impl_info_str())) break;
    if (!probe.next_impl()) return;
  }
  for (int i = 0; i < index; ++i) pd.next_impl();
}

std::shared_ptr<const Primitive> Create(Kind kind, const Geometry& g) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  memory::desc any_weights(g.weights, g.dt, Tag::any);
  memory::desc src = Activations(g.src, g.dt), dst = Activations(g.dst, g.dt);
  auto make_forward = [&] {
    return dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
        any_weights, dst, g.strides, g.dilates, g.pad_l, g.pad_r, attr);
  };
  auto forward = make_forward();
  PreferImplementation(forward, make_forward);
  // The backward descriptors take the same arguments, the forward one as a hint; the kernel
  // gradient is float32 (its pieces are summed, then rounded once to the user's type).
  auto backward = [&](auto tag, const memory::desc& weights) {
    using Desc = typename decltype(tag)::primitive_desc;
    auto make = [&] {
      return Desc(Engine(), dnnl::algorithm::convolution_direct, src, weights, dst, g.strides,
                  g.dilates, g.pad_l, g.pad_r, forward, attr);
    };
    Desc pd = make();
    PreferImplementation(pd, make);
    return pd;
  };
  auto p = std::make_shared<Primitive>();
  if (kind == Kind::kForward) {
    Fill<dnnl::convolution_forward>(*p, forward, forward.weights_desc());
  } else if (kind == Kind::kBackwardData) {
    auto pd = backward(dnnl::convolution_backward_data(), any_weights);
    Fill<dnnl::convolution_backward_data>(*p, pd, pd.weights_desc());
  } else {
    auto pd = backward(dnnl::convolution_backward_weights(),
                       memory::desc(g.weights, Dt::f32, Tag::any));
    Fill<dnnl::convolution_backward_weights>(*p, pd, pd.diff_weights_desc());
  }
  memory::desc user = UserWeights(g.weights, g.dt);
  p->reorder = p->weights != user;
  if (p->reorder) {
    p->to_primitive = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), user, Engine(), p->weights));
    p->to_user = dnnl::reorder(dnnl::reorder::primitive_desc(Engine(), p->weights, Engine(), user));
  }
  return p;
}

std::shared_ptr<const Primitive> Get(Kind kind, const Geometry& g) {
  static std::mutex* mu = new std::mutex;
  static auto* cache = new std::unordered_map<std::string, std::shared_ptr<const Primitive>>;
  std::string key = g.Key(kind);
  {
    std::lock_guard<std::mutex> lock(*mu);
    auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  auto p = Create(kind, g);  // outside the lock: oneDNN generates code here
  std::lock_guard<std::mutex> lock(*mu);
  if (cache->size() > 4096) cache->clear();  // a bound for programs that see endless shapes
  return cache->emplace(key, p).first->second;
}

memory ScratchMemory(const Primitive& p) {
  return memory(memory::desc({static_cast<int64_t>(std::max<size_t>(p.scratchpad_bytes, 1))},
                             Dt::u8, Tag::a),
                Engine(), cnn_jax::ThreadScratch<Primitive>(p.scratchpad_bytes));
}

// Each piece runs in oneDNN with the calling thread alone (OpenMP team of one).
void OneThread() {
  if (omp_get_max_threads() != 1) omp_set_num_threads(1);
}

ffi::Error CheckRank(const ffi::Span<const int64_t>& dims, const char* what) {
  if (dims.size() != 4) return ffi::Error::InvalidArgument(std::string("conv2d: ") + what + " must be 4-D");
  return ffi::Error::Success();
}

// x: NHWC, w: HWIO, y: NHWC (their dims as given), attributes as lax.conv_general_dilated's.
ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                        ffi::Span<const int64_t> y, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                        ffi::Span<const int64_t> pad_hi, Geometry* g) {
  for (auto [dims, what] : {std::pair{x, "input"}, std::pair{w, "kernel"}, std::pair{y, "output"}}) {
    if (auto e = CheckRank(dims, what); e.failure()) return e;
  }
  if (strides.size() != 2 || dilation.size() != 2 || pad_lo.size() != 2 || pad_hi.size() != 2)
    return ffi::Error::InvalidArgument("conv2d: strides, dilation and padding need 2 values");
  if (w[2] != x[3] || w[3] != y[3] || x[0] != y[0])
    return ffi::Error::InvalidArgument("conv2d: input, kernel and output shapes disagree");
  for (int i = 0; i < 2; ++i) {
    int64_t span = dilation[i] * (w[i] - 1) + 1;
    if ((x[1 + i] + pad_lo[i] + pad_hi[i] - span) / strides[i] + 1 != y[1 + i])
      return ffi::Error::InvalidArgument("conv2d: output size does not match the geometry");
  }
  g->src = {x[0], x[3], x[1], x[2]};
  g->weights = {w[3], w[2], w[0], w[1]};
  g->dst = {y[0], y[3], y[1], y[2]};
  g->strides = {strides[0], strides[1]};
  g->dilates = {dilation[0] - 1, dilation[1] - 1};
  g->pad_l = {pad_lo[0], pad_lo[1]};
  g->pad_r = {pad_hi[0], pad_hi[1]};
  return ffi::Error::Success();
}

// The oneDNN type of three buffers of one type, float32 or bfloat16; else an error.
ffi::Error ElementType(ffi::DataType a, ffi::DataType b, ffi::DataType c, Dt* dt) {
  if (a != b || a != c)
    return ffi::Error::InvalidArgument("conv2d: input, kernel and output types differ");
  if (a == ffi::DataType::F32) {
    *dt = Dt::f32;
  } else if (a == ffi::DataType::BF16) {
    *dt = Dt::bf16;
  } else {
    return ffi::Error::InvalidArgument("conv2d: float32 or bfloat16 only");
  }
  return ffi::Error::Success();
}

// Splits the batch of n into pieces of `per` images (the last may be smaller).
struct Pieces {
  int64_t per, count;
  Pieces(int64_t n, int64_t workers) {
    workers = std::max<int64_t>(1, std::min<int64_t>(workers, n));
    per = (n + workers - 1) / workers;
    count = (n + per - 1) / per;
  }
  int64_t Size(int64_t i, int64_t n) const { return std::min(per, n - i * per); }
};

int64_t Workers(ffi::ThreadPool& pool) { return std::max<int64_t>(1, pool.num_threads()); }

// Piece i of a batch-split call: its primitive (`first`'s where the piece is full-sized) and
// its slices of the activations x (NHWC, g.src) and y (NHWC, g.dst).
struct Piece {
  std::shared_ptr<const Primitive> p;
  memory x, y;
  Piece(Kind kind, const Geometry& g, const Pieces& pieces, int64_t i,
        const std::shared_ptr<const Primitive>& first, const void* x_data, const void* y_data) {
    const int64_t size = pieces.Size(i, g.src[0]);
    const Geometry gi = g.WithBatch(size);
    p = size == pieces.per ? first : Get(kind, gi);
    const int64_t offset = i * pieces.per * ByteWidth(g.dt);  // bytes per image below
    char* x_bytes = static_cast<char*>(const_cast<void*>(x_data));
    char* y_bytes = static_cast<char*>(const_cast<void*>(y_data));
    x = memory(Activations(gi.src, g.dt), Engine(), x_bytes + offset * g.src[1] * g.src[2] * g.src[3]);
    y = memory(Activations(gi.dst, g.dt), Engine(), y_bytes + offset * g.dst[1] * g.dst[2] * g.dst[3]);
  }
};

// The forward or input gradient by F(2x2, 3x3) (conv_winograd.h), where it is built and
// applies; false where oneDNN's convolution is to run. The input gradient is the convolution of
// dy with the kernel flipped and transposed, padded by 2 - the forward's padding.
bool RunWinograd(Kind kind, ffi::ThreadPool& pool, const Geometry& g, void* x, const void* w,
                 void* y) {
#ifdef CNN_JAX_WINOGRAD
  const int64_t n = g.src[0], c = g.src[1], k = g.weights[0];
  const bool forward = kind == Kind::kForward;
  if (g.dt != Dt::f32 ||
      !cnn_jax::WinogradApplies(g.weights[2], g.weights[3], g.strides[0], g.strides[1],
                                g.dilates[0] + 1, g.dilates[1] + 1, forward ? c : k,
                                forward ? k : c,
                                {g.pad_l[0], g.pad_l[1], g.pad_r[0], g.pad_r[1]})) {
    return false;
  }
  const int64_t h = g.src[2], wd = g.src[3], ho = g.dst[2], wo = g.dst[3];
  const cnn_jax::WinogradGeometry wg =
      forward ? cnn_jax::WinogradGeometry{n, h, wd, c, ho, wo, k, g.pad_l[0], g.pad_l[1]}
              : cnn_jax::WinogradGeometry{n, ho, wo, k, h, wd, c, 2 - g.pad_l[0], 2 - g.pad_l[1]};
  std::vector<float> u(16 * c * k);
  cnn_jax::winograd::TransformKernel(static_cast<const float*>(w), wg.c, wg.k, !forward, u.data());
  const float* in = static_cast<const float*>(forward ? x : y);
  float* out = static_cast<float*>(forward ? y : x);
  Pieces pieces(n, Workers(pool));
  cnn_jax::ParallelFor(pool, pieces.count, pieces.count, [&](int64_t i) {
    const int64_t n0 = i * pieces.per;
    cnn_jax::WinogradConvolution(wg, in, u.data(), out, n0, n0 + pieces.Size(i, n));
  });
  return true;
#else
  return false;
#endif
}

// Forward (y = conv(x, w)) or input gradient (x = conv_transpose(y, w)): batch-parallel.
ffi::Error RunActivations(Kind kind, ffi::ThreadPool& pool, const Geometry& g, void* x,
                          const void* w, void* y, bool winograd_wanted) {
  if (winograd_wanted && RunWinograd(kind, pool, g, x, w, y)) return ffi::Error::Success();
  OneThread();
  const int64_t n = g.src[0];
  Pieces pieces(n, Workers(pool));
  auto first = Get(kind, g.WithBatch(pieces.per));
  memory::desc user = UserWeights(g.weights, g.dt);
  std::vector<char> reordered;
  memory weights(user, Engine(), const_cast<void*>(w));
  if (first->reorder) {
    reordered.resize(first->weights.get_size());
    memory blocked(first->weights, Engine(), reordered.data());
    dnnl::stream stream(Engine());
    first->to_primitive.execute(stream, weights, blocked);
    stream.wait();
    weights = blocked;
  }
  cnn_jax::ParallelFor(pool, pieces.count, pieces.count, [&](int64_t i) {
    OneThread();
    Piece piece(kind, g, pieces, i, first, x, y);
    const Primitive& p = *piece.p;
    dnnl::stream stream(Engine());
    if (kind == Kind::kForward) {
      p.primitive.execute(stream, {{DNNL_ARG_SRC, piece.x}, {DNNL_ARG_WEIGHTS, weights},
                                   {DNNL_ARG_DST, piece.y}, {DNNL_ARG_SCRATCHPAD, ScratchMemory(p)}});
    } else {
      p.primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, piece.x}, {DNNL_ARG_WEIGHTS, weights},
                                   {DNNL_ARG_DIFF_DST, piece.y},
                                   {DNNL_ARG_SCRATCHPAD, ScratchMemory(p)}});
    }
    stream.wait();
  });
  return ffi::Error::Success();
}

// partial[0] += partial[1] + ... + partial[count - 1] (each `floats` long), in piece order, so the
// kernel gradient does not depend on which thread ran which piece.
void SumPieces(float* partial, int64_t count, int64_t floats) {
  for (int64_t i = 1; i < count; ++i) {
    const float* part = partial + i * floats;
    for (int64_t j = 0; j < floats; ++j) partial[j] += part[j];
  }
}

// fn(partial, n0, n1) adds images [n0, n1) to its piece's `floats` float32 zeros; the pieces (at
// most kMaxPartialBytes of them at once) are summed in piece order into the first `floats`.
template <typename Fn>
std::vector<float> SumOverPieces(ffi::ThreadPool& pool, int64_t n, int64_t floats, Fn fn) {
  const int64_t cap = std::max<int64_t>(1, kMaxPartialBytes / (floats * sizeof(float)));
  Pieces pieces(n, std::min(Workers(pool), cap));
  std::vector<float> partial(pieces.count * floats, 0.f);
  cnn_jax::ParallelFor(pool, pieces.count, pieces.count, [&](int64_t i) {
    const int64_t n0 = i * pieces.per;
    fn(partial.data() + i * floats, n0, n0 + pieces.Size(i, n));
  });
  SumPieces(partial.data(), pieces.count, floats);
  return partial;
}

#if defined(CNN_JAX_DIRECT_KERNEL_GRADIENT) || defined(CNN_JAX_DIRECT_KERNEL_GRADIENT_BF16)
// Kernel gradient by a direct kernel, kernel(geometry, x, dy, partial, n0, n1) adding images
// [n0, n1) to a float32 HWIO partial gradient (the first kh * kw * c * k floats of the result).
template <typename T, typename Kernel>
std::vector<float> DirectKernelGradient(ffi::ThreadPool& pool, const Geometry& g, const void* x,
                                        const void* dy, Kernel kernel) {
  const cnn_jax::KernelGradientGeometry kg{g.src[2], g.src[3], g.src[1], g.weights[2],
                                           g.weights[3], g.weights[0], g.dst[2], g.dst[3],
                                           g.pad_l[0], g.pad_l[1], g.dilates[0] + 1,
                                           g.dilates[1] + 1};
  return SumOverPieces(pool, g.src[0], kg.kh * kg.kw * kg.c * kg.k,
                       [&](float* partial, int64_t n0, int64_t n1) {
                         kernel(kg, static_cast<const T*>(x), static_cast<const T*>(dy), partial,
                                n0, n1);
                       });
}
#endif

// The direct kernel gradient (conv_kernel_gradient.h for float32 on AVX2,
// conv_kernel_gradient_bf16.h for bfloat16 on AVX-512 BF16) into dw, where it is built and
// applies; false where oneDNN's is to run.
bool RunWeightsDirect(ffi::ThreadPool& pool, const Geometry& g, const void* x, const void* dy,
                      void* dw) {
  [[maybe_unused]] const int64_t c = g.src[1], k = g.weights[0];
#ifdef CNN_JAX_DIRECT_KERNEL_GRADIENT
  if (g.dt == Dt::f32 && cnn_jax::DirectKernelGradientApplies(g.strides[0], g.strides[1], c, k)) {
    const auto sum = DirectKernelGradient<float>(pool, g, x, dy, cnn_jax::KernelGradient);
    std::memcpy(dw, sum.data(), g.weights[2] * g.weights[3] * c * k * sizeof(float));
    return true;
  }
#endif
#ifdef CNN_JAX_DIRECT_KERNEL_GRADIENT_BF16
  if (g.dt == Dt::bf16 &&
      cnn_jax::DirectKernelGradientBf16Applies(g.strides[0], g.strides[1], c, k)) {
    const auto sum = DirectKernelGradient<uint16_t>(pool, g, x, dy, cnn_jax::KernelGradientBf16);
    cnn_jax::RoundToBf16(sum.data(), g.weights[2] * g.weights[3] * c * k,
                         static_cast<uint16_t*>(dw));
    return true;
  }
#endif
  return false;
}

// The kernel gradient by F(2x2, 3x3) (conv_winograd.h) into dw, where it is built and applies
// (as the forward does); false where another is to run. One transformed partial gradient per
// piece, summed in piece order, then transformed back.
bool RunWeightsWinograd(ffi::ThreadPool& pool, const Geometry& g, const void* x, const void* dy,
                        void* dw) {
#ifdef CNN_JAX_WINOGRAD
  const int64_t n = g.src[0], c = g.src[1], k = g.weights[0];
  if (g.dt != Dt::f32 ||
      !cnn_jax::WinogradApplies(g.weights[2], g.weights[3], g.strides[0], g.strides[1],
                                g.dilates[0] + 1, g.dilates[1] + 1, c, k,
                                {g.pad_l[0], g.pad_l[1], g.pad_r[0], g.pad_r[1]})) {
    return false;
  }
  const cnn_jax::WinogradGeometry wg{n, g.src[2], g.src[3], c, g.dst[2], g.dst[3], k,
                                     g.pad_l[0], g.pad_l[1]};
  const auto sum = SumOverPieces(pool, n, 16 * c * k, [&](float* partial, int64_t n0, int64_t n1) {
    cnn_jax::WinogradKernelGradient(wg, static_cast<const float*>(x), static_cast<const float*>(dy),
                                    partial, n0, n1);
  });
  cnn_jax::KernelGradientFromTransform(sum.data(), c, k, static_cast<float*>(dw));
  return true;
#else
  return false;
#endif
}

// Kernel gradient: per-piece partial gradients in oneDNN's layout, summed, reordered to HWIO.
ffi::Error RunWeights(ffi::ThreadPool& pool, const Geometry& g, const void* x, const void* dy,
                      void* dw, bool direct_wanted, bool winograd_wanted) {
  if (winograd_wanted && RunWeightsWinograd(pool, g, x, dy, dw)) return ffi::Error::Success();
  if (direct_wanted && RunWeightsDirect(pool, g, x, dy, dw)) return ffi::Error::Success();
  OneThread();
  const int64_t n = g.src[0];
  auto whole = Get(Kind::kBackwardWeights, g);
  const int64_t bytes = static_cast<int64_t>(whole->weights.get_size());
  const int64_t cap = std::max<int64_t>(1, kMaxPartialBytes / std::max<int64_t>(bytes, 1));
  Pieces pieces(n, std::min(Workers(pool), cap));
  auto first = Get(Kind::kBackwardWeights, g.WithBatch(pieces.per));
  const int64_t floats = bytes / sizeof(float);
  std::vector<float> partial(pieces.count * floats);
  cnn_jax::ParallelFor(pool, pieces.count, pieces.count, [&](int64_t i) {
    OneThread();
    Piece piece(Kind::kBackwardWeights, g, pieces, i, first, x, dy);
    const Primitive& p = *piece.p;
    if (p.weights != first->weights) throw std::runtime_error("pieces disagree on the layout");
    memory wm(p.weights, Engine(), partial.data() + i * floats);
    dnnl::stream stream(Engine());
    p.primitive.execute(stream, {{DNNL_ARG_SRC, piece.x}, {DNNL_ARG_DIFF_DST, piece.y},
                                 {DNNL_ARG_DIFF_WEIGHTS, wm},
                                 {DNNL_ARG_SCRATCHPAD, ScratchMemory(p)}});
    stream.wait();
  });
  SumPieces(partial.data(), pieces.count, floats);
  float* sum = partial.data();
  memory::desc user = UserWeights(g.weights, g.dt);
  if (first->reorder) {
    memory blocked(first->weights, Engine(), sum);
    memory out(user, Engine(), dw);
    dnnl::stream stream(Engine());
    first->to_user.execute(stream, blocked, out);
    stream.wait();
  } else {
    std::memcpy(dw, sum, user.get_size());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                   ffi::Result<ffi::AnyBuffer> y, ffi::Span<const int64_t> strides,
                   ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                   ffi::Span<const int64_t> pad_hi, bool winograd) {
  try {
    Geometry g;
    if (auto e = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), strides, dilation,
                              pad_lo, pad_hi, &g); e.failure()) return e;
    if (auto e = ElementType(x.element_type(), w.element_type(), y->element_type(), &g.dt);
        e.failure()) return e;
    return RunActivations(Kind::kForward, pool, g, x.untyped_data(), w.untyped_data(),
                          y->untyped_data(), winograd);
  } catch (const std::exception& e) {
    return cnn_jax::Internal("conv2d_forward", e.what());
  }
}

ffi::Error BackwardData(ffi::ThreadPool pool, ffi::AnyBuffer dy, ffi::AnyBuffer w,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                        ffi::Span<const int64_t> pad_hi, bool winograd) {
  try {
    Geometry g;
    if (auto e = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, dilation,
                              pad_lo, pad_hi, &g); e.failure()) return e;
    if (auto e = ElementType(dy.element_type(), w.element_type(), dx->element_type(), &g.dt);
        e.failure()) return e;
    return RunActivations(Kind::kBackwardData, pool, g, dx->untyped_data(), w.untyped_data(),
                          dy.untyped_data(), winograd);
  } catch (const std::exception& e) {
    return cnn_jax::Internal("conv2d_backward_data", e.what());
  }
}

ffi::Error BackwardWeights(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                           ffi::Result<ffi::AnyBuffer> dw, ffi::Span<const int64_t> strides,
                           ffi::Span<const int64_t> dilation, ffi::Span<const int64_t> pad_lo,
                           ffi::Span<const int64_t> pad_hi, bool direct_kernel_gradient,
                           bool winograd) {
  try {
    Geometry g;
    if (auto e = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, dilation,
                              pad_lo, pad_hi, &g); e.failure()) return e;
    if (auto e = ElementType(x.element_type(), dy.element_type(), dw->element_type(), &g.dt);
        e.failure()) return e;
    return RunWeights(pool, g, x.untyped_data(), dy.untyped_data(), dw->untyped_data(),
                      direct_kernel_gradient, winograd);
  } catch (const std::exception& e) {
    return cnn_jax::Internal("conv2d_backward_weights", e.what());
  }
}

}  // namespace

#define CNN_JAX_CONV_BINDING(first_arg, second_arg)                 \
  ffi::Ffi::Bind()                                                  \
      .Ctx<ffi::ThreadPool>()                                       \
      .Arg<ffi::AnyBuffer>() /* first_arg */                        \
      .Arg<ffi::AnyBuffer>() /* second_arg */                       \
      .Ret<ffi::AnyBuffer>()                                        \
      .Attr<ffi::Span<const int64_t>>("window_strides")             \
      .Attr<ffi::Span<const int64_t>>("rhs_dilation")               \
      .Attr<ffi::Span<const int64_t>>("padding_lo")                 \
      .Attr<ffi::Span<const int64_t>>("padding_hi")

// winograd: conv_winograd.h where it applies (runtime.conv_winograd).
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxConv2dForward, Forward,
                              CNN_JAX_CONV_BINDING(x, w).Attr<bool>("winograd"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxConv2dBackwardData, BackwardData,
                              CNN_JAX_CONV_BINDING(dy, w).Attr<bool>("winograd"));
// direct_kernel_gradient: conv_kernel_gradient.h where it applies (runtime.conv_kernel_gradient);
// winograd: conv_winograd.h before it, where that applies.
XLA_FFI_DEFINE_HANDLER_SYMBOL(CnnJaxConv2dBackwardWeights, BackwardWeights,
                              CNN_JAX_CONV_BINDING(x, dy)
                                  .Attr<bool>("direct_kernel_gradient")
                                  .Attr<bool>("winograd"));
