"""AlexNet (claim C16), its torchvision single-GPU variant, and ZFNet (claim C17).

One configurable module; the three nets are `functools.partial` aliases at the bottom.
Feature maps are sown as 'conv1'..'conv5' (after ReLU, and LRN where used), 'pool1', 'pool2',
'pool5' and 'pre_logits'. Submodules: 'layer1_conv'..'layer5_conv', 'fc6', 'fc7', 'head' (flax
forbids a submodule and a sown map of the same name).
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.errors import ConfigError, did_you_mean
from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layers import adaptive_avg_pool, max_pool_ceil
from cnn_jax.models.layer_set import max_pool

# PyTorch's default Conv/Linear kernel init (kaiming_uniform, a=sqrt(5)) is U(±1/sqrt(fan_in));
# torchvision's AlexNet keeps it. Biases start at zero here (torch: U(±1/sqrt(fan_in))).
torch_default_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
# Krizhevsky et al. sec. 5: every weight ~ N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the
# hidden FC layers ("provides the ReLUs with positive inputs"), 0 elsewhere.
PAPER_WEIGHT_STD = 0.01
PAPER_BIAS_ONE = ('layer2_conv', 'layer4_conv', 'layer5_conv', 'fc6', 'fc7')
INITS = ('torch', 'paper')


class LocalResponseNorm(nn.Module):
  """Krizhevsky et al. 2012, eq. in sec. 3.3: b = a / (k + alpha * sum_{n adjacent channels} a^2)^beta.

  The paper's alpha multiplies the plain sum; Caffe and torch.nn.LocalResponseNorm divide it by
  n (use alpha=n*1e-4 there for the same layer). No parameters.
  """
  size: int = 5  # n: channels in the window, centred on the output channel
  k: float = 2.0
  alpha: float = 1e-4
  beta: float = 0.75

  def __call__(self, x):
    sq = jnp.square(x.astype(jnp.float32))
    half = self.size // 2
    window_sum = jax.lax.reduce_window(
        sq, 0.0, jax.lax.add, (1, 1, 1, self.size), (1, 1, 1, 1),
        ((0, 0), (0, 0), (0, 0), (half, self.size - 1 - half)))
    return (x / (self.k + self.alpha * window_sum) ** self.beta).astype(x.dtype)


class AlexNet(nn.Module):
  """Krizhevsky, Sutskever & Hinton 2012, 'ImageNet classification with deep CNNs' (claim C16).

  Defaults are the paper's net on 227x227x3: conv1 96 11x11/4 VALID -> 55x55, ReLU, LRN, max
  3x3/2 -> 27; conv2 256 5x5 p2, ReLU, LRN, max -> 13; conv3 384, conv4 384, conv5 256 (3x3 p1),
  max -> 6x6x256; FC 4096, 4096, num_classes with dropout 0.5 after each hidden FC (train only).
  62,378,344 parameters at 1000 classes. Single tower: the paper split conv2/4/5 (and the FC
  layers) across two GPUs, which `groups=2` reproduces for the convs (conv2, conv4, conv5 see only
  their own GPU's half of the channels).
  """
  num_classes: int = 1000
  # (features, kernel, stride, padding) for conv1..conv5; max pools follow conv1, conv2, conv5.
  convs: Sequence[tuple[int, int, int, int]] = (
      (96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1))
  lrn: bool = True  # local response normalisation after conv1 and conv2 (paper)
  groups: int = 1  # feature groups of conv2, conv4, conv5; 2 = the paper's two-GPU split
  ceil_pool: bool = False  # Caffe's ceil-mode pooling arithmetic (ZFNet's 110 -> 55 -> 26 -> 13)
  adaptive_pool: Optional[int] = None  # torchvision's AdaptiveAvgPool2d(6) before the classifier
  hidden: int = 4096  # width of the two hidden FC layers
  dropout_rate: float = 0.5
  dropout_before_fc: bool = False  # torchvision: Dropout->Linear; paper/Caffe: Linear->ReLU->Dropout
  weight_init: str = 'torch'  # 'torch': PyTorch's default kernels, zero biases; 'paper': sec. 5
  dtype: Any = jnp.float32

  def _layer(self, cls, *args, name, **kwargs):
    """A conv or dense layer named `name` with this model's initialisation."""
    if self.weight_init not in INITS:
      raise ConfigError(f'weight_init must be one of {INITS}, got {self.weight_init!r} '
                        '(config.model_kwargs.weight_init).'
                        f'{did_you_mean(self.weight_init, INITS)}')
    if self.weight_init == 'paper':
      bias = 1.0 if name in PAPER_BIAS_ONE else 0.0
      kwargs.update(kernel_init=nn.initializers.normal(PAPER_WEIGHT_STD),
                    bias_init=nn.initializers.constant(bias))
    else:
      kwargs.update(kernel_init=torch_default_init)
    return cls(*args, dtype=self.dtype, name=name, **kwargs)

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(self._layer, Conv)
    dense = functools.partial(self._layer, nn.Dense)
    if self.ceil_pool:
      pool = functools.partial(max_pool_ceil, window=3, stride=2)
    else:
      pool = lambda y: max_pool(y, (3, 3), strides=(2, 2))  # overlapping pooling, sec. 3.4
    dropout = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)

    x = x.astype(self.dtype)
    for i, (features, kernel, stride, padding) in enumerate(self.convs, start=1):
      x = conv(features, (kernel, kernel), strides=(stride, stride),
               padding=((padding, padding), (padding, padding)),
               feature_group_count=self.groups if i in (2, 4, 5) else 1, name=f'layer{i}_conv')(x)
      x = nn.relu(x)
      if self.lrn and i in (1, 2):
        x = LocalResponseNorm(name=f'layer{i}_lrn')(x)
      self.sow('intermediates', f'conv{i}', x)
      if i in (1, 2, 5):
        x = pool(x)
        self.sow('intermediates', f'pool{i}', x)
    if self.adaptive_pool is not None:
      x = adaptive_avg_pool(x, self.adaptive_pool)
    x = x.reshape((x.shape[0], -1))
    for i in (6, 7):
      if self.dropout_before_fc:
        x = dropout(x)
      x = nn.relu(dense(self.hidden, name=f'fc{i}')(x))
      if not self.dropout_before_fc:
        x = dropout(x)
    self.sow('intermediates', 'pre_logits', x)
    x = dense(self.num_classes, name='head')(x)
    return x.astype(jnp.float32)


alexnet = AlexNet

# torchvision.models.alexnet (after Krizhevsky 2014, 'One weird trick'): 224x224 input,
# 64-192-384-256-256 filters, no LRN, AdaptiveAvgPool2d(6), Dropout->FC; 61,100,840 parameters.
alexnet_tv = functools.partial(
    AlexNet,
    convs=((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)),
    lrn=False, adaptive_pool=6, dropout_before_fc=True)

# Zeiler & Fergus 2013, 'Visualizing and understanding CNNs' (claim C17), fig. 3 on 224x224x3:
# conv1 96 7x7/2 (p1) -> 110 -> pool 55; conv2 256 5x5/2 -> 26 -> pool 13; conv3-5 with the
# 512, 1024, 512 filters of their table 2 ("our model" with bigger layers 3-5); pool -> 6x6x512.
# Pools use Caffe's ceil mode so the sizes match the figure. Like AlexNet, LRN follows ReLU (the
# paper normalises after pooling; no parameters either way).
zfnet = functools.partial(
    AlexNet,
    convs=((96, 7, 2, 1), (256, 5, 2, 0), (512, 3, 1, 1), (1024, 3, 1, 1), (512, 3, 1, 1)),
    ceil_pool=True)
