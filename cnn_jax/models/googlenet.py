"""GoogLeNet / Inception v1 (claim C19): Szegedy et al. 2015, 'Going deeper with convolutions',
as torchvision.models.googlenet (BatchNorm after every conv, which the paper did not have).

Feature maps are sown as 'stem' (after conv3 + pool, 28x28x192 at 224), 'stage1' (inception 3a-3b),
'stage2' (4a-4e), 'stage3' (5a-5b) and 'pre_logits'. With `aux_logits=True` the two auxiliary
heads (on 4a and 4d) run in train mode only and their logits are sown into the 'aux_logits'
collection as 'aux1', 'aux2': read them with `apply(..., train=True, mutable=['batch_stats',
'aux_logits'])`; the main return value is always the (N, num_classes) logits.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layers import (BatchNorm, adaptive_avg_pool, batch_norm, max_pool_ceil,
                                   norm_act)

# torchvision: trunc_normal_(std=0.01, a=-2, b=2) for convs and linears; the bounds are +-200 std,
# i.e. a plain normal. Linear biases start at zero (torch: U(+-1/sqrt(fan_in))).
init = nn.initializers.normal(0.01)

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of each inception module (paper table 1).
INCEPTION = {
    '3a': (64, 96, 128, 16, 32, 32),
    '3b': (128, 128, 192, 32, 96, 64),
    '4a': (192, 96, 208, 16, 48, 64),
    '4b': (160, 112, 224, 24, 64, 64),
    '4c': (128, 128, 256, 24, 64, 64),
    '4d': (112, 144, 288, 32, 64, 64),
    '4e': (256, 160, 320, 32, 128, 128),
    '5a': (256, 160, 320, 32, 128, 128),
    '5b': (384, 192, 384, 48, 128, 128),
}


class BasicConv(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps=1e-3) -> ReLU."""
  features: int
  kernel: int
  stride: int = 1
  conv: Callable[..., nn.Module] = Conv
  norm: Callable[..., nn.Module] = BatchNorm

  @nn.compact
  def __call__(self, x):
    p = self.kernel // 2
    x = self.conv(self.features, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                  padding=((p, p), (p, p)), use_bias=False, name='conv')(x)
    return norm_act(self.norm, nn.relu, 'bn')(x)


class Inception(nn.Module):
  """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> k x k | max 3x3/1 -> 1x1.

  k (`branch3_kernel`) is 3 in torchvision (a known deviation kept for its weights) and 5 in the
  paper.
  """
  filters: tuple[int, int, int, int, int, int]
  block: Callable[..., nn.Module]  # BasicConv with conv/norm bound
  branch3_kernel: int = 3

  @nn.compact
  def __call__(self, x):
    c1, c3r, c3, c5r, c5, cp = self.filters
    b1 = self.block(c1, 1, name='branch1')(x)
    b2 = self.block(c3, 3, name='branch2_b')(self.block(c3r, 1, name='branch2_a')(x))
    b3 = self.block(c5, self.branch3_kernel, name='branch3_b')(
        self.block(c5r, 1, name='branch3_a')(x))
    b4 = self.block(cp, 1, name='branch4')(max_pool_ceil(x, 3, 1, padding=1))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
  """Auxiliary head: adaptive avg pool 4x4 -> 1x1 conv 128 -> FC 1024 -> ReLU -> dropout 0.7 -> FC."""
  num_classes: int
  block: Callable[..., nn.Module]
  dense: Callable[..., nn.Module]
  dropout_rate: float = 0.7

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.block(128, 1, name='conv')(adaptive_avg_pool(x, 4))
    x = nn.relu(self.dense(1024, name='fc1')(x.reshape((x.shape[0], -1))))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return self.dense(self.num_classes, name='fc2')(x)


class GoogLeNet(nn.Module):
  """torchvision.models.googlenet: 6,624,904 parameters at 1000 classes without aux heads,
  13,004,888 with them (paper: 'about 6.8M' — no BN, 5x5 branches). Canonical input 224x224x3;
  any input >= 32 works (global average pooling)."""
  num_classes: int = 1000
  aux_logits: bool = False  # build the two auxiliary heads; they run in train mode only
  branch3_kernel: int = 3  # 3 = torchvision, 5 = the paper's 5x5 branch
  dropout_rate: float = 0.2  # before the final FC (torchvision; the paper used 0.4)
  aux_dropout_rate: float = 0.7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, kernel_init=init, dtype=self.dtype)
    norm = batch_norm(train, self.dtype, epsilon=1e-3)
    dense = functools.partial(nn.Dense, kernel_init=init, dtype=self.dtype)
    block = functools.partial(BasicConv, conv=conv, norm=norm)
    inception = functools.partial(Inception, block=block, branch3_kernel=self.branch3_kernel)
    run_aux = self.aux_logits and (train or self.is_initializing())  # params exist in any mode
    aux = functools.partial(InceptionAux, num_classes=self.num_classes, block=block, dense=dense,
                            dropout_rate=self.aux_dropout_rate)

    x = x.astype(self.dtype)
    x = block(64, 7, stride=2, name='conv1')(x)
    x = max_pool_ceil(x, 3, 2)
    x = block(64, 1, name='conv2')(x)
    x = block(192, 3, name='conv3')(x)
    x = max_pool_ceil(x, 3, 2)
    self.sow('intermediates', 'stem', x)

    for name in ('3a', '3b'):
      x = inception(INCEPTION[name], name=f'inception{name}')(x)
    self.sow('intermediates', 'stage1', x)
    x = max_pool_ceil(x, 3, 2)

    for name in ('4a', '4b', '4c', '4d', '4e'):
      x = inception(INCEPTION[name], name=f'inception{name}')(x)
      if run_aux and name in ('4a', '4d'):
        aux_name = 'aux1' if name == '4a' else 'aux2'
        logits = aux(name=f'{aux_name}_head')(x, train)
        if train and not self.is_initializing():  # keep init's variables free of them
          self.sow('aux_logits', aux_name, logits.astype(jnp.float32))
    self.sow('intermediates', 'stage2', x)
    x = max_pool_ceil(x, 2, 2)

    for name in ('5a', '5b'):
      x = inception(INCEPTION[name], name=f'inception{name}')(x)
    self.sow('intermediates', 'stage3', x)

    x = jnp.mean(x, axis=(1, 2))
    self.sow('intermediates', 'pre_logits', x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = dense(self.num_classes, name='head')(x)
    return x.astype(jnp.float32)


googlenet = GoogLeNet
