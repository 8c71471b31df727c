"""The CPU layer set's convolution: im2col for maps no bigger than the kernel, oneDNN elsewhere.

A 3x3 convolution of a 2x2 (or 1x1) map, as in VGG's last stage on 32x32 inputs, is little
arithmetic, but XLA's CPU backend runs it on a generic path far slower than the same layer on a
4x4 map (docs/cpu.md). When a spatial axis of the input is smaller than the kernel's (stride 1, no
dilation, no groups, channels-last), `conv_general_dilated` computes the layer as one matrix
product over the kernel's shifted views (im2col), which is small exactly when the map is. A
layer whose (padded) input is exactly the kernel's size, so that its output is 1x1 (LeNet-5's
C5, 5x5x16 -> 120), is a dense layer: one reshape and one matrix product. Values agree with
`lax.conv_general_dilated` to float rounding (tests/test_kernels_conv.py); the kernel keeps its
HWIO layout, so parameters are unchanged. docs/cpu.md has the measurements.

Every other 2-D channels-last convolution (no lhs dilation, no feature groups) goes to
`ops.conv2d` (oneDNN where it applies and `kernel` is set); the rest to `lax.conv_general_dilated`.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.kernels import ops


def _channels_last(ndim: int) -> tuple[tuple[int, ...], ...]:
  """flax.linen.Conv's dimension numbers: NH..C inputs and outputs, H..IO kernels."""
  lhs = (0, ndim - 1) + tuple(range(1, ndim - 1))
  rhs = (ndim - 1, ndim - 2) + tuple(range(ndim - 2))
  return lhs, rhs, lhs


def _is_unit(v) -> bool:
  return v is None or all(int(s) == 1 for s in v)


def uses_patches(lhs_shape, rhs_shape, window_strides, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, padding=None) -> bool:
  """Whether `conv_general_dilated` takes the im2col path for these arguments."""
  ndim = len(lhs_shape)
  if dimension_numbers is None or tuple(map(tuple, dimension_numbers)) != _channels_last(ndim):
    return False
  if not (_is_unit(window_strides) and _is_unit(lhs_dilation) and _is_unit(rhs_dilation)
          and feature_group_count == 1):
    return False
  window = rhs_shape[:ndim - 2]
  if any(n < k for n, k in zip(lhs_shape[1:-1], window)):
    return True
  return padding is not None and _padded(lhs_shape, window, padding) == tuple(window)


def _pads(lhs_shape, window, padding, strides=None, dilation=None) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    nd = len(window)
    dilation = tuple(dilation or (1,) * nd)
    window = tuple((k - 1) * d + 1 for k, d in zip(window, dilation))  # the dilated window
    padding = lax.padtype_to_pads(lhs_shape[1:-1], window, tuple(strides or (1,) * nd), padding)
  return [(int(lo), int(hi)) for lo, hi in padding]


def _is_plain_2d(lhs, dimension_numbers, lhs_dilation, feature_group_count) -> bool:
  """NHWC/HWIO, no lhs dilation (transposed convs) and no feature groups: what ops.conv2d takes."""
  return (lhs.ndim == 4 and feature_group_count == 1 and _is_unit(lhs_dilation)
          and dimension_numbers is not None
          and tuple(map(tuple, dimension_numbers)) == _channels_last(4))


def _padded(lhs_shape, window, padding) -> tuple[int, ...]:
  return tuple(n + lo + hi for n, (lo, hi) in zip(lhs_shape[1:-1], _pads(lhs_shape, window, padding)))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         kernel: bool = True, direct_kernel_gradient: bool = True,
                         winograd: bool = True, **kwargs) -> jax.Array:
  """`lax.conv_general_dilated`, as im2col for maps smaller than the kernel (see module doc),
  through the oneDNN kernel where it applies if `kernel`."""
  if kwargs or not uses_patches(lhs.shape, rhs.shape, window_strides, lhs_dilation,
                                rhs_dilation, dimension_numbers, feature_group_count, padding):
    if not kwargs and _is_plain_2d(lhs, dimension_numbers, lhs_dilation, feature_group_count):
      window = rhs.shape[:2]
      return ops.conv2d(lhs, rhs, window_strides, _pads(lhs.shape, window, padding,
                                                        window_strides, rhs_dilation),
                        rhs_dilation or (1, 1), kernel=kernel,
                        direct_kernel_gradient=direct_kernel_gradient, winograd=winograd)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  nd = lhs.ndim - 2
  window = rhs.shape[:nd]
  padding = _pads(lhs.shape, window, padding)
  cfg = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)]
  xp = lax.pad(lhs, jnp.zeros((), lhs.dtype), cfg)
  out = [n - k + 1 for n, k in zip(xp.shape[1:-1], window)]
  if min(out) < 1:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                    dimension_numbers=dimension_numbers, precision=precision)
  if all(o == 1 for o in out):  # a dense layer: (N, K * Cin) @ (K * Cin, Cout)
    flat = xp.reshape(xp.shape[0], -1)
    return jnp.dot(flat, rhs.reshape(-1, rhs.shape[-1]), precision=precision).reshape(
        (xp.shape[0],) + (1,) * nd + (rhs.shape[-1],))
  views = [lax.slice(xp, (0,) + offset + (0,),
                     (xp.shape[0],) + tuple(o + n for o, n in zip(offset, out)) + (xp.shape[-1],))
           for offset in itertools.product(*(range(k) for k in window))]
  patches = jnp.concatenate(views, axis=-1)  # (N, out.., K * Cin), offsets row-major, as HWIO
  return jnp.dot(patches, rhs.reshape(-1, rhs.shape[-1]), precision=precision)
