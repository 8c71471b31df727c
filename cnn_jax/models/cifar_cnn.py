"""A small CIFAR-10 CNN with a choice of normalisation layer (claim C11).

Five 3x3 convolutions, each followed by the chosen normalisation and a ReLU:

    32x32x3 -> conv 32 -> conv 32 -> max 2x2 -> conv 64 -> conv 64 -> max 2x2 -> conv 128
            -> global average pool -> dense 10

`norm` is one of cnn_jax.models.layers.NORMS. With a normalisation the convolutions have no bias
(the norm's beta takes its place): 140,714 parameters without a norm, 141,034 with any of them
(+1 per normalised channel: gamma and beta in place of the bias).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax import errors
from cnn_jax.models import layers
from cnn_jax.models.layer_set import Conv
from cnn_jax.models.layer_set import max_pool

WIDTHS = ((32, 32), (64, 64), (128,))  # convolutions per stage; 2x2 max pooling between stages


class CifarCNN(nn.Module):
  """Stages sown as 'stage1'..'stage3', the pooled features as 'pre_logits'."""
  num_classes: int = 10
  norm: str = 'batch'
  groups: int = 8  # GroupNorm's number of channel groups
  dtype: Any = jnp.float32

  def __post_init__(self):
    errors.check_choice('model_kwargs.norm', self.norm, layers.NORMS)
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = layers.norm_layer(self.norm, train, self.dtype, self.groups)
    x = x.astype(self.dtype)
    for s, widths in enumerate(WIDTHS):
      if s:
        x = max_pool(x, (2, 2), strides=(2, 2))
      for i, width in enumerate(widths):
        x = Conv(width, (3, 3), padding=1, use_bias=norm is None,
                    kernel_init=layers.conv_kernel_init, dtype=self.dtype,
                    name=f'conv{s + 1}_{i + 1}')(x)
        if norm is None:
          x = nn.relu(x)
        else:
          x = layers.norm_act(norm, nn.relu, f'norm{s + 1}_{i + 1}')(x)
      self.sow('intermediates', f'stage{s + 1}', x)
    return layers.classifier_head(self, x, self.num_classes, self.dtype)
