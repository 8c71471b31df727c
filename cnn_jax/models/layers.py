"""Small building blocks shared by several model families: PyTorch-equivalent initialisation,
padding and BatchNorm, the pooled classifier head, and pooling with torchvision semantics."""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ModuleDef = Any

# torchvision: nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu') (untruncated).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch-style symmetric padding of a k x k window (k odd): k // 2 on every side."""
  return ((k // 2, k // 2), (k // 2, k // 2))


def batch_norm(train: bool, dtype: Any) -> ModuleDef:
  """PyTorch BatchNorm2d defaults (momentum 0.1 == flax 0.9, eps 1e-5); stats move in train."""
  return partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                 dtype=dtype)


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
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=tuple(pads))
