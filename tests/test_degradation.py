"""CIFAR recipe and the degradation experiment (C20, C21): augmentation, train-set evaluation,
the claim checks, and the `toy` preset end to end on a small generated CIFAR-like folder."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import input_pipeline, train
from cnn_jax.datasets import splits as splits_lib
from configs import cifar_resnet
from tests.helpers import cifar_like_folder, run_module

def test_random_crop_stays_inside_the_padded_image():
  """Every crop is a 32x32 window of the 4-px zero-padded image: offsets in [0, 8]."""
  n = 64
  x = jnp.arange(n * 32 * 32, dtype=jnp.float32).reshape(n, 32, 32, 1) + 1.0  # no zeros inside
  out = input_pipeline.random_crop(jax.random.key(0), x, 4)
  padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets = set()
  for i in range(n):
    o = out[i]
    matches = [(dy, dx) for dy in range(9) for dx in range(9)
               if np.array_equal(padded[i, dy:dy + 32, dx:dx + 32], o)]
    assert len(matches) == 1
    offsets.add(matches[0])
  assert len(offsets) > 10  # offsets vary across the batch


def test_flip_is_a_mirror_and_roughly_half_the_batch():
  pre = input_pipeline.Preprocess(mean=(0.0,) * 3, std=(1.0,) * 3, normalize=False,
                                  horizontal_flip=True)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (256, 8, 8, 3), np.uint8))
  x = pre(images, None, train=False)
  y = pre(images, jax.random.key(1), train=True)
  same = np.all(np.asarray(y) == np.asarray(x), axis=(1, 2, 3))
  mirrored = np.all(np.asarray(y) == np.asarray(x)[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 0.35 < mirrored.mean() < 0.65
  np.testing.assert_array_equal(y, pre(images, jax.random.key(1), train=True))  # same seed
  assert not np.array_equal(y, pre(images, jax.random.key(2), train=True))  # other seed


def test_normalisation_uses_the_train_split_statistics():
  rng = np.random.default_rng(0)
  train_images = rng.integers(0, 255, (50, 4, 4, 3), np.uint8)
  s = splits_lib.carve_validation('x', 'folder', 10, (train_images, np.zeros(50, np.int32)),
                                  (train_images[:5], np.zeros(5, np.int32)), 10, 0)
  pixels = s.train[0].reshape(-1, 3) / 255.0
  np.testing.assert_allclose(s.mean, pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(s.std, pixels.std(0), rtol=1e-6)
  pre = input_pipeline.Preprocess(mean=tuple(s.mean), std=tuple(s.std))
  x = np.asarray(pre(jnp.asarray(s.train[0]), None, train=False)).reshape(-1, 3)
  np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x.std(0), 1.0, atol=1e-4)


def test_train_eval_subset_is_fixed_and_sized():
  c = cifar_resnet.get_config('resnet20').data
  images = np.arange(1000)[:, None, None, None].astype(np.uint8)
  labels = np.arange(1000, dtype=np.int32)
  a, la = train.train_eval_subset((images, labels), c)
  b, _ = train.train_eval_subset((images, labels), c)
  assert len(a) == min(c.train_eval_size, 1000) and np.array_equal(a, b)
  assert len(set(la.tolist())) == len(la)  # distinct images


def test_config_presets_scale_the_paper_schedule():
  paper = cifar_resnet.get_config('plain56')
  assert (paper.num_steps, paper.lr_boundaries, paper.batch_size) == (64_000, (32_000, 48_000), 128)
  assert paper.weight_decay == 1e-4 and paper.momentum == 0.9 and paper.data.validation_size == 5000
  assert cifar_resnet.get_config('resnet20,paper').data.validation_size == 0
  cpu = cifar_resnet.get_config('resnet56,cpu')
  assert cpu.lr_boundaries == (cpu.num_steps // 2, cpu.num_steps * 3 // 4)
  quarter = cifar_resnet.get_config('resnet56,quarter')
  assert (quarter.num_steps, quarter.lr_boundaries) == (16_000, (8_000, 12_000))
  assert (quarter.batch_size, quarter.learning_rate, quarter.momentum, quarter.weight_decay) == (
      128, 0.1, 0.9, 1e-4)
  assert quarter.data.validation_size == 0 and quarter.data.random_crop_padding == 4
  assert quarter.eval_test_curve and quarter.data.horizontal_flip
  with pytest.raises(ValueError, match='Unknown model'):
    cifar_resnet.get_config('resnet21')
  with pytest.raises(ValueError, match='Unknown preset'):
    cifar_resnet.get_config('resnet20,fast')


def test_run_names_carry_their_seed():
  from experiments import degradation
  assert degradation.parse_run('resnet20') == ('resnet20', 0)
  assert degradation.parse_run('resnet20_seed2') == ('resnet20', 2)
  assert degradation.model_config('plain56_seed1', 'toy', []).seed == 1
  assert degradation.depth('resnet56_seed3') == 56
  for bad in ('resnet21', 'resnet20_seed', 'resnet20_seedx'):
    with pytest.raises(ValueError, match='Unknown run'):
      degradation.parse_run(bad)


def test_claim_checks_compare_the_right_numbers():
  from experiments import degradation
  run = lambda train_acc, test_acc: {'train': [{'step': 10, 'accuracy': train_acc}],
                                     'test': [{'step': 10, 'accuracy': test_acc}]}
  runs = {'plain20': run(0.90, 0.85), 'plain56': run(0.80, 0.78), 'resnet20': run(0.91, 0.86),
          'resnet56': run(0.95, 0.88)}
  rows = {r[1]: r for r in degradation.claim_checks(runs, 5000, 10000)}
  assert rows['plain56 training error above plain20 (degradation)'][-1] == 'yes'
  assert 'at iteration 10' in rows['plain56 training error above plain20 (degradation)'][2]
  assert rows['plain56 training error above resnet56 (residuals remove it)'][-1] == 'yes'
  assert rows['ResNet test error falls with depth'][-1] == 'yes'
  runs['resnet56'] = run(0.95, 0.80)  # deeper ResNet worse on test: the check must say no
  rows = {r[1]: r for r in degradation.claim_checks(runs, 5000, 10000)}
  assert rows['ResNet test error falls with depth'][-1] == '**no**'


def test_toy_degradation_end_to_end(tmp_path):
  data = cifar_like_folder(tmp_path / 'data')
  work = tmp_path / 'work'
  out = run_module(['experiments.degradation', '--preset=toy', '--models=resnet8',
                    f'--workdir={work}', f'--set=data.data_dir={data}',
                    '--set=data.validation_size=80', '--set=data.train_subset=256',
                    '--set=data.train_eval_size=128', '--set=eval_batch_size=80'],
                   env_extra={'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache')}, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  for name in ('report.md', 'figure6.png', 'diagnostics.png'):
    assert (work / name).stat().st_size > 1000
  for model in ('resnet8',):
    records = [json.loads(l) for l in (work / model / 'metrics.jsonl').read_text().splitlines()]
    splits = {r['split'] for r in records}
    assert {'train', 'train_eval', 'test_curve', 'val', 'diagnostics', 'test'} <= splits
    diag = [r for r in records if r['split'] == 'diagnostics']
    assert [r['step'] for r in diag] == [0, 8, 16]  # at init and at every evaluation point
    assert any(k.startswith('grad_rms/stage3_block1') for k in diag[0])
    results = json.loads((work / model / 'results.json').read_text())
    assert results['num_train_eval'] == 128 and 0 <= results['final_train_eval_accuracy'] <= 1
  report = (work / 'report.md').read_text()
  assert 'Claim checks' in report and 'Table 6' in report and 'resnet8' in report
  # Rerunning skips finished runs and rewrites the report from their files.
  again = run_module(['experiments.degradation', '--preset=toy', '--models=resnet8',
                      f'--workdir={work}', f'--set=data.data_dir={data}', '--report_only'],
                     env_extra={'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache')}, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
