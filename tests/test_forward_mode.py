"""Forward-mode AD through every registered model on the stock layer set (JAX's own ops): jax.jvp
and jax.linearize of the logits, in train and eval mode, against central finite differences;
and the CPU layer set's one clear error under forward mode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.kernels import layer_set as cpu_layer_set
from cnn_jax.models import layer_set

# Small inputs where a model takes them. The default suite runs one member of each kind of layer
# (max pooling with ReLU, average pooling, dense, each normalisation, BatchNorm with residuals);
# the slow set walks the rest of the registry.
INPUTS = {'unet': (188, 188, 1), 'unet_same': (32, 32, 1)}
# Where a step of 1e-4 along the tangent crosses kinks (ReLU near-zeros, max-pool near-ties over
# small train-mode BatchNorm batches), central differences are no reference; forward mode is then
# checked against linearize and reverse mode only (seen: googlenet_cifar in train mode, where the
# difference quotient was 2.46 against a directional derivative of 0.43 in both modes).
NO_FINITE_DIFFERENCE = {('googlenet_cifar', True)}
FAST = {'lenet5', 'lenet5_classic', 'mlp', 'cifar_cnn', 'resnet8'}


def _params(names):
  return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in names]


def _shape(name):
  return INPUTS.get(name) or models.input_shape(name)


def _logits_fn(name, train):
  model = models.create(name, num_classes=10)
  x = jax.random.normal(jax.random.key(0), (2,) + _shape(name))
  variables = model.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, x,
                         train=False)

  def logits(params, x):
    out = model.apply({**variables, 'params': params}, x, train=train,
                      mutable=['batch_stats', 'aux_logits'] if train else False,
                      rngs={'dropout': jax.random.key(3)})
    return (out[0] if train else out).astype(jnp.float32)

  return logits, variables['params'], x


def _tangent(tree, key):
  """A random direction, each leaf scaled like the leaf (so a step moves every layer alike)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  scaled = [jax.random.normal(k, a.shape) * (jnp.sqrt(jnp.mean(a ** 2)) + 1e-2)
            for k, a in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, scaled)


def _shifted(tree, tangent, eps):
  return jax.tree.map(lambda a, t: a + eps * t, tree, tangent)


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('name', _params(models.names()))
def test_jvp_and_linearize_match_finite_differences(name, train):
  logits, params, x = _logits_fn(name, train)
  primals = (params, x)
  tangents = (_tangent(params, jax.random.key(4)), _tangent(x, jax.random.key(5)))
  y, dy = jax.jit(lambda p, t: jax.jvp(logits, p, t))(primals, tangents)
  y_lin, f_lin = jax.linearize(logits, *primals)
  np.testing.assert_allclose(y_lin, y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(f_lin)(*tangents), dy, rtol=1e-4,
                             atol=1e-4 * float(jnp.abs(dy).max()))

  # <w, J t> three ways: forward mode, reverse mode (<J^T w, t>), central differences.
  w = jax.random.normal(jax.random.key(6), y.shape)
  forward = float(jnp.sum(w * dy))
  _, vjp = jax.vjp(logits, *primals)
  reverse = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(vjp(w)),
                                                      jax.tree.leaves(tangents)))
  project = jax.jit(lambda e: jnp.sum(w * logits(*_shifted(primals, tangents, e))))
  eps = 1e-4
  finite_difference = float(project(eps) - project(-eps)) / (2 * eps)
  scale = float(jnp.sum(jnp.abs(w * dy)))  # the size of the terms the projection sums
  assert abs(forward - reverse) <= 1e-4 * scale, (forward, reverse)
  if (name, train) not in NO_FINITE_DIFFERENCE:
    assert abs(forward - finite_difference) <= 2e-2 * scale, (forward, finite_difference)


def test_cpu_layer_set_names_the_switch_under_forward_mode():
  logits, params, x = _logits_fn('resnet8', True)
  with layer_set.using(cpu_layer_set.cpu_layers()):
    jax.grad(lambda p: jnp.sum(logits(p, x)))(params)  # reverse mode runs
    with pytest.raises(cpu_layer_set.ForwardModeError, match=r"config.cpu_kernels='off'"):
      jax.jvp(lambda x: logits(params, x), (x,), (x,))
    with pytest.raises(cpu_layer_set.ForwardModeError, match=r"config.cpu_kernels='off'"):
      jax.hessian(lambda x: jnp.sum(logits(params, x) ** 2))(x[:1])
