"""cnn_jax.models.layers.BatchNorm: the same variables, values, gradients and running statistics
as flax.linen.BatchNorm, on the stock layer set (JAX's ops) and on the CPU layer set (its kernel
and hand-written backward; tests/test_kernels.py checks the kernel itself)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.kernels import layer_set as cpu_layer_set
from cnn_jax.models import layer_set, layers

KW = dict(momentum=0.9, epsilon=1e-5)
LAYER_SETS = {'stock': lambda: layer_set.STOCK, 'cpu': cpu_layer_set.cpu_layers}


def _use(name, monkeypatch):
  """Models traced in this test compute with layer set `name`."""
  layers = LAYER_SETS[name]()
  monkeypatch.setattr(layer_set, 'current', lambda: layers)


def _inputs():
  x = jax.random.normal(jax.random.key(0), (8, 5, 5, 6)) * 3 + 1.5  # a mean far from 0
  params = {'scale': jax.random.normal(jax.random.key(2), (6,)),
            'bias': jax.random.normal(jax.random.key(3), (6,))}
  stats = {'mean': jax.random.normal(jax.random.key(5), (6,)),
           'var': jax.random.uniform(jax.random.key(6), (6,), minval=0.5, maxval=2)}
  weights = jax.random.normal(jax.random.key(4), x.shape)
  return x, params, stats, weights


def test_same_variables_as_flax():
  x = jnp.ones((2, 4, 4, 3))
  ours = layers.BatchNorm(use_running_average=False, **KW).init(jax.random.key(0), x)
  theirs = nn.BatchNorm(use_running_average=False, **KW).init(jax.random.key(0), x)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), ours) == jax.tree.map(
      lambda a: (a.shape, a.dtype), theirs)
  np.testing.assert_array_equal(ours['batch_stats']['var'], 1.0)


@pytest.mark.parametrize('kernels', sorted(LAYER_SETS))
@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('train', [True, False])
def test_values_gradients_and_statistics_match_flax(train, relu, kernels, monkeypatch):
  _use(kernels, monkeypatch)
  x, params, stats, weights = _inputs()

  def loss(module, post, params, x):
    y, updates = module.apply({'params': params, 'batch_stats': stats}, x,
                              mutable=['batch_stats'])
    y = post(y)
    return jnp.sum(jnp.sin(y) * weights), (y, updates)

  results = []
  for module, post in ((layers.BatchNorm(use_running_average=not train, relu=relu, **KW),
                        lambda y: y),
                       (nn.BatchNorm(use_running_average=not train, **KW),
                        nn.relu if relu else lambda y: y)):
    grad_fn = jax.value_and_grad(lambda p, x, m=module, f=post: loss(m, f, p, x),
                                 argnums=(0, 1), has_aux=True)
    results.append(jax.jit(grad_fn)(params, x))
  (ours, theirs) = results
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), ours, theirs)
  if train:  # the running statistics moved
    assert not np.allclose(ours[0][1][1]['batch_stats']['mean'], stats['mean'])


@pytest.mark.parametrize('kernels', sorted(LAYER_SETS))
@pytest.mark.parametrize('train', [True, False])
def test_residual_and_relu_match_flax_then_add_then_relu(train, kernels, monkeypatch):
  _use(kernels, monkeypatch)
  x, params, stats, weights = _inputs()
  residual = jax.random.normal(jax.random.key(7), x.shape)

  def loss(apply, params, x, residual):
    y, _ = apply({'params': params, 'batch_stats': stats}, x, residual)
    return jnp.sum(jnp.sin(y) * weights)

  ours = layers.BatchNorm(use_running_average=not train, relu=True, **KW)
  theirs = nn.BatchNorm(use_running_average=not train, **KW)
  ours_apply = lambda v, x, r: ours.apply(v, x, residual=r, mutable=['batch_stats'])
  theirs_apply = lambda v, x, r: (lambda y: (nn.relu(y[0] + r), y[1]))(
      theirs.apply(v, x, mutable=['batch_stats']))
  got = jax.jit(jax.value_and_grad(lambda *a: loss(ours_apply, *a), (0, 1, 2)))(params, x, residual)
  want = jax.grad(lambda *a: loss(theirs_apply, *a), (0, 1, 2))(params, x, residual)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5), got[1], want)
  with pytest.raises(ValueError, match='takes no residual'):
    layers.BatchNorm(use_running_average=not train, **KW).apply(
        {'params': params, 'batch_stats': stats}, x, residual=residual, mutable=['batch_stats'])


@pytest.mark.parametrize('kernels', sorted(LAYER_SETS))
def test_gradient_through_the_returned_statistics(kernels, monkeypatch):
  """The statistics' own cotangents (zero in a training step) are handled exactly too."""
  _use(kernels, monkeypatch)
  x, params, _, weights = _inputs()

  def f(fn, x, scale, bias):
    y, mean, var = fn(x, scale, bias)
    return jnp.sum(jnp.sin(y) * weights) + jnp.sum(mean ** 2 * 3) + jnp.sum(jnp.sqrt(var))

  def reference(x, scale, bias):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias, mean, var

  ours = jax.grad(lambda *a: f(lambda *b: layer_set.batch_norm_train(*b, 1e-5), *a),
                  argnums=(0, 1, 2))(x, params['scale'], params['bias'])
  theirs = jax.grad(lambda *a: f(reference, *a), argnums=(0, 1, 2))(x, params['scale'],
                                                                    params['bias'])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ours, theirs)


def test_bfloat16_output_float32_statistics():
  x, params, stats, _ = _inputs()
  y, updates = layers.BatchNorm(use_running_average=False, dtype=jnp.bfloat16, **KW).apply(
      {'params': params, 'batch_stats': stats}, x.astype(jnp.bfloat16), mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16 and updates['batch_stats']['mean'].dtype == jnp.float32
  np.testing.assert_allclose(jnp.mean(y.astype(jnp.float32), (0, 1, 2)), params['bias'], atol=0.05)
