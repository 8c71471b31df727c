"""DenseNets: torchvision's densenet121/169/201 and Huang et al.'s DenseNet-BC-100 (k=12)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.models as M
from cnn_jax.models import densenet
from cnn_jax.models.published import PAPER_PARAMS_APPROX, PUBLISHED_GFLOPS, PUBLISHED_PARAMS


def abstract_variables(model, shape, batch=1):
  return jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)}, jnp.zeros((batch, *shape)), train=False))


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def init(model, shape, batch=2, seed=0):
  """Real variables and an input; 'rbg' keys compile several times faster than threefry on CPU."""
  x = jax.random.normal(jax.random.key(seed + 1, impl='rbg'), (batch, *shape))
  variables = jax.jit(lambda k: model.init({'params': k}, x, train=False))(
      jax.random.key(seed, impl='rbg'))
  return variables, x


TORCHVISION_DENSENET = {
    'densenet121': 7_978_856,
    'densenet169': 14_149_480,
    'densenet201': 20_013_928,
}


@pytest.mark.parametrize('name', sorted(TORCHVISION_DENSENET))
def test_densenet_param_count_equals_torchvision(name):
  model = M.create(name, num_classes=1000)
  assert n_params(abstract_variables(model, (224, 224, 3))['params']) == TORCHVISION_DENSENET[name]
  assert PUBLISHED_PARAMS[name][0] == TORCHVISION_DENSENET[name]
  assert name in PUBLISHED_GFLOPS


def densenet_bc_params(depth, k, num_classes=10, bn_size=4, compression=0.5):
  """Huang et al. 2017 DenseNet-BC for CIFAR, by hand: 3x3 conv stem (2k, no BN); 3 blocks of
  (depth - 4) / 6 layers BN-1x1(bn_size k)-BN-3x3(k); transitions BN-1x1(compressed);
  final BN; fc."""
  n = (depth - 4) // 6
  c = 2 * k
  total = 3 * 3 * 3 * c
  for block in range(3):
    for _ in range(n):
      total += 2 * c + c * bn_size * k + 2 * bn_size * k + 9 * bn_size * k * k
      c += k
    if block < 2:
      out = math.floor(c * compression)
      total += 2 * c + c * out
      c = out
  return total + 2 * c + c * num_classes + num_classes


def test_densenet_bc_100_12_count():
  expected = densenet_bc_params(100, 12)
  model = M.create('densenet_bc_100_12', num_classes=10)
  assert n_params(abstract_variables(model, (32, 32, 3))['params']) == expected == 769_162
  approx, _ = PAPER_PARAMS_APPROX['densenet_bc_100_12']
  assert abs(expected - approx) <= 0.05e6  # Huang et al. Table 2 prints 0.8M


@pytest.mark.parametrize('name,shape,classes', [
    ('densenet121', (224, 224, 3), 1000), ('densenet169', (224, 224, 3), 1000),
    ('densenet201', (224, 224, 3), 1000), ('densenet_bc_100_12', (32, 32, 3), 10)])
def test_output_shape_at_canonical_input(name, shape, classes):
  assert M.input_shape(name) == shape
  assert not M.spec(name).fixed_input
  model = M.create(name, num_classes=classes)
  variables = abstract_variables(model, shape, batch=2)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.shape == (2, classes) and out.dtype == jnp.float32


def test_densenet121_feature_maps_and_channel_arithmetic():
  model = M.create('densenet121', num_classes=1000)
  variables = abstract_variables(model, (224, 224, 3))
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  feats = jax.eval_shape(lambda v, x: M.feature_maps(model, v, x), variables, x)
  # 64 + 6*32 = 256 -> 128 + 12*32 = 512 -> 256 + 24*32 = 1024 -> 512 + 16*32 = 1024.
  assert {k: v.shape for k, v in feats.items()} == {
      'stem': (1, 56, 56, 64),
      'stage1': (1, 56, 56, 256),
      'stage2': (1, 28, 28, 512),
      'stage3': (1, 14, 14, 1024),
      'stage4': (1, 7, 7, 1024),
      'pre_logits': (1, 1024),
  }
  params = variables['params']
  assert params['stage1_layer1']['conv1']['kernel'].shape == (1, 1, 64, 128)
  assert params['stage1_layer1']['conv2']['kernel'].shape == (3, 3, 128, 32)
  assert params['transition1']['conv']['kernel'].shape == (1, 1, 256, 128)
  assert params['final_bn']['scale'].shape == (1024,)
  assert 'transition4' not in params and 'stage4_layer16' in params


def test_densenet_bc_100_12_feature_maps():
  model = M.create('densenet_bc_100_12', num_classes=10)
  variables = abstract_variables(model, (32, 32, 3))
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  feats = jax.eval_shape(lambda v, x: M.feature_maps(model, v, x), variables, x)
  # 24 + 16*12 = 216 -> 108 + 192 = 300 -> 150 + 192 = 342.
  assert {k: v.shape for k, v in feats.items()} == {
      'stem': (1, 32, 32, 24),
      'stage1': (1, 32, 32, 216),
      'stage2': (1, 16, 16, 300),
      'stage3': (1, 8, 8, 342),
      'pre_logits': (1, 342),
  }
  assert 'stem_bn' not in variables['params']


@pytest.fixture(scope='module')
def small_cifar_densenet():
  # DenseNet-BC-22 (3 layers per block): densenet_bc_100_12's code path, fast; with dropout.
  model = densenet.DenseNet(num_classes=10, depth=22, growth_rate=12, stem='cifar',
                            drop_rate=0.2)
  variables, x = init(model, (32, 32, 3), batch=4)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))
  return model, variables, x, apply


def test_small_cifar_densenet_forward_train_eval_and_batch_stats(small_cifar_densenet):
  model, variables, x, apply = small_cifar_densenet
  assert set(variables['params']) >= {'stem_conv', 'stage3_layer3', 'transition2', 'final_bn'}
  out, state = apply(variables, x, train=False, mutable=('batch_stats',))
  assert out.shape == (4, 10) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  jax.tree_util.tree_map(np.testing.assert_array_equal, state['batch_stats'],
                         variables['batch_stats'])
  out, state = apply(variables, x, train=True, mutable=('batch_stats',),
                     rngs={'dropout': jax.random.key(1, impl='rbg')})
  assert out.shape == (4, 10) and bool(jnp.all(jnp.isfinite(out)))
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                 state['batch_stats'], variables['batch_stats'])
  assert all(jax.tree_util.tree_leaves(moved))


def test_dropout_only_in_train_mode(small_cifar_densenet):
  model, variables, x, apply = small_cifar_densenet
  e1 = apply(variables, x, train=False, mutable=('batch_stats',))[0]
  e2 = apply(variables, x, train=False, mutable=('batch_stats',))[0]
  np.testing.assert_array_equal(e1, e2)
  t1 = apply(variables, x, train=True, mutable=('batch_stats',),
             rngs={'dropout': jax.random.key(1, impl='rbg')})[0]
  t2 = apply(variables, x, train=True, mutable=('batch_stats',),
             rngs={'dropout': jax.random.key(2, impl='rbg')})[0]
  assert not np.allclose(t1, t2)


@pytest.mark.slow
def test_densenet121_forward_at_small_input():
  model = M.create('densenet121', num_classes=5)  # not fixed-input: 64x64 -> 2x2 at the end
  variables, x = init(model, (64, 64, 3), batch=1)
  out = model.apply(variables, x, train=False)
  assert out.shape == (1, 5) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
@pytest.mark.parametrize('name,shape,classes', [
    ('densenet121', (224, 224, 3), 1000), ('densenet_bc_100_12', (32, 32, 3), 10)])
def test_forward_train_and_eval_at_canonical_input(name, shape, classes):
  model = M.create(name, num_classes=classes)
  variables, x = init(model, shape, batch=2)
  apply = jax.jit(model.apply, static_argnames=('train', 'mutable'))  # eager recompiles per layer
  for train in (False, True):
    out, _ = apply(variables, x, train=train, mutable=('batch_stats',))
    assert out.shape == (2, classes) and bool(jnp.all(jnp.isfinite(out)))


def test_bad_configs_raise():
  x = jnp.zeros((1, 32, 32, 3))
  for kwargs in ({'depth': 122}, {'depth': 101, 'stem': 'cifar'}, {'stem': 'other'}):
    with pytest.raises(ValueError):
      jax.eval_shape(lambda: densenet.DenseNet(num_classes=10, **kwargs).init(
          jax.random.key(0), x))
