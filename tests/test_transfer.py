"""Transfer learning (C24): weights copied under a new head, frozen parts that stay frozen
(parameters and BatchNorm statistics), class subsets and images per class, the errors, and the
experiment's `toy` preset end to end."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cnn_jax import (checkpointing, config_base, input_pipeline, models, optim, parallel, steps,
                     train)
from cnn_jax import transfer
from cnn_jax.config_base import ConfigError
from cnn_jax.datasets import splits as splits_lib
from configs import transfer as transfer_config
from tests.helpers import run_module

WIDTHS = (4, 8, 16)  # a narrow ResNet-8: seconds to compile
MESH = None


def _sharding():
  global MESH
  MESH = MESH or parallel.make_mesh()
  return parallel.replicated(MESH)


def _config(**kw):
  c = ml_collections.ConfigDict({'init_from': '', 'trainable': 'all',
                                 'model_kwargs': ml_collections.ConfigDict()})
  c.update(kw)
  return c


def _state(num_classes, seed, tx=None, name='resnet8', **model_kwargs):
  model = models.create(name, num_classes=num_classes, widths=WIDTHS, **model_kwargs)
  tx = tx or optax.sgd(0.1, momentum=0.9)
  return model, steps.create_train_state(model, tx, (32, 32, 3), jax.random.key(seed), _sharding())


def _randomise_stats(state, seed):
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype),
                       state.batch_stats)
  return state.replace(batch_stats=stats)


@pytest.fixture(scope='module')
def source_dir(tmp_path_factory):
  """A 'trained' 5-class source run: a workdir with a best checkpoint, random BN statistics."""
  workdir = tmp_path_factory.mktemp('source')
  _, state = _state(5, seed=1)
  state = _randomise_stats(state, 0)
  ckpts = checkpointing.Checkpoints(workdir)
  ckpts.save('best', 7, state, {})
  ckpts.wait()
  ckpts.close()
  return workdir, state


def _flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_parts_cover_every_family():
  """Each family's head and last stage name existing top-level submodules, disjointly."""
  for name in ('lenet5', 'lenet5_classic', 'mlp', 'resnet8', 'plain20', 'resnet18', 'vgg11_bn',
               'googlenet', 'densenet_bc_100_12', 'alexnet', 'zfnet', 'cifar_cnn',
               'vgg11_bn_cifar', 'resnet18_cifar', 'googlenet_cifar', 'alexnet_cifar'):
    kwargs = {'aux_logits': True} if name.startswith('googlenet') else {}
    model = models.create(name, num_classes=3, **kwargs)
    shape = models.input_shape(name) if models.spec(name).fixed_input else (32, 32) + (
        models.input_shape(name)[-1],)
    variables = jax.eval_shape(lambda m=model, s=shape: m.init(
        {'params': jax.random.key(0), 'dropout': jax.random.key(0)}, jnp.zeros((1,) + s),
        train=True))
    top = set(variables['params'])
    head = transfer.trainable_modules(name, model, top, 'head')
    last = transfer.trainable_modules(name, model, top, 'last_stage')
    assert head and head < last < top, (name, head, last)
    assert 'head' in head
  assert transfer.trainable_modules('googlenet', models.create('googlenet', num_classes=3,
                                                               aux_logits=True),
                                    {'head', 'aux1_head', 'aux2_head', 'inception5b', 'conv1'},
                                    'head') == {'head', 'aux1_head', 'aux2_head'}
  with pytest.raises(ConfigError, match='segmentation'):
    transfer.parts('unet_same', models.create('unet_same', num_classes=2))


def test_weights_copied_exactly_except_the_head(source_dir):
  workdir, source = source_dir
  model, fresh = _state(3, seed=2)
  state = transfer.prepare(_config(init_from=str(workdir)), 'resnet8', model, fresh, _sharding())
  got, src, new = _flat(state.params), _flat(source.params), _flat(fresh.params)
  for key, value in got.items():
    if key.startswith("['head']"):
      np.testing.assert_array_equal(value, new[key])  # fresh init, 3 classes
      assert value.shape[-1] == 3
    else:
      np.testing.assert_array_equal(value, src[key])
  for key, value in _flat(state.batch_stats).items():
    np.testing.assert_array_equal(value, _flat(source.batch_stats)[key])
  assert not np.array_equal(got["['stem_conv']['kernel']"], new["['stem_conv']['kernel']"])


def test_torchvision_file_is_a_source(tmp_path):
  from cnn_jax import pretrained
  model = models.create('resnet18', num_classes=10, width=8)
  variables = model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
  path = tmp_path / 'r18.safetensors'
  pretrained.save_safetensors(path, pretrained.to_state_dict('resnet18', variables))
  loaded, what = transfer.load_source(str(path), 'resnet18', {'width': 8})
  assert 'torchvision' in what
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)


def _step_fn(num_classes):
  cfg = steps.StepConfig(batch_size=16, num_classes=num_classes, label_smoothing=0.0,
                         aux_loss_weight=0.3,
                         preprocess=input_pipeline.Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3),
                         batch_sharding=parallel.batch_sharded(MESH))
  step = jax.jit(lambda s, t, x, y, p, r: steps.train_step(s, t, x, y, p, 0, r, cfg))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 255, (16, 32, 32, 3), np.uint8))
  labels = jnp.asarray(rng.integers(0, num_classes, 16), jnp.int32)

  def run(state, n):
    for i in range(n):
      perm = jnp.asarray(np.random.default_rng(i).permutation(16))  # the same for every run
      state, _ = step(state, steps.zero_totals(), images, labels, perm, jax.random.key(i))
    return state
  return run, images


@pytest.mark.parametrize('trainable', ['head', 'last_stage'])
def test_frozen_parts_stay_put_and_trainable_ones_move(source_dir, trainable):
  workdir, _ = source_dir
  model, fresh = _state(3, seed=2)
  state = transfer.prepare(_config(init_from=str(workdir), trainable=trainable), 'resnet8', model,
                           fresh, _sharding())
  run, images = _step_fn(3)
  after = run(state, 3)
  moving = {'head'} if trainable == 'head' else {'head', 'stage3_block1'}
  for collection in ('params', 'batch_stats'):
    for top in getattr(state, collection):
      before_f = _flat(getattr(state, collection)[top])
      after_f = _flat(getattr(after, collection)[top])
      changed = any(not np.array_equal(before_f[k], after_f[k]) for k in before_f)
      assert changed == (top in moving), (collection, top, changed)
  if trainable == 'head':
    # With the whole body frozen, a training-mode forward pass is the inference one: frozen
    # BatchNorm layers normalise with the source's running statistics.
    x = input_pipeline.Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3)(images, None, False)
    logits, _ = after.apply_fn({'params': after.params, 'batch_stats': after.batch_stats}, x,
                               train=True, mutable=['batch_stats'])
    ref = model.apply({'params': after.params, 'batch_stats': after.batch_stats}, x, train=False)
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5)


def test_trainable_all_equals_an_ordinary_run_from_the_same_init(source_dir):
  workdir, _ = source_dir
  cfg = ml_collections.ConfigDict({'optimizer': 'sgd', 'momentum': 0.9, 'nesterov': False,
                                   'weight_decay': 5e-4, 'decoupled_weight_decay': False,
                                   'weight_decay_kernels_only': False, 'grad_clip_norm': 0.0})
  tx = optim.create_optimizer(cfg, optax.constant_schedule(0.05))
  model, fresh = _state(3, seed=2, tx=tx)
  a = transfer.prepare(_config(init_from=str(workdir), trainable='all'), 'resnet8', model, fresh,
                       _sharding())
  # The ordinary run: the same copied weights, the plain optimizer, no interception.
  b = fresh.replace(params=a.params, batch_stats=a.batch_stats,
                    opt_state=tx.init(a.params))
  run, _ = _step_fn(3)
  a, b = run(a, 3), run(b, 3)
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)),
                  jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_a_resumed_run_does_not_reload_the_source(source_dir, tmp_path):
  """With its own latest checkpoint the workdir resumes; the source is not even read."""
  model, fresh = _state(3, seed=2)
  own = tmp_path / 'run'
  ckpts = checkpointing.Checkpoints(own)
  ckpts.save('latest', 4, fresh, {})
  ckpts.wait()
  ckpts.close()
  gone = str(tmp_path / 'deleted_source')
  state = transfer.prepare(_config(init_from=gone, trainable='head'), 'resnet8', model, fresh,
                           _sharding(), workdir=own)
  np.testing.assert_array_equal(state.params['stem_conv']['kernel'],
                                fresh.params['stem_conv']['kernel'])
  with pytest.raises(ConfigError, match='does not exist'):
    transfer.prepare(_config(init_from=gone), 'resnet8', model, fresh, _sharding(),
                     workdir=tmp_path / 'new')


def test_transfer_run_resumes_like_an_uninterrupted_one(tmp_path):
  """Through the loop: LeNet-5 on MNIST digits 0-4, then a last-stage transfer to digits 5-9
  (the masked optimizer state is checkpointed and restored like any other)."""
  from tests.helpers import tiny_config
  src = tmp_path / 'src'
  train.train_and_evaluate(tiny_config(num_epochs=1, **{'data.select_classes': (0, 1, 2, 3, 4)}),
                           src, command='test')
  config = tiny_config(num_epochs=2, init_from=str(src), trainable='last_stage',
                       **{'data.select_classes': (5, 6, 7, 8, 9), 'data.per_class': 100,
                          'data.train_subset': 0})
  whole = train.train_and_evaluate(config, tmp_path / 'whole', command='test')
  assert whole['num_train'] == 500 and whole['steps'] == 20
  halted = train.train_and_evaluate(config, tmp_path / 'resumed', command='test',
                                    should_stop=lambda step: step >= 7)
  assert halted['status'] == 'interrupted'
  resumed = train.train_and_evaluate(config, tmp_path / 'resumed', command='test')
  for key in ('test_accuracy', 'test_loss', 'val_loss', 'steps'):
    assert resumed[key] == whole[key], key
  record = json.loads((tmp_path / 'whole' / transfer.RECORD).read_text())
  assert record['trainable_modules'] == ['c5', 'f6', 'head']


def test_mismatched_source_lists_every_problem(source_dir, tmp_path):
  workdir, _ = source_dir
  model = models.create('resnet20', num_classes=3, widths=(4, 8, 32))
  fresh = steps.create_train_state(model, optax.sgd(0.1), (32, 32, 3), jax.random.key(0),
                                   _sharding())
  with pytest.raises(ConfigError) as e:
    transfer.prepare(_config(init_from=str(workdir)), 'resnet20', model, fresh, _sharding())
  msg = str(e.value)
  assert 'shapes differ' in msg and 'stage3_block1' in msg and '(3, 3, 16, 16)' in msg
  assert 'missing in the source' in msg and 'stage1_block2' in msg
  with pytest.raises(ConfigError, match='holds no checkpoint'):
    transfer.load_source(str(tmp_path), 'resnet8')
  (tmp_path / 'weights.npz').write_bytes(b'x')
  with pytest.raises(ConfigError, match='not a torchvision'):
    transfer.load_source(str(tmp_path / 'weights.npz'), 'resnet8')


def test_config_values_are_checked():
  c = transfer_config.get_config('transfer,toy')
  c.trainable = 'heads'
  with pytest.raises(ConfigError, match="Did you mean 'head'"):
    config_base.validate(c)
  c = transfer_config.get_config('transfer,toy')
  c.data.select_classes = (5, 6, 5)
  with pytest.raises(ConfigError, match='repeats'):
    config_base.validate(c)
  c.data.select_classes = (5, -1)
  with pytest.raises(ConfigError, match='integers >= 0'):
    config_base.validate(c)
  c = transfer_config.get_config('transfer,toy')
  c.data.per_class = -3
  with pytest.raises(ConfigError, match='per_class'):
    config_base.validate(c)
  with pytest.raises(ValueError, match='Unknown stage'):
    transfer_config.get_config('finetune')


def _labelled(per_class_counts, value_offset=0):
  """2x2 images: pixel (0, 0) is the label (+ offset), pixels (0, 1) and (1, 0) the index, so a
  test can see which image went where."""
  labels = np.concatenate([np.full(n, k, np.int32) for k, n in enumerate(per_class_counts)])
  images = np.zeros((len(labels), 2, 2, 1), np.uint8)
  images[:, 0, 0, 0] = labels + value_offset
  images[:, 0, 1, 0] = np.arange(len(labels)) % 256
  images[:, 1, 0, 0] = np.arange(len(labels)) // 256
  return images, labels


def _ids(s):
  """The original indices of a split's training images."""
  images = s.train[0].astype(int)
  return set((images[:, 0, 1, 0] + 256 * images[:, 1, 0, 0]).tolist())


def test_class_subset_and_images_per_class():
  train_split, test_split = _labelled([30] * 10), _labelled([6] * 10)
  carve = lambda **kw: splits_lib.carve_validation('x', 'folder', 10, train_split, test_split,
                                                   **kw)
  s = carve(validation_size=20, split_seed=0, classes=(5, 6, 7, 8, 9), per_class=4)
  assert s.num_classes == 5
  assert np.bincount(s.train[1], minlength=5).tolist() == [4] * 5
  np.testing.assert_array_equal(s.train[0][:, 0, 0, 0], s.train[1] + 5)  # classes 5..9 -> 0..4
  np.testing.assert_array_equal(s.test[0][:, 0, 0, 0], s.test[1] + 5)
  assert len(s.test[1]) == 30 and len(s.val[1]) == 20 and set(s.val[1]) <= set(range(5))
  # Deterministic and nested: 2 per class are among the 4; another split_seed picks others.
  pick = lambda seed, n: _ids(carve(validation_size=20, split_seed=seed,
                                    classes=(5, 6, 7, 8, 9), per_class=n))
  assert pick(0, 4) == pick(0, 4) and pick(0, 2) < pick(0, 4) and pick(0, 4) != pick(1, 4)
  # The order of `classes` is the new label order.
  r = carve(validation_size=0, split_seed=0, classes=(9, 0))
  assert set(zip(r.train[0][:, 0, 0, 0].tolist(), r.train[1].tolist())) == {(9, 0), (0, 1)}
  with pytest.raises(ValueError, match='largest valid value is 30'):
    carve(validation_size=0, split_seed=0, classes=(1, 2), per_class=31)
  with pytest.raises(ValueError, match='nearest valid label is 9'):
    carve(validation_size=0, split_seed=0, classes=(5, 12))
  with pytest.raises(ValueError, match='set one of them to 0'):
    carve(validation_size=0, split_seed=0, per_class=3, train_subset=10)


def _run_toy(tmp_path, *flags):
  from tests.helpers import cifar_like_folder
  data = cifar_like_folder(tmp_path / 'data')
  work = tmp_path / 'work'
  args = ['experiments.transfer', '--preset=toy', f'--workdir={work}',
          f'--set=data.data_dir={data}', *flags]
  env = {'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache')}
  out = run_module(args, env_extra=env, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return work, args, env


def test_toy_probe_end_to_end(tmp_path):
  """Pretraining and one linear probe through the experiment (two compilations)."""
  work, _, _ = _run_toy(tmp_path, '--per_class=4', '--methods=head')
  probe = work / 'per_class=4,method=head,seed=0'
  record = json.loads((probe / transfer.RECORD).read_text())
  assert record['trainable_modules'] == ['head'] and record['num_trainable_params'] == 64 * 5 + 5
  res = json.loads((probe / 'results.json').read_text())
  assert res['num_train'] == 20 and 0 <= res['test_accuracy'] <= 1
  assert 'Not enough sizes finished' in (work / 'report.md').read_text()  # one size: no check


@pytest.mark.slow
def test_toy_experiment_end_to_end(tmp_path):
  work, args, env = _run_toy(tmp_path, '--per_class=4,0', '--methods=scratch,head,all')
  assert json.loads((work / 'pretrain' / 'results.json').read_text())['num_train'] == 80
  probe = work / 'per_class=4,method=head,seed=0'
  record = json.loads((probe / transfer.RECORD).read_text())
  assert record['trainable_modules'] == ['head'] and 'pretrain' in record['source']
  res = json.loads((probe / 'results.json').read_text())
  assert res['num_train'] == 20 and res['num_test'] == 40  # 5 classes x 4; 5 x 8 test images
  assert not (work / 'per_class=4,method=scratch,seed=0' / transfer.RECORD).exists()
  report = (work / 'report.md').read_text()
  assert 'Claim checks' in report and 'Test accuracy (%) on classes 5-9' in report
  assert (work / 'transfer.png').stat().st_size > 1000
  summary = json.loads((work / 'results.json').read_text())
  assert set(summary['test_accuracy']) == {f'{n}/{m}' for n in ('4', 'all')
                                           for m in ('scratch', 'head', 'all')}
  assert summary['statement_holds'] in (True, False) and len(summary['checks']) == 3
  again = run_module(args + ['--report_only'], env_extra=env, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
