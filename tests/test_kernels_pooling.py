"""cnn_jax.kernels.pooling.max_pool against flax.linen.max_pool: values and gradients, with ties."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.kernels.pooling import max_pool

CASES = [  # input shape, window, strides, padding
    ((2, 8, 8, 3), (2, 2), (2, 2), 'VALID'),  # non-overlapping (VGG, U-Net, LeNet)
    ((2, 15, 15, 3), (2, 2), (2, 2), 'VALID'),  # a last row and column no window covers
    ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet/DenseNet stem pool
    ((2, 8, 8, 3), (3, 3), (1, 1), 'SAME'),  # GoogLeNet branch 4
    ((2, 13, 13, 3), (3, 3), (2, 2), 'VALID'),  # AlexNet's overlapping pool
    ((2, 10, 7, 2), (3, 2), (2, 3), ((1, 2), (0, 1))),  # asymmetric everything
    ((3, 12, 4), (3,), (2,), 'SAME'),  # one spatial axis
]


def _loss(pool, k, s, p, w):
  return lambda x: jnp.sum(pool(x, k, s, p) * w)


@pytest.mark.parametrize('shape,k,s,p', CASES)
@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_matches_flax_values_and_gradients(shape, k, s, p, ties):
  rng = np.random.default_rng(0)
  # ties=True: small integers, so most windows hold several maxima; the gradient must go to the
  # same (first, row-major) one as reduce_window's select_and_scatter.
  x = (rng.integers(0, 3, shape) if ties else rng.normal(size=shape)).astype(np.float32)
  want = nn.max_pool(x, k, strides=s, padding=p)
  got = max_pool(x, k, s, p)
  np.testing.assert_array_equal(got, want)
  w = rng.normal(size=want.shape).astype(np.float32)
  want_grad = jax.grad(_loss(nn.max_pool, k, s, p, w))(x)
  got_grad = jax.jit(jax.grad(_loss(max_pool, k, s, p, w)))(x)
  np.testing.assert_allclose(got_grad, want_grad, rtol=0, atol=1e-6)
  if ties:  # same winners: the gradient's support matches exactly
    np.testing.assert_array_equal(got_grad != 0, want_grad != 0)


def test_max_pool_bfloat16_and_second_order_shapes():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4), jnp.bfloat16)
  y = max_pool(x, (2, 2), strides=(2, 2))
  assert y.dtype == jnp.bfloat16 and y.shape == (2, 3, 3, 4)
  g = jax.grad(lambda x: jnp.sum(max_pool(x, (3, 3), (2, 2), 'SAME').astype(jnp.float32)))(x)
  assert g.dtype == jnp.bfloat16 and g.shape == x.shape
  assert float(jnp.sum(g.astype(jnp.float32))) == 2 * 3 * 3 * 4  # one unit per output


def test_max_pool_rejects_mismatched_window():
  with pytest.raises(ValueError, match='one entry per spatial axis'):
    max_pool(jnp.zeros((1, 4, 4, 1)), (2,), (2,))
