"""End-to-end training: accuracy bound, resume equivalence, clear failures."""
import json

import jax
import numpy as np
import pytest

from cnn_jax import checkpointing, report, steps, train
from cnn_jax.metric_writers import read_metrics
from tests.helpers import tiny_config


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('tiny')
  return workdir, train.train_and_evaluate(tiny_config(), workdir, command='test')


def test_tiny_run_learns(tiny_run):
  workdir, results = tiny_run
  # 3 epochs on 1,000 images: far above chance (10%); a broken step or loss stays near it.
  assert results['test_accuracy'] > 0.85, results
  assert results['status'] == 'completed' and results['steps'] == 60 and results['epochs'] == 3
  assert results['num_params'] == 61706
  # what the model computed with, on this CPU: the kernels config.cpu_kernels='auto' found
  assert results['cpu_kernels'] == 'auto' and results['layer_set'].startswith('cpu (')
  records = read_metrics(workdir / 'metrics.jsonl')
  train_losses = [r['loss'] for r in records if r['split'] == 'train']
  assert train_losses[-1] < 0.5 * train_losses[0]
  assert [r['step'] for r in records if r['split'] == 'val'] == [20, 40, 60]
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['test_accuracy'] == results['test_accuracy']
  for key in ('test_loss', 'best_epoch', 'wall_time_s', 'train_images_per_s', 'device_kind',
              'device_count', 'command'):
    assert key in saved
  assert saved['git_commit'] == report.git_commit()  # the code that trained it
  assert (workdir / 'config.json').exists() and list((workdir / 'tensorboard').iterdir())


def test_resume_matches_uninterrupted(tmp_path, tiny_run):
  _, reference = tiny_run
  workdir = tmp_path / 'resumed'
  config = tiny_config()
  halted = train.train_and_evaluate(config, workdir, should_stop=lambda step: step >= 47, command='test')
  assert halted == {'status': 'interrupted', 'step': 47}
  assert not (workdir / 'results.json').exists()
  resumed = train.train_and_evaluate(config, workdir, command='test')
  for key in ('test_accuracy', 'test_loss', 'val_accuracy', 'val_loss', 'best_epoch', 'steps'):
    assert resumed[key] == reference[key], key
  steps = [(r['split'], r['step']) for r in read_metrics(workdir / 'metrics.jsonl')]
  assert len(steps) == len(set(steps))  # no duplicated log lines after the resume


def test_resume_restores_identical_state(tmp_path):
  config = tiny_config(num_epochs=1)
  a, b = tmp_path / 'a', tmp_path / 'b'
  train.train_and_evaluate(config, a, command='test')
  train.train_and_evaluate(config, b, should_stop=lambda step: step >= 9, command='test')
  train.train_and_evaluate(config, b, command='test')
  target = _state_like(config)
  sa, _ = checkpointing.Checkpoints(a).restore('latest', target)
  sb, _ = checkpointing.Checkpoints(b).restore('latest', target)
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_array_equal(x, y)


def _state_like(config):
  from cnn_jax import models, optim, parallel  # pylint: disable=g-import-not-at-top
  model = models.create(config.model, num_classes=10)
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 20, 20))
  return steps.create_train_state(model, tx, (32, 32, 1), jax.random.key(0),
                                  parallel.replicated(parallel.make_mesh()))


def test_divergence_is_reported(tmp_path):
  config = tiny_config(learning_rate=1e4, num_epochs=1)
  with pytest.raises(FloatingPointError, match='diverged.*Lower --config.learning_rate'):
    train.train_and_evaluate(config, tmp_path, command='test')


def test_wrong_image_shape_names_the_fix(tmp_path):
  config = tiny_config(**{'data.image_size': 0})
  with pytest.raises(ValueError, match=r'expects images of shape \(32, 32, 1\).*\(28, 28, 1\).*image_size'):
    train.train_and_evaluate(config, tmp_path, command='test')


def test_unknown_model_names_the_nearest(tmp_path):
  with pytest.raises(ValueError, match="Unknown model 'lenet'.*'lenet5'"):
    train.train_and_evaluate(tiny_config(model='lenet'), tmp_path, command='test')


def test_early_stopping_stops_and_keeps_best(tmp_path):
  # A learning rate this small leaves the float32 weights unchanged: the validation loss never
  # improves after epoch 1, so training stops after `patience` more epochs.
  config = tiny_config(learning_rate=1e-12, num_epochs=10, early_stopping_patience=2,
                       selection_metric='val_loss', selection_ties_to_latest=False)
  results = train.train_and_evaluate(config, tmp_path / 'strict', command='test')
  assert results['status'] == 'stopped_early'
  assert results['epochs'] == 3 and results['best_epoch'] == 1
  # With ties going to the later checkpoint, the best is the last of the equal epochs, and a tie
  # still does not count as progress for early stopping.
  config = tiny_config(learning_rate=1e-12, num_epochs=10, early_stopping_patience=2,
                       selection_metric='val_loss', selection_ties_to_latest=True)
  results = train.train_and_evaluate(config, tmp_path / 'ties', command='test')
  assert results['epochs'] == 3 and results['best_epoch'] == 3


def test_auxiliary_logits_are_added_to_the_loss():
  """A model that sows `aux_logits` (GoogLeNet's heads) trains on main + weight * aux loss."""
  import functools  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from cnn_jax import input_pipeline, parallel  # pylint: disable=g-import-not-at-top

  class WithAux(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = x.reshape((x.shape[0], -1))
      if train:
        self.sow('aux_logits', 'aux1', nn.Dense(10, name='aux')(x))
      return nn.Dense(10, name='main')(x)

  mesh = parallel.make_mesh()
  model = WithAux()
  state = steps.create_train_state(model, optax.sgd(0.0), (4, 4, 1), jax.random.key(0),
                                   parallel.replicated(mesh))
  images = jnp.arange(8 * 16, dtype=jnp.uint8).reshape(8, 4, 4, 1)
  labels = jnp.arange(8) % 10
  pre = input_pipeline.Preprocess(mean=(0.0,), std=(1.0,), normalize=False)
  losses = {}
  for weight in (0.0, 0.3):
    cfg = steps.StepConfig(8, 10, 0.0, weight, pre, parallel.batch_sharded(mesh))
    _, totals = jax.jit(functools.partial(steps.train_step, cfg=cfg))(
        state, steps.zero_totals(), images, labels, jnp.arange(8), 0, jax.random.key(1))
    losses[weight] = float(totals['loss'] / totals['count'])
  x = images.reshape(8, -1).astype(jnp.float32) / 255.0
  ce = lambda name: float(optax.softmax_cross_entropy_with_integer_labels(
      x @ state.params[name]['kernel'] + state.params[name]['bias'], labels).mean())
  np.testing.assert_allclose(losses[0.0], ce('main'), rtol=1e-5)
  np.testing.assert_allclose(losses[0.3], ce('main') + 0.3 * ce('aux'), rtol=1e-5)


def test_lenet5_report_from_a_real_run(tiny_run):
  from experiments import lenet5_mnist  # pylint: disable=g-import-not-at-top
  workdir, results = tiny_run
  path = lenet5_mnist.write_report(workdir, results, tiny_config())
  text = path.read_text()
  assert f"{results['test_accuracy']:.2%}" in text and '61,706' in text
  assert (workdir / 'training_curves.png').stat().st_size > 10_000


def test_eval_cadence_comes_from_the_config(tmp_path):
  results = train.train_and_evaluate(tiny_config(num_epochs=5, eval_every_epochs=2), tmp_path,
                                     command='test')
  val_steps = [r['step'] for r in read_metrics(tmp_path / 'metrics.jsonl') if r['split'] == 'val']
  assert val_steps == [40, 80, 100]  # epochs 2 and 4, and always after the last
  assert results['best_epoch'] in (2, 4, 5)


def test_bfloat16_compute_trains(tmp_path):
  """Mixed precision as on accelerators: bf16 activations, float32 parameters and loss."""
  results = train.train_and_evaluate(tiny_config(dtype='bfloat16'), tmp_path, command='test')
  assert results['test_accuracy'] > 0.85, results
  state, _ = checkpointing.Checkpoints(tmp_path).restore('latest', _state_like(tiny_config()))
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(state.params))


def test_train_step_compiles_once(tmp_path, caplog):
  """Across epochs, log points and validations the step is compiled exactly once."""
  import logging  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.WARNING), jax.log_compiles(True):
    train.train_and_evaluate(tiny_config(num_epochs=3), tmp_path, command='test')
  compiled = [r.getMessage() for r in caplog.records if 'Finished XLA compilation' in r.getMessage()]
  assert sum('jit(train_step)' in m for m in compiled) == 1, compiled
  assert sum('jit(evaluate)' in m for m in compiled) == 2, compiled  # validation and test shapes
