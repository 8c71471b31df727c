"""The classic ImageNet architectures adapted to 32x32 CIFAR images (claim C16-C19 on CIFAR-10).

Each adaptation keeps the architecture's defining idea and removes only the ImageNet-size
down-sampling that would shrink a 32x32 image to nothing (the usual CIFAR versions, e.g.
kuangliu/pytorch-cifar):

* `vgg{11,16}_bn_cifar`: VGG's five stages of 3x3 conv + BN + ReLU and max pools (32 -> 1), then
  the 512 features straight into the classifier: no 7x7 adaptive pool and no 4096-wide FC layers
  (they would hold 120M parameters for a 1x1 map). VGG-11 9,231,114 and VGG-16 14,728,266
  parameters at 10 classes.
* `resnet18_cifar`: torchvision's ResNet-18 with a 3x3 stride-1 stem and no max pool (He et
  al.'s CIFAR stem), stages of 64-512 planes on 32-4 maps: 11,173,962 parameters.
* `googlenet_cifar`: GoogLeNet's inception modules 3a-5b unchanged (torchvision's layout, BN
  after every conv); the 7x7/2 conv, pool and the two stem convs are replaced by one 3x3 conv
  with 192 channels at 32x32, so inception 3 sees 32x32, 4 sees 16x16 and 5 sees 8x8. The
  auxiliary heads (on 4a and 4d, train only) stay.
* `alexnet_cifar`: AlexNet's five convs with torchvision's widths (64-192-384-256-256), LRN
  after conv1 and conv2 and overlapping 3x3/2 max pools as in the paper, conv1 5x5 stride 1
  (not 11x11/4), 1024-wide FC layers (not 4096) with dropout 0.5: 32 -> 15 -> 7 -> 3x3x256.
* `zfnet_cifar`: ZFNet's changes to AlexNet at CIFAR size: a smaller, denser first layer (3x3
  stride 1 where alexnet_cifar has 5x5) and wider conv3-5 (512-1024-512, as ZFNet's table 2).

DenseNet-BC-100-12 is already a CIFAR network (`densenet_bc_100_12`).
"""
from __future__ import annotations

import functools
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models import alexnet, googlenet, resnet, vgg
from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layers import batch_norm, classifier_head, conv_kernel_init, norm_act, torch_pad
from cnn_jax.models.layer_set import max_pool


class CifarVGG(vgg.VGG):
  """VGG-{11,13,16,19} with BatchNorm for 32x32 inputs: the conv stages of `vgg.VGG` (same
  submodule names), global pooling of the 1x1 map, dropout, one FC layer 'head'."""
  batch_norm: bool = True
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv3x3 = functools.partial(Conv, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                                kernel_init=vgg.conv_init, dtype=self.dtype)
    norm = batch_norm(train, self.dtype) if self.batch_norm else None
    x = x.astype(self.dtype)
    for i, (features, n) in enumerate(zip(vgg.VGG_WIDTHS, vgg.VGG_DEPTHS[self.depth]), start=1):
      for j in range(1, n + 1):
        x = conv3x3(features, name=f'stage{i}_conv{j}')(x)
        x = norm_act(norm, nn.relu, f'stage{i}_bn{j}')(x) if norm is not None else nn.relu(x)
      x = max_pool(x, (2, 2), strides=(2, 2))
      self.sow('intermediates', f'stage{i}', x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow('intermediates', 'pre_logits', x)
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


class CifarStemResNet(resnet.ResNet):
  """An ImageNet ResNet's stages with a CIFAR stem: 3x3 stride-1 conv + BN + ReLU, no max pool."""
  shortcut: str = 'B'

  @nn.compact
  def __call__(self, x, train: bool = False):
    resnet.check_depth(self.depth, resnet.RESNET_DEPTHS, 'ResNet')
    block, stage_sizes = resnet.RESNET_DEPTHS[self.depth]
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    norm = batch_norm(train, self.dtype)
    x = x.astype(self.dtype)
    x = conv(self.width, (3, 3), padding=torch_pad(3), name='stem_conv')(x)
    x = norm_act(norm, self.act, 'stem_bn')(x)
    self.sow('intermediates', 'stem', x)
    x = resnet.residual_stages(self, x, block, [self.width * 2**i for i in range(len(stage_sizes))],
                               stage_sizes, conv=conv, norm=norm, act=self.act,
                               shortcut=self.shortcut, zero_init_last=self.zero_init_residual)
    return classifier_head(self, x, self.num_classes, self.dtype)


class CifarGoogLeNet(googlenet.GoogLeNet):
  """GoogLeNet's inception modules on 32x32 inputs behind a 3x3 conv stem (see the module doc)."""
  stem_features: int = 192

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, kernel_init=googlenet.init, dtype=self.dtype)
    norm = batch_norm(train, self.dtype, epsilon=1e-3)
    dense = functools.partial(nn.Dense, kernel_init=googlenet.init, dtype=self.dtype)
    block = functools.partial(googlenet.BasicConv, conv=conv, norm=norm)
    inception = functools.partial(googlenet.Inception, block=block,
                                  branch3_kernel=self.branch3_kernel)
    run_aux = self.aux_logits and (train or self.is_initializing())
    aux = functools.partial(googlenet.InceptionAux, num_classes=self.num_classes, block=block,
                            dense=dense, dropout_rate=self.aux_dropout_rate)

    x = x.astype(self.dtype)
    x = block(self.stem_features, 3, name='stem')(x)
    self.sow('intermediates', 'stem', x)
    for name in ('3a', '3b'):
      x = inception(googlenet.INCEPTION[name], name=f'inception{name}')(x)
    self.sow('intermediates', 'stage1', x)
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # 32 -> 16
    for name in ('4a', '4b', '4c', '4d', '4e'):
      x = inception(googlenet.INCEPTION[name], name=f'inception{name}')(x)
      if run_aux and name in ('4a', '4d'):
        aux_name = 'aux1' if name == '4a' else 'aux2'
        logits = aux(name=f'{aux_name}_head')(x, train)
        if train and not self.is_initializing():
          self.sow('aux_logits', aux_name, logits.astype(jnp.float32))
    self.sow('intermediates', 'stage2', x)
    x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # 16 -> 8
    for name in ('5a', '5b'):
      x = inception(googlenet.INCEPTION[name], name=f'inception{name}')(x)
    self.sow('intermediates', 'stage3', x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow('intermediates', 'pre_logits', x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    x = dense(self.num_classes, name='head')(x)
    return x.astype(jnp.float32)


vgg11_bn_cifar = partial(CifarVGG, depth=11)
vgg16_bn_cifar = partial(CifarVGG, depth=16)
resnet18_cifar = partial(CifarStemResNet, depth=18)
googlenet_cifar = CifarGoogLeNet
alexnet_cifar = partial(
    alexnet.AlexNet,
    convs=((64, 5, 1, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)),
    hidden=1024)
zfnet_cifar = partial(
    alexnet.AlexNet,
    convs=((64, 3, 1, 1), (192, 5, 1, 2), (512, 3, 1, 1), (1024, 3, 1, 1), (512, 3, 1, 1)),
    hidden=1024)
