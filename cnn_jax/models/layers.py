"""Small building blocks shared by several model families: PyTorch-equivalent initialisation,
padding and BatchNorm, the pooled classifier head, and pooling with torchvision semantics."""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.errors import ConfigError, did_you_mean
from cnn_jax.models import layer_set
from cnn_jax.models.layer_set import max_pool

ModuleDef = Any

# torchvision: nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu') (untruncated).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# Named kernel initialisations (claim C12), as weight variances of n_in = fan-in, n_out = fan-out.
KERNEL_INITS = {
    'he_fan_out': conv_kernel_init,  # 2 / n_out: torchvision's ResNets (the default)
    'he': nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),  # 2 / n_in
    'lecun': nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),  # 1 / n_in
    'xavier': nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal'),  # 2 / (n_in + n_out)
    'small': nn.initializers.normal(0.01),  # std 0.01 whatever the size: vanishes with depth
    'normal': nn.initializers.normal(1.0),  # N(0, 1): explodes with depth
}


def kernel_init(name: str):
  if name not in KERNEL_INITS:
    raise ConfigError(f'kernel_init must be one of {tuple(KERNEL_INITS)}, got {name!r} '
                      f'(config.model_kwargs.kernel_init).{did_you_mean(name, KERNEL_INITS)}')
  return KERNEL_INITS[name]


class Identity(nn.Module):
  """No normalisation: stands where a norm layer would (`norm='none'`), takes its arguments."""
  scale_init: Any = None

  def __call__(self, x):
    return x


def torch_pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch-style symmetric padding of a k x k window (k odd): k // 2 on every side."""
  return ((k // 2, k // 2), (k // 2, k // 2))


def batch_norm(train: bool, dtype: Any, epsilon: float = 1e-5) -> ModuleDef:
  """PyTorch BatchNorm2d defaults (momentum 0.1 == flax 0.9, eps 1e-5); stats move in train."""
  return partial(BatchNorm, use_running_average=not train, momentum=0.9, epsilon=epsilon,
                 dtype=dtype)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the last axis, with the same variables ('scale', 'bias';
  batch_stats 'mean', 'var') and results, optionally followed by a ReLU (`relu=True`, what
  `norm_act` asks for), or by `residual +` and a ReLU (a ResNet block's end,
  `bn(x, residual=shortcut)`), so that a layer set can fuse them (cnn_jax.models.layer_set).

  Training: the layer set's `batch_norm_train` (batch statistics, normalisation, the fused ReLU).
  Evaluation: the running statistics folded into one multiply-add. Under data parallelism the
  statistics are over the global batch (jit inserts the all-reduce).
  """
  use_running_average: bool | None = None
  momentum: float = 0.99  # as flax: running = momentum * running + (1 - momentum) * batch
  epsilon: float = 1e-5
  dtype: Any = None  # output dtype; statistics are always float32
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros
  relu: bool = False  # max(0, .) of the output

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, residual=None):
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param('scale', self.scale_init, features, jnp.float32)
    bias = self.param('bias', self.bias_init, features, jnp.float32)
    dtype = self.dtype or x.dtype
    if residual is not None and not self.relu:
      raise ValueError('BatchNorm(relu=False) takes no residual: add it after the layer.')
    if use_running_average:
      a = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = x.astype(jnp.float32) * a + (bias - ra_mean.value * a)
      if residual is not None:
        y = y + residual.astype(jnp.float32)
      return (jax.nn.relu(y) if self.relu else y).astype(dtype)
    y, mean, var = layer_set.batch_norm_train(x, scale, bias, self.epsilon, self.relu, residual)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(dtype)


def norm_act(norm: ModuleDef, act: Callable, name: str, **kwargs) -> Callable:
  """`f(x, residual=None) = act(norm(name=name, **kwargs)(x) [+ residual])`; a BatchNorm followed
  by ReLU becomes one BatchNorm(relu=True), the same function and variables in fewer passes over
  the activations."""
  if act is jax.nn.relu and getattr(norm, 'func', norm) is BatchNorm:
    return norm(name=name, relu=True, **kwargs)
  module = norm(name=name, **kwargs)
  return lambda x, residual=None: act(module(x) if residual is None else module(x) + residual)


NORMS = ('none', 'batch', 'layer', 'instance', 'group')


def norm_layer(kind: str, train: bool, dtype: Any, groups: int = 8) -> ModuleDef | None:
  """A normaliser of NHWC activations over the axes the lecture names (claim C11), or None.

  'batch': per channel over (N, H, W), running averages when not training; 'layer': per example
  over (H, W, C) (flax's LayerNorm default reduces over C alone); 'instance': per example and
  channel over (H, W); 'group': per example over (H, W) and each of `groups` groups of adjacent
  channels. Each has a per-channel scale (gamma) and shift (beta) and epsilon 1e-5.
  """
  if kind == 'batch':
    return batch_norm(train, dtype)
  if kind == 'layer':
    return partial(nn.LayerNorm, reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=1e-5,
                   dtype=dtype)
  if kind == 'instance':
    return partial(nn.InstanceNorm, epsilon=1e-5, dtype=dtype)
  if kind == 'group':
    return partial(nn.GroupNorm, num_groups=groups, epsilon=1e-5, dtype=dtype)
  if kind == 'none':
    return None
  raise ValueError(f'Unknown norm {kind!r}; use one of {NORMS}.')


def classifier_head(module: nn.Module, x: jax.Array, num_classes: int, dtype: Any) -> jax.Array:
  """Global average pool, sown as 'pre_logits', then a fully connected layer named 'head'.

  Call it from a model's compact `__call__` (`module` is that model): the Dense becomes the
  model's submodule 'head'. Returns float32 logits.
  """
  x = jnp.mean(x, axis=(1, 2))
  module.sow('intermediates', 'pre_logits', x)
  x = nn.Dense(num_classes, dtype=dtype, name='head')(x)
  return x.astype(jnp.float32)


def _adaptive_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) averaging matrix of torch's adaptive pooling: bin i spans
  [floor(i*in/out), ceil((i+1)*in/out)); bins overlap or repeat when sizes do not divide."""
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    lo, hi = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
  """torch.nn.AdaptiveAvgPool2d on NHWC: exact for any input size, including smaller ones."""
  oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
  h, w = x.shape[1], x.shape[2]
  if (h, w) == (oh, ow):
    return x
  if h % oh == 0 and w % ow == 0:  # plain non-overlapping bins
    return x.reshape(x.shape[0], oh, h // oh, ow, w // ow, x.shape[3]).mean(axis=(2, 4))
  mh = jnp.asarray(_adaptive_matrix(h, oh), x.dtype)
  mw = jnp.asarray(_adaptive_matrix(w, ow), x.dtype)
  return jnp.einsum('oh,pw,nhwc->nopc', mh, mw, x)


def max_pool_ceil(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """torch max_pool2d(..., ceil_mode=True) on NHWC (Caffe's pooling arithmetic).

  Output size ceil((H + 2p - k) / s) + 1, dropping a last window that would start in the right
  padding, as torch does; padded positions are -inf so they never win.
  """
  pads = []
  for size in x.shape[1:3]:
    out = math.ceil((size + 2 * padding - window) / stride) + 1
    if (out - 1) * stride >= size + padding:
      out -= 1
    pads.append((padding, max((out - 1) * stride + window - size - padding, 0)))
  return max_pool(x, (window, window), strides=(stride, stride), padding=tuple(pads))
