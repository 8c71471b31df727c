"""The streamed input pipeline (cnn_jax.streaming): the same batches as the on-device one,
resume, and its errors."""
import json

import numpy as np
import pytest
from PIL import Image

from cnn_jax import config_base, datasets, streaming, train
from cnn_jax.datasets import DataError
from cnn_jax.metric_writers import read_metrics
from configs import cifar_resnet
from tests.helpers import cifar_like_folder


def _config(data_dir, pipeline):
  c = cifar_resnet.get_config('resnet8,toy')
  c.data.data_dir = str(data_dir)
  c.data.pipeline = pipeline
  c.data.validation_size = 32
  c.data.train_subset = 0  # the toy's 512 > the folder's 128
  c.data.train_eval_size = 32
  c.data.stats_images = 10_000  # all of them: the same statistics as the on-device pipeline
  c.eval_batch_size = 24  # the 40 test images in two batches, the second one padded
  c.batch_size = 32
  c.num_steps = 8  # 4 steps an epoch: two epoch orders
  c.checkpoint_every_steps = 2
  c.gradient_diagnostics = False  # a compile less; the diagnostics batch is the first 32 images
  config_base.validate(c)
  return c


def _curves(workdir):
  records = read_metrics(workdir / 'metrics.jsonl')
  return {(r['split'], r['step']): {k: v for k, v in r.items()
                                    if k not in ('time', 'wall_time_s', 'images_per_s', 'split', 'step')}
          for r in records}


def test_stream_reproduces_the_device_pipeline_and_resumes(tmp_path, monkeypatch):
  """resnet8 with crops, flips and BatchNorm: the streamed run (stopped at step 3 and resumed)
  gives the on-device run's losses, curves and test figures."""
  monkeypatch.setenv('CNN_JAX_CACHE_DIR', str(tmp_path / 'cache'))
  data = cifar_like_folder(tmp_path / 'data', per_class=(16, 4))
  device = train.train_and_evaluate(_config(data, 'device'), tmp_path / 'device', command='t')
  halted = train.train_and_evaluate(_config(data, 'stream'), tmp_path / 'stream', command='t',
                                    should_stop=lambda step: step >= 3)
  assert halted == {'status': 'interrupted', 'step': 3}
  streamed = train.train_and_evaluate(_config(data, 'stream'), tmp_path / 'stream', command='t')
  for key in ('test_accuracy', 'test_loss', 'val_accuracy', 'final_train_eval_loss'):
    assert streamed[key] == pytest.approx(device[key], rel=1e-5), key
  assert (streamed['num_train'], streamed['num_val'], streamed['num_test']) == (128, 32, 40)
  assert streamed['dataset'] == 'image folder data, streamed'
  want, got = _curves(tmp_path / 'device'), _curves(tmp_path / 'stream')
  assert got.keys() == want.keys() and ('train', 8) in got and ('train_eval', 8) in got
  for key in want:
    if key == ('train', 4):  # the resumed run's mean over steps 4..4, not 1..4
      continue
    for name, value in want[key].items():
      np.testing.assert_allclose(got[key][name], value, rtol=1e-5, err_msg=f'{key} {name}')


def test_streamed_splits_carve_like_the_device_pipeline(tmp_path, monkeypatch):
  monkeypatch.setenv('CNN_JAX_CACHE_DIR', str(tmp_path / 'cache'))
  data = cifar_like_folder(tmp_path / 'data', per_class=(12, 2))
  c = _config(data, 'stream')
  c.data.train_subset = 50
  held = datasets.load(c.data)
  streamed = streaming.load_dataset(c.data)
  for split in ('train', 'val', 'test'):
    images, labels = getattr(held, split)
    got = streaming.decode_batch(getattr(streamed, split), np.arange(len(images)))
    np.testing.assert_array_equal(got[0], images)
    np.testing.assert_array_equal(got[1], labels)
  np.testing.assert_array_equal(streamed.mean, held.mean)
  np.testing.assert_array_equal(streamed.std, held.std)
  c.data.stats_images = 20  # a fixed sample of 20 training images
  sample = streaming.load_dataset(c.data).sample
  assert sample.shape == (20, 32, 32, 3)
  np.testing.assert_array_equal(sample, streaming.load_dataset(c.data).sample)


def _png(path, size, value=128):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)


def test_stream_errors_name_the_problem_and_the_fix(tmp_path):
  root = tmp_path / 'mixed'
  _png(root / 'train' / 'a' / '0.png', (32, 32))
  _png(root / 'train' / 'a' / '1.png', (40, 48))
  _png(root / 'train' / 'b' / '0.png', (32, 32))
  _png(root / 'test' / 'a' / '0.png', (32, 32))
  _png(root / 'test' / 'b' / '0.png', (32, 32))
  c = config_base.base_config()
  c.data.dataset, c.data.source, c.data.data_dir = 'image_folder', 'folder', str(root)
  c.data.pipeline, c.data.validation_size = 'stream', 0
  with pytest.raises(DataError, match=r'differ in shape.*data\.resize=S'):
    streaming.load_dataset(c.data)
  c.data.resize = 24  # shorter side to 24, central square: every image 24 x 24
  assert streaming.load_dataset(c.data).image_shape == (24, 24, 3)
  (root / 'train' / 'b' / '0.png').write_bytes(b'not a png')
  with pytest.raises(DataError, match=r'Cannot decode image .*0\.png.*Replace or delete'):
    streaming.load_dataset(c.data)
  c.data.per_class = 1
  with pytest.raises(ValueError, match="per_class is not supported with data.pipeline='stream'"):
    streaming.load_dataset(c.data)
  c.data.per_class, c.data.source = 0, 'bundled'
  with pytest.raises(ValueError, match="fit on the device: use data.pipeline='device'"):
    streaming.load_dataset(c.data)
  c.data.pipeline = 'strem'
  with pytest.raises(config_base.ConfigError, match="Did you mean 'stream'"):
    config_base.validate(c)


def test_a_decoding_error_reaches_the_step_that_needed_the_batch():
  def produce(i):
    if i == 2:
      raise DataError('image 7 is truncated')
    return i
  feed = streaming._Prefetcher(produce, count=5, depth=2)  # pylint: disable=protected-access
  assert [feed.get(), feed.get()] == [0, 1]
  with pytest.raises(DataError, match='image 7 is truncated'):
    feed.get()
  feed.close()


def test_tfds_records_as_a_source():
  rng = np.random.default_rng(0)
  records = [{'image': rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), 'label': i % 3}
             for i in range(4)]
  source = streaming.TfdsSource(records)
  image, label = source[1]
  np.testing.assert_array_equal(image, records[1]['image'])
  assert label == 1 and len(source) == 4
  resized = streaming.TfdsSource(records, resize=20)
  assert resized[0][0].shape == (20, 20, 3)  # shorter side 30 -> 20, central square
  gray = streaming.TfdsSource([{'image': np.zeros((8, 8, 1), np.uint8), 'label': 0}], resize=4)
  assert gray[0][0].shape == (4, 4, 1)
  splits = streaming.carve('toy', 'records', 3, source, source, validation_size=1,
                           split_seed=0, stats_images=10)
  assert (len(splits.train), len(splits.val)) == (3, 1) and splits.sample.shape == (3, 30, 40, 3)
  assert json.dumps(splits.mean.tolist())  # per-channel statistics of the sample


_MP_SCRIPT = r"""
import json, os, sys
from cnn_jax import parallel
parallel.maybe_initialize_distributed(bool(os.environ.get('JAX_NUM_PROCESSES')))
import jax
from cnn_jax import train
from cnn_jax.metric_writers import read_metrics
from tests.test_streaming import _config
workdir, data, pipeline = sys.argv[1:4]
config = _config(data, pipeline)
config.distributed = jax.process_count() > 1
config.log_every_steps = 1
results = train.train_and_evaluate(config, workdir, command='test')
out = {'devices': jax.device_count(), 'test_loss': results['test_loss']}
if jax.process_index() == 0:
  out['losses'] = [r['loss'] for r in read_metrics(workdir + '/metrics.jsonl')
                   if r['split'] == 'train']
print('RESULT', json.dumps(out), flush=True)
"""


@pytest.mark.slow
def test_two_streaming_processes_match_the_device_pipeline_on_one(tmp_path):
  """2 processes x 2 devices, each decoding its half of every batch, against one process of 4
  devices holding the whole folder on the devices."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from scripts import launch_local  # pylint: disable=g-import-not-at-top
  from tests import test_multiprocess  # pylint: disable=g-import-not-at-top
  from tests.helpers import ROOT  # pylint: disable=g-import-not-at-top
  data = cifar_like_folder(tmp_path / 'data', per_class=(16, 4))
  base = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache'),
          'PYTHONPATH': str(ROOT)}
  one = subprocess.run(
      [sys.executable, '-c', _MP_SCRIPT, str(tmp_path / 'one'), str(data), 'device'], cwd=ROOT,
      env={**base, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'},
      capture_output=True, text=True, timeout=1800, check=False)
  assert one.returncode == 0, one.stderr[-3000:]
  one = test_multiprocess._result(one.stdout)  # pylint: disable=protected-access
  port = test_multiprocess._free_port()  # pylint: disable=protected-access
  procs = [subprocess.Popen(
      [sys.executable, '-c', _MP_SCRIPT, str(tmp_path / 'two'), str(data), 'stream'], cwd=ROOT,
      env=launch_local.process_env(i, 2, port, 2, base=base), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=1800)
    assert p.returncode == 0, err[-3000:]
    outs.append(test_multiprocess._result(out))  # pylint: disable=protected-access
  assert one['devices'] == outs[0]['devices'] == 4 and len(one['losses']) == 8
  np.testing.assert_allclose(outs[0]['losses'], one['losses'], rtol=1e-5)
  assert outs[0]['test_loss'] == pytest.approx(one['test_loss'], rel=1e-5)
  assert outs[1]['test_loss'] == outs[0]['test_loss']
