"""U-Net (claim C23): Ronneberger, Fischer & Brox 2015, 'U-Net: convolutional networks for
biomedical image segmentation'.

Contracting path of double 3x3 convs and 2x2 max pools (64-128-256-512), bottleneck 1024,
expanding path of 2x2 up-convolutions that halve the channels, concatenation with the
(centre-cropped) skip, double 3x3 convs, and a final 1x1 conv to per-pixel logits.
Feature maps are sown as 'stage1'..'stage{depth}' (skips), 'bottleneck', 'up1'..'up{depth}' and
'pre_logits'. No BatchNorm or dropout (the paper's drop-out at the end of the contracting path is
left out), so `train` changes nothing.

It accepts any input whose every map before a pooling has even sides (valid padding: 16k + 124
at depth 4; same padding: multiples of 2**depth); another size raises a ConfigError naming the
nearest valid ones (`output_side`, `valid_sides`). Trained as a segmenter (cnn_jax.tasks): with
valid padding the label mask is centre-cropped to the output, the paper's output crop.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.errors import ConfigError
from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layer_set import max_pool

# The paper's init: Gaussian with std sqrt(2/N), N = k*k*C_in incoming nodes (He et al.).
init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
  """Crops the spatial centre of an NHWC map to (height, width), as the paper's skip crop."""
  top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
  return x[:, top:top + height, left:left + width, :]


def output_side(side: int, depth: int = 4, padding: str = 'VALID') -> int | None:
  """The output side for an input side, or None when a map before a pooling would be odd (or
  a map would vanish), which would misalign the skips."""
  shrink = 4 if padding == 'VALID' else 0  # two 3x3 convs
  s = side
  for _ in range(depth):
    s -= shrink
    if s <= 0 or s % 2:
      return None
    s //= 2
  s -= shrink  # bottleneck
  for _ in range(depth):
    s = 2 * s - shrink
  return s if s > 0 else None


def valid_sides(near: int, depth: int = 4, padding: str = 'VALID', n: int = 2) -> list[int]:
  """The `n` valid input sides nearest to `near` (ties: the smaller first)."""
  found = [s for s in range(1, near + 2 ** (depth + 3)) if output_side(s, depth, padding)]
  return sorted(sorted(found, key=lambda s: abs(s - near))[:n])


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
    for side in set(x.shape[1:3]):
      if output_side(side, self.depth, self.padding) is None:
        raise ConfigError(
            f'U-Net ({self.padding} padding, depth {self.depth}) cannot take input side {side}: '
            'every map before a pooling must have even sides. Nearest valid sides: '
            f'{" or ".join(map(str, valid_sides(side, self.depth, self.padding)))} (pad with '
            '--config.data.image_size, or change model_kwargs.depth).')
    conv = functools.partial(Conv, kernel_size=(3, 3), padding=self.padding,
                             kernel_init=init, dtype=self.dtype)
    x = x.astype(self.dtype)
    skips = []
    for i in range(1, self.depth + 1):
      x = DoubleConv(self.features * 2 ** (i - 1), conv, name=f'down{i}_convs')(x)
      self.sow('intermediates', f'stage{i}', x)
      skips.append(x)
      x = max_pool(x, (2, 2), strides=(2, 2))
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
    x = Conv(self.num_classes, (1, 1), kernel_init=init, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


unet = UNet
# Same padding: output size == input size; canonical input (256, 256, 1), any side divisible by 16.
unet_same = functools.partial(UNet, padding='SAME')
