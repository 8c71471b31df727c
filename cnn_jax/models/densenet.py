"""DenseNets (Huang et al. 2017): torchvision's densenet121/169/201 and CIFAR DenseNet-BC-100.

ImageNet (stem='imagenet'), layer for layer as torchvision:
    stem:    7x7/2 conv (64) - BN - ReLU - 3x3/2 max pool
    stages:  four dense blocks (6, 12, 24|32|48, 16|32|32 layers) of growth rate k = 32;
             each layer is BN-ReLU-1x1 conv (bn_size * k = 128) - BN-ReLU-3x3 conv (k) and its
             output is concatenated to its input; between blocks a transition
             BN-ReLU-1x1 conv (halves the channels: compression 0.5) - 2x2/2 average pool
    head:    BN - ReLU - global average pool - fully connected
Parameters at 1000 classes: densenet121 7,978,856; densenet169 14,149,480;
densenet201 20,013,928 (equal to torchvision's).

CIFAR (stem='cifar'): DenseNet-BC with L = depth, 3 dense blocks of (L - 4) / 6 bottleneck
layers on 32 / 16 / 8 maps, a 3x3 conv stem of 2k channels (no BN after it), compression 0.5.
densenet_bc_100_12 (L=100, k=12, 10 classes) has 769,162 parameters (Huang et al.: 0.8M).
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layers import batch_norm, classifier_head, norm_act, torch_pad
from cnn_jax.models.layer_set import max_pool

ModuleDef = Any

# torchvision densenet: nn.init.kaiming_normal_(w) -- fan_in, gain sqrt(2), untruncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')

# depth -> layers per dense block (torchvision; growth 32, bn_size 4, 64 initial features).
DENSENET_DEPTHS: dict[int, tuple[int, ...]] = {
    121: (6, 12, 24, 16),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
}
STEMS = ('imagenet', 'cifar')


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * k) - BN-ReLU-3x3 conv (k) [- dropout]; concatenates.

  `bn_size=0` drops the 1x1 bottleneck (the non-BC DenseNet layer: BN-ReLU-3x3 conv).
  """
  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  dropout: ModuleDef | None = None

  @nn.compact
  def __call__(self, x):
    y = x
    if self.bn_size:
      y = norm_act(self.norm, self.act, 'bn1')(y)
      y = self.conv(self.bn_size * self.growth_rate, (1, 1), name='conv1')(y)
    y = norm_act(self.norm, self.act, 'bn2')(y)
    y = self.conv(self.growth_rate, (3, 3), padding=torch_pad(3), name='conv2')(y)
    if self.dropout is not None:
      y = self.dropout()(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv (`features` channels) - 2x2/2 average pool."""
  features: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable

  @nn.compact
  def __call__(self, x):
    x = norm_act(self.norm, self.act, 'bn')(x)
    x = self.conv(self.features, (1, 1), name='conv')(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet; stem='imagenet' is torchvision's (input 224x224x3), 'cifar' Huang et al.'s.

  With stem='imagenet', `depth` is a key of DENSENET_DEPTHS; with stem='cifar', the three
  dense blocks have (depth - 4) / 6 layers (bottleneck, bn_size > 0) or (depth - 4) / 3
  (bn_size=0). `num_init_features` defaults to 64 (imagenet) or 2 * growth_rate (cifar).

  Submodules: 'stem_conv', 'stem_bn' (imagenet only), 'stage{i}_layer{j}', 'transition{i}',
  'final_bn', 'head'. Sown feature maps: 'stem', 'stage1'..'stage4' (3 for cifar; each
  dense block's output, before its transition / the final BN), 'pre_logits'. Convs use
  kaiming-normal fan_in init (torchvision's densenet), BN gamma 1 / beta 0, head bias 0.
  Dropout (`drop_rate`, after each layer's 3x3 conv) runs only in train mode and then needs
  an rng named 'dropout'.
  """
  num_classes: int
  depth: int = 121
  growth_rate: int = 32
  bn_size: int = 4
  compression: float = 0.5
  num_init_features: int | None = None
  stem: str = 'imagenet'
  drop_rate: float = 0.0
  act: Callable = nn.relu
  dtype: Any = jnp.float32

  def block_config(self) -> tuple[int, ...]:
    """Layers per dense block."""
    if self.stem == 'imagenet':
      if self.depth not in DENSENET_DEPTHS:
        raise ValueError(
            f'ImageNet DenseNet depth must be one of {sorted(DENSENET_DEPTHS)}, got {self.depth}.')
      return DENSENET_DEPTHS[self.depth]
    if self.stem == 'cifar':
      per_layer = 6 if self.bn_size else 3  # weighted layers per dense layer, x 3 blocks
      if self.depth < 4 + per_layer or (self.depth - 4) % per_layer:
        raise ValueError(f'CIFAR DenseNet depth must be 4 + {per_layer}n, got {self.depth}.')
      return ((self.depth - 4) // per_layer,) * 3
    raise ValueError(f'stem must be one of {STEMS}, got {self.stem!r}.')

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks = self.block_config()
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    norm = batch_norm(train, self.dtype)
    dropout = (partial(nn.Dropout, rate=self.drop_rate, deterministic=not train)
               if self.drop_rate > 0 else None)
    features = self.num_init_features
    if features is None:
      features = 64 if self.stem == 'imagenet' else 2 * self.growth_rate

    x = x.astype(self.dtype)
    if self.stem == 'imagenet':
      x = conv(features, (7, 7), strides=2, padding=torch_pad(7), name='stem_conv')(x)
      x = norm_act(norm, self.act, 'stem_bn')(x)
      x = max_pool(x, (3, 3), strides=(2, 2), padding=torch_pad(3))
    else:
      x = conv(features, (3, 3), padding=torch_pad(3), name='stem_conv')(x)
    self.sow('intermediates', 'stem', x)
    for i, n_layers in enumerate(blocks):
      for j in range(n_layers):
        x = DenseLayer(self.growth_rate, self.bn_size, conv=conv, norm=norm, act=self.act,
                       dropout=dropout, name=f'stage{i + 1}_layer{j + 1}')(x)
      self.sow('intermediates', f'stage{i + 1}', x)
      if i < len(blocks) - 1:
        x = Transition(int(math.floor(x.shape[-1] * self.compression)), conv=conv, norm=norm,
                       act=self.act, name=f'transition{i + 1}')(x)
    x = norm_act(norm, self.act, 'final_bn')(x)
    return classifier_head(self, x, self.num_classes, self.dtype)


DenseNet121 = partial(DenseNet, depth=121)
DenseNet169 = partial(DenseNet, depth=169)
DenseNet201 = partial(DenseNet, depth=201)
DenseNetBC100k12 = partial(DenseNet, depth=100, growth_rate=12, stem='cifar')
