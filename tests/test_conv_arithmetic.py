"""cnn_jax.conv_arithmetic against real convolutions (claims C1–C10, C18)."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from cnn_jax import conv_arithmetic as ca
from cnn_jax import models
from experiments.param_table import C5_CASES, exercise_counts, module_params


def lax_out(w, k, s=1, p=0, d=1):
  """Spatial output size of a real lax convolution (abstract evaluation: same shape rule)."""
  pad = p if isinstance(p, str) else [p if isinstance(p, tuple) else (p, p)] * 2
  x = jax.ShapeDtypeStruct((1, 1, w, w), jnp.float32)
  kern = jax.ShapeDtypeStruct((1, 1, k, k), jnp.float32)
  return jax.eval_shape(lambda a, b: jax.lax.conv_general_dilated(
      a, b, (s, s), pad, rhs_dilation=(d, d)), x, kern).shape[2]


def xcorr_numpy(x, k):
  """VALID cross-correlation by explicit loops (C3)."""
  kh, kw = k.shape
  out = np.zeros((x.shape[0] - kh + 1, x.shape[1] - kw + 1))
  for i in range(out.shape[0]):
    for j in range(out.shape[1]):
      out[i, j] = np.sum(x[i:i + kh, j:j + kw] * k)
  return out


# ---------------------------------------------------------------------------------------------
# C4, C5: output sizes
# ---------------------------------------------------------------------------------------------

def test_output_size_grid_matches_lax():
  for w, k, p, s, d in itertools.product(range(1, 12), range(1, 5), range(3), range(1, 4), (1, 2)):
    if w + 2 * p < ca.effective_kernel(k, d):
      with pytest.raises(ValueError):
        ca.conv_output_size(w, k, s, p, d)
      continue
    assert ca.conv_output_size(w, k, s, p, d) == lax_out(w, k, s, p, d), (w, k, p, s, d)


def test_same_and_valid_strings_match_lax():
  for w, k, s, d in itertools.product(range(1, 14), range(1, 6), range(1, 4), (1, 2)):
    assert ca.conv_output_size(w, k, s, 'SAME', d) == lax_out(w, k, s, 'SAME', d) == -(-w // s)
    assert ca.same_padding(w, k, s, d) == tuple(
        jax.lax.padtype_to_pads((w,), (ca.effective_kernel(k, d),), (s,), 'SAME')[0])
    if w >= ca.effective_kernel(k, d):
      assert ca.conv_output_size(w, k, s, 'valid', d) == lax_out(w, k, s, 'VALID', d)


def test_same_padding_is_k_minus_1_over_2_not_lecture_k_plus_1_over_2():
  for k in (1, 3, 5, 7, 9):
    p = ca.same_padding_odd(k)
    assert p == (k - 1) // 2 == ca.same_padding(32, k)[0] == ca.same_padding(32, k)[1]
    assert lax_out(32, k, p=p) == 32
    lecture = ca.lecture_same_padding(k)
    assert lax_out(32, k, p=int(lecture)) == 34  # note 000's (K+1)/2 grows the map by 2
  with pytest.raises(ValueError):
    ca.same_padding_odd(4)


@pytest.mark.parametrize('name,w,k,p,s,d,expected', C5_CASES)
def test_c5_dumoulin_visin_cases(name, w, k, p, s, d, expected):
  x = jnp.arange(w * w, dtype=jnp.float32).reshape(1, 1, w, w)
  y = jax.lax.conv_general_dilated(x, jnp.ones((1, 1, k, k)), (s, s), [(p, p)] * 2, rhs_dilation=(d, d))
  assert y.shape[2:] == (expected, expected)
  assert ca.conv_output_size(w, k, s, p, d) == expected


def test_c4_six_5x5x3_filters_on_32x32x3():
  y = nn.Conv(6, (5, 5), padding='VALID').init_with_output(jax.random.key(0), jnp.ones((1, 32, 32, 3)))[0]
  assert y.shape == (1, 28, 28, 6)
  assert ca.conv_output_size(32, 5) == 28


def test_transposed_conv_output_size():
  for w, k, s, p, op, d in itertools.product(range(1, 7), range(1, 5), range(1, 4), range(2), range(2),
                                             (1, 2)):
    if op >= s or p > d * (k - 1):
      continue
    # A transposed conv is a conv on the s-dilated input padded by d(K−1) − P (+ output_padding).
    q = d * (k - 1) - p
    x = jax.ShapeDtypeStruct((1, 1, w), jnp.float32)
    kern = jax.ShapeDtypeStruct((1, 1, k), jnp.float32)
    got = jax.eval_shape(lambda a, b: jax.lax.conv_general_dilated(
        a, b, (1,), [(q, q + op)], lhs_dilation=(s,), rhs_dilation=(d,)), x, kern).shape[2]
    assert ca.transposed_conv_output_size(w, k, s, p, op, d) == got, (w, k, s, p, op, d)
    if op == 0:
      o = ca.conv_output_size(got, k, s, p, d)  # and the conv of matching geometry maps back
      assert o == w
  for w, k, s in itertools.product((3, 5, 8), (2, 3, 4), (1, 2)):
    m = nn.ConvTranspose(1, (k, k), strides=(s, s), padding='VALID')
    y = jax.eval_shape(lambda v: m.init_with_output(jax.random.key(0), v)[0],
                       jax.ShapeDtypeStruct((1, w, w, 1), jnp.float32))
    assert y.shape[1] == ca.transposed_conv_output_size(w, k, s)


# ---------------------------------------------------------------------------------------------
# C6: pooling
# ---------------------------------------------------------------------------------------------

class Pool(nn.Module):
  kind: str

  @nn.compact
  def __call__(self, x):
    pool = nn.max_pool if self.kind == 'max' else nn.avg_pool
    return pool(x, (2, 2), strides=(2, 2))


@pytest.mark.parametrize('kind', ['max', 'avg'])
def test_c6_pooling_halves_and_has_no_params(kind):
  for h, w in [(28, 28), (10, 14), (7, 9)]:
    y, variables = Pool(kind).init_with_output(jax.random.key(0), jnp.ones((2, h, w, 3)))
    assert y.shape == (2, h // 2, w // 2, 3)
    assert (ca.conv_output_size(h, 2, 2), ca.conv_output_size(w, 2, 2)) == (h // 2, w // 2)
    assert ca.count_params(variables) == 0


# ---------------------------------------------------------------------------------------------
# C7, C18: receptive field
# ---------------------------------------------------------------------------------------------

def test_c7_three_3x3_convs_see_7x7_measured_by_gradient():
  assert ca.receptive_field([(3, 1)] * 3) == 7
  stack = nn.Sequential([nn.Conv(1, (3, 3), padding='VALID') for _ in range(3)])
  x = jnp.ones((1, 15, 15, 1))
  variables = stack.init(jax.random.key(0), x)
  variables = jax.tree_util.tree_map(jnp.ones_like, variables)  # positive weights: no cancellation
  g = jax.grad(lambda v: stack.apply(variables, v)[0, 4, 4, 0])(x)[0, :, :, 0]
  rows, cols = np.nonzero(np.asarray(g))
  assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (7, 7)
  assert ca.measured_receptive_field([(3, 1)] * 3) == (7, 7)


@pytest.mark.parametrize('layers', [
    [(7, 1)], [(3, 2), (3, 1)], [(3, 2), (3, 1, 2), (3, 1)], [(5, 1), (2, 2), (5, 1), (2, 2), (5, 1)],
    [(11, 4), (3, 2), (5, 1), (3, 2)]])
def test_receptive_field_formula_matches_gradient_support(layers):
  r = ca.receptive_field(layers)
  assert ca.measured_receptive_field(layers, in_size=max(64, 3 * r)) == (r, r)


def test_c18_three_3x3_against_one_7x7():
  for c in (8, 64):
    one = module_params(nn.Conv(c, (7, 7), use_bias=False), (9, 9, c))
    three = module_params(nn.Sequential([nn.Conv(c, (3, 3), use_bias=False) for _ in range(3)]), (9, 9, c))
    assert one == ca.conv_params(c, c, 7, bias=False) == 49 * c * c
    assert three == 3 * ca.conv_params(c, c, 3, bias=False) == 27 * c * c
    assert 1 - three / one == pytest.approx(22 / 49) and round(100 * (1 - three / one), 1) == 44.9


# ---------------------------------------------------------------------------------------------
# C1, C2: parameter counts
# ---------------------------------------------------------------------------------------------

def test_c1_dense_from_256x256_to_1000():
  assert ca.dense_params(256 * 256, 1000, bias=False) == 65_536_000
  assert module_params(nn.Dense(1000, use_bias=False), (256 * 256,)) == 65_536_000
  assert module_params(nn.Dense(1000), (256 * 256,)) == ca.dense_params(256 * 256, 1000) == 65_537_000


def test_c2_1d_conv_against_dense():
  k, d_out = 4, 9
  d_in = 12
  assert ca.conv1d_output_size(d_in, k) == d_out
  x = jax.random.normal(jax.random.key(0), (1, d_in, 1))
  conv = nn.Conv(1, (k,), padding='VALID')
  y, variables = conv.init_with_output(jax.random.key(1), x)
  assert y.shape == (1, d_out, 1)
  assert ca.count_params(variables) == ca.conv1d_params(k) == k + 1
  w, b = np.asarray(variables['params']['kernel'][:, 0, 0]), float(variables['params']['bias'][0])
  xs = np.asarray(x[0, :, 0])
  by_hand = [sum(xs[i + m] * w[m] for m in range(k)) + b for i in range(d_out)]  # y_i = Σ x_{i+m−1} w_m
  np.testing.assert_allclose(np.asarray(y[0, :, 0]), by_hand, rtol=1e-5, atol=1e-6)
  assert module_params(nn.Dense(d_out), (d_in,)) == ca.fc1d_params(d_in, d_out) == d_in * d_out + d_out == 117
  assert module_params(nn.Conv(5, (k,)), (d_in, 3)) == ca.conv1d_params(k, 3, 5) == 3 * 5 * k + 5


@pytest.mark.parametrize('c_in,c_out,k,bias,groups', [
    (3, 6, 5, True, 1), (16, 32, (3, 1), False, 1), (8, 8, 3, True, 8), (12, 6, 3, False, 3)])
def test_conv_params_match_nn_conv(c_in, c_out, k, bias, groups):
  ks = (k, k) if isinstance(k, int) else k
  conv = nn.Conv(c_out, ks, use_bias=bias, feature_group_count=groups)
  assert module_params(conv, (7, 7, c_in)) == ca.conv_params(c_in, c_out, k, bias, groups)


# ---------------------------------------------------------------------------------------------
# C8: exercise 10.1
# ---------------------------------------------------------------------------------------------

def test_c8_exercise_network():
  cnn = exercise_counts()
  assert cnn['conv'] == 48 == ca.conv_params(1, 3, 4, bias=False)
  assert cnn['relus'] == 304 == 10 * 10 * 3 + 4
  assert cnn['fc'] == 300 == 5 * 5 * 3 * 4
  assert cnn['weights'] == 348


def test_c8_all_fc_twin_is_about_50k():
  twin = exercise_counts(conv_as_dense=True)
  # "≈50k" is the dense layer that replaces the 48-weight conv: 13·13 → 10·10·3, no bias.
  assert twin['fc1'] == 169 * 300 == 50_700
  assert twin['weights'] == 50_700 + 75 * 4 == 51_000  # pooling kept: FC 5·5·3 → 4 as in the CNN
  assert twin['relus'] == 304
  no_pool = exercise_counts(conv_as_dense=True, pool=False)
  assert no_pool['weights'] == 50_700 + 300 * 4 == 51_900
  for n in (twin['fc1'], twin['weights'], no_pool['weights']):
    assert abs(n - 50_000) / 50_000 < 0.04


# ---------------------------------------------------------------------------------------------
# C3, C9: convolution is cross-correlation, and a matrix product
# ---------------------------------------------------------------------------------------------

def test_c3_flax_conv_is_cross_correlation():
  rng = np.random.default_rng(0)
  x, k = rng.normal(size=(8, 9)), rng.normal(size=(3, 4))
  conv = nn.Conv(1, k.shape, padding='VALID', use_bias=False)
  y = conv.apply({'params': {'kernel': jnp.asarray(k)[:, :, None, None]}}, jnp.asarray(x)[None, :, :, None])
  y = np.asarray(y[0, :, :, 0])
  np.testing.assert_allclose(y, xcorr_numpy(x, k), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y, signal.correlate2d(x, k, mode='valid'), rtol=1e-5, atol=1e-5)
  # ... which is true convolution with the kernel flipped in both axes, and not with the kernel itself.
  np.testing.assert_allclose(y, signal.convolve2d(x, k[::-1, ::-1], mode='valid'), rtol=1e-5, atol=1e-5)
  assert not np.allclose(y, signal.convolve2d(x, k, mode='valid'), atol=1e-3)


def test_c9_three_convs_are_a_matrix_product():
  rng = np.random.default_rng(1)
  kernels = [rng.normal(size=(3, 3)).astype(np.float32) for _ in range(3)]
  x = rng.normal(size=(7, 7)).astype(np.float32)
  w1 = ca.conv_as_matrix(kernels[0], (7, 7))
  w2 = ca.conv_as_matrix(kernels[1], (5, 5))
  w3 = ca.conv_as_matrix(kernels[2], (3, 3))
  assert (w1.shape, w2.shape, w3.shape) == ((25, 49), (9, 25), (1, 9))
  stack = nn.Sequential([nn.Conv(1, (3, 3), padding='VALID', use_bias=False) for _ in range(3)])
  params = {f'layers_{i}': {'kernel': jnp.asarray(k)[:, :, None, None]} for i, k in enumerate(kernels)}
  y = stack.apply({'params': params}, jnp.asarray(x)[None, :, :, None])
  assert y.shape == (1, 1, 1, 1)
  np.testing.assert_allclose(w3 @ w2 @ w1 @ x.ravel(), np.asarray(y).ravel(), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(w1 @ x.ravel(), xcorr_numpy(x, kernels[0]).ravel(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_conv_as_matrix_multichannel(stride):
  rng = np.random.default_rng(2)
  kernel = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)  # HWIO
  x = rng.normal(size=(7, 6, 4)).astype(np.float32)
  conv = nn.Conv(5, (3, 2), strides=stride, padding='VALID', use_bias=False)
  y = conv.apply({'params': {'kernel': jnp.asarray(kernel)}}, jnp.asarray(x)[None])[0]
  mat = ca.conv_as_matrix(kernel, x.shape, stride)
  assert mat.shape == (y.size, x.size)
  np.testing.assert_allclose(mat @ x.ravel(), np.asarray(y).ravel(), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# C10: weight sharing and the gradient
# ---------------------------------------------------------------------------------------------

def test_c10_shared_weight_gradient_is_sum_over_positions():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(1, 6, 7, 2)), jnp.float32)
  conv = nn.Conv(3, (3, 3), padding='VALID', use_bias=False)
  params = conv.init(jax.random.key(0), x)['params']
  target = jnp.asarray(rng.normal(size=(1, 4, 5, 3)), jnp.float32)

  def loss_of_output(y):
    return jnp.sum((jnp.tanh(y) - target) ** 2)

  def loss(p):
    return loss_of_output(conv.apply({'params': p}, x))

  shared_grad = np.asarray(jax.grad(loss)(params)['kernel'])
  y = conv.apply({'params': params}, x)
  g = jax.grad(loss_of_output)(y)[0]  # dL/dy at every position and filter

  # Each position (i, j) applies its own copy of the kernel: y_ij = Σ patch_ij · k_ij. Its gradient
  # w.r.t. that copy, computed by autodiff per position, is dL/dy_ij ⊗ patch_ij.
  def position_output(k, i, j):
    return jnp.einsum('abc,abco->o', x[0, i:i + 3, j:j + 3, :], k)

  total = np.zeros_like(shared_grad)
  for i in range(4):
    for j in range(5):
      total += np.asarray(jax.grad(lambda k: jnp.dot(position_output(k, i, j), g[i, j]))(params['kernel']))
      assert not np.allclose(total, shared_grad) or (i, j) == (3, 4)
  np.testing.assert_allclose(total, shared_grad, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# count_flops
# ---------------------------------------------------------------------------------------------

def test_count_flops_lenet5_by_hand():
  model = models.create('lenet5', num_classes=10)
  c1 = 28 * 28 * 6 * (5 * 5 * 1)     # 117,600
  c3 = 10 * 10 * 16 * (5 * 5 * 6)    # 240,000
  c5 = 1 * 1 * 120 * (5 * 5 * 16)    # 48,000
  f6, head = 120 * 84, 84 * 10       # 10,080 + 840
  flops = ca.count_flops(model, (32, 32, 1))
  assert flops.macs == c1 + c3 + c5 + f6 + head == 416_520
  assert [(l.path, l.macs) for l in flops.layers] == [
      ('c1', c1), ('c3', c3), ('c5', c5), ('f6', f6), ('head', head)]
  variables = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 1)))
  assert ca.count_flops(model, (32, 32, 1), variables).macs == 416_520  # real variables too


class Mixed(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(8, (3, 3), strides=2, padding='SAME', name='strided')(x)           # 16→8
    x = nn.Conv(8, (3, 3), feature_group_count=4, padding='VALID', name='grouped')(x)  # 8→6
    x = nn.ConvTranspose(4, (2, 2), strides=(2, 2), name='up')(x)                  # 6→12
    x = nn.Dense(5, name='pointwise')(x)                                            # per pixel
    return nn.Dense(3, name='head')(x.reshape(x.shape[0], -1))


def test_count_flops_strided_grouped_transposed_dense():
  flops = ca.count_flops(Mixed(), (16, 16, 3))
  expected = {'strided': 8 * 8 * 8 * 9 * 3, 'grouped': 6 * 6 * 8 * 9 * (8 // 4),
              'up': 6 * 6 * 8 * 4 * 4, 'pointwise': 12 * 12 * 5 * 4, 'head': 12 * 12 * 5 * 3}
  assert {l.path: l.macs for l in flops.layers} == expected
  assert flops.macs == sum(expected.values())
  # The transposed conv's count equals output elements × C_in when stride = kernel (no overlap).
  assert expected['up'] == 12 * 12 * 4 * 8
