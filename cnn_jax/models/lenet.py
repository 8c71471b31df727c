"""LeNet-5 (claim C14): the lecture's modern variant and LeCun et al. 1998's classic one."""
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layer_set import Conv, max_pool

# Activations that never decrease: max pooling commutes with them (see LeNet5._act_pool).
NONDECREASING = (nn.relu, nn.relu6, nn.tanh, nn.sigmoid, nn.hard_tanh, nn.elu, nn.leaky_relu)


class LeNet5(nn.Module):
  """32x32 input; C1 conv5x5x6, S2 pool, C3 conv5x5x16, S4 pool, C5 conv5x5x120, F6 84, out.

  The lecture variant (ReLU, max pooling) has 61,706 parameters.
  """
  num_classes: int = 10
  act: Callable = nn.relu
  pool: Callable = max_pool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm or dropout
    x = x.astype(self.dtype)
    x = self._act_pool(self._conv(6, 'c1')(x))
    self.sow('intermediates', 'stage1', x)
    x = self._act_pool(self._conv(16, 'c3')(x))
    self.sow('intermediates', 'stage2', x)
    x = self.act(self._conv(120, 'c5')(x))
    x = x.reshape((x.shape[0], -1))
    x = self.act(nn.Dense(84, dtype=self.dtype, name='f6')(x))
    self.sow('intermediates', 'pre_logits', x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)

  def _act_pool(self, x):
    """pool(act(x)), as act(pool(x)) where that is the same function: max pooling commutes with
    a non-decreasing activation, values and gradients alike (the window's first maximum is the
    same element either way, and where the activation is flat both gradients are zero). The
    activation and its gradient then run on a quarter of the elements (docs/cpu.md)."""
    if self.pool is max_pool and self.act in NONDECREASING:
      return self.act(self.pool(x, (2, 2), strides=(2, 2)))
    return self.pool(self.act(x), (2, 2), strides=(2, 2))

  def _conv(self, features: int, name: str) -> nn.Conv:
    return Conv(features, (5, 5), padding='VALID', dtype=self.dtype, name=name)


class LeNet5Classic(LeNet5):
  """LeCun et al. 1998, 'Gradient-based learning applied to document recognition' (claim C14).

  The same 32x32x1 layout as `LeNet5` with the paper's squashing (tanh) and sub-sampling (2x2
  average pooling). Simplifications, stated: plain tanh instead of 1.7159 tanh(2x/3); C3 is fully
  connected to S2 (the paper's sparse connection table has 1,516 weights, not 2,416); S2/S4 are
  plain averages without the trainable coefficient and bias (12 + 32 parameters in the paper);
  the output is a dense layer, not Euclidean RBF units. Hence 61,706 parameters at 10 classes
  (same as `LeNet5`), against the paper's 60,000.
  """
  act: Callable = nn.tanh
  pool: Callable = nn.avg_pool
