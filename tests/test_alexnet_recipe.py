"""AlexNet's training recipe (C16): PCA colour jitter (cnn_jax.augment) against its definition
in Krizhevsky et al. 2012 §4.1, and configs/alexnet_imagenet.py (schema, optimiser update rule,
one forward/backward of the configured model at 227x227)."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from cnn_jax import augment, config_base, datasets, input_pipeline, models, optim, steps, train
from cnn_jax.datasets import image_folder
from cnn_jax.metric_writers import read_metrics
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
  for arg in (None, 'quick', 'toy'):
    c = alexnet_imagenet.get_config(arg)
    config_base.validate(c)
  c = alexnet_imagenet.get_config()
  assert (c.model, c.batch_size, c.optimizer, c.learning_rate, c.momentum) == (
      'alexnet', 128, 'sgd', 1e-2, 0.9)
  assert c.weight_decay == 5e-4 and not c.decoupled_weight_decay
  assert (c.lr_schedule, c.lr_decay_factor, c.plateau_min_scale) == ('plateau', 0.1, 1e-3)
  assert c.data.horizontal_flip and (c.data.resize, c.data.crop_size) == (256, 227)
  assert c.data.pca_jitter_std == 0.1 and c.model_kwargs.weight_init == 'paper'
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
  assert np.isfinite(loss) and 5.0 < loss < 12.0  # ln(1000) = 6.9, more with the paper init
  norms = {k: float(optax.tree.norm(v)) for k, v in grads.items()}
  assert set(norms) == {f'layer{i}_conv' for i in range(1, 6)} | {'fc6', 'fc7', 'head'}
  assert all(np.isfinite(n) and n > 0 for n in norms.values()), norms


# ------------------------------------------------- the recipe in the input pipeline and the loop

def _preprocess(**kw):
  base = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), normalize=False)
  return input_pipeline.Preprocess(**{**base, **kw})


def test_random_crop_is_a_window_of_the_image_and_eval_the_central_one():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 12, 10, 3), np.uint8))
  pre = _preprocess(crop_size=7)
  assert pre.output_shape((12, 10, 3)) == (7, 7, 3)
  rng = jax.random.key(3)
  out = np.asarray(pre(images, rng, train=True))
  np.testing.assert_array_equal(out, np.asarray(pre(images, rng, train=True)))  # same rng, same
  source = np.asarray(images, np.float32) / 255
  offsets = set()
  for img, crop in zip(source, out):
    hits = [(t, l) for t in range(12 - 7 + 1) for l in range(10 - 7 + 1)
            if np.allclose(img[t:t + 7, l:l + 7], crop, atol=1e-6)]
    assert hits, 'a training crop is not a window of its image'
    offsets.add(hits[0])
  assert len(offsets) > 4  # the windows move from image to image
  np.testing.assert_allclose(np.asarray(pre(images, None, train=False)),
                             source[:, 2:9, 1:8], atol=1e-6)  # (12 - 7) // 2, (10 - 7) // 2


def test_pipeline_pca_jitter_is_augment_pca_color_jitter_of_the_train_split():
  images = correlated_images(n=32, size=6)
  splits = types.SimpleNamespace(image_shape=images.shape[1:], mean=np.full(3, 0.5),
                                 std=np.full(3, 0.25), stats_images=lambda: images, name='rgb')
  data = config_base.base_config().data
  data.update(normalize=False, pca_jitter_std=0.1)
  pre = input_pipeline.Preprocess.from_config(data, splits)
  pca = augment.rgb_pca(images)
  np.testing.assert_allclose(pre.pca_eigvals, pca.eigvals)
  rng = jax.random.key(5)
  want = augment.pca_color_jitter(jax.random.fold_in(rng, 1), jnp.asarray(images) / 255.0,
                                  pca.eigvals, pca.eigvecs, 0.1)
  got = pre(jnp.asarray(images), rng, train=True)
  np.testing.assert_allclose(got, want, atol=1e-6)
  shift = np.asarray(got) - images / 255.0
  assert np.abs(shift).max() > 1e-3  # something was added ...
  np.testing.assert_allclose(shift, np.broadcast_to(shift[:, :1, :1], shift.shape), atol=1e-6)
  np.testing.assert_allclose(pre(jnp.asarray(images), rng, train=False),
                             images / 255.0, atol=1e-6)  # ... and only in training
  data.pca_jitter_std = 0.0
  assert input_pipeline.Preprocess.from_config(data, splits).pca_eigvals == ()


def test_crop_and_jitter_settings_that_cannot_work_are_refused():
  gray = types.SimpleNamespace(image_shape=(8, 8, 1), mean=np.zeros(1), std=np.ones(1),
                               train=(np.zeros((2, 8, 8, 1), np.uint8), None), name='gray')
  data = config_base.base_config().data
  data.crop_size = 9
  with pytest.raises(ValueError, match=r'crop_size=9 is larger than the gray images \(8x8\)'):
    input_pipeline.Preprocess.from_config(data, gray)
  data.crop_size, data.pca_jitter_std = 0, 0.1
  with pytest.raises(ValueError, match='pca_jitter_std needs RGB images'):
    input_pipeline.Preprocess.from_config(data, gray)


def _jpeg(path, size, seed):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), np.uint8)).save(path, quality=90)


def test_resize_makes_a_mixed_size_folder_loadable(tmp_path, monkeypatch):
  monkeypatch.setenv('CNN_JAX_CACHE_DIR', str(tmp_path / 'cache'))
  root = tmp_path / 'photos'
  sizes = [(40, 30), (30, 50), (32, 32)]  # (width, height)
  for split in ('train', 'test'):
    for i, size in enumerate(sizes):
      _jpeg(root / split / f'c{i % 2}' / f'{i}.jpg', size, i)
  with pytest.raises(datasets.DataError, match='data.resize=S'):
    image_folder.load(root)
  (train, _), _ = image_folder.load(root, resize=16)
  assert train[0].shape == (3, 16, 16, 3)
  # The shorter side scaled to 16, then the central square: a 40x30 image becomes 21x16, cut at 2.
  with Image.open(root / 'train' / 'c0' / '0.jpg') as img:
    want = np.asarray(img.convert('RGB').resize((21, 16), Image.Resampling.BILINEAR))[:, 2:18]
  np.testing.assert_array_equal(train[0][0], want)
  data = config_base.base_config().data
  data.update(dataset='image_folder', source='tfds', resize=16)
  with pytest.raises(ValueError, match='resize=16 applies to image folders only'):
    datasets.load(data)


def test_paper_init_draws_weights_from_n0_001_and_sets_the_biases():
  narrow = ((16, 11, 4, 0), (32, 5, 1, 2), (32, 3, 1, 1), (32, 3, 1, 1), (32, 3, 1, 1))
  model = models.create('alexnet', num_classes=10, weight_init='paper', convs=narrow, hidden=64)
  params = jax.jit(lambda k: model.init(k, jnp.zeros((1, 227, 227, 3))))(jax.random.key(0))
  params = params['params']
  for name, layer in params.items():  # >= 640 weights each: the sample std within 20%
    assert abs(float(layer['kernel'].std()) - 0.01) < 0.002, name
    want = 1.0 if name in ('layer2_conv', 'layer4_conv', 'layer5_conv', 'fc6', 'fc7') else 0.0
    np.testing.assert_array_equal(layer['bias'], want)
  with pytest.raises(config_base.ConfigError, match="Did you mean 'paper'"):
    models.create('alexnet', num_classes=10, weight_init='papr').init(
        jax.random.key(0), jnp.zeros((1, 227, 227, 3)))


def test_toy_preset_trains_through_the_loop_on_a_mixed_size_folder(tmp_path, monkeypatch):
  """The whole recipe (resize to 256, random 227 crops, PCA jitter, flips, paper init, plateau
  schedule) through the real loop on a small generated folder."""
  monkeypatch.setenv('CNN_JAX_CACHE_DIR', str(tmp_path / 'cache'))
  root = tmp_path / 'imagenet_like'
  for split, n in (('train', 12), ('test', 4)):
    for i in range(n):
      _jpeg(root / split / f'n0{i % 2}' / f'{i}.jpg', (260 + 7 * i, 300 - 5 * i), i)
  c = alexnet_imagenet.get_config('toy')
  c.data.data_dir = str(root)
  c.ten_crop_test = True
  config_base.validate(c)
  results = train.train_and_evaluate(c, tmp_path / 'run', command='test')
  assert results['num_params'] > 0 and np.isfinite(results['test_loss'])
  assert np.isfinite(results['test_10crop_loss']) and 0 <= results['test_10crop_accuracy'] <= 1
  records = read_metrics(tmp_path / 'run' / 'metrics.jsonl')
  losses = [r['loss'] for r in records if r['split'] == 'train']
  assert len(losses) == 2 and all(np.isfinite(losses))


def test_ten_crop_views_are_the_corners_the_centre_and_their_mirrors():
  images = np.arange(2 * 6 * 7 * 3, dtype=np.uint8).reshape(2, 6, 7, 3)
  pre = input_pipeline.Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3, crop_size=4)
  views = [np.asarray(v) for v in pre.ten_crop_views(jnp.asarray(images))]
  x = images / 255.0
  want = [x[:, :4, :4], x[:, :4, 3:], x[:, 2:, :4], x[:, 2:, 3:], x[:, 1:5, 1:5]]
  want += [w[:, :, ::-1] for w in want]
  assert len(views) == 10
  for got, w in zip(views, want):
    np.testing.assert_allclose(got, w, rtol=1e-6)
  np.testing.assert_allclose(views[4], np.asarray(pre(jnp.asarray(images), None, train=False)))


def test_ten_crop_evaluation_averages_the_views_softmax():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(x.reshape(len(x), -1))

  model = Linear()
  params = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))['params']
  state = steps.TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                                  batch_stats={}, plateau=optim.PlateauState.create())
  pre = input_pipeline.Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, crop_size=4)
  images = np.random.default_rng(0).integers(0, 255, (5, 6, 6, 3), dtype=np.uint8)
  labels, mask = np.array([0, 1, 2, 0, 1]), np.array([1, 1, 1, 1, 0], bool)
  cfg = steps.StepConfig(batch_size=5, num_classes=3, label_smoothing=0.0, aux_loss_weight=0.0,
                         preprocess=pre, batch_sharding=None, ten_crop=True)
  task = cfg.get_task()
  got = task.metrics(steps.evaluate_batch(state, task.zero_totals(), images, labels, mask, cfg))
  probs = np.mean([jax.nn.softmax(model.apply({'params': params}, v))
                   for v in pre.ten_crop_views(jnp.asarray(images))], axis=0)[:4]
  np.testing.assert_allclose(got['loss'], -np.mean(np.log(probs[np.arange(4), labels[:4]])),
                             rtol=1e-5)
  assert got['accuracy'] == pytest.approx(np.mean(probs.argmax(-1) == labels[:4]))
  single = task.metrics(steps.evaluate_batch(state, task.zero_totals(), images, labels, mask,
                                             cfg.replace(ten_crop=False)))
  assert abs(float(single['loss']) - float(got['loss'])) > 1e-4  # the views do change it
