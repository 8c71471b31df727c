"""ImageNet ResNets (torchvision), CIFAR ResNets and their plain twins (He et al. 2016 §4.2).

Parameter counts use jax.eval_shape (no FLOPs, no memory); forwards use small batches.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnn_jax.models as M
from cnn_jax.models import cifar_resnet, resnet
from cnn_jax.models.published import PAPER_PARAMS_APPROX, PUBLISHED_GFLOPS, PUBLISHED_PARAMS


def abstract_variables(model, shape, batch=1):
  return jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0)}, jnp.zeros((batch, *shape)), train=False))


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def count(name, num_classes, **overrides):
  model = M.create(name, num_classes=num_classes, **overrides)
  return n_params(abstract_variables(model, M.input_shape(name))['params'])


def init(model, shape, batch=2, seed=0, init_shape=None):
  """Real variables and an input; 'rbg' keys compile several times faster than threefry on CPU.

  `init_shape` (H, W, C) initialises at a smaller input (parameters do not depend on it)."""
  x = jax.random.normal(jax.random.key(seed + 1, impl='rbg'), (batch, *shape))
  x0 = x if init_shape is None else jnp.zeros((1, *init_shape))
  variables = jax.jit(lambda k: model.init({'params': k}, x0, train=False))(
      jax.random.key(seed, impl='rbg'))
  return variables, x


@pytest.fixture(scope='module')
def resnet8():
  model = M.create('resnet8', num_classes=10)
  variables, x = init(model, (32, 32, 3), batch=4)
  return model, variables, x


# ---------------------------------------------------------------- ImageNet ResNets (torchvision)

TORCHVISION_RESNET = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
}


@pytest.mark.parametrize('name', sorted(TORCHVISION_RESNET))
def test_imagenet_resnet_param_count_equals_torchvision(name):
  assert count(name, 1000) == TORCHVISION_RESNET[name]
  assert PUBLISHED_PARAMS[name][0] == TORCHVISION_RESNET[name]
  assert name in PUBLISHED_GFLOPS


@pytest.mark.parametrize('name', sorted(TORCHVISION_RESNET))
def test_imagenet_resnet_output_shape_at_canonical_input(name):
  assert M.input_shape(name) == (224, 224, 3)
  assert not M.spec(name).fixed_input
  model = M.create(name, num_classes=1000)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  variables = abstract_variables(model, (224, 224, 3), batch=2)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.shape == (2, 1000) and out.dtype == jnp.float32


def test_imagenet_resnet_structure_names():
  variables = abstract_variables(M.create('resnet50', num_classes=1000), (224, 224, 3))
  params = variables['params']
  expected = {'stem_conv', 'stem_bn', 'head'} | {
      f'stage{i + 1}_block{j + 1}' for i, n in enumerate((3, 4, 6, 3)) for j in range(n)}
  assert set(params) == expected
  # v1.5: the stride is on the 3x3 (conv2); the projection exists once per stage.
  assert params['stage2_block1']['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert params['stage1_block1']['downsample_conv']['kernel'].shape == (1, 1, 64, 256)
  assert 'downsample_conv' not in params['stage1_block2']
  assert params['stem_conv']['kernel'].shape == (7, 7, 3, 64)
  assert set(variables['batch_stats']['stem_bn']) == {'mean', 'var'}


def test_resnet18_forward_train_and_eval_at_224():
  model = M.create('resnet18', num_classes=1000)
  variables, x = init(model, (224, 224, 3), batch=1, init_shape=(32, 32, 3))
  out = model.apply(variables, x, train=False)
  assert out.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(out)))
  out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
def test_resnet50_forward_at_small_input():
  model = M.create('resnet50', num_classes=7)  # not fixed-input: 64x64 -> 2x2 before the pool
  variables, x = init(model, (64, 64, 3), batch=1)
  out = model.apply(variables, x, train=False)
  assert out.shape == (1, 7) and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['resnet34', 'resnet50', 'resnet101', 'resnet152'])
def test_imagenet_resnet_forward_train_and_eval_at_224(name):
  model = M.create(name, num_classes=1000)
  variables, x = init(model, (224, 224, 3), batch=2)
  for train in (False, True):
    out, _ = model.apply(variables, x, train=train, mutable=['batch_stats'])
    assert out.shape == (2, 1000) and bool(jnp.all(jnp.isfinite(out)))


def test_resnet18_feature_maps():
  model = M.create('resnet18', num_classes=1000)
  variables = abstract_variables(model, (224, 224, 3))
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  feats = jax.eval_shape(lambda v, x: M.feature_maps(model, v, x), variables, x)
  assert {k: v.shape for k, v in feats.items()} == {
      'stem': (1, 56, 56, 64),
      'stage1': (1, 56, 56, 64),
      'stage2': (1, 28, 28, 128),
      'stage3': (1, 14, 14, 256),
      'stage4': (1, 7, 7, 512),
      'pre_logits': (1, 512),
  }


@pytest.mark.parametrize('block,last', [(resnet.BasicBlock, 'bn2'), (resnet.Bottleneck, 'bn3')])
def test_zero_init_last_bn_makes_the_residual_branch_zero(block, last):
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=resnet.conv_kernel_init)
  module = block(8, conv=conv, norm=resnet.batch_norm(False, jnp.float32), act=nn.relu,
                 strides=2, zero_init_last=True)
  x = jax.random.normal(jax.random.key(1, impl='rbg'), (2, 8, 8, 16))
  variables = module.init(jax.random.key(0, impl='rbg'), x)
  params = variables['params']
  assert not np.any(np.asarray(params[last]['scale']))
  assert np.all(np.asarray(params['bn1']['scale']) == 1)
  assert np.all(np.asarray(params['downsample_bn']['scale']) == 1)
  # The block starts as ReLU(projection shortcut).
  out_features = 8 * block.expansion
  shortcut = nn.Conv(out_features, (1, 1), strides=2, use_bias=False).apply(
      {'params': params['downsample_conv']}, x)
  shortcut = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(
      {'params': params['downsample_bn'], 'batch_stats': variables['batch_stats']['downsample_bn']},
      shortcut)
  np.testing.assert_allclose(module.apply(variables, x), nn.relu(shortcut), atol=1e-6)


def test_zero_init_residual_reaches_every_block():
  model = M.create('resnet18', num_classes=10, width=8, zero_init_residual=True)
  params = init(model, (32, 32, 3), batch=1)[0]['params']
  blocks = [k for k in params if k.startswith('stage')]
  assert len(blocks) == 8
  for k in blocks:
    assert not np.any(np.asarray(params[k]['bn2']['scale'])), k
    assert np.all(np.asarray(params[k]['bn1']['scale']) == 1), k


# ------------------------------------------------------------------------------ CIFAR ResNets

CIFAR_N = {8: 1, 20: 3, 32: 5, 44: 7, 56: 9, 110: 18, 1202: 200}


def cifar_resnet_params(n, num_classes=10, widths=(16, 32, 64), projection=False):
  """He et al. §4.2 by hand: conv3x3 stem + BN, 3 stages x n basic blocks, fc."""
  def conv(k, cin, cout):
    return k * k * cin * cout

  def bn(c):
    return 2 * c  # gamma, beta (mean/var are batch_stats, not params)

  total = conv(3, 3, widths[0]) + bn(widths[0])
  cin = widths[0]
  for c in widths:
    for _ in range(n):
      total += conv(3, cin, c) + bn(c) + conv(3, c, c) + bn(c)
      if projection and cin != c:
        total += conv(1, cin, c) + bn(c)
      cin = c
  return total + cin * num_classes + num_classes


def test_resnet20_literal_count():
  assert cifar_resnet_params(3) == 269_722
  assert count('resnet20', 10) == 269_722
  assert PUBLISHED_PARAMS['resnet20'][0] == 269_722


# Rounding unit of each figure in He et al. 2016, Table 6.
PAPER_ROUNDING = {20: 0.01e6, 32: 0.01e6, 44: 0.01e6, 56: 0.01e6, 110: 0.1e6, 1202: 0.1e6}


@pytest.mark.parametrize('depth', sorted(CIFAR_N))
def test_cifar_resnet_count_matches_formula_and_paper(depth):
  n = CIFAR_N[depth]
  assert depth == 6 * n + 2
  assert cifar_resnet.CIFAR_DEPTHS[depth] == n
  expected = cifar_resnet_params(n)
  assert count(f'resnet{depth}', 10) == expected
  if depth in PAPER_ROUNDING:
    approx, _ = PAPER_PARAMS_APPROX[f'resnet{depth}']
    assert abs(expected - approx) <= PAPER_ROUNDING[depth] / 2


@pytest.mark.parametrize('depth', [8, 20, 56])
def test_option_b_adds_exactly_the_projections(depth):
  n = CIFAR_N[depth]
  a = count(f'resnet{depth}', 10)
  b = count(f'resnet{depth}', 10, shortcut='B')
  projections = (1 * 1 * 16 * 32 + 2 * 32) + (1 * 1 * 32 * 64 + 2 * 64)
  assert b - a == projections == 2752
  assert b == cifar_resnet_params(n, projection=True)
  params = abstract_variables(M.create(f'resnet{depth}', num_classes=10, shortcut='B'),
                              (32, 32, 3))['params']
  with_proj = sorted(k for k, v in params.items() if 'downsample_conv' in v)
  assert with_proj == ['stage2_block1', 'stage3_block1']


@pytest.mark.parametrize('depth', [8, 20, 32, 44, 56, 110])
def test_plain_twin_has_the_same_params_as_option_a(depth):
  res = abstract_variables(M.create(f'resnet{depth}', num_classes=10), (32, 32, 3))
  plain = abstract_variables(M.create(f'plain{depth}', num_classes=10), (32, 32, 3))
  assert jax.tree_util.tree_structure(res) == jax.tree_util.tree_structure(plain)
  assert n_params(plain['params']) == n_params(res['params']) == cifar_resnet_params(
      CIFAR_N[depth])


def test_plain_is_the_same_class_with_one_flag():
  for depth in (8, 20, 32, 44, 56, 110):
    plain = M.spec(f'plain{depth}').ctor
    res = M.spec(f'resnet{depth}').ctor
    assert plain.func is res.func is cifar_resnet.CifarResNet
    assert plain.keywords == {**res.keywords, 'residual': False}


@pytest.mark.parametrize('name', ['resnet8', 'resnet20', 'resnet110', 'plain56'])
def test_cifar_output_shape_at_canonical_input(name):
  assert M.input_shape(name) == (32, 32, 3)
  model = M.create(name, num_classes=10)
  variables = abstract_variables(model, (32, 32, 3), batch=3)
  x = jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert out.shape == (3, 10) and out.dtype == jnp.float32


def check_forward(model, variables, x, num_classes=10):
  for train in (False, True):
    out, _ = model.apply(variables, x, train=train, mutable=['batch_stats'])
    assert out.shape == (x.shape[0], num_classes) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_cifar_forward_train_and_eval(resnet8):
  model, variables, x = resnet8
  check_forward(model, variables, x)
  check_forward(M.create('plain8', num_classes=10), variables, x)  # same parameters


def test_cifar_option_b_forward_train_and_eval():
  model = M.create('resnet8', num_classes=10, shortcut='B')
  variables, x = init(model, (32, 32, 3), batch=4)
  check_forward(model, variables, x)


@pytest.mark.slow
def test_resnet20_forward_train_and_eval():
  model = M.create('resnet20', num_classes=10)
  variables, x = init(model, (32, 32, 3), batch=4)
  check_forward(model, variables, x)


def test_batch_stats_move_only_in_train_mode(resnet8):
  model, variables, x = resnet8
  before = variables['batch_stats']
  _, state = model.apply(variables, x, train=False, mutable=['batch_stats'])
  jax.tree_util.tree_map(np.testing.assert_array_equal, state['batch_stats'], before)
  _, state = model.apply(variables, x, train=True, mutable=['batch_stats'])
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                   state['batch_stats'], before)
  assert all(jax.tree_util.tree_leaves(changed))  # every running mean and var moved


def test_residual_flag_changes_the_function(resnet8):
  res, variables, x = resnet8
  plain = M.create('plain8', num_classes=10)
  out_res = res.apply(variables, x, train=False)
  out_plain = plain.apply(variables, x, train=False)  # identical parameters
  assert not np.allclose(out_res, out_plain, atol=1e-4)


def test_resnet20_feature_maps():
  model = M.create('resnet20', num_classes=10)
  variables = abstract_variables(model, (32, 32, 3))
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  feats = jax.eval_shape(lambda v, x: M.feature_maps(model, v, x), variables, x)
  assert {k: v.shape for k, v in feats.items()} == {
      'stem': (2, 32, 32, 16),
      'stage1': (2, 32, 32, 16),
      'stage2': (2, 16, 16, 32),
      'stage3': (2, 8, 8, 64),
      'pre_logits': (2, 64),
  }


def test_feature_map_values(resnet8):
  model, variables, x = resnet8
  feats = M.feature_maps(model, variables, x)
  assert set(feats) == {'stem', 'stage1', 'stage2', 'stage3', 'pre_logits'}
  np.testing.assert_allclose(feats['pre_logits'], feats['stage3'].mean(axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)
  head = variables['params']['head']
  np.testing.assert_allclose(feats['pre_logits'] @ head['kernel'] + head['bias'],
                             model.apply(variables, x), rtol=1e-4, atol=1e-5)


def test_shortcut_a_subsamples_and_zero_pads():
  x = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 4, 3) + 1
  y = resnet.shortcut_a(x, 7, 2)
  assert y.shape == (2, 2, 2, 7)
  np.testing.assert_array_equal(y[..., 2:5], x[:, ::2, ::2, :])
  assert not np.any(np.asarray(y[..., :2])) and not np.any(np.asarray(y[..., 5:]))


def test_unknown_shortcut_and_depth_raise():
  x = jnp.zeros((1, 32, 32, 3))
  with pytest.raises(ValueError, match='shortcut'):
    jax.eval_shape(lambda: M.create('resnet8', num_classes=10, shortcut='C').init(
        jax.random.key(0), x))
  with pytest.raises(ValueError, match='depth'):
    jax.eval_shape(lambda: cifar_resnet.CifarResNet(num_classes=10, depth=21).init(
        jax.random.key(0), x))


def test_bfloat16_computation_keeps_float32_params_and_logits(resnet8):
  _, variables, x = resnet8
  model = M.create('resnet8', num_classes=10, dtype=jnp.bfloat16)
  abstract = abstract_variables(model, (32, 32, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(abstract))
  out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  feats = M.feature_maps(model, variables, x)
  assert feats['stage3'].dtype == jnp.bfloat16


def test_registry_entries():
  expected = set(TORCHVISION_RESNET) | {f'resnet{d}' for d in CIFAR_N} | {
      f'plain{d}' for d in CIFAR_N if d != 1202}
  assert expected <= set(M.names())
  for name in expected:
    assert not M.spec(name).fixed_input
