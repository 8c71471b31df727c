"""cnn_jax.kernels.conv.conv_general_dilated (im2col for small maps) against lax.conv_general_dilated."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax.kernels import conv

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('hw,kernel,padding', [
    ((2, 2), (3, 3), ((1, 1), (1, 1))),  # VGG stage 5 on 32x32 inputs
    ((1, 1), (3, 3), ((1, 1), (1, 1))),
    ((2, 5), (3, 3), 'SAME'),  # one axis smaller than the kernel
    ((2, 2), (3, 2), ((2, 0), (1, 1))),  # asymmetric kernel and padding
])
def test_small_map_conv_matches_lax_values_and_gradients(hw, kernel, padding):
  x = jax.random.normal(jax.random.key(0), (3,) + hw + (5,))
  k = jax.random.normal(jax.random.key(1), kernel + (5, 7))
  dn = lax.conv_dimension_numbers(x.shape, k.shape, DN)
  assert conv.uses_patches(x.shape, k.shape, (1, 1), dimension_numbers=dn)
  ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dn)
  got = lambda x, k: conv.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dn)
  np.testing.assert_allclose(got(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(2), ref(x, k).shape)
  g_ref = jax.grad(lambda x, k: jnp.sum(ref(x, k) * w), argnums=(0, 1))(x, k)
  g_got = jax.jit(jax.grad(lambda x, k: jnp.sum(got(x, k) * w), argnums=(0, 1)))(x, k)
  for a, b in zip(g_got, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('hw,kernel,padding', [
    ((5, 5), (5, 5), 'VALID'),  # LeNet-5's C5: 5x5x16 -> 1x1x120
    ((3, 3), (5, 5), ((1, 1), (1, 1))),  # padded up to the kernel
    ((4, 5), (5, 5), ((1, 0), (0, 0))),
])
def test_conv_with_a_1x1_output_is_a_dense_layer_with_lax_values_and_gradients(hw, kernel,
                                                                             padding):
  x = jax.random.normal(jax.random.key(0), (3,) + hw + (4,))
  k = jax.random.normal(jax.random.key(1), kernel + (4, 6))
  dn = lax.conv_dimension_numbers(x.shape, k.shape, DN)
  assert conv.uses_patches(x.shape, k.shape, (1, 1), dimension_numbers=dn, padding=padding)
  ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dn)
  got = lambda x, k: conv.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dn)
  assert got(x, k).shape == ref(x, k).shape == (3, 1, 1, 6)
  np.testing.assert_allclose(got(x, k), ref(x, k), rtol=1e-5, atol=1e-5)
  w = jax.random.normal(jax.random.key(2), (3, 1, 1, 6))
  g_ref = jax.grad(lambda x, k: jnp.sum(ref(x, k) * w), argnums=(0, 1))(x, k)
  g_got = jax.jit(jax.grad(lambda x, k: jnp.sum(got(x, k) * w), argnums=(0, 1)))(x, k)
  for a, b in zip(g_got, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_layers_go_to_lax_unchanged():
  dn = lax.conv_dimension_numbers((1, 8, 8, 3), (3, 3, 3, 4), DN)
  assert not conv.uses_patches((1, 8, 8, 3), (3, 3, 3, 4), (1, 1), dimension_numbers=dn)
  assert not conv.uses_patches((1, 2, 2, 3), (3, 3, 3, 4), (2, 2), dimension_numbers=dn)
  assert not conv.uses_patches((1, 2, 2, 4), (3, 3, 2, 4), (1, 1), dimension_numbers=dn,
                               feature_group_count=2)
  assert not conv.uses_patches((1, 3, 2, 2), (3, 3, 3, 4), (1, 1))  # lax's NCHW default
  # As big as the kernel but padded to a 3x3 output: an ordinary convolution.
  assert not conv.uses_patches((1, 5, 5, 3), (5, 5, 3, 4), (1, 1), dimension_numbers=dn,
                               padding=((1, 1), (1, 1)))
  assert not conv.uses_patches((1, 14, 14, 3), (5, 5, 3, 4), (1, 1), dimension_numbers=dn,
                               padding='VALID')


def test_flax_conv_with_it_has_the_same_parameters_and_outputs():
  x = jax.random.normal(jax.random.key(0), (2, 2, 2, 8))
  plain = nn.Conv(16, (3, 3), padding=1)
  ours = nn.Conv(16, (3, 3), padding=1, conv_general_dilated=conv.conv_general_dilated)
  params = plain.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)
