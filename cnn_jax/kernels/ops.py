"""The two layers that dominate a CNN's training step on a CPU, through this package's kernels.

* `conv2d`: a 2-D convolution, NHWC activations and HWIO kernels (flax's layout);
* `batch_norm_train`: BatchNorm's training-mode normalisation over the last axis, optionally
  followed by a ReLU, or by a residual addition and a ReLU (the end of a ResNet block),
  returning the output and the batch statistics.

They are the CPU layer set's (cnn_jax.kernels.layer_set). Each runs a C++ kernel (oneDNN's
convolutions; BatchNorm+ReLU in two passes each way) with its own backward pass (a custom VJP
over the kernels' backward entry points) where all of these hold when it is traced: `kernel` is
set, the kernel is built and loaded (library.py), the default backend is a CPU, the program is
on one device (the kernels are opaque to XLA's SPMD partitioner) and the arguments are of a kind
it handles (float32, or for convolutions bfloat16 where the CPU has it natively; no lhs dilation
or feature groups). Otherwise: XLA's ops
(`lax.conv_general_dilated`; BatchNorm in jnp with a one-pass custom backward). When lowered,
`lax.platform_dependent` keeps the kernel for the CPU and XLA's op for every other platform, so
an executable for a GPU or TPU never contains a CPU kernel.

The kernels support reverse-mode differentiation (what training uses) and `vmap` (one call per
mapped element); forward mode (`jax.jvp`) needs the stock layer set (`config.cpu_kernels='off'`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax import precision
from cnn_jax.kernels import library

NHWC = ('NHWC', 'HWIO', 'NHWC')


def use_kernel(name: str) -> bool:
  """Whether the program being traced can run kernel `name` (see the module docstring)."""
  return jax.default_backend() == 'cpu' and jax.device_count() == 1 and library.load(name)


# ----------------------------------------------------------------------------- convolution

def conv2d(x: jax.Array, w: jax.Array, window_strides: Sequence[int] = (1, 1),
           padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
           rhs_dilation: Sequence[int] = (1, 1), kernel: bool = True,
           direct_kernel_gradient: bool = True, winograd: bool = True) -> jax.Array:
  """`lax.conv_general_dilated(x, w, window_strides, padding, rhs_dilation=rhs_dilation,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`, on a CPU through oneDNN where it applies;
  `direct_kernel_gradient`: cnn_jax's own kernel gradient where it applies (conv_kernel_gradient.h:
  float32 on AVX2 builds; conv_kernel_gradient_bf16.h: bfloat16 on AVX-512 BF16 builds), else
  oneDNN's; `winograd`: the forward, input gradient and kernel gradient by F(2x2, 3x3) where it
  applies (conv_winograd.h: float32 3x3 stride-1 convolutions on AVX2 and AVX-512 builds; the
  kernel gradient before the direct one), else as without it."""
  strides = tuple(int(s) for s in window_strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  dilation = tuple(int(d) for d in rhs_dilation)
  xla = functools.partial(_conv2d_xla, strides=strides, padding=pads, dilation=dilation)
  if not (kernel and conv2d_kernel_applies(x, w, strides, pads, dilation)
          and use_kernel('conv2d')):
    return xla(x, w)
  cpu = functools.partial(_conv2d_cpu,
                          geometry=ConvGeometry(strides, pads, dilation,
                                                bool(direct_kernel_gradient), bool(winograd)))
  return lax.platform_dependent(x, w, cpu=cpu, default=xla)


def conv2d_kernel_applies(x, w, strides, padding, dilation) -> bool:
  """The geometries and dtypes the oneDNN kernel takes (4-D, no negative padding; float32, or
  bfloat16 where the CPU computes it natively: cnn_jax.precision)."""
  return (x.ndim == 4 and w.ndim == 4 and x.dtype == w.dtype and _kernel_dtype(x.dtype)
          and x.shape[-1] == w.shape[2] and min(x.shape) > 0
          and all(s >= 1 for s in strides) and all(d >= 1 for d in dilation)
          and all(lo >= 0 and hi >= 0 for lo, hi in padding)
          and all(n + lo + hi >= d * (k - 1) + 1 for n, (lo, hi), k, d in
                  zip(x.shape[1:3], padding, w.shape[:2], dilation)))


def _kernel_dtype(dtype) -> bool:
  return dtype == jnp.float32 or (dtype == jnp.bfloat16 and precision.native_bfloat16())


def _conv2d_xla(x, w, *, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=NHWC)


class ConvGeometry(NamedTuple):
  """A CPU convolution's static arguments (hashable: custom_vjp's nondiff argument)."""
  strides: tuple[int, ...]
  padding: tuple[tuple[int, int], ...]
  dilation: tuple[int, ...]
  direct_kernel_gradient: bool
  winograd: bool


def _conv_attrs(geometry: ConvGeometry) -> dict:
  strides, padding, dilation = geometry.strides, geometry.padding, geometry.dilation
  return dict(window_strides=np.asarray(strides, np.int64),
              rhs_dilation=np.asarray(dilation, np.int64),
              padding_lo=np.asarray([lo for lo, _ in padding], np.int64),
              padding_hi=np.asarray([hi for _, hi in padding], np.int64))


def _ffi(target: str, *outputs: jax.ShapeDtypeStruct):
  return jax.ffi.ffi_call(target, outputs if len(outputs) > 1 else outputs[0],
                          vmap_method='sequential')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_cpu(x, w, geometry):
  return _conv2d_cpu_fwd(x, w, geometry)[0]


def _conv2d_cpu_fwd(x, w, geometry):
  strides, padding, dilation = geometry.strides, geometry.padding, geometry.dilation
  out = jax.eval_shape(functools.partial(_conv2d_xla, strides=strides, padding=padding,
                                         dilation=dilation), x, w)
  y = _ffi('CnnJaxConv2dForward', out)(x, w, winograd=geometry.winograd,
                                       **_conv_attrs(geometry))
  return y, (x, w)


def _conv2d_cpu_bwd(geometry, residuals, dy):
  x, w = residuals
  attrs = _conv_attrs(geometry)
  dx = _ffi('CnnJaxConv2dBackwardData', jax.ShapeDtypeStruct(x.shape, x.dtype))(
      dy, w, winograd=geometry.winograd, **attrs)
  dw = _ffi('CnnJaxConv2dBackwardWeights', jax.ShapeDtypeStruct(w.shape, w.dtype))(
      x, dy, direct_kernel_gradient=geometry.direct_kernel_gradient, winograd=geometry.winograd,
      **attrs)
  return dx, dw


_conv2d_cpu.defvjp(_conv2d_cpu_fwd, _conv2d_cpu_bwd)


# ------------------------------------------------------------------------------- BatchNorm

def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     relu: bool = False, residual: jax.Array | None = None, kernel: bool = True,
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, batch mean, batch variance) of BatchNorm over the last axis in training mode:
  y = bn(x), max(0, bn(x)) when `relu`, max(0, bn(x) + residual) with a residual (`relu` must
  be set); y in x's dtype (float32, or bfloat16 computed in float32), statistics in float32
  (biased variance)."""
  if residual is not None and not relu:
    raise ValueError('batch_norm_train: a residual is added before the ReLU; set relu=True.')
  if residual is not None:
    xla = functools.partial(_batch_norm_add_relu_xla, epsilon=epsilon)
    cpu = functools.partial(_batch_norm_add_relu_cpu, epsilon=float(epsilon))
    args = (x, scale, bias, residual)
  else:
    xla = functools.partial(_batch_norm_xla, epsilon=epsilon, relu=relu)
    cpu = functools.partial(_batch_norm_cpu, epsilon=float(epsilon), relu=bool(relu))
    args = (x, scale, bias)
  if not (kernel and x.size > 0 and _kernel_dtype(x.dtype) and
          scale.dtype == bias.dtype == jnp.float32 and
          (residual is None or (residual.shape, residual.dtype) == (x.shape, x.dtype)) and
          use_kernel('batch_norm')):
    return xla(*args)
  return lax.platform_dependent(*args, cpu=cpu, default=xla)


def _batch_norm_xla(x, scale, bias, *, epsilon, relu):
  y, mean, var = batch_norm_train_xla(x, scale, bias, epsilon)
  return (jax.nn.relu(y) if relu else y).astype(x.dtype), mean, var


def _batch_norm_add_relu_xla(x, scale, bias, residual, *, epsilon):
  y, mean, var = batch_norm_train_xla(x, scale, bias, epsilon)
  return jax.nn.relu(y + residual.astype(jnp.float32)).astype(x.dtype), mean, var


def _batch_stats(x):
  """Per-channel mean and (biased) variance in one pass over d = x - k, k the channel's first
  value: E[d^2] - E[d]^2 stays accurate where E[x^2] - E[x]^2 cancels (a mean far from zero)."""
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  shift = lax.stop_gradient(xf.reshape(-1, x.shape[-1])[0])
  d = xf - shift
  mean_d = jnp.mean(d, axes)
  var = jnp.maximum(jnp.mean(jnp.square(d), axes) - jnp.square(mean_d), 0.0)
  return shift + mean_d, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train_xla(x, scale, bias, epsilon):
  """XLA's implementation, for every backend: the batch statistics in one pass (shifted sums,
  in float32; _batch_stats), the output as one multiply-add per element, y = x * a + b with per-channel
  a = scale / sqrt(var + eps) and b = bias - mean * a, and a hand-written backward: two
  per-channel sums (of dy and of dy * (x - mean)) and one elementwise pass, where autodiff of
  the textbook formula makes XLA reduce and broadcast several times."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
  mean, var = _batch_stats(x)
  inv = lax.rsqrt(var + epsilon)
  a = scale * inv
  y = x.astype(jnp.float32) * a + (bias - mean * a)
  return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
  """With xc = x - mean, xhat = xc * inv, n elements per channel:
  dbias = sum(dy), dscale = sum(dy * xhat),
  dx = scale * inv * (dy - dbias / n - xhat * dscale / n) + dmean / n + 2 * dvar * xc / n,
  where dmean, dvar are the cotangents of the returned statistics (zero in a training step)."""
  del epsilon
  x, mean, inv, scale = residuals
  dy, dmean, dvar = cotangents
  axes = tuple(range(x.ndim - 1))
  n = np.prod([x.shape[i] for i in axes]).astype(np.float32)
  dy = dy.astype(jnp.float32)
  xc = x.astype(jnp.float32) - mean
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * xc, axes) * inv
  k1 = scale * inv
  k2 = (2 * dvar - k1 * inv * dscale) / n
  k3 = (dmean - k1 * dbias) / n
  dx = (k1 * dy + k2 * xc + k3).astype(x.dtype)
  return dx, dscale, dbias


batch_norm_train_xla.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_cpu(x, scale, bias, epsilon, relu):
  return _batch_norm_cpu_fwd(x, scale, bias, epsilon, relu)[0]


def _stats_shapes(x):
  c = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
  return jax.ShapeDtypeStruct(x.shape, x.dtype), c, c


def _batch_norm_cpu_fwd(x, scale, bias, epsilon, relu):
  y, mean, var = _ffi('CnnJaxBatchNormForward', *_stats_shapes(x))(
      x, scale, bias, epsilon=np.float32(epsilon), relu=relu)
  return (y, mean, var), (x, mean, var, scale, bias)


def _batch_norm_cpu_bwd(epsilon, relu, residuals, cotangents):
  x, mean, var, scale, bias = residuals
  dy, dmean, dvar = cotangents
  return _ffi('CnnJaxBatchNormBackward', *_stats_shapes(x))(
      x, dy.astype(x.dtype), mean, var, scale, bias, dmean, dvar,
      epsilon=np.float32(epsilon), relu=relu)


_batch_norm_cpu.defvjp(_batch_norm_cpu_fwd, _batch_norm_cpu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _batch_norm_add_relu_cpu(x, scale, bias, residual, epsilon):
  return _batch_norm_add_relu_cpu_fwd(x, scale, bias, residual, epsilon)[0]


def _batch_norm_add_relu_cpu_fwd(x, scale, bias, residual, epsilon):
  y, mean, var = _ffi('CnnJaxBatchNormAddReluForward', *_stats_shapes(x))(
      x, scale, bias, residual, epsilon=np.float32(epsilon))
  return (y, mean, var), (x, y, mean, var, scale, bias)


def _batch_norm_add_relu_cpu_bwd(epsilon, residuals, cotangents):
  x, y, mean, var, scale, bias = residuals
  dy, dmean, dvar = cotangents
  shapes = _stats_shapes(x)
  return _ffi('CnnJaxBatchNormAddReluBackward', *shapes, shapes[0])(
      x, y, dy.astype(x.dtype), mean, var, scale, bias, dmean, dvar,
      epsilon=np.float32(epsilon))


_batch_norm_add_relu_cpu.defvjp(_batch_norm_add_relu_cpu_fwd, _batch_norm_add_relu_cpu_bwd)
