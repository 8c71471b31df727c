"""VGG (claim C18): Simonyan & Zisserman 2015, 'Very deep convolutional networks for large-scale
image recognition', in torchvision's layout (configs A, B, D, E = VGG-11/13/16/19, +BN variants).

Stacks of 3x3 convs: three of them see a 7x7 field with 27c^2 instead of 49c^2 weights. Feature
maps are sown as 'stage1'..'stage5' (after each max pool) and 'pre_logits'.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layer_set import Conv, max_pool
from cnn_jax.models.layers import adaptive_avg_pool, batch_norm, norm_act

# convs per stage; the stage widths are (64, 128, 256, 512, 512) for every depth.
VGG_DEPTHS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),  # config A
    13: (2, 2, 2, 2, 2),  # config B
    16: (2, 2, 3, 3, 3),  # config D
    19: (2, 2, 4, 4, 4),  # config E
}
VGG_WIDTHS = (64, 128, 256, 512, 512)

# torchvision's init: kaiming_normal_(fan_out, relu) for convs, N(0, 0.01) for linears, zero biases.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
dense_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
  """torchvision.models.vgg{depth}[_bn]: 5 conv stages, AdaptiveAvgPool2d(7), then
  FC 4096 -> ReLU -> Dropout -> FC 4096 -> ReLU -> Dropout -> FC num_classes.

  With BatchNorm the convs keep their bias, as in torchvision. Runs at any input size >= 32
  (the adaptive pool replicates a 1x1 map to 7x7, as torch does).
  """
  num_classes: int = 1000
  depth: int = 16  # key of VGG_DEPTHS
  batch_norm: bool = False  # the *_bn variants
  hidden: int = 4096  # width of the two hidden FC layers
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv3x3 = functools.partial(Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                                kernel_init=conv_init, dtype=self.dtype)
    norm = batch_norm(train, self.dtype) if self.batch_norm else None
    dense = functools.partial(nn.Dense, kernel_init=dense_init, dtype=self.dtype)

    x = x.astype(self.dtype)
    for i, (features, n) in enumerate(zip(VGG_WIDTHS, VGG_DEPTHS[self.depth]), start=1):
      for j in range(1, n + 1):  # n x (conv3x3 p1 -> [BN] -> ReLU), then max 2x2/2
        x = conv3x3(features, name=f'stage{i}_conv{j}')(x)
        x = norm_act(norm, nn.relu, f'stage{i}_bn{j}')(x) if norm is not None else nn.relu(x)
      x = max_pool(x, (2, 2), strides=(2, 2))
      self.sow('intermediates', f'stage{i}', x)
    x = adaptive_avg_pool(x, 7).reshape((x.shape[0], -1))
    for i in (1, 2):
      x = nn.relu(dense(self.hidden, name=f'fc{i}')(x))
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    self.sow('intermediates', 'pre_logits', x)
    x = dense(self.num_classes, name='head')(x)
    return x.astype(jnp.float32)


vgg11 = functools.partial(VGG, depth=11)
vgg13 = functools.partial(VGG, depth=13)
vgg16 = functools.partial(VGG, depth=16)
vgg19 = functools.partial(VGG, depth=19)
vgg11_bn = functools.partial(VGG, depth=11, batch_norm=True)
vgg13_bn = functools.partial(VGG, depth=13, batch_norm=True)
vgg16_bn = functools.partial(VGG, depth=16, batch_norm=True)
vgg19_bn = functools.partial(VGG, depth=19, batch_norm=True)
