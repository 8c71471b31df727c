"""U-Net (claim C23): Ronneberger, Fischer & Brox 2015, 'U-Net: convolutional networks for
biomedical image segmentation'.

Contracting path of double 3x3 convs and 2x2 max pools (64-128-256-512), bottleneck 1024,
expanding path of 2x2 up-convolutions that halve the channels, concatenation with the
(centre-cropped) skip, double 3x3 convs, and a final 1x1 conv to per-pixel logits.
Feature maps are sown as 'stage1'..'stage{depth}' (skips), 'bottleneck', 'up1'..'up{depth}' and
'pre_logits'. No BatchNorm or dropout (the paper's drop-out at the end of the contracting path is
left out), so `train` changes nothing.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The paper's init: Gaussian with std sqrt(2/N), N = k*k*C_in incoming nodes (He et al.).
init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
  """Crops the spatial centre of an NHWC map to (height, width), as the paper's skip crop."""
  top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
  return x[:, top:top + height, left:left + width, :]


class DoubleConv(nn.Module):
  """(conv 3x3 -> ReLU) x 2."""
  features: int
  conv: Any

  @nn.compact
  def __call__(self, x):
    x = nn.relu(self.conv(self.features, name='conv1')(x))
    return nn.relu(self.conv(self.features, name='conv2')(x))


class UNet(nn.Module):
  """The paper's net with `padding='VALID'`: 572x572x1 -> 388x388xnum_classes (input sizes whose
  every pre-pool map is even, i.e. 16k + 124 with output 16k - 60). `padding='SAME'` keeps the
  size (input sides divisible by 2**depth) and makes the crop a no-op.
  """
  num_classes: int = 2
  features: int = 64  # channels of the first level; doubled at each of the `depth` poolings
  depth: int = 4  # number of poolings (the paper: 4, i.e. 64-128-256-512 + 1024 bottleneck)
  padding: str = 'VALID'  # 'VALID' = the paper; 'SAME' keeps the spatial size
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm or dropout
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=self.padding,
                             kernel_init=init, dtype=self.dtype)
    x = x.astype(self.dtype)
    skips = []
    for i in range(1, self.depth + 1):
      x = DoubleConv(self.features * 2 ** (i - 1), conv, name=f'down{i}_convs')(x)
      self.sow('intermediates', f'stage{i}', x)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = DoubleConv(self.features * 2 ** self.depth, conv, name='bottleneck_convs')(x)
    self.sow('intermediates', 'bottleneck', x)
    for i in range(1, self.depth + 1):
      features = self.features * 2 ** (self.depth - i)
      x = nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding='VALID', kernel_init=init,
                           dtype=self.dtype, name=f'up{i}_upconv')(x)
      skip = center_crop(skips[-i], x.shape[1], x.shape[2])
      x = DoubleConv(features, conv, name=f'up{i}_convs')(jnp.concatenate([skip, x], axis=-1))
      self.sow('intermediates', f'up{i}', x)
    self.sow('intermediates', 'pre_logits', x)
    x = nn.Conv(self.num_classes, (1, 1), kernel_init=init, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


unet = UNet
# Same padding: output size == input size; canonical input (256, 256, 1), any side divisible by 16.
unet_same = functools.partial(UNet, padding='SAME')
