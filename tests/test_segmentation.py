"""Dense prediction in the loop (claim C23): the segmentation task, the valid-padding crop, the
data wiring, and toy U-Net runs end to end."""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn_jax import config_base, datasets, input_pipeline, models, parallel, steps, tasks, train
from cnn_jax.datasets import oxford_pet
from cnn_jax.models import unet
from configs import unet_segmentation

# ------------------------------------------------------------------------- metrics by hand

# One 2x3 image, 3 classes.   truth        prediction
#                             0 0 1        0 1 1
#                             1 2 2        1 2 0
TRUTH = np.array([[[0, 0, 1], [1, 2, 2]]])
PRED = np.array([[[0, 1, 1], [1, 2, 0]]])
# Rows: true class, columns: predicted class.
CONFUSION = np.array([[1, 1, 0],
                      [0, 2, 0],
                      [1, 0, 1]])
# IoU = TP / (TP + FP + FN): class 0: 1 / (1 + 1 + 1), class 1: 2 / (2 + 1 + 0), class 2: 1 / 2.
IOU = np.array([1 / 3, 2 / 3, 1 / 2])


def test_confusion_matrix_pixel_accuracy_and_miou_by_hand():
  conf = tasks.confusion_matrix(jnp.asarray(TRUTH), jnp.asarray(PRED), 3)
  np.testing.assert_array_equal(conf, CONFUSION)
  assert conf.dtype == jnp.int32
  np.testing.assert_allclose(tasks.pixel_accuracy(conf), 4 / 6, rtol=1e-6)
  np.testing.assert_allclose(tasks.iou_per_class(conf), IOU, rtol=1e-6)
  np.testing.assert_allclose(tasks.mean_iou(conf), 0.5, rtol=1e-6)


def test_absent_class_is_left_out_of_the_mean_and_padding_examples_do_not_count():
  conf = tasks.confusion_matrix(jnp.asarray(TRUTH), jnp.asarray(PRED), 5)  # classes 3, 4 absent
  assert np.isnan(tasks.iou_per_class(conf)[3:]).all()
  np.testing.assert_allclose(tasks.mean_iou(conf), 0.5, rtol=1e-6)
  both = lambda a: jnp.asarray(np.concatenate([a, np.full_like(a, 2)]))  # + an all-2 image
  weighted = tasks.confusion_matrix(both(TRUTH), both(PRED), 3, jnp.array([True, False]))
  np.testing.assert_array_equal(weighted, CONFUSION)


def _one_hot_logits(pred, k, scale=5.0):
  return jnp.asarray(scale * np.eye(k)[pred], jnp.float32)


def test_segmentation_task_totals_and_metrics():
  task = tasks.Segmentation(3)
  logits = _one_hot_logits(PRED, 3)
  totals = task.accumulate(task.zero_totals(), logits, jnp.asarray(TRUTH), jnp.array([1.0]))
  metrics = task.metrics(totals)
  assert set(metrics) == {'loss', 'accuracy', 'mean_iou'}
  np.testing.assert_allclose(metrics['accuracy'], 4 / 6, rtol=1e-6)
  np.testing.assert_allclose(metrics['mean_iou'], 0.5, rtol=1e-6)
  # Per-pixel cross-entropy: softmax of (5, 0, 0) puts p = e^5 / (e^5 + 2) on the right class.
  right, wrong = -np.log(np.exp(5) / (np.exp(5) + 2)), -np.log(1 / (np.exp(5) + 2))
  np.testing.assert_allclose(metrics['loss'], (4 * right + 2 * wrong) / 6, rtol=1e-5)
  np.testing.assert_allclose(task.correct(logits, jnp.asarray(TRUTH)), [4 / 6], rtol=1e-6)


def test_classification_keeps_its_metric_keys_and_values():
  task = tasks.Classification(3)
  labels = jnp.array([0, 1, 2, 2])
  logits = _one_hot_logits(np.array([0, 1, 1, 2]), 3)
  totals = task.accumulate(task.zero_totals(), logits, labels, jnp.array([1, 1, 1, 0]))
  metrics = task.metrics(totals)
  assert set(metrics) == {'loss', 'accuracy'}
  np.testing.assert_allclose(metrics['accuracy'], 2 / 3, rtol=1e-6)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits[:3], labels[:3]).mean()
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-6)


# ---------------------------------------------------------------------- the valid-padding crop


def test_align_crops_the_mask_to_a_smaller_output_and_the_output_to_a_smaller_mask():
  mask = jnp.arange(36).reshape(1, 6, 6)
  logits = jnp.zeros((1, 2, 2, 4))
  cropped_logits, cropped_mask = tasks.align(logits, mask)
  assert cropped_logits.shape == (1, 2, 2, 4)
  np.testing.assert_array_equal(cropped_mask[0], [[14, 15], [20, 21]])  # rows/cols 2..3
  big = jnp.arange(36 * 2).reshape(1, 6, 6, 2)
  cropped_logits, cropped_mask = tasks.align(big, mask[:, :2, :2])
  np.testing.assert_array_equal(cropped_logits, big[:, 2:4, 2:4])
  np.testing.assert_array_equal(cropped_mask, mask[:, :2, :2])


def _state(model, shape):
  mesh = parallel.make_mesh()
  return steps.create_train_state(model, optax.sgd(0.0), shape, jax.random.key(0),
                                  parallel.replicated(mesh)), mesh


def test_train_step_crops_the_mask_for_a_valid_unet():
  """The step's loss is the cross-entropy against the mask's centre, the paper's output crop."""
  model = models.create('unet', num_classes=3, features=4, depth=1)  # 20x20 -> 4x4
  assert unet.output_side(20, 1) == 4
  state, mesh = _state(model, (20, 20, 1))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (4, 20, 20, 1)), jnp.uint8)
  masks = jnp.asarray(rng.integers(0, 3, (4, 20, 20)), jnp.uint8)
  pre = input_pipeline.Preprocess(mean=(0.5,), std=(0.25,))
  cfg = steps.StepConfig(4, 3, 0.0, 0.0, pre, parallel.batch_sharded(mesh),
                         task=tasks.Segmentation(3))
  _, totals = jax.jit(functools.partial(steps.train_step, cfg=cfg))(
      state, steps.zero_totals(), images, masks, jnp.arange(4), 0, jax.random.key(1))
  logits = model.apply({'params': state.params}, pre(images, None, train=False))
  assert logits.shape == (4, 4, 4, 3)
  centre = masks[:, 8:12, 8:12].astype(jnp.int32)
  expected = optax.softmax_cross_entropy_with_integer_labels(logits, centre).mean()
  np.testing.assert_allclose(totals['loss'] / totals['count'], expected, rtol=1e-5)
  correct = jnp.mean(jnp.argmax(logits, -1) == centre)
  np.testing.assert_allclose(totals['correct'] / totals['count'], correct, rtol=1e-6)


def test_unet_names_the_nearest_valid_input_sides():
  assert unet.output_side(572) == 388 and unet.output_side(188) == 4
  assert unet.output_side(64) is None and unet.output_side(64, padding='SAME') == 64
  assert unet.valid_sides(200) == [188, 204]  # 172 = 16 * 3 + 124 would shrink to nothing
  model = models.create('unet', num_classes=2, features=4)
  with pytest.raises(config_base.ConfigError, match='Nearest valid sides: 188 or 204'):
    jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                   jax.ShapeDtypeStruct((1, 180, 180, 1), jnp.float32))
  assert unet_segmentation.tile_side(64, 3) == 156 and unet.output_side(156, 3) == 68
  assert unet_segmentation.tile_side(32, 2) == 72 and unet.output_side(72, 2) == 32


# --------------------------------------------------------------------------- augmentation


def test_crop_and_flip_move_the_mask_with_the_image():
  """Masks are a function of the pixels (ink > 127 -> class 1 + digit); augmenting both
  together keeps that, pixel for pixel, and really moves them."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (16, 12, 12, 1)).astype(np.uint8)
  masks = np.where(images[..., 0] > 127, 1 + np.arange(16)[:, None, None] % 10, 0).astype(np.uint8)
  pre = input_pipeline.Preprocess(mean=(0.5,), std=(0.25,), random_crop_padding=3,
                                  horizontal_flip=True)
  x, y = tasks.augment(pre, jnp.asarray(images), jnp.asarray(masks), jax.random.key(0))
  expected = np.where(np.asarray(x)[..., 0] > 127, 1 + np.arange(16)[:, None, None] % 10, 0)
  np.testing.assert_array_equal(y, expected)
  assert not np.array_equal(x, images)
  x2, y2 = tasks.Segmentation(11).inputs(pre, jnp.asarray(images), jnp.asarray(masks),
                                         jax.random.key(0), train=True)
  np.testing.assert_allclose(x2, pre(x, None, train=False))
  np.testing.assert_array_equal(y2, y)


# ---------------------------------------------------------------------------- data wiring


def _data(**segmentation):
  c = config_base.base_config().data
  c.dataset = 'mnist_segmentation'
  c.validation_size = 10
  c.segmentation.update(num_train=40, num_test=12, size=32, max_digits=1, **segmentation)
  return c


def test_mnist_segmentation_through_the_dataset_table():
  splits = datasets.load(_data())
  assert splits.num_classes == 11 and splits.source == 'bundled'
  assert splits.train[0].shape == (30, 32, 32, 1) and splits.train[1].shape == (30, 32, 32)
  assert splits.val[1].shape == (10, 32, 32) and splits.test[1].shape == (12, 32, 32)
  assert splits.train[1].max() <= 10 and set(np.unique(splits.test[1])) > {0}
  again = datasets.load(_data())
  np.testing.assert_array_equal(again.test[1], splits.test[1])
  other = datasets.load(_data(seed=1))
  assert not np.array_equal(other.test[0], splits.test[0])
  images, labels, mask = input_pipeline.padded_eval_arrays(*splits.test, 8)
  assert labels.shape == (16, 32, 32) and mask.sum() == 12


def test_mismatched_model_and_data_are_refused_with_the_fix(tmp_path):
  config = unet_segmentation.get_config('unet_same,toy')
  with config.unlocked():
    config.model = 'lenet5'  # a classifier on per-pixel masks (32x32x1 fits its input)
    config.model_kwargs = ml_collections.ConfigDict()
  with pytest.raises(config_base.ConfigError, match='segmentation model'):
    train.train_and_evaluate(config, tmp_path, command='test')


def test_oxford_pet_offline_is_a_clear_data_error(tmp_path):
  data = config_base.base_config().data
  data.dataset, data.source, data.data_dir = 'oxford_iiit_pet', 'tfds', str(tmp_path)
  with pytest.raises(datasets.DataError, match='tfds build oxford_iiit_pet'):
    datasets.load(data)  # tfds_download=False: never downloads
  data.source = 'bundled'
  with pytest.raises(ValueError, match='not bundled'):
    datasets.load(data)


def test_oxford_pet_trimap_and_resize():
  trimap = np.array([[1, 2], [3, 2]], np.uint8)[..., None]
  np.testing.assert_array_equal(oxford_pet.trimap_to_mask(trimap), [[1, 0], [2, 0]])
  image = np.zeros((2, 2, 3), np.uint8)
  img, mask = oxford_pet.resize_pair(image, trimap, 8)
  assert img.shape == (8, 8, 3) and mask.shape == (8, 8)
  assert set(np.unique(mask)) == {0, 1, 2}  # nearest neighbour: no new values
  with pytest.raises(datasets.DataError, match='outside 1..3'):
    oxford_pet.trimap_to_mask(np.zeros((2, 2), np.uint8))


# ------------------------------------------------------------------------ toy runs end to end


@pytest.fixture(scope='module')
def toy_runs(tmp_path_factory):
  """Both nets trained by the loop with the `toy` preset, laid out as the experiment does."""
  workdir = tmp_path_factory.mktemp('unet_toy')
  results = {m: train.train_and_evaluate(unet_segmentation.get_config(f'{m},toy'), workdir / m,
                                         command='test')
             for m in unet_segmentation.MODELS}
  return workdir, results


@pytest.mark.parametrize('model', unet_segmentation.MODELS)
def test_toy_unet_learns_to_segment(toy_runs, model):
  _, results = toy_runs
  res = results[model]
  assert res['task'] == 'segmentation' and res['dataset'] == 'mnist_segmentation (bundled)'
  masks = datasets.load(unet_segmentation.get_config(f'{model},toy').data).test[1]
  freq = np.bincount(masks.ravel(), minlength=11) / masks.size
  # The best image-blind prediction (the test class frequencies at every pixel) has a loss equal
  # to their entropy (about 0.55 nats); a net that reads the image goes well below it. Seconds of
  # training find the digits' pixels; naming the digit takes the longer runs of the report.
  prior_loss = -np.sum(freq[freq > 0] * np.log(freq[freq > 0]))
  assert res['test_loss'] < 0.75 * prior_loss, (res, prior_loss)
  assert res['test_accuracy'] >= freq[0] - 0.005, (res, freq[0])  # all background: freq[0]
  assert res['test_mean_iou'] > freq[0] / 11 + 0.005, res  # all background: IoU freq[0] / 11


def test_report_from_the_toy_runs(toy_runs):
  from experiments import unet_segmentation as experiment  # pylint: disable=g-import-not-at-top
  workdir, results = toy_runs
  path = experiment.write_report(workdir, list(unet_segmentation.MODELS), 'toy')
  text = path.read_text()
  for res in results.values():
    assert f"{res['test_mean_iou']:.3f}" in text and f"{res['test_accuracy']:.2%}" in text
  summary = json.loads((workdir / 'results.json').read_text())
  assert summary['baselines']['all background']['mean_iou'] < 0.1
  # The report's recomputation from the checkpoints agrees with the loop's on-device metrics:
  # a self-consistency fact, listed apart from the counted checks.
  agree = [c for c in summary['facts'] if 'recomputes' in c[1]]
  assert len(agree) == 2 and all(c[-1] == 'yes' for c in agree)
  assert not any('recomputes' in c[1] for c in summary['checks']) and len(summary['checks']) == 2
  assert (workdir / 'predictions.png').stat().st_size > 10_000


def test_long_preset_trains_the_cpu_nets_longer_with_a_test_curve():
  cpu, long = unet_segmentation.get_config('unet,cpu'), unet_segmentation.get_config('unet,long')
  assert long.num_epochs == 30 and long.eval_test_curve and not cpu.eval_test_curve
  assert long.model_kwargs.to_dict() == cpu.model_kwargs.to_dict()
  assert long.data.image_size == cpu.data.image_size and long.selection_metric == 'val_loss'


def test_plateau_is_read_from_the_validation_curve():
  from experiments import unet_segmentation as experiment  # pylint: disable=g-import-not-at-top
  flat = [(s, v) for s, v in zip(range(1, 9), (.1, .3, .5, .6, .62, .62, .621, .622))]
  rising = [(s, v) for s, v in zip(range(1, 9), (.1, .3, .5, .6, .62, .65, .7, .75))]
  assert experiment.plateau(flat)['plateaued'] is True
  got = experiment.plateau(rising)
  assert got['plateaued'] is False and got['gain_last_quarter'] == pytest.approx(0.1)
  assert experiment.plateau(flat[:3])['plateaued'] is None
  assert 'still improving' in experiment.plateau_text('unet', got)


def test_curve_table_shows_the_test_curve_where_recorded(tmp_path):
  from experiments import unet_segmentation as experiment  # pylint: disable=g-import-not-at-top
  rec = lambda split, step, miou: {'split': split, 'step': step, 'loss': 0.1, 'accuracy': 0.9,
                                   'mean_iou': miou}
  (tmp_path / 'a').mkdir(), (tmp_path / 'b').mkdir()
  write = lambda d, recs: (tmp_path / d / 'metrics.jsonl').write_text(
      ''.join(json.dumps(r) + '\n' for r in recs))
  write('a', [rec('val', 10, 0.5), rec('test_curve', 10, 0.45), rec('val', 20, 0.6)])
  write('b', [rec('val', 10, 0.5)])
  with_test = experiment.curve_table(tmp_path / 'a').splitlines()
  assert with_test[0].endswith('| val mIoU | test mIoU (read only) |')
  assert with_test[2:] == ['| 10 | 0.1000 | 90.00% | 0.500 | 0.450 |',
                           '| 20 | 0.1000 | 90.00% | 0.600 | – |']
  assert experiment.curve_table(tmp_path / 'b').splitlines()[0].endswith('| val mIoU |')
