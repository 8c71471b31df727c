"""AlexNet's training recipe (C16): PCA colour jitter (cnn_jax.augment) against its definition
in Krizhevsky et al. 2012 §4.1, and configs/alexnet_imagenet.py (schema, optimiser update rule,
one forward/backward of the configured model at 227x227)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import augment, config_base, models, optim
from configs import alexnet_imagenet


# ---------------------------------------------------------------------------- PCA colour jitter

def correlated_images(n=64, size=8, seed=0):
  """uint8 RGB images whose pixels have a known, strongly anisotropic covariance."""
  rng = np.random.default_rng(seed)
  mix = np.array([[40.0, 5.0, 1.0], [35.0, -8.0, 2.0], [30.0, 2.0, -3.0]])
  px = 128 + rng.standard_normal((n * size * size, 3)) @ mix.T
  return np.clip(np.round(px), 0, 255).astype(np.uint8).reshape(n, size, size, 3)


def test_rgb_pca_is_the_eigendecomposition_of_the_pixel_covariance():
  images = correlated_images()
  pca = augment.rgb_pca(images, chunk=7)  # chunking must not change the sums
  px = images.reshape(-1, 3) / 255.0
  cov = np.cov(px, rowvar=False, bias=True)
  np.testing.assert_allclose(pca.mean, px.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(pca.eigvecs @ np.diag(pca.eigvals) @ pca.eigvecs.T, cov, atol=1e-12)
  np.testing.assert_allclose(pca.eigvecs.T @ pca.eigvecs, np.eye(3), atol=1e-12)
  assert np.all(np.diff(pca.eigvals) <= 0) and pca.eigvals[0] > 10 * pca.eigvals[1]
  np.testing.assert_allclose(np.sort(pca.eigvals), np.linalg.eigvalsh(cov), rtol=1e-9)
  # scale=1 gives the same vectors and 255^2 times the variances.
  raw = augment.rgb_pca(images, scale=1.0)
  np.testing.assert_allclose(raw.eigvals, pca.eigvals * 255**2, rtol=1e-9)
  np.testing.assert_allclose(raw.eigvecs, pca.eigvecs, atol=1e-9)
  with pytest.raises(ValueError, match=r'RGB images \[N, H, W, 3\]'):
    augment.rgb_pca(images[..., :1])


def test_jitter_adds_p_times_alpha_lambda_to_every_pixel():
  pca = augment.rgb_pca(correlated_images())
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 6, 7, 3)), jnp.float32)
  rng = jax.random.key(3)
  out = jax.jit(augment.pca_color_jitter)(rng, x, pca.eigvals, pca.eigvecs)
  delta = np.asarray(out - x, np.float64)
  # One offset per image, the same at every pixel ...
  np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1, :1], delta.shape), atol=1e-6)
  # ... equal to P (alpha * lambda) with the alphas the function draws: 0.1 * N(0, 1).
  alphas = 0.1 * np.asarray(jax.random.normal(rng, (5, 3), jnp.float32), np.float64)
  expected = np.stack([pca.eigvecs @ (a * pca.eigvals) for a in alphas])
  np.testing.assert_allclose(delta[:, 0, 0], expected, rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(
      augment.pca_offsets(jnp.asarray(alphas, jnp.float32), pca.eigvals, pca.eigvecs),
      expected, rtol=1e-5, atol=1e-9)
  # Fixed alpha = e_1: the offset is lambda_1 p_1.
  np.testing.assert_allclose(
      augment.pca_offsets(jnp.array([[1.0, 0.0, 0.0]]), pca.eigvals, pca.eigvecs)[0],
      pca.eigvals[0] * pca.eigvecs[:, 0], rtol=1e-6)


def test_zero_std_is_the_identity():
  x = jnp.asarray(np.random.default_rng(2).uniform(size=(3, 4, 4, 3)), jnp.float32)
  out = augment.pca_color_jitter(jax.random.key(0), x, augment.IMAGENET_PCA.eigvals,
                                 augment.IMAGENET_PCA.eigvecs, std=0.0)
  np.testing.assert_array_equal(out, x)


def test_jitter_shifts_the_covariance_by_p_diag_std2_lambda2_pt():
  """Over many images, the added offsets have covariance P diag(std^2 lambda^2) P^T, so the
  output covariance of per-image colours is the input's plus that (they are independent)."""
  pca = augment.IMAGENET_PCA
  n, std = 100_000, 0.1
  base = np.random.default_rng(4).uniform(0.45, 0.55, (n, 1, 1, 3)).astype(np.float32)
  out = augment.pca_color_jitter(jax.random.key(5), jnp.asarray(base), pca.eigvals, pca.eigvecs,
                                 std=std)
  shift = np.cov(np.asarray(out).reshape(n, 3), rowvar=False) - np.cov(base.reshape(n, 3),
                                                                        rowvar=False)
  expected = pca.eigvecs @ np.diag((std * pca.eigvals)**2) @ pca.eigvecs.T
  # Sampling error from 100k images: ~1% of the largest entry, plus ~2.5% from the (mean zero)
  # cross-covariance of base colours and offsets.
  np.testing.assert_allclose(shift, expected, atol=0.06 * np.abs(expected).max())
  # Along p_1 the added variance is (0.1 * 0.2175)^2; along p_3 it is ~2000x smaller.
  proj = (np.asarray(out) - base).reshape(n, 3) @ pca.eigvecs
  np.testing.assert_allclose(proj.std(axis=0), std * pca.eigvals, rtol=0.05)


# ---------------------------------------------------------------------------- the config

def test_config_is_valid_and_states_the_paper_recipe():
  for arg in (None, 'quick'):
    c = alexnet_imagenet.get_config(arg)
    config_base.validate(c)
  c = alexnet_imagenet.get_config()
  assert (c.model, c.batch_size, c.optimizer, c.learning_rate, c.momentum) == (
      'alexnet', 128, 'sgd', 1e-2, 0.9)
  assert c.weight_decay == 5e-4 and not c.decoupled_weight_decay
  assert (c.lr_schedule, c.lr_decay_factor, c.plateau_min_scale) == ('plateau', 0.1, 1e-3)
  assert c.data.horizontal_flip and c.data.random_crop_padding > 0
  assert models.input_shape(c.model) == (227, 227, 3)
  with pytest.raises(ValueError, match='quick'):
    alexnet_imagenet.get_config('fast')


def test_config_optimizer_is_the_papers_update_rule():
  """v <- 0.9 v - 5e-4 lr w - lr g;  w <- w + v (Krizhevsky et al. §5), two steps."""
  c = alexnet_imagenet.get_config()
  tx = optim.create_optimizer(c, optax.constant_schedule(c.learning_rate))
  w = {'kernel': jnp.array([1.0, -2.0, 0.5])}
  grads = [{'kernel': jnp.array([0.3, 0.1, -0.2])}, {'kernel': jnp.array([-0.1, 0.4, 0.0])}]
  state = tx.init(w)
  w_ref, v = np.asarray(w['kernel'], np.float64), np.zeros(3)
  for g in grads:
    updates, state = tx.update(g, state, w)
    w = optax.apply_updates(w, updates)
    v = 0.9 * v - 5e-4 * 1e-2 * w_ref - 1e-2 * np.asarray(g['kernel'])
    w_ref = w_ref + v
    np.testing.assert_allclose(w['kernel'], w_ref, rtol=1e-6)


def test_configured_model_trains_one_step_at_227():
  """The config's model, one forward/backward on 2 random 227x227 images with dropout on, the
  PCA jitter applied the way the recipe would (in [0, 1], before normalisation)."""
  c = alexnet_imagenet.get_config()
  model = models.create(c.model, num_classes=1000, dtype=jnp.dtype(c.dtype), **c.model_kwargs)
  rng = jax.random.key(0, impl='rbg')
  images = jax.random.uniform(rng, (2, 227, 227, 3))
  labels = jnp.array([3, 997])
  variables = jax.jit(lambda k: model.init({'params': k}, images[:1], train=False))(rng)
  assert sum(p.size for p in jax.tree.leaves(variables['params'])) == 62_378_344

  def loss_fn(params, rng):
    jitter_rng, dropout_rng = jax.random.split(rng)
    x = augment.pca_color_jitter(jitter_rng, images, augment.IMAGENET_PCA.eigvals,
                                 augment.IMAGENET_PCA.eigvecs)
    x = (x - augment.IMAGENET_PCA.mean) / 0.25
    logits = model.apply({'params': params}, x, train=True, rngs={'dropout': dropout_rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'], jax.random.key(1))
  assert np.isfinite(loss) and 5.0 < loss < 9.0  # about ln(1000) = 6.9 at init
  norms = {k: float(optax.tree.norm(v)) for k, v in grads.items()}
  assert set(norms) == {f'layer{i}_conv' for i in range(1, 6)} | {'fc6', 'fc7', 'head'}
  assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms
