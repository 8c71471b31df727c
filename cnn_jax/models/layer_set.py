"""The three layers a CNN's training step is made of, as one swappable set.

Every model computes its convolutions (`Conv`), training-mode BatchNorm (`batch_norm_train`,
with its fused ReLU and residual-plus-ReLU forms; `layers.BatchNorm` calls it) and max pooling
(`max_pool`) through this module. By default they are JAX's own differentiable ops, so a model
supports every transformation (`jax.grad`, `jax.jvp`, `jax.linearize`, `jax.hessian`, `vmap`) on
every platform.

A program may trace a model under another `LayerSet` with the same three functions and the same
results: `using(layers)` as a context, or `bind(model.apply, layers)`, which the training loop
does with the set `config.cpu_kernels` chooses (cnn_jax.kernels.layer_set: the CPU kernels).
The set is read while tracing, so a bound function is part of what jit compiles.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class LayerSet:
  name: str
  conv_general_dilated: Callable  # lax.conv_general_dilated's signature
  batch_norm_train: Callable  # see `stock_batch_norm_train`
  max_pool: Callable  # flax.linen.max_pool's signature


def stock_batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                           relu: bool = False, residual: jax.Array | None = None,
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, batch mean, biased batch variance) of BatchNorm over the last axis in training mode:
  y = bn(x), max(0, bn(x)) with `relu`, max(0, bn(x) + residual) with a residual (`relu` must be
  set). y and the statistics in float32; plain jnp, differentiated by JAX."""
  if residual is not None and not relu:
    raise ValueError('batch_norm_train: a residual is added before the ReLU; set relu=True.')
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axes)
  var = jnp.mean(jnp.square(xf - mean), axes)
  y = (xf - mean) * (scale * lax.rsqrt(var + epsilon)) + bias
  if residual is not None:
    y = y + residual.astype(jnp.float32)
  return (jax.nn.relu(y) if relu else y), mean, var


STOCK = LayerSet('stock', lax.conv_general_dilated, stock_batch_norm_train, nn.max_pool)

_current = contextvars.ContextVar('cnn_jax_layer_set', default=STOCK)


def current() -> LayerSet:
  return _current.get()


@contextlib.contextmanager
def using(layers: LayerSet):
  """Models traced inside compute with `layers`."""
  token = _current.set(layers)
  try:
    yield layers
  finally:
    _current.reset(token)


@dataclasses.dataclass(frozen=True)
class Bound:
  """`fn` (e.g. a model's `apply`) traced with `layers`; equal for equal arguments, so jit's
  cache serves two runs of one model and layer set."""
  fn: Callable
  layers: LayerSet

  def __call__(self, *args, **kwargs):
    with using(self.layers):
      return self.fn(*args, **kwargs)


def bind(fn: Callable, layers: LayerSet) -> Callable:
  return fn if layers is STOCK else Bound(fn, layers)


def conv_general_dilated(*args, **kwargs) -> jax.Array:
  return current().conv_general_dilated(*args, **kwargs)


def batch_norm_train(x, scale, bias, epsilon, relu=False, residual=None):
  return current().batch_norm_train(x, scale, bias, epsilon, relu, residual)


def max_pool(x, window_shape, strides=None, padding='VALID') -> jax.Array:
  return current().max_pool(x, window_shape, strides=strides, padding=padding)


# flax's Conv computing with the current set: the convolution layer of every model.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
