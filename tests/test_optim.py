"""Schedules and optimisers against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import config_base, optim


def _config(**kw):
  c = config_base.base_config()
  for k, v in kw.items():
    c[k] = v
  config_base.validate(c)
  return c


def test_constant_schedule():
  fn = optim.create_learning_rate_fn(_config(learning_rate=0.1), 100, 1000)
  assert [float(fn(s)) for s in (0, 500, 999)] == pytest.approx([0.1, 0.1, 0.1])


def test_step_schedule_epochs():
  # He et al. style: x0.1 at epochs 2 and 3, 10 steps per epoch.
  fn = optim.create_learning_rate_fn(
      _config(learning_rate=0.1, lr_schedule='step', lr_boundaries=(2, 3)), 10, 50)
  got = [float(fn(s)) for s in (0, 19, 20, 29, 30, 49)]
  assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_step_schedule_in_steps_with_warmup():
  c = _config(learning_rate=1.0, lr_schedule='step', schedule_unit='steps', lr_boundaries=(6,),
              warmup=4)
  fn = optim.create_learning_rate_fn(c, 10, 20)
  got = [float(fn(s)) for s in range(8)]
  # linear 0 -> 1 over 4 steps, then 1 until absolute step 6, then 0.1
  assert got == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.1, 0.1])


def test_cosine_with_warmup():
  c = _config(learning_rate=0.4, lr_schedule='cosine', warmup=1, lr_min_ratio=0.0)
  fn = optim.create_learning_rate_fn(c, 10, 110)  # 10 warmup steps, 100 cosine steps
  assert float(fn(5)) == pytest.approx(0.2)
  assert float(fn(10)) == pytest.approx(0.4)
  for s in (35, 60, 85):
    expected = 0.4 * 0.5 * (1 + np.cos(np.pi * (s - 10) / 100))
    assert float(fn(s)) == pytest.approx(expected, rel=1e-5)
  assert float(fn(110)) == pytest.approx(0.0, abs=1e-7)


def _run(tx, params, grads):
  state = tx.init(params)
  out = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    out.append(float(params['w']))
  return out


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_momentum_l2_by_hand(nesterov):
  lr, mu, wd = 0.1, 0.9, 0.01
  c = _config(learning_rate=lr, momentum=mu, nesterov=nesterov, weight_decay=wd)
  tx = optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1, 10))
  grads = [{'w': jnp.float32(g)} for g in (1.0, -2.0, 0.5)]
  got = _run(tx, {'w': jnp.float32(3.0)}, grads)
  # PyTorch SGD: d = g + wd*w; b = mu*b + d; step = d + mu*b (Nesterov) or b; w -= lr*step
  w, b, expected = 3.0, 0.0, []
  for g in (1.0, -2.0, 0.5):
    d = g + wd * w
    b = mu * b + d
    w -= lr * ((d + mu * b) if nesterov else b)
    expected.append(w)
  assert got == pytest.approx(expected, rel=1e-6)


def test_sgd_decoupled_weight_decay_by_hand():
  lr, mu, wd = 0.1, 0.9, 0.01
  c = _config(learning_rate=lr, momentum=mu, weight_decay=wd, decoupled_weight_decay=True)
  tx = optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1, 10))
  got = _run(tx, {'w': jnp.float32(3.0)}, [{'w': jnp.float32(g)} for g in (1.0, -2.0)])
  w, b, expected = 3.0, 0.0, []
  for g in (1.0, -2.0):
    b = mu * b + g  # momentum on the raw gradient only
    w -= lr * (b + wd * w)
    expected.append(w)
  assert got == pytest.approx(expected, rel=1e-6)


def test_weight_decay_kernels_only_skips_biases():
  c = _config(learning_rate=1.0, weight_decay=0.5, weight_decay_kernels_only=True)
  tx = optim.create_optimizer(c, optim.create_learning_rate_fn(c, 1, 10))
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['bias'], 0.0)


def test_plateau_follows_pytorch_rule():
  kw = dict(patience=2, factor=0.1, min_scale=1e-3, cooldown=1, rtol=1e-4)
  s = optim.PlateauState.create()
  scales = []
  for v in (1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.4):
    s = optim.plateau_update(s, v, **kw)
    scales.append(round(float(s.scale), 6))
  # bad rounds after 0.5: 1, 2, 3 -> decay (> patience); cooldown 1 round; then 1, 2, 3 -> decay;
  # 0.4 improves (no decay), the next 0.4 is a first bad round.
  assert scales == [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01]
  s = optim.PlateauState.create()
  for _ in range(20):
    s = optim.plateau_update(s, 1.0, **kw)
  assert float(s.scale) == pytest.approx(1e-3)  # floored at min_scale
