"""Fully-connected baseline for 'CNN vs FC' (claim C25): a CNN is an FC net with weight sharing
and locality; this is the same classifier without those priors."""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Flatten -> [Dense(width) -> act -> dropout] per hidden width -> Dense(num_classes).

  Default widths (300, 100) are LeCun et al. 1998's 2-hidden-layer MNIST baseline; at the
  canonical (28, 28, 1) input and 10 classes it has 266,610 parameters.
  """
  num_classes: int = 10
  hidden: Sequence[int] = (300, 100)  # hidden-layer widths, input side first
  dropout_rate: float = 0.0  # dropout after each hidden activation (train mode only)
  act: Any = nn.relu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype).reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden, start=1):
      x = self.act(nn.Dense(width, dtype=self.dtype, name=f'fc{i}')(x))
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
      self.sow('intermediates', f'stage{i}', x)
    self.sow('intermediates', 'pre_logits', x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)
