"""cnn_jax.kernels: the CPU kernels against XLA's ops (values, gradients, determinism), when each
is used, and what happens when one cannot be built."""
import contextlib
import functools
import json
import os
import pathlib
import platform
import subprocess
import sys
import textwrap
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import kernels
from cnn_jax import models
from cnn_jax import precision
from cnn_jax.kernels import conv, library, ops
from cnn_jax.kernels import layer_set as cpu_layer_set
from cnn_jax.models import layer_set

# flax's Conv on the CPU layer set's convolution.
Conv = functools.partial(nn.Conv, conv_general_dilated=conv.conv_general_dilated)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the project is meant to run, a missing kernel is a failure, not a skip.
SUPPORTED = sys.platform.startswith('linux') and platform.machine() == 'x86_64'


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
  monkeypatch.setenv(library.ENV, '1')
  if not SUPPORTED:
    pytest.skip('the kernels are built on x86-64 Linux')


@contextlib.contextmanager
def _xla_only():
  """ops' functions take XLA's path while tracing."""
  with mock.patch.object(ops, 'use_kernel', lambda name: False):
    yield


def _targets(fn, *args) -> str:
  """The custom-call targets of `fn`'s compiled CPU program."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  return ' '.join(sorted(set(t for t in text.split('custom_call_target="')[1:]
                             for t in [t.split('"')[0]])))


def _close(a, b, rtol=2e-5, atol=2e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * max(1.0, float(np.abs(y).max())))


def test_kernels_build_and_load_here():
  assert library.load('conv2d') and library.load('batch_norm'), library.status()
  assert library.status() == {'conv2d': 'on', 'batch_norm': 'on'}


@pytest.mark.parametrize('x_shape,k_shape,strides,padding,dilation', [
    ((4, 9, 11, 5), (3, 3, 5, 7), (1, 1), ((1, 1), (1, 1)), (1, 1)),  # ResNet's 3x3
    ((5, 9, 11, 5), (3, 3, 5, 7), (2, 2), ((1, 1), (1, 1)), (1, 1)),  # strided, odd batch
    ((3, 8, 8, 6), (1, 1, 6, 10), (2, 2), ((0, 0), (0, 0)), (1, 1)),  # 1x1 projection
    ((2, 32, 32, 1), (5, 5, 1, 6), (1, 1), ((0, 0), (0, 0)), (1, 1)),  # LeNet-5's C1
    ((2, 17, 15, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), (1, 1)),  # an ImageNet stem
    ((2, 12, 12, 3), (5, 3, 3, 4), (2, 1), ((2, 0), (1, 3)), (2, 1)),  # asymmetric, dilated
    ((1, 6, 6, 4), (3, 3, 4, 4), (3, 3), ((0, 2), (1, 0)), (1, 2)),
    # Stride 1, output channels in 8s, 12 input channels or more: on AVX2 CPUs the kernel
    # gradient comes from conv_kernel_gradient.h (16- and 8-wide blocks, ragged channel blocks,
    # taps that miss the image entirely).
    ((4, 9, 11, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1)), (1, 1)),
    ((3, 10, 9, 13), (3, 5, 13, 24), (1, 1), ((2, 0), (1, 3)), (2, 1)),
    ((2, 7, 7, 20), (1, 1, 20, 8), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 6, 6, 12), (3, 3, 12, 8), (1, 1), ((3, 3), (0, 1)), (1, 1)),
    # 3x3, stride 1, input and output channels in 16s, 32 input channels or more, padding of 2 at
    # most: on AVX2 and AVX-512 CPUs all three come from conv_winograd.h (odd sizes with partial
    # tiles, uneven and no padding; one, two, three and six vectors of outputs; ragged blocks of
    # input channels in the kernel gradient's register tiles; a batch of pieces of unequal size).
    ((3, 9, 7, 32), (3, 3, 32, 48), (1, 1), ((0, 2), (2, 1)), (1, 1)),
    ((2, 6, 5, 32), (3, 3, 32, 16), (1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((3, 7, 6, 48), (3, 3, 48, 96), (1, 1), ((1, 1), (1, 1)), (1, 1)),
])
def test_conv2d_matches_lax_values_and_gradients(x_shape, k_shape, strides, padding, dilation):
  x = jax.random.normal(jax.random.key(0), x_shape)
  k = jax.random.normal(jax.random.key(1), k_shape)

  def loss(f, x, k):
    y = f(x, k, strides, padding, dilation)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size), y

  def ref(x, k, s, p, d):
    return lax.conv_general_dilated(x, k, s, p, rhs_dilation=d,
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  got = jax.jit(jax.value_and_grad(lambda x, k: loss(ops.conv2d, x, k), (0, 1), has_aux=True))
  want = jax.value_and_grad(lambda x, k: loss(ref, x, k), (0, 1), has_aux=True)
  _close(got(x, k), want(x, k))
  assert 'CnnJaxConv2dBackwardWeights' in _targets(got, x, k)


def test_flax_conv_layers_reach_the_kernel_with_same_and_valid_padding():
  x = jax.random.normal(jax.random.key(0), (3, 10, 10, 4))
  for padding in ('SAME', 'VALID', 1, ((2, 1), (0, 3))):
    for strides, dilation in (((1, 1), 1), ((2, 2), 1), ((1, 1), 2)):
      layer = Conv(6, (3, 3), strides=strides, padding=padding, kernel_dilation=dilation)
      ref = nn.Conv(6, (3, 3), strides=strides, padding=padding, kernel_dilation=dilation).apply
      params = layer.init(jax.random.key(1), x)
      assert 'CnnJaxConv2dForward' in _targets(layer.apply, params, x), (padding, strides)
      _close(jax.jit(layer.apply)(params, x), ref(params, x))


def test_convolutions_the_kernel_does_not_take_stay_with_xla():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  grouped = Conv(4, (3, 3), feature_group_count=2)
  transposed = nn.ConvTranspose(4, (2, 2), strides=(2, 2))
  float16 = Conv(4, (3, 3), dtype=jnp.float16)
  for layer, inputs in ((grouped, x), (transposed, x), (float16, x)):
    params = layer.init(jax.random.key(1), inputs)
    assert 'CnnJax' not in _targets(layer.apply, params, inputs)


def test_bfloat16_convolutions_reach_the_kernel_only_where_the_cpu_has_bfloat16():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  layer = Conv(4, (3, 3), dtype=jnp.bfloat16)
  params = layer.init(jax.random.key(1), x)
  on_kernel = 'CnnJaxConv2dForward' in _targets(layer.apply, params, x)
  assert on_kernel == precision.native_bfloat16()
  with mock.patch.object(precision, 'native_bfloat16', lambda: False):
    assert 'CnnJax' not in _targets(layer.apply, params, x)


@pytest.mark.skipif(not precision.native_bfloat16(), reason='no native bfloat16 on this CPU')
@pytest.mark.parametrize('x_shape,k_shape,strides,padding', [
    ((4, 9, 11, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1))),  # ResNet's 3x3
    ((5, 9, 11, 5), (3, 3, 5, 8), (2, 2), ((1, 1), (1, 1))),  # strided, odd batch
    ((3, 8, 8, 6), (1, 1, 6, 10), (2, 2), ((0, 0), (0, 0))),  # 1x1 projection
])
def test_bfloat16_conv2d_matches_lax_on_the_rounded_inputs(x_shape, k_shape, strides, padding):
  """bfloat16 activations and kernel: the kernel's values and gradients against float32 XLA on
  the same (rounded) inputs, to bfloat16's precision (8 bits: outputs and gradients are rounded
  once; products are summed in float32)."""
  x = jax.random.normal(jax.random.key(0), x_shape).astype(jnp.bfloat16)
  k = jax.random.normal(jax.random.key(1), k_shape).astype(jnp.bfloat16)
  weights = jax.random.normal(jax.random.key(2), (1,) + x_shape[1:3] + k_shape[-1:])

  def loss(f, x, k):
    y = f(x, k, strides, padding, (1, 1))
    y32 = y.astype(jnp.float32)
    return jnp.sum(y32 * weights[:, :y.shape[1], :y.shape[2]]), y32

  def ref(x, k, s, p, d):
    return lax.conv_general_dilated(x.astype(jnp.float32), k.astype(jnp.float32), s, p,
                                    rhs_dilation=d, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  got = jax.jit(jax.value_and_grad(lambda x, k: loss(ops.conv2d, x, k), (0, 1), has_aux=True))
  want = jax.value_and_grad(lambda x, k: loss(ref, x, k), (0, 1), has_aux=True)
  assert {'CnnJaxConv2dForward', 'CnnJaxConv2dBackwardData',
          'CnnJaxConv2dBackwardWeights'} <= set(_targets(got, x, k).split())
  (_, y), grads = got(x, k)
  (_, y_ref), grads_ref = want(x, k)
  assert y.dtype == jnp.float32 and all(g.dtype == jnp.bfloat16 for g in grads)
  _close((y, [g.astype(jnp.float32) for g in grads]), (y_ref, grads_ref), rtol=2e-2, atol=1e-2)


@pytest.mark.skipif(not precision.native_bfloat16(), reason='no native bfloat16 on this CPU')
@pytest.mark.parametrize('x_shape,k_shape,padding,dilation', [
    ((5, 9, 11, 16), (3, 3, 16, 16), ((1, 1), (1, 1)), (1, 1)),  # ResNet's 3x3, odd batch
    ((3, 8, 7, 12), (3, 3, 12, 32), ((2, 0), (1, 2)), (2, 2)),  # dilated, uneven padding
    ((4, 6, 5, 64), (3, 3, 64, 48), ((1, 1), (1, 1)), (1, 1)),  # 32 + 16 output channels
    ((3, 5, 5, 20), (1, 1, 20, 16), ((0, 0), (0, 0)), (1, 1)),  # 1x1
    ((2, 7, 9, 6), (3, 3, 6, 16), ((1, 1), (1, 1)), (1, 1)),  # the fewest input channels
    ((3, 64, 40, 64), (3, 3, 64, 16), ((1, 1), (1, 1)), (1, 1)),  # images split in row blocks
])
def test_bfloat16_kernel_gradient_is_xlas_float32_gradient_rounded_once(x_shape, k_shape, padding,
                                                                        dilation):
  """The kernel gradient of bfloat16 activations, direct (conv_kernel_gradient_bf16.h, where the
  CPU has it) and oneDNN's: products summed in float32 and rounded once to bfloat16, so within
  half a bfloat16 step (2^-8 relative) of XLA's float32 gradient of the same rounded inputs."""
  x = jax.random.normal(jax.random.key(0), x_shape).astype(jnp.bfloat16)
  k = jax.random.normal(jax.random.key(1), k_shape).astype(jnp.bfloat16)

  def ref(k):
    return lax.conv_general_dilated(x.astype(jnp.float32), k, (1, 1), padding,
                                    rhs_dilation=dilation, dimension_numbers=ops.NHWC)

  y, vjp = jax.vjp(ref, k.astype(jnp.float32))
  dy = jax.random.normal(jax.random.key(2), y.shape).astype(jnp.bfloat16)
  want = np.asarray(vjp(dy.astype(jnp.float32))[0])
  for direct in (True, False):
    conv = lambda k, d=direct: ops.conv2d(x, k, (1, 1), padding, dilation,
                                          direct_kernel_gradient=d)
    got = jax.jit(lambda k, dy, c=conv: jax.vjp(c, k)[1](dy)[0])(k, dy)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, rtol=2 ** -8,
                               atol=1e-3)


@pytest.mark.parametrize('shape', [(8, 5, 7, 12), (3, 1), (2, 40, 40, 3), (1100, 1)])
@pytest.mark.parametrize('relu', [False, True])
def test_batch_norm_matches_xla_values_and_gradients(shape, relu):
  x = jax.random.normal(jax.random.key(0), shape) * 3 + 5  # a mean away from 0
  scale = jax.random.normal(jax.random.key(1), shape[-1:])
  bias = jax.random.normal(jax.random.key(2), shape[-1:])
  weights = jax.random.normal(jax.random.key(3), shape)

  def loss(f, x, scale, bias):  # the statistics' own cotangents are exercised too
    y, mean, var = f(x, scale, bias)
    return jnp.sum(jnp.sin(y) * weights) + jnp.sum(mean ** 2) + jnp.sum(jnp.sqrt(var)), y

  kernel = lambda x, s, b: ops.batch_norm_train(x, s, b, 1e-5, relu)
  xla = lambda x, s, b: ops._batch_norm_xla(x, s, b, epsilon=1e-5, relu=relu)  # pylint: disable=protected-access
  got = jax.jit(jax.value_and_grad(lambda *a: loss(kernel, *a), (0, 1, 2), has_aux=True))
  want = jax.jit(jax.value_and_grad(lambda *a: loss(xla, *a), (0, 1, 2), has_aux=True))
  _close(got(x, scale, bias), want(x, scale, bias), rtol=1e-4, atol=1e-4)
  assert 'CnnJaxBatchNormBackward' in _targets(got, x, scale, bias)


@pytest.mark.skipif(not precision.native_bfloat16(), reason='no native bfloat16 on this CPU')
@pytest.mark.parametrize('relu,with_residual', [(False, False), (True, False), (True, True)])
def test_bfloat16_batch_norm_matches_xla_values_and_gradients(relu, with_residual):
  """bfloat16 activations (statistics, scale and bias float32): the kernel against XLA's path on
  the same inputs; both compute in float32 and round the activations and their gradients once."""
  keys = jax.random.split(jax.random.key(0), 5)
  shape = (6, 5, 7, 16)
  x = (jax.random.normal(keys[0], shape) * 2 + 1).astype(jnp.bfloat16)
  scale, bias = jax.random.normal(keys[1], shape[-1:]), jax.random.normal(keys[2], shape[-1:])
  residual = jax.random.normal(keys[3], shape).astype(jnp.bfloat16) if with_residual else None
  weights = jax.random.normal(keys[4], shape)

  def loss(kernel, x, scale, bias, residual):
    with (contextlib.nullcontext() if kernel else _xla_only()):
      y, mean, var = ops.batch_norm_train(x, scale, bias, 1e-5, relu, residual=residual)
    return jnp.sum(y.astype(jnp.float32) * weights) + jnp.sum(mean ** 2), y

  args = (x, scale, bias, residual)
  argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
  got = jax.jit(jax.value_and_grad(lambda *a: loss(True, *a), argnums, has_aux=True))
  want = jax.jit(jax.value_and_grad(lambda *a: loss(False, *a), argnums, has_aux=True))
  assert 'CnnJaxBatchNorm' in _targets(got, *args)
  (_, y), grads = got(*args)
  (_, y_ref), grads_ref = want(*args)
  assert y.dtype == jnp.bfloat16 and grads[0].dtype == jnp.bfloat16
  as32 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float32), tree)
  _close(as32((y, grads)), as32((y_ref, grads_ref)), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize('shape', [(6, 5, 7, 12), (700, 3)])
def test_batch_norm_add_relu_matches_xla_values_and_gradients(shape):
  """The end of a ResNet block, max(0, bn(x) + shortcut): gradients of x, scale, bias and the
  shortcut."""
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], shape) * 2 + 1
  scale, bias = jax.random.normal(keys[1], shape[-1:]), jax.random.normal(keys[2], shape[-1:])
  residual = jax.random.normal(keys[3], shape)
  weights = jax.random.normal(keys[4], shape)

  def loss(f, *args):
    y, mean, var = f(*args)
    return jnp.sum(jnp.sin(y) * weights) + jnp.sum(mean ** 2) + jnp.sum(jnp.sqrt(var)), y

  kernel = lambda x, s, b, r: ops.batch_norm_train(x, s, b, 1e-5, True, residual=r)
  xla = lambda x, s, b, r: ops._batch_norm_add_relu_xla(x, s, b, r, epsilon=1e-5)  # pylint: disable=protected-access
  got = jax.jit(jax.value_and_grad(lambda *a: loss(kernel, *a), (0, 1, 2, 3), has_aux=True))
  want = jax.jit(jax.value_and_grad(lambda *a: loss(xla, *a), (0, 1, 2, 3), has_aux=True))
  _close(got(x, scale, bias, residual), want(x, scale, bias, residual), rtol=1e-4, atol=1e-4)
  assert 'CnnJaxBatchNormAddReluBackward' in _targets(got, x, scale, bias, residual)
  with pytest.raises(ValueError, match='relu=True'):
    ops.batch_norm_train(x, scale, bias, 1e-5, False, residual=residual)


@pytest.mark.parametrize('kernel', [True, False])
def test_batch_norm_statistics_are_accurate_far_from_zero(kernel):
  """Shifted sums: the variance of data far from zero, which E[x^2] - E[x]^2 in float32 loses
  entirely (0 to 19 times the true 0.01 here, before both implementations shifted)."""
  x = jax.random.normal(jax.random.key(0), (64, 32, 32, 4), jnp.float32) * 0.1 + 1000
  fn = ops.batch_norm_train if kernel else functools.partial(ops._batch_norm_xla, relu=False)  # pylint: disable=protected-access
  _, mean, var = jax.jit(lambda x: fn(x, jnp.ones(4), jnp.zeros(4), epsilon=1e-5))(x)
  x64 = np.asarray(x, np.float64).reshape(-1, 4)
  np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-6)
  np.testing.assert_allclose(var, x64.var(0), rtol=1e-3 if kernel else 2e-2)


def test_kernels_are_deterministic():
  x = jax.random.normal(jax.random.key(0), (37, 16, 16, 8))
  k = jax.random.normal(jax.random.key(1), (3, 3, 8, 16))

  @jax.jit
  def grads(x, k):
    def f(x, k):
      y = ops.conv2d(x, k, (1, 1), ((1, 1), (1, 1)))
      y, _, _ = ops.batch_norm_train(y, jnp.ones(16), jnp.zeros(16), 1e-5, True)
      return jnp.sum(y ** 2)
    return jax.grad(f, (0, 1))(x, k)

  first = grads(x, k)
  for _ in range(3):
    for a, b in zip(first, grads(x, k)):
      np.testing.assert_array_equal(a, b)


def test_vmap_maps_one_call_per_element():
  x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 4))
  k = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  f = lambda x: ops.batch_norm_train(ops.conv2d(x, k, (1, 1), ((1, 1), (1, 1))),
                                     jnp.ones(5), jnp.zeros(5), 1e-5, True)[0]
  got = jax.jit(jax.vmap(f))(x)
  with _xla_only():
    want = jax.jit(jax.vmap(f))(x)
  _close(got, want)


def test_resnet_training_step_gradients_match_xla():
  """The CPU layer set's training step against the stock set's (JAX's own ops)."""
  model = models.create('resnet8', num_classes=10)
  x = jax.random.normal(jax.random.key(0), (6, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)

  def loss(params, layers):
    with layer_set.using(layers):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  cpu, stock = (functools.partial(loss, layers=cpu_layer_set.cpu_layers()),
                functools.partial(loss, layers=layer_set.STOCK))
  got = jax.jit(jax.value_and_grad(cpu))(variables['params'])
  want = jax.jit(jax.value_and_grad(stock))(variables['params'])
  assert 'CnnJax' not in _targets(jax.value_and_grad(stock), variables['params'])
  assert 'CnnJaxConv2dForward' in _targets(jax.value_and_grad(cpu), variables['params'])
  _close(got, want, rtol=1e-4, atol=1e-5)


def test_programs_for_other_platforms_never_contain_a_cpu_kernel():
  x = jnp.ones((2, 8, 8, 3))
  k = jnp.ones((3, 3, 3, 4))

  def f(x, k):
    y = ops.conv2d(x, k, (1, 1), ((1, 1), (1, 1)))
    return ops.batch_norm_train(y, jnp.ones(4), jnp.zeros(4), 1e-5, True)[0]

  def lowered(platform):
    return jax.jit(f).trace(x, k).lower(lowering_platforms=(platform,)).as_text()

  assert 'CnnJaxConv2dForward' in lowered('cpu')
  for platform in ('cuda', 'tpu'):
    text = lowered(platform)
    assert 'CnnJax' not in text and 'convolution' in text


@pytest.mark.parametrize('value,expected', [
    ('1', {'conv2d', 'batch_norm'}), ('0', set()), ('batch_norm', {'batch_norm'}),
    (' conv2d , batch_norm ', {'conv2d', 'batch_norm'})])
def test_environment_variable_picks_kernels(value, expected, monkeypatch):
  monkeypatch.setenv(library.ENV, value)
  assert library.requested() == expected


def test_kernel_gradient_choice_reaches_the_layer_set_and_both_paths_match_lax(monkeypatch):
  from cnn_jax import config_base  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('CNN_JAX_CONV_KERNEL_GRADIENT', 'onednn')
  layers = cpu_layer_set.for_config(config_base.base_config())
  assert layers is cpu_layer_set.cpu_layers(frozenset(library.KERNELS), 'onednn')
  assert 'oneDNN kernel gradient' in layers.name
  monkeypatch.setenv('CNN_JAX_CONV_KERNEL_GRADIENT', 'oneDNN')
  with pytest.raises(ValueError, match=r"CNN_JAX_CONV_KERNEL_GRADIENT='oneDNN'.*'direct', 'onednn'"):
    cpu_layer_set.for_config(config_base.base_config())
  x = jax.random.normal(jax.random.key(0), (4, 9, 9, 16))
  k = jax.random.normal(jax.random.key(1), (3, 3, 16, 24))
  ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                              dimension_numbers=ops.NHWC)
  want = jax.grad(lambda k: jnp.sum(jnp.sin(ref(x, k))))(k)
  for direct in (True, False):
    f = lambda k, d=direct: jnp.sum(jnp.sin(ops.conv2d(x, k, (1, 1), ((1, 1), (1, 1)),
                                                      direct_kernel_gradient=d)))
    _close(jax.jit(jax.grad(f))(k), want, rtol=1e-4, atol=1e-5)


def test_winograd_choice_reaches_the_kernel_and_both_paths_match_lax(monkeypatch):
  monkeypatch.setenv('CNN_JAX_CONV_WINOGRAD', '0')
  from cnn_jax import config_base  # pylint: disable=g-import-not-at-top
  layers = cpu_layer_set.for_config(config_base.base_config())
  assert layers is cpu_layer_set.cpu_layers(frozenset(library.KERNELS), 'direct', False)
  assert 'no Winograd' in layers.name
  x = jax.random.normal(jax.random.key(0), (5, 10, 9, 32))
  k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
  pads = ((1, 1), (1, 1))
  ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=ops.NHWC)
  ct = jax.random.normal(jax.random.key(2), x.shape[:3] + (32,))
  want = jax.vjp(ref, x, k)
  want = (want[0], *want[1](ct))
  got = {}
  for winograd in (True, False):
    f = lambda x, k, w=winograd: ops.conv2d(x, k, (1, 1), pads, winograd=w)
    got[winograd] = jax.jit(lambda x, k, f=f: (lambda y, vjp: (y, *vjp(ct)))(*jax.vjp(f, x, k)))(
        x, k)
    _close(got[winograd], want)
  flags = set(pathlib.Path('/proc/cpuinfo').read_text().split()) if os.path.exists(
      '/proc/cpuinfo') else set()
  if library.load('conv2d') and ('avx512f' in flags or {'avx2', 'fma'} <= flags):
    # Winograd is built here: its rounding differs from oneDNN's (output, input and kernel
    # gradient).
    for ours, theirs in zip(got[True], got[False]):
      assert not np.array_equal(ours, theirs)


def test_environment_variable_names_unknown_kernels(monkeypatch):
  monkeypatch.setenv(library.ENV, 'conv2d,batchnorm')
  with pytest.raises(ValueError, match=r"unknown kernels \['batchnorm'\].*'batch_norm'"):
    library.requested()


def test_a_kernel_that_cannot_be_built_warns_once_and_training_uses_xla(tmp_path):
  """No compiler: a warning naming the cause and the fix, XLA's results, and no kernel."""
  script = textwrap.dedent('''
      import json, warnings
      import jax, jax.numpy as jnp
      from cnn_jax.kernels import library, ops
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        x = jnp.arange(2 * 6 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 6, 3) / 100
        k = jnp.ones((3, 3, 3, 2))
        f = jax.jit(lambda x: ops.conv2d(x, k, (1, 1), ((1, 1), (1, 1))).sum())
        f(x); f(x * 2)
        ref = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum()
      print(json.dumps({'warnings': [str(w.message) for w in caught
                                     if 'unavailable' in str(w.message)],
                        'status': library.status(), 'same': bool(jnp.allclose(f(x), ref))}))
  ''')
  env = {**os.environ, 'CXX': str(tmp_path / 'no-such-compiler'),
         'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache'), library.ENV: '1'}
  out = subprocess.run([sys.executable, '-c', script], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert len(result['warnings']) == 1
  assert 'no C++ compiler found' in result['warnings'][0]
  assert 'CNN_JAX_CPU_KERNELS=0' in result['warnings'][0]
  assert result['status']['conv2d'].startswith('unavailable: no C++ compiler')
  assert result['same']


def test_builds_are_cached_by_content(tmp_path, monkeypatch):
  monkeypatch.setenv('CNN_JAX_CACHE_DIR', str(tmp_path))
  first = library.build('batch_norm')
  assert first.parent == tmp_path / 'kernels' and first.exists()
  mtime = first.stat().st_mtime_ns
  assert library.build('batch_norm') == first and first.stat().st_mtime_ns == mtime
  assert not list((tmp_path / 'kernels').glob('.batch_norm-*'))  # no temporary left behind


def test_command_line_builds_and_reports():
  out = subprocess.run([sys.executable, '-m', 'cnn_jax.kernels'], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, library.ENV: 'batch_norm'})
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == ['conv2d: off (CNN_JAX_CPU_KERNELS)', 'batch_norm: on']


def test_package_exports():
  assert kernels.ENV == 'CNN_JAX_CPU_KERNELS' and set(kernels.KERNELS) == {'conv2d', 'batch_norm'}


def test_config_chooses_the_layer_set():
  from cnn_jax import config_base  # pylint: disable=g-import-not-at-top
  config = config_base.base_config()
  for value, want in (('off', layer_set.STOCK),
                      ('auto', cpu_layer_set.cpu_layers(frozenset({'conv2d', 'batch_norm'}))),
                      ('on', cpu_layer_set.cpu_layers(frozenset({'conv2d', 'batch_norm'}))),
                      (' batch_norm', cpu_layer_set.cpu_layers(frozenset({'batch_norm'})))):
    config.cpu_kernels = value
    assert cpu_layer_set.for_config(config) is want, value
  config.cpu_kernels = 'yes'
  with pytest.raises(config_base.ConfigError, match=r"cpu_kernels='yes'.*'auto', 'on', 'off'"):
    config_base.validate(config)
  with pytest.raises(config_base.ConfigError, match=r"batchnorm"):
    config_base.check_cpu_kernels('conv2d,batchnorm')


def test_environment_variable_sets_the_default_of_the_config_key(monkeypatch):
  from cnn_jax import config_base  # pylint: disable=g-import-not-at-top
  for value, want in (('0', 'off'), ('1', 'auto'), ('conv2d', 'conv2d')):
    monkeypatch.setenv(library.ENV, value)
    assert config_base.base_config().cpu_kernels == want
