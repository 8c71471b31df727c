"""Classic CNNs: LeNet-5 1998 (C14), MLP (C25), AlexNet (C16), ZFNet (C17), VGG (C18),
GoogLeNet (C19), U-Net (C23).

Parameter counts and shapes go through `jax.eval_shape` (no FLOPs, no memory); real forwards
run at small inputs, or at the canonical one for the cheap nets. Heavy forwards are `slow`.
"""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.conv_arithmetic import count_flops
from cnn_jax.models import alexnet, googlenet, layers, lenet, published, vgg

CLASSIC = ['lenet5_classic', 'mlp', 'alexnet', 'alexnet_tv', 'zfnet', 'vgg11', 'vgg13', 'vgg16',
           'vgg19', 'vgg11_bn', 'vgg13_bn', 'vgg16_bn', 'vgg19_bn', 'googlenet', 'unet',
           'unet_same']
NUM_CLASSES = {'lenet5_classic': 10, 'mlp': 10, 'unet': 2, 'unet_same': 2}  # else 1000
TORCHVISION_GOOGLENET_AUX = 13_004_888  # torchvision googlenet(aux_logits=True, init_weights=True)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def conv(k, cin, cout, bias=True):
  """Parameters of a k x k convolution."""
  return k * k * cin * cout + (cout if bias else 0)


def dense(cin, cout):
  return cin * cout + cout


def count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def abstract_init(model, shape, batch=1, train=False):
  x = jax.ShapeDtypeStruct((batch,) + tuple(shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=train), {'params': jax.random.key(0)}, x)


def run(model, variables, x, train, rng=None, extra_mutable=()):
  """apply() in either mode; returns (logits, new mutable state)."""
  mutable = ['batch_stats'] if (train and 'batch_stats' in variables) else []
  mutable += list(extra_mutable)
  rngs = {'dropout': rng} if rng is not None else {}
  out = model.apply(variables, x, train=train, rngs=rngs, mutable=mutable or False)
  return out if mutable else (out, {})


def build(name, **overrides):
  return models.create(name, num_classes=NUM_CLASSES.get(name, 1000), **overrides)


@functools.lru_cache(maxsize=None)
def setup(name, shape, num_classes=None, **overrides):
  """(model, variables, x) with a batch of 2, initialised once per test session (jitted)."""
  model = models.create(name, num_classes=num_classes or NUM_CLASSES.get(name, 1000), **overrides)
  x = jax.random.normal(jax.random.key(1), (2,) + shape) * 2 + 0.5
  # 'rbg' keys: the same initialisers, but XLA compiles their RNG several times faster than threefry.
  key = jax.random.key(0, impl='rbg')
  variables = jax.jit(functools.partial(model.init, train=False))({'params': key}, x)
  return model, variables, x


@functools.lru_cache(maxsize=None)
def forward(model, train):
  """Jitted apply(variables, x, rng) -> (logits, state) with every mutable collection returned."""
  def f(variables, x, rng):
    return model.apply(variables, x, train=train, rngs={'dropout': rng},
                       mutable=['batch_stats', 'aux_logits'])
  return jax.jit(f)


# ----------------------------------------------------------------------------------------------
# registry and parameter counts
# ----------------------------------------------------------------------------------------------

def test_all_registered():
  assert set(CLASSIC) <= set(models.names())
  assert models.spec('alexnet').fixed_input  # U-Net checks its own sides (test_segmentation)
  assert not models.spec('vgg16').fixed_input and not models.spec('googlenet').fixed_input


def test_vgg_variants_are_partials_of_one_class():
  for depth in vgg.VGG_DEPTHS:
    for suffix in ('', '_bn'):
      ctor = models.spec(f'vgg{depth}{suffix}').ctor
      assert isinstance(ctor, functools.partial) and ctor.func is vgg.VGG


PUBLISHED = sorted(n for n in CLASSIC if n in published.PUBLISHED_PARAMS)


def test_published_names_cover_torchvision_twins():
  assert PUBLISHED == sorted(['alexnet_tv', 'googlenet'] + [
      f'vgg{d}{s}' for d in (11, 13, 16, 19) for s in ('', '_bn')])
  for name in PUBLISHED:
    assert name in published.PUBLISHED_GFLOPS


@pytest.mark.parametrize('name', PUBLISHED)
def test_param_count_matches_published(name):
  variables = abstract_init(build(name), models.input_shape(name))
  assert count(variables['params']) == published.PUBLISHED_PARAMS[name][0]


@pytest.mark.parametrize('name', PUBLISHED)
def test_macs_match_torchvision_gflops(name):
  """torchvision's 'GFLOPS' are multiply-adds at 224x224; published to 2 decimals."""
  macs = count_flops(build(name), models.input_shape(name)).macs
  assert abs(macs / 1e9 - published.PUBLISHED_GFLOPS[name]) <= 0.005


def _alexnet_like(convs, fc_in, groups=1, classes=1000):
  """Paper AlexNet/ZFNet: convs [(k, cin, cout)], FC fc_in -> 4096 -> 4096 -> classes."""
  n = sum(conv(k, cin // (groups if i in (2, 4, 5) else 1), cout)
          for i, (k, cin, cout) in enumerate(convs, start=1))
  return n + dense(fc_in, 4096) + dense(4096, 4096) + dense(4096, classes)


def _unet(cin=1, classes=2, f=64, depth=4):
  widths = [f * 2 ** i for i in range(depth + 1)]
  double = lambda a, b: conv(3, a, b) + conv(3, b, b)
  n = double(cin, widths[0]) + sum(double(widths[i - 1], widths[i]) for i in range(1, depth + 1))
  for i in range(depth, 0, -1):  # up-conv 2x2 halving channels, concat with skip, double conv
    n += conv(2, widths[i], widths[i - 1]) + double(2 * widths[i - 1], widths[i - 1])
  return n + conv(1, widths[0], classes)


ALEXNET_CONVS = [(11, 3, 96), (5, 96, 256), (3, 256, 384), (3, 384, 384), (3, 384, 256)]
ZFNET_CONVS = [(7, 3, 96), (5, 96, 256), (3, 256, 512), (3, 512, 1024), (3, 1024, 512)]
DERIVED = {
    # C14: full C3 and plain average pooling, so the same count as the lecture LeNet-5.
    'lenet5_classic': conv(5, 1, 6) + conv(5, 6, 16) + conv(5, 16, 120) + dense(120, 84)
                      + dense(84, 10),
    'mlp': dense(28 * 28, 300) + dense(300, 100) + dense(100, 10),
    'alexnet': _alexnet_like(ALEXNET_CONVS, 6 * 6 * 256),
    'zfnet': _alexnet_like(ZFNET_CONVS, 6 * 6 * 512),
    'unet': _unet(),
    'unet_same': _unet(),
}


@pytest.mark.parametrize('name', sorted(DERIVED))
def test_param_count_matches_formula(name):
  variables = abstract_init(build(name), models.input_shape(name))
  assert count(variables['params']) == DERIVED[name]


def test_derived_counts_known_values():
  # Cross-checks of the formulas against figures quoted in the literature.
  assert DERIVED['lenet5_classic'] == 61_706
  assert DERIVED['alexnet'] == 62_378_344  # single-tower AlexNet at 1000 classes
  assert DERIVED['unet'] == 31_030_658  # Ronneberger U-Net, 1 input channel, 2 classes


def test_alexnet_two_gpu_groups_count():
  variables = abstract_init(build('alexnet', groups=2), (227, 227, 3))
  assert count(variables['params']) == _alexnet_like(ALEXNET_CONVS, 9216, groups=2)
  assert count(variables['params']) == 60_965_224  # the '60 million parameters' of the paper


def test_googlenet_aux_and_paper_branch_counts():
  with_aux = abstract_init(build('googlenet', aux_logits=True), (224, 224, 3))
  assert count(with_aux['params']) == TORCHVISION_GOOGLENET_AUX
  aux = conv(1, 512, 128, bias=False) + 2 * 128 + dense(2048, 1024) + dense(1024, 1000)
  aux += conv(1, 528, 128, bias=False) + 2 * 128 + dense(2048, 1024) + dense(1024, 1000)
  assert TORCHVISION_GOOGLENET_AUX - published.PUBLISHED_PARAMS['googlenet'][0] == aux
  # The paper's 5x5 third branch: 25 instead of 9 weights per (in, out) pair, nothing else.
  paper = abstract_init(build('googlenet', branch3_kernel=5), (224, 224, 3))
  extra = sum(16 * f[3] * f[4] for f in googlenet.INCEPTION.values())
  assert count(paper['params']) == published.PUBLISHED_PARAMS['googlenet'][0] + extra


# ----------------------------------------------------------------------------------------------
# shapes at the canonical input, both modes (abstract: no compute)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', CLASSIC)
@pytest.mark.parametrize('train', [False, True])
def test_output_shape_canonical(name, train):
  model = build(name)
  shape = models.input_shape(name)
  variables = abstract_init(model, shape, batch=2)
  x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
  logits, state = jax.eval_shape(
      lambda v, x: run(model, v, x, train, rng=jax.random.key(2)), variables, x)
  nc = NUM_CLASSES.get(name, 1000)
  if name == 'unet':
    assert logits.shape == (2, 388, 388, nc)
  elif name == 'unet_same':
    assert logits.shape == (2,) + shape[:2] + (nc,)
  else:
    assert logits.shape == (2, nc)
  assert logits.dtype == jnp.float32
  assert set(state) == ({'batch_stats'} if train and 'batch_stats' in variables else set())


def test_feature_map_names_are_sown():
  for name, expected in [
      ('vgg11', {f'stage{i}' for i in range(1, 6)} | {'pre_logits'}),
      ('googlenet', {'stem', 'stage1', 'stage2', 'stage3', 'pre_logits'}),
      ('unet', {f'stage{i}' for i in range(1, 5)} | {f'up{i}' for i in range(1, 5)}
       | {'bottleneck', 'pre_logits'}),
      ('mlp', {'stage1', 'stage2', 'pre_logits'}),
      ('lenet5_classic', {'stage1', 'stage2', 'pre_logits'}),
  ]:
    model = build(name)
    variables = abstract_init(model, models.input_shape(name))
    x = jax.ShapeDtypeStruct((1,) + models.input_shape(name), jnp.float32)
    maps = jax.eval_shape(lambda v, x: models.feature_maps(model, v, x), variables, x)
    assert set(maps) == expected, name


# ----------------------------------------------------------------------------------------------
# AlexNet / ZFNet layer arithmetic (C16, C17)
# ----------------------------------------------------------------------------------------------

def test_alexnet_c16_layer_shapes():
  model = build('alexnet')
  variables = abstract_init(model, (227, 227, 3))
  x = jax.ShapeDtypeStruct((1, 227, 227, 3), jnp.float32)
  maps = jax.eval_shape(lambda v, x: models.feature_maps(model, v, x), variables, x)
  shapes = {k: v.shape[1:] for k, v in maps.items()}
  assert shapes == {
      'conv1': (55, 55, 96), 'pool1': (27, 27, 96),
      'conv2': (27, 27, 256), 'pool2': (13, 13, 256),
      'conv3': (13, 13, 384), 'conv4': (13, 13, 384), 'conv5': (13, 13, 256),
      'pool5': (6, 6, 256), 'pre_logits': (4096,)}


def test_zfnet_c17_layer_shapes():
  model = build('zfnet')
  variables = abstract_init(model, (224, 224, 3))
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  maps = jax.eval_shape(lambda v, x: models.feature_maps(model, v, x), variables, x)
  sizes = {k: v.shape[1:] for k, v in maps.items() if k != 'pre_logits'}
  assert sizes == {  # Zeiler & Fergus 2013, fig. 3 (with their 512-1024-512 layers 3-5)
      'conv1': (110, 110, 96), 'pool1': (55, 55, 96), 'conv2': (26, 26, 256),
      'pool2': (13, 13, 256), 'conv3': (13, 13, 512), 'conv4': (13, 13, 1024),
      'conv5': (13, 13, 512), 'pool5': (6, 6, 512)}


def test_alexnet_tv_runs_at_other_sizes():
  model = models.create('alexnet_tv', num_classes=10)
  for side in (64, 256):
    variables = abstract_init(model, (side, side, 3))
    x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == (1, 10)


@pytest.mark.parametrize('act', [jax.nn.relu, jax.nn.tanh])
def test_lenet5_pools_before_a_nondecreasing_activation_same_function(act, monkeypatch):
  """LeNet5 runs act(pool(x)) for pool(act(x)): same logits and parameter gradients, ties included
  (the ReLU zeroes many inputs, so most windows of its output tie at 0)."""
  model = lenet.LeNet5(act=act)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
  params = model.init(jax.random.key(1), x)['params']
  loss = lambda p: jnp.sum(model.apply({'params': p}, x) * jnp.arange(10.0))
  got = jax.jit(jax.value_and_grad(loss))(params)
  monkeypatch.setattr(lenet, 'NONDECREASING', ())  # as written: conv, act, pool
  want = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  assert lenet.LeNet5Classic.pool is not lenet.max_pool  # average pooling: never reordered


def test_local_response_norm_matches_paper_formula():
  x = jax.random.normal(jax.random.key(0), (1, 2, 2, 7)) * 30
  k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
  y = alexnet.LocalResponseNorm(size=n, k=k, alpha=alpha, beta=beta).apply({}, x)
  xs = np.asarray(x)
  ref = np.empty_like(xs)
  for i in range(7):
    lo, hi = max(0, i - n // 2), min(6, i + n // 2)
    ref[..., i] = xs[..., i] / (k + alpha * (xs[..., lo:hi + 1] ** 2).sum(-1)) ** beta
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# pooling helpers (torch semantics)
# ----------------------------------------------------------------------------------------------

def _torch_adaptive_avg(x, out):
  h = x.shape[1]
  rows = []
  for i in range(out):
    lo, hi = (i * h) // out, -(-((i + 1) * h) // out)
    rows.append(x[:, lo:hi].mean(axis=1))
  return np.stack(rows, axis=1)


@pytest.mark.parametrize('size,out', [(13, 6), (1, 7), (14, 7), (5, 7), (6, 6)])
def test_adaptive_avg_pool_matches_torch_bins(size, out):
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, size, size, 3)))
  ref = _torch_adaptive_avg(_torch_adaptive_avg(x, out).transpose(0, 2, 1, 3), out)
  ref = ref.transpose(0, 2, 1, 3)
  np.testing.assert_allclose(np.asarray(layers.adaptive_avg_pool(jnp.asarray(x), out)), ref,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size,window,stride,pad,expected', [
    (112, 3, 2, 0, 56), (56, 3, 2, 0, 28), (28, 3, 2, 0, 14), (14, 2, 2, 0, 7),  # GoogLeNet
    (110, 3, 2, 0, 55), (26, 3, 2, 0, 13), (13, 3, 2, 0, 6),  # ZFNet
    (28, 3, 1, 1, 28), (5, 2, 2, 1, 3)])  # inception pool branch; last window starts in input
def test_max_pool_ceil_sizes(size, window, stride, pad, expected):
  x = jnp.zeros((1, size, size, 1))
  assert layers.max_pool_ceil(x, window, stride, pad).shape == (1, expected, expected, 1)


# ----------------------------------------------------------------------------------------------
# real forwards, train and eval
# ----------------------------------------------------------------------------------------------

REAL = [  # (name, input shape, overrides)
    ('lenet5_classic', (32, 32, 1), {}),
    ('mlp', (28, 28, 1), {'dropout_rate': 0.5}),
    ('alexnet', (227, 227, 3), {}),
    ('alexnet_tv', (224, 224, 3), {}),
    ('zfnet', (224, 224, 3), {}),
    ('vgg11_bn', (32, 32, 3), {}),  # adaptive pooling: runs far below 224
    ('googlenet', (64, 64, 3), {'aux_logits': True}),
    ('unet', (188, 188, 1), {'features': 8}),  # smallest valid input: 188 -> 4x4
    ('unet_same', (64, 64, 3), {'features': 8}),
]


@pytest.mark.parametrize('name,shape,overrides', REAL, ids=[r[0] for r in REAL])
def test_real_forward_train_and_eval(name, shape, overrides):
  model, variables, x = setup(name, shape, **overrides)
  y_eval, _ = forward(model, False)(variables, x, jax.random.key(3))
  y_train, _ = forward(model, True)(variables, x, jax.random.key(3))
  assert y_eval.shape == y_train.shape and y_eval.dtype == y_train.dtype == jnp.float32
  assert np.isfinite(np.asarray(y_eval)).all() and np.isfinite(np.asarray(y_train)).all()
  if name == 'unet':
    assert y_eval.shape == (2, 4, 4, 2)
  elif name == 'unet_same':
    assert y_eval.shape == (2, 64, 64, 2)
  else:
    assert y_eval.shape == (2, NUM_CLASSES.get(name, 1000))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model, variables, x = setup('vgg11_bn', (32, 32, 3), num_classes=10, dtype=jnp.bfloat16,
                              hidden=64)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  y, state = forward(model, True)(variables, x, jax.random.key(1))
  assert y.dtype == jnp.float32 and y.shape == (2, 10)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state['batch_stats']))


# ----------------------------------------------------------------------------------------------
# BatchNorm, dropout and auxiliary heads move only in train mode
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name,shape,overrides', [
    ('vgg11_bn', (32, 32, 3), {}), ('googlenet', (64, 64, 3), {'aux_logits': True})])
def test_batchnorm_stats_move_only_in_train_mode(name, shape, overrides):
  model, variables, x = setup(name, shape, **overrides)
  before = variables['batch_stats']
  _, state = forward(model, False)(variables, x, jax.random.key(2))
  jax.tree.map(np.testing.assert_array_equal, before, state['batch_stats'])
  _, state = forward(model, True)(variables, x, jax.random.key(2))
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, state['batch_stats'])
  assert all(jax.tree.leaves(changed))


def test_dropout_only_in_train_mode_and_needs_rng():
  model, variables, x = setup('alexnet', (227, 227, 3))
  with pytest.raises(flax.errors.FlaxError):  # train mode without a 'dropout' rng
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)
  train, evaluate = forward(model, True), forward(model, False)
  a, _ = train(variables, x, jax.random.key(1))
  b, _ = train(variables, x, jax.random.key(2))
  a2, _ = train(variables, x, jax.random.key(1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, a2)
  e1, _ = evaluate(variables, x, jax.random.key(1))
  e2, _ = evaluate(variables, x, jax.random.key(2))
  np.testing.assert_array_equal(e1, e2)
  assert not np.allclose(e1, a)


def test_googlenet_aux_heads_only_in_train_mode():
  model, variables, x = setup('googlenet', (64, 64, 3), aux_logits=True)
  assert {'aux1_head', 'aux2_head'} <= set(variables['params'])  # eval-mode init builds them
  train_init = jax.eval_shape(functools.partial(model.init, train=True),
                              {'params': jax.random.key(0), 'dropout': jax.random.key(1)}, x)
  assert set(train_init) == {'params', 'batch_stats'}
  y, state = forward(model, True)(variables, x, jax.random.key(2))
  assert y.shape == (2, 1000)
  assert {k: v[0].shape for k, v in state['aux_logits'].items()} == {
      'aux1': (2, 1000), 'aux2': (2, 1000)}
  _, state = forward(model, False)(variables, x, jax.random.key(2))
  assert 'aux_logits' not in state
  plain = models.create('googlenet', num_classes=10)
  pv = abstract_init(plain, (64, 64, 3))
  assert not {'aux1_head', 'aux2_head'} & set(pv['params'])
  _, state = jax.eval_shape(
      lambda v, x: plain.apply(v, x, train=True, mutable=['batch_stats', 'aux_logits'],
                               rngs={'dropout': jax.random.key(2)}), pv, x)
  assert 'aux_logits' not in state


# ----------------------------------------------------------------------------------------------
# U-Net (C23)
# ----------------------------------------------------------------------------------------------

def test_unet_572_to_388_and_crop_sizes():
  model = build('unet')
  variables = abstract_init(model, (572, 572, 1))
  x = jax.ShapeDtypeStruct((1, 572, 572, 1), jnp.float32)
  maps = jax.eval_shape(lambda v, x: models.feature_maps(model, v, x), variables, x)
  sizes = {k: v.shape[1:] for k, v in maps.items()}
  assert sizes['stage1'] == (568, 568, 64) and sizes['stage4'] == (64, 64, 512)
  assert sizes['bottleneck'] == (28, 28, 1024)
  assert sizes['up1'] == (52, 52, 512) and sizes['up4'] == (388, 388, 64)
  y = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  assert y.shape == (1, 388, 388, 2)


@pytest.mark.parametrize('side', [128, 256, 320])
def test_unet_same_keeps_size(side):
  model = models.create('unet_same', num_classes=3)
  variables = abstract_init(model, (side, side, 1))
  x = jax.ShapeDtypeStruct((1, side, side, 1), jnp.float32)
  assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == (1, side, side, 3)


# ----------------------------------------------------------------------------------------------
# heavy: real forwards at 224 of every VGG
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in CLASSIC if n.startswith('vgg')] + ['googlenet'])
def test_real_forward_224(name):
  model, variables, x = setup(name, (224, 224, 3))
  for train in (False, True):
    y, _ = forward(model, train)(variables, x, jax.random.key(2))
    assert y.shape == (2, 1000) and np.isfinite(np.asarray(y)).all()
  setup.cache_clear()  # 0.5 GB of parameters per VGG
