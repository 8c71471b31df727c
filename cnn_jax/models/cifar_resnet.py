"""CIFAR ResNets and their plain twins (He et al. 2016, section 4.2).

    stem:    3x3 conv (16) - BN - ReLU
    stages:  three stages of n BasicBlocks, 16 / 32 / 64 channels on 32 / 16 / 8 maps;
             the first block of stages 2 and 3 has stride 2
    head:    global average pool - 10-way fully connected

6n + 2 weighted layers: resnet20 (n=3), 32, 44, 56, 110, 1202 (n=200), plus resnet8 (n=1)
for fast tests. The shortcut is option A by default (identity; where the shape changes,
stride-2 subsampling plus zero-padded channels: no parameters) or option B
(`shortcut='B'`: a 1x1 conv + BN projection only where the shape changes). The plain
networks are the same module with `residual=False`: no shortcut at all, and with option A
exactly the same parameters as the residual network.

For initialisation studies (claim C12), `norm='none'` drops every BatchNorm (the convs then
have biases) and `kernel_init` picks the conv kernels' initialisation by name
(cnn_jax.models.layers.KERNEL_INITS: he_fan_out, the default, he, lecun, xavier, small,
normal); with BatchNorm the forward pass does not see the kernels' scale.

Parameters at 10 classes, option A: resnet20 269,722 (He et al. Table 6: 0.27M), resnet32
464,154, resnet44 658,586, resnet56 853,018, resnet110 1,727,962, resnet1202 19,421,274.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.errors import ConfigError, did_you_mean
from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layers import (Identity, batch_norm, classifier_head, kernel_init, norm_act,
                                   torch_pad)
from cnn_jax.models.resnet import BasicBlock, check_depth, residual_stages

NORMS = ('batch', 'none')

# depth -> n, the blocks per stage (depth = 6n + 2).
CIFAR_DEPTHS: dict[int, int] = {8: 1, 20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}


class CifarResNet(nn.Module):
  """He et al. 2016's CIFAR-10 ResNet (or plain net when `residual=False`); input 32x32x3.

  Submodules: 'stem_conv', 'stem_bn', 'stage{i}_block{j}' (i = 1..3), 'head'. Sown feature
  maps: 'stem' (32x32x16), 'stage1' .. 'stage3' (32x32x16, 16x16x32, 8x8x64), 'pre_logits'.
  Convs use kaiming-normal fan_out init (as torchvision's ResNets), BN gamma 1 / beta 0;
  `zero_init_residual=True` zeroes the gamma of each block's last BN (default off).
  """
  num_classes: int
  depth: int = 20
  residual: bool = True
  shortcut: str = 'A'
  widths: tuple[int, ...] = (16, 32, 64)
  zero_init_residual: bool = False
  norm: str = 'batch'  # 'batch' or 'none' (no normalisation; the convs get biases)
  kernel_init: str = 'he_fan_out'  # a name of layers.KERNEL_INITS
  act: Callable = nn.relu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    check_depth(self.depth, CIFAR_DEPTHS, 'CIFAR ResNet')
    if self.norm not in NORMS:
      raise ConfigError(f'norm must be one of {NORMS}, got {self.norm!r} '
                        f'(config.model_kwargs.norm).{did_you_mean(self.norm, NORMS)}')
    n = CIFAR_DEPTHS[self.depth]
    conv = partial(Conv, use_bias=self.norm == 'none', dtype=self.dtype,
                   kernel_init=kernel_init(self.kernel_init))
    norm = batch_norm(train, self.dtype) if self.norm == 'batch' else Identity

    x = x.astype(self.dtype)
    x = conv(self.widths[0], (3, 3), padding=torch_pad(3), name='stem_conv')(x)
    x = norm_act(norm, self.act, 'stem_bn')(x)
    self.sow('intermediates', 'stem', x)
    x = residual_stages(self, x, BasicBlock, self.widths, [n] * len(self.widths), conv=conv,
                        norm=norm, act=self.act, shortcut=self.shortcut, residual=self.residual,
                        zero_init_last=self.zero_init_residual)
    return classifier_head(self, x, self.num_classes, self.dtype)


ResNet8 = partial(CifarResNet, depth=8)
ResNet20 = partial(CifarResNet, depth=20)
ResNet32 = partial(CifarResNet, depth=32)
ResNet44 = partial(CifarResNet, depth=44)
ResNet56 = partial(CifarResNet, depth=56)
ResNet110 = partial(CifarResNet, depth=110)
ResNet1202 = partial(CifarResNet, depth=1202)

Plain8 = partial(CifarResNet, depth=8, residual=False)
Plain20 = partial(CifarResNet, depth=20, residual=False)
Plain32 = partial(CifarResNet, depth=32, residual=False)
Plain44 = partial(CifarResNet, depth=44, residual=False)
Plain56 = partial(CifarResNet, depth=56, residual=False)
Plain110 = partial(CifarResNet, depth=110, residual=False)
