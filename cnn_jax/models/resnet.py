"""ImageNet ResNets (He et al. 2016), layer for layer as torchvision's resnet18 ... resnet152.

    stem:    7x7/2 conv (64) - BN - ReLU - 3x3/2 max pool
    stages:  four stages of BasicBlocks (18, 34) or Bottlenecks (50, 101, 152) with
             64/128/256/512 planes; the first block of stages 2-4 has stride 2
    head:    global average pool - fully connected

The Bottleneck is torchvision's "ResNet v1.5": the stride sits on the 3x3 conv, not on the
first 1x1. Where a block changes shape, the shortcut is a 1x1 conv + BN projection (option B
of He et al.); `BasicBlock` also implements the parameter-free option A used by the CIFAR
ResNets (cifar_resnet.py) and can drop the shortcut altogether (plain networks).

Padding is explicit and equal to torchvision's (pad 3 for the 7x7, 1 for the 3x3s and the
max pool), so a stride-2 layer sees the same windows as in PyTorch and weights can be ported.

Parameter counts at 1000 classes (the `params` collection) equal torchvision's:
resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032; resnet101 44,549,160;
resnet152 60,192,808.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.errors import ConfigError, did_you_mean
# Re-exported: these lived here before models/layers.py held them.
from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layers import (ModuleDef, batch_norm, classifier_head,  # noqa: F401
                                   conv_kernel_init, norm_act, torch_pad)
from cnn_jax.models.layer_set import max_pool

SHORTCUTS = ('A', 'B')


def shortcut_a(x, features: int, strides: int):
  """Option A of He et al. 2016: stride-`strides` subsampling plus zero channels, no params.

  The new channels are split evenly before and after the old ones, as in the widely used
  PyTorch CIFAR reference (akamaster/pytorch_resnet_cifar10: F.pad(x[:, :, ::2, ::2],
  (0, 0, 0, 0, planes // 4, planes // 4))).
  """
  if strides != 1:
    x = x[:, ::strides, ::strides, :]
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(f'Option-A shortcut cannot reduce channels ({x.shape[-1]} -> {features}).')
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


class BasicBlock(nn.Module):
  """Two 3x3 convs (torchvision BasicBlock); the stride is on the first.

  `shortcut` applies where the block changes shape: 'B' = 1x1 conv + BN projection
  (torchvision), 'A' = parameter-free subsample + zero-pad. `residual=False` removes the
  shortcut (the "plain" networks of He et al. 2016). `zero_init_last` starts the last BN's
  gamma at zero so the block begins as the identity.
  """
  features: int  # "planes"
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  shortcut: str = 'B'
  residual: bool = True
  zero_init_last: bool = False
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), strides=self.strides, padding=torch_pad(3),
                  name='conv1')(x)
    y = norm_act(self.norm, self.act, 'bn1')(y)
    y = self.conv(self.features, (3, 3), padding=torch_pad(3), name='conv2')(y)
    shortcut = _shortcut(self, x, self.features * self.expansion) if self.residual else None
    return norm_act(self.norm, self.act, 'bn2',
                    scale_init=_last_scale_init(self.zero_init_last))(y, residual=shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce - 3x3 (carries the stride: ResNet v1.5) - 1x1 expand x4 (torchvision)."""
  features: int  # "planes"; the block outputs 4 * features channels
  conv: ModuleDef
  norm: ModuleDef
  act: Callable
  strides: int = 1
  shortcut: str = 'B'
  residual: bool = True
  zero_init_last: bool = False
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (1, 1), name='conv1')(x)
    y = norm_act(self.norm, self.act, 'bn1')(y)
    y = self.conv(self.features, (3, 3), strides=self.strides, padding=torch_pad(3),
                  name='conv2')(y)
    y = norm_act(self.norm, self.act, 'bn2')(y)
    y = self.conv(self.features * self.expansion, (1, 1), name='conv3')(y)
    shortcut = _shortcut(self, x, self.features * self.expansion) if self.residual else None
    return norm_act(self.norm, self.act, 'bn3',
                    scale_init=_last_scale_init(self.zero_init_last))(y, residual=shortcut)


def _last_scale_init(zero: bool):
  return nn.initializers.zeros if zero else nn.initializers.ones


def _shortcut(block, x, out_features: int):
  """Identity, or (where stride or width change, as torchvision decides) option A / B."""
  if block.shortcut not in SHORTCUTS:
    raise ConfigError(f'shortcut must be one of {SHORTCUTS}, got {block.shortcut!r} '
                      f'(config.model_kwargs.shortcut).{did_you_mean(block.shortcut, SHORTCUTS)}')
  if block.strides == 1 and x.shape[-1] == out_features:
    return x
  if block.shortcut == 'A':
    return shortcut_a(x, out_features, block.strides)
  x = block.conv(out_features, (1, 1), strides=block.strides, name='downsample_conv')(x)
  return block.norm(name='downsample_bn')(x)


# depth -> (block, blocks per stage), torchvision / He et al. 2016 Table 1.
RESNET_DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def residual_stages(module: nn.Module, x, block: type[nn.Module], widths: Sequence[int],
                    blocks_per_stage: Sequence[int], **block_fields):
  """The stage loop shared by the ImageNet and the CIFAR ResNets (and their plain twins).

  Stage i (1-based) has `blocks_per_stage[i-1]` blocks of `widths[i-1]` planes; the first block
  of every stage but the first has stride 2. Blocks are the submodules 'stage{i}_block{j}' of
  `module` (the calling model) and each stage's output is sown as 'stage{i}'.
  """
  for i, (width, num_blocks) in enumerate(zip(widths, blocks_per_stage)):
    for j in range(num_blocks):
      x = block(width, strides=2 if i > 0 and j == 0 else 1, name=f'stage{i + 1}_block{j + 1}',
                **block_fields)(x)
    module.sow('intermediates', f'stage{i + 1}', x)
  return x


def check_depth(depth: int, table: dict, what: str) -> None:
  if depth not in table:
    raise ConfigError(f'{what} depth must be one of {sorted(table)}, got {depth} '
                      f'(config.model_kwargs.depth).{did_you_mean(depth, sorted(table))}')


class ResNet(nn.Module):
  """torchvision's ImageNet ResNet; canonical input 224x224x3, any size >= 32 works.

  Submodules: 'stem_conv', 'stem_bn', 'stage{i}_block{j}' (i = 1..4), 'head'. Sown feature
  maps: 'stem' (after the max pool, stride 4), 'stage1'..'stage4' (strides 4, 8, 16, 32),
  'pre_logits' (pooled). Convs use kaiming-normal fan_out init, BN gamma 1 / beta 0;
  `zero_init_residual=True` zeroes the gamma of each block's last BN (torchvision's flag,
  Goyal et al. 2017), default off as in torchvision.
  """
  num_classes: int
  depth: int = 50
  width: int = 64  # channels of the stem and planes of stage 1
  shortcut: str = 'B'
  zero_init_residual: bool = False
  act: Callable = nn.relu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_depth(self.depth, RESNET_DEPTHS, 'ResNet')
    block, stage_sizes = RESNET_DEPTHS[self.depth]
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    norm = batch_norm(train, self.dtype)

    x = x.astype(self.dtype)
    x = conv(self.width, (7, 7), strides=2, padding=torch_pad(7), name='stem_conv')(x)
    x = norm_act(norm, self.act, 'stem_bn')(x)
    x = max_pool(x, (3, 3), strides=(2, 2), padding=torch_pad(3))
    self.sow('intermediates', 'stem', x)
    x = residual_stages(self, x, block, [self.width * 2**i for i in range(len(stage_sizes))],
                        stage_sizes, conv=conv, norm=norm, act=self.act, shortcut=self.shortcut,
                        zero_init_last=self.zero_init_residual)
    return classifier_head(self, x, self.num_classes, self.dtype)


ResNet18 = partial(ResNet, depth=18)
ResNet34 = partial(ResNet, depth=34)
ResNet50 = partial(ResNet, depth=50)
ResNet101 = partial(ResNet, depth=101)
ResNet152 = partial(ResNet, depth=152)
