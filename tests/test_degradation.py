"""CIFAR recipe and the degradation experiment (C20, C21): augmentation, train-set evaluation,
the claim checks, and the `toy` preset end to end on a small generated CIFAR-like folder."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import data_source, input_pipeline
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
  a, la = data_source.train_eval_subset((images, labels), c)
  b, _ = data_source.train_eval_subset((images, labels), c)
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


def _run(train_acc, test_acc, step=10, finished=True, wall=None):
  """A synthetic run as `degradation.load_run` returns it: one evaluation at `step`."""
  test = {'step': step, 'accuracy': test_acc}
  if wall is not None:
    test['wall_time_s'] = wall
  return {'train': [{'step': step, 'accuracy': train_acc}], 'test': [test], 'val': [],
          'diagnostics': [], 'results': {'num_params': 1} if finished else None,
          'last_step': step, 'logged_images_per_s': None}


def test_diagnostics_table_rows_at_start_and_end():
  from experiments import degradation
  rec = lambda step, g: {'split': 'diagnostics', 'step': step, 'grad_rms/stage1_block0': g,
                         'grad_rms/stage3_block2': 1.0, 'act_rms/stage1_block0': 1.0,
                         'act_rms/stage3_block2': 2.0}
  started, done = _run(0.5, 0.5, finished=False), _run(0.9, 0.8)
  started['diagnostics'] = [rec(0, 4.0)]
  done['diagnostics'] = [rec(0, 8.0), rec(16000, 3.0)]
  lines = degradation.diagnostics_table({'plain20': started, 'resnet20': done}).splitlines()[2:]
  assert [l.split(' | ')[:2] for l in lines] == [['| plain20', '0'], ['| resnet20', '0'],
                                                 ['| resnet20', '16000']]
  assert lines[2].split(' | ')[4] == '3'  # first / last block at the end


def _four_runs(**changes):
  """plain20/56 and resnet20/56 on which all four checks hold; `changes` replace runs."""
  runs = {'plain20': _run(0.90, 0.85), 'plain56': _run(0.80, 0.78),
          'resnet20': _run(0.91, 0.86), 'resnet56': _run(0.95, 0.88)}
  runs.update(changes)
  return runs


CHECKS = {'degradation': 'plain56 training error above plain20 (degradation)',
          'residuals': 'plain56 training error above resnet56 (residuals remove it)',
          'test': 'plain56 test error above plain20',
          'depth': 'ResNet test error falls with depth'}


@pytest.mark.parametrize('check, changes', [
    ('degradation', {'plain56': _run(0.92, 0.78)}),  # deep plain net trains better
    ('residuals', {'resnet56': _run(0.70, 0.88)}),  # the ResNet trains worse than plain56
    ('test', {'plain56': _run(0.80, 0.90)}),  # deep plain net tests better
    ('depth', {'resnet56': _run(0.95, 0.80)}),  # deeper ResNet tests worse
])
def test_each_claim_check_can_fail(check, changes):
  from experiments import degradation
  holds = {r[1]: r[-1] for r in degradation.claim_checks(_four_runs(), 5000, 10000)}
  assert [holds[CHECKS[k]] for k in CHECKS] == ['yes'] * 4
  verdicts = {r[1]: r[-1] for r in degradation.claim_checks(_four_runs(**changes), 5000, 10000)}
  assert verdicts[CHECKS[check]] == '**no**'
  assert all(verdicts[CHECKS[k]] == 'yes' for k in CHECKS if k != check)


def test_claim_checks_use_the_seed_mean_and_name_the_uncertainty():
  from experiments import degradation
  # Seed 0 alone: ResNet-20 10% against ResNet-56 8%, the depth check would hold; over its
  # three seeds ResNet-20 averages 7.33%, below ResNet-56, so it must not.
  runs = _four_runs(resnet20=_run(0.91, 0.90), resnet20_seed1=_run(0.91, 0.94),
                    resnet20_seed2=_run(0.91, 0.94), resnet56=_run(0.95, 0.92))
  rows = {r[1]: r for r in degradation.claim_checks(runs, 5000, 10000)}
  depth = rows[CHECKS['depth']]
  assert depth[-1] == '**no**'
  assert 'resnet20 7.33 ± 2.31% (3 seeds)' in depth[2] and 'resnet56 8.00%' in depth[2]
  assert 'binomial SE of the 10,000-image test set' in depth[3]
  assert 'std over 3 seeds 2.31 pp' in depth[3]
  assert 'binomial SE of the 5,000-image training subset' in rows[CHECKS['degradation']][3]
  assert 'std over' not in rows[CHECKS['degradation']][3]  # one run each: no seed spread
  runs['resnet20_seed1'] = _run(0.91, 0.90)
  runs['resnet20_seed2'] = _run(0.91, 0.90)  # all three seeds at 10%: the check holds
  assert {r[1]: r[-1] for r in degradation.claim_checks(runs, 5000, 10000)}[
      CHECKS['depth']] == 'yes'


def test_claim_checks_wait_for_a_common_evaluation_point():
  from experiments import degradation
  runs = _four_runs(resnet20_seed1=_run(0.91, 0.86, step=5, finished=False))
  rows = {r[1]: r for r in degradation.claim_checks(runs, 5000, 10000)}
  assert rows[CHECKS['depth']][2:] == ['no common evaluation point yet', '', '']
  rows = {r[1]: r for r in degradation.claim_checks({'plain20': _run(0.9, 0.8)}, 5000, 10000)}
  assert rows[CHECKS['degradation']][2] == 'not run'  # not plain20 against itself
  assert rows[CHECKS['depth']][2] == 'needs two ResNets'


def test_seed_summary_mean_and_sample_std():
  from experiments import degradation
  runs = {'resnet20': _run(0.95, 0.90), 'resnet20_seed1': _run(0.96, 0.92),
          'resnet20_seed2': _run(0.97, 0.91), 'plain20': _run(0.9, 0.8)}
  summary = degradation.seed_summary(runs)
  assert list(summary) == ['plain20', 'resnet20']
  s = summary['resnet20']
  assert s['runs'] == ['resnet20', 'resnet20_seed1', 'resnet20_seed2']
  assert s['test']['mean'] == pytest.approx(9.0) and s['test']['std'] == pytest.approx(1.0)
  assert s['train']['mean'] == pytest.approx(4.0) and s['train']['std'] == pytest.approx(1.0)
  assert s['test']['n'] == 3 and s['finished'] and s['step'] == 10
  assert summary['plain20']['test']['std'] is None and summary['plain20']['finished']
  # Once a seed has finished, the mean is over the finished seeds at their last state, not at
  # the iteration a lagging seed has reached.
  runs['resnet20'] = _run(0.95, 0.90, step=20)
  runs['resnet20_seed1'] = _run(0.96, 0.92, step=20)
  runs['resnet20_seed2'] = _run(0.5, 0.5, step=5, finished=False)
  s = degradation.seed_summary(runs)['resnet20']
  assert s['in_mean'] == ['resnet20', 'resnet20_seed1'] and s['step'] == 20
  assert s['test']['mean'] == pytest.approx(9.0) and s['test']['std'] == pytest.approx(2 ** 0.5)
  entries = degradation.table6_entries(runs, degradation.seed_summary(runs))
  mean = next(e for e in entries if e['headline'] and e['model'] == 'resnet20')
  assert mean['row'] == 'resnet20: mean ± std over 2 finished seeds (of 3)'
  assert mean['within_band'] == 'inside so far (running)'
  for name in runs:  # none finished: all seeds, at the iteration every one has reached
    runs[name]['results'] = None
  s = degradation.seed_summary(runs)['resnet20']
  assert s['in_mean'] == s['runs'] and s['step'] == 5 and s['test'] is None  # no eval at <= 5


def test_band_verdict_is_a_function_of_the_data():
  from experiments import degradation
  assert degradation.band_verdict(8.75 + 1.4, 8.75, True) == 'yes'
  assert degradation.band_verdict(8.75 - 1.4, 8.75, True) == 'yes'
  assert degradation.band_verdict(8.75 + 1.6, 8.75, True) == '**no**'
  assert degradation.band_verdict(12.0, 8.75, False) == 'outside so far (running)'
  assert degradation.band_verdict(None, 8.75, True) == degradation.band_verdict(5.0, None, True)
  runs = {'resnet20': _run(0.91, 0.911), 'resnet20_seed1': _run(0.91, 0.907),
          'resnet20_seed2': _run(0.91, 0.909), 'resnet56': _run(0.95, 0.88)}
  entries = degradation.table6_entries(runs, degradation.seed_summary(runs))
  by_row = {e['row']: e for e in entries}
  mean = by_row['resnet20: mean ± std over 3 seeds']
  assert mean['headline'] and mean['within_band'] == 'yes'
  assert mean['difference_pp'] == pytest.approx(9.1 - 8.75)
  assert not by_row['resnet20_seed1']['headline']
  assert by_row['resnet56']['headline'] and by_row['resnet56']['within_band'] == '**no**'
  assert by_row['resnet56']['difference_pp'] == pytest.approx(12.0 - 6.97)
  table = degradation.table6_markdown(entries)
  assert '9.10 ± 0.20' in table and '+5.03' in table
  text = degradation.reading([], cifar_resnet.get_config('resnet20,quarter'), 'quarter', entries,
                             runs)
  assert "Outside Table 6's ±1.5 pp band**: resnet56 12.00% against 6.97%" in text
  assert 'resnet20' not in text.split('band**')[1].split('\n\n')[0]  # inside: not listed
  assert 'What a longer run would need' in text and '64,000 iterations' in text
  assert degradation.reading([], cifar_resnet.get_config('resnet20,quarter'), 'quarter',
                             entries[:4], runs) == ''  # all inside: nothing to say
  assert 'JPEG' not in text  # the data is named only when the runs say it is the JPEG copy
  on_jpeg = degradation.reading([], cifar_resnet.get_config('resnet20,quarter'), 'quarter',
                                entries, runs, 'CIFAR-10 (JPEG copy)')
  assert 'part of each gap is the data' in on_jpeg.split('band**')[1].split('\n\n')[0]
  assert 'JPEG' not in degradation.reading([], cifar_resnet.get_config('resnet20,quarter'),
                                           'quarter', entries[:4], runs, 'CIFAR-10 (JPEG copy)')


def test_reading_says_what_a_longer_run_needs_only_when_depth_fails():
  from experiments import degradation
  config = cifar_resnet.get_config('resnet20,quarter')
  rows = degradation.claim_checks(_four_runs(), 5000, 10000)
  assert degradation.reading(rows, config, 'quarter') == ''
  rows = degradation.claim_checks(_four_runs(resnet56=_run(0.95, 0.80)), 5000, 10000)
  text = degradation.reading(rows, config, 'quarter')
  assert 'Not reproduced here**: ResNet test error falls with depth' in text
  assert 'What a longer run would need' in text and '4,000 iterations instead of 16,000' in text


def test_reading_names_a_check_that_holds_by_under_two_standard_errors():
  from experiments import degradation
  config = cifar_resnet.get_config('resnet20,quarter')
  # ResNet-56 0.5 pp below ResNet-20 on 10,000 test images: about 1.0 binomial SE
  rows = degradation.claim_checks(_four_runs(resnet56=_run(0.95, 0.865)), 5000, 10000)
  assert [r[1] for r in degradation.narrow_checks(rows)] == [CHECKS['depth']]
  text = degradation.reading(rows, config, 'quarter')
  assert text.startswith('\n\n**Holds by a narrow margin**: ' + CHECKS['depth'])
  assert degradation.narrow_checks(degradation.claim_checks(_four_runs(), 5000, 10000)) == []
  failing = degradation.claim_checks(_four_runs(resnet56=_run(0.95, 0.859)), 5000, 10000)
  assert degradation.narrow_checks(failing) == []  # a check that fails is not called narrow


def test_time_to_accuracy_reached_and_not():
  from experiments import degradation
  curve = [(500, 0.55, 120.0), (1000, 0.9126, 250.0), (1500, 0.93, 380.0), (2000, 0.92, 500.0)]
  run = {'test': [{'step': s, 'accuracy': a, 'wall_time_s': w} for s, a, w in curve],
         'results': None}
  t = degradation.time_to_accuracy(run)
  assert t['target_accuracy_pct'] == pytest.approx(91.25)
  assert (t['reached'], t['step'], t['wall_time_s']) == (True, 1000, 250.0)
  assert (t['best_step'], t['best_wall_time_s']) == (1500, 380.0)
  assert t['evaluated_to_step'] == 2000 and not t['finished']
  t = degradation.time_to_accuracy(run, target_pct=95.0)
  assert (t['reached'], t['step'], t['wall_time_s']) == (False, None, None)
  assert t['best_accuracy_pct'] == pytest.approx(93.0) and t['best_step'] == 1500
  old = {'test': [{'step': 10, 'accuracy': 0.95}], 'results': {}}  # records without wall time
  t = degradation.time_to_accuracy(old)
  assert t['reached'] and t['step'] == 10 and t['wall_time_s'] is None and t['finished']
  table = degradation.tta_table({'resnet20': degradation.time_to_accuracy(run),
                                 'resnet20_seed1': degradation.time_to_accuracy(run, 95.0)})
  assert ('| resnet20 | iteration 1,000 | 4.2 min | 93.00% (iteration 1,500, 6.3 min) | '
          '2,000 (running) |') in table
  assert '| resnet20_seed1 | not reached | – |' in table
  runs = {'plain20': _run(0.9, 0.8), 'resnet56': _run(0.9, 0.8), 'resnet20_seed1': _run(0.9, 0.8),
          'resnet20': _run(0.9, 0.8)}
  assert degradation.tta_runs(runs) == ['resnet20', 'resnet20_seed1']
  assert degradation.tta_runs({'plain8': _run(0.9, 0.8), 'resnet8': _run(0.9, 0.8)}) == ['resnet8']


def test_timing_table_shows_finished_and_running_runs():
  from experiments import degradation
  done = _run(0.9, 0.8, step=16000)
  done['results'] = {'steps': 16000, 'wall_time_s': 5400.0, 'train_images_per_s': 512.3,
                     'host_cpu': 'AMD EPYC (2 cores)', 'git_commit': '3678b04'}
  running = _run(0.8, 0.7, step=4500, finished=False, wall=1800.0)
  running['last_step'], running['logged_images_per_s'] = 4600, 550.0
  table = degradation.timing_table({'resnet20_seed1': running, 'resnet20': done}, 16000)
  lines = table.splitlines()
  assert lines[2] == ('| resnet20 | 16,000 (finished) | 90 min | 512 | AMD EPYC (2 cores) | '
                      '3678b04 |')
  assert lines[3].startswith('| resnet20_seed1 | 4,600 of 16,000 (running) | 30 min at its last')
  assert '550 (median of the logs so far)' in lines[3]


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
