"""The benchmarks' arithmetic, tables, harness and lever registry (the timings themselves are not
tests)."""
import io
import json
import os
import subprocess
import sys
import types

import pytest

from benchmarks import harness, levers, suite_cache, time_to_accuracy, train_step


def _row(peak=None, jax_ips=100.0, torch_ips=50.0):
  return {'model': 'm', 'batch': 8, 'num_params': 10, 'macs': 1e9,
          'ratio': {'eager': jax_ips / torch_ips},
          'jax': {'defaults': {'images_per_s': jax_ips, 'loop_images_per_s': 95.0,
                               'compile_s': 1.0, 'peak_rss_mb': 10.0}},
          'pytorch': {'eager': {'images_per_s': torch_ips, 'peak_rss_mb': 5.0}},
          'peak_flops': peak}


def test_peak_flops_from_the_device_kind_or_the_override():
  assert train_step.peak_flops('NVIDIA H200') == 989e12
  assert train_step.peak_flops('NVIDIA A100-SXM4-80GB') == 312e12
  assert train_step.peak_flops('cpu') is None
  assert train_step.peak_flops('cpu', override_tflops=2.0) == 2e12


def test_table_gflops_and_mfu_by_hand():
  # 6 x 1e9 MACs x 100 img/s = 600 GFLOP/s; over a 1 TFLOP/s peak: 60%; PyTorch at 50 img/s: 30%.
  text = train_step.table([_row(peak=1e12)], ['defaults'])
  assert 'MFU jax / torch' in text
  assert '| 600.0 / 300.0 | 60.0% / 30.0% |' in text
  assert '95 (0.95)' in text  # the loop against the bare step
  assert 'MFU' not in train_step.table([_row()], ['defaults'])  # no peak known: no column


def test_table_shows_both_pytorch_modes_and_the_share_of_the_measured_peak():
  row = _row()
  row['pytorch']['compile'] = {'images_per_s': 200.0, 'peak_rss_mb': 7.0}
  row['ratio']['compile'] = 0.5
  text = train_step.table([row], ['defaults'], ['eager', 'compile'], cpu_peak=1.2e12)
  header, _, line = text.splitlines()
  assert 'pytorch eager img/s | pytorch compile img/s | jax / eager | jax / compile' in header
  assert 'GFLOP/s jax / eager / compile (% of peak)' in header
  # 6e9 FLOPs per image: 600, 300 and 1,200 GFLOP/s, i.e. 50%, 25% and 100% of 1.2 TFLOP/s.
  assert '| 2.00 | 0.50 |' in line and '| 600.0 (50%) / 300.0 (25%) / 1200.0 (100%) |' in line


def test_a_record_from_before_the_side_by_side_modes_is_upgraded():
  old = {'torch': {'mode': 'compile'}, 'rows': [
      {'ratio': 1.5, 'pytorch': {'images_per_s': 10.0}}, {'ratio': None, 'pytorch': None}]}
  data = train_step.upgrade_record(old)
  assert data['torch_modes'] == ['compile']
  assert data['rows'][0]['ratio'] == {'compile': 1.5}
  assert data['rows'][0]['pytorch'] == {'compile': {'images_per_s': 10.0}}
  assert data['rows'][1]['pytorch'] == {'compile': None}
  assert train_step.upgrade_record(data) == data  # today's form stays as it is


def test_the_before_contender_runs_the_other_checkouts_own_code(tmp_path):
  (tmp_path / 'benchmarks').mkdir()
  child = train_step.tree_contender(str(tmp_path), 'resnet20', 5, window_s=1.0)
  assert child.cwd == str(tmp_path)  # before the shared harness: train_step's own --serve child
  assert child.argv(serve=True)[1:4] == ['-m', 'benchmarks.train_step', '--child=jax:resnet20']
  (tmp_path / 'benchmarks' / 'harness.py').write_text('')
  argv = train_step.tree_contender(str(tmp_path), 'resnet20', 5).argv(serve=True)
  assert argv[1:4] == ['-m', 'benchmarks.harness', '--call=benchmarks.train_step:JaxBench']
  assert argv[-1] == '--serve'


def test_the_fma_loop_measures_a_peak_and_bfloat16_only_where_the_cpu_has_it():
  from benchmarks import peak
  from cnn_jax.kernels import library
  try:
    result = peak.measure(seconds=0.02, repeats=1)
  except library.Unavailable as e:
    pytest.skip(f'cannot build the FMA loop here: {e}')
  assert result['float32'] > 1e9 and result['threads'] >= 1
  has_bf16 = ' avx512_bf16' in open('/proc/cpuinfo').read()
  assert (result['bfloat16'] is not None) == has_bf16


def test_loop_cell_reports_the_median_of_the_alternating_windows_ratios():
  row = _row()
  row['jax']['defaults']['loop_over_step'] = 0.98  # the windows' median ratio, not 95 / 100
  assert '95 (0.98)' in train_step.table([row], ['defaults'])


def test_suite_cache_table_speed_up_is_against_the_cold_run_of_its_threshold():
  runs = [{'min_compile_secs': t, 'cold': cold, 'wall_s': wall, 'summary': 's',
           'cache_entries': 1, 'cache_mb': 1.0}
          for t, cold, wall in ((1.0, True, 600), (1.0, False, 300), (0.1, True, 900),
                                (0.1, False, 300))]
  lines = suite_cache.table(runs).splitlines()[2:]
  assert [l.split(' | ')[3] for l in lines] == ['1.00x', '2.00x', '1.00x', '3.00x']


def test_pytorch_resnet50_twin_has_the_published_parameter_count():
  pytest.importorskip('torch')
  from benchmarks import torch_models
  from cnn_jax import models
  import jax
  import jax.numpy as jnp
  theirs = torch_models.num_params(torch_models.create('resnet50'))
  shapes = jax.eval_shape(lambda: models.create('resnet50', num_classes=1000).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  ours = sum(int(x.size) for x in jax.tree.leaves(shapes['params']))
  assert theirs == ours == 25_557_032


def test_paired_ratio_is_the_median_of_the_rounds_ratios():
  # Round by round 2.0, 1.0, 1.5: median 1.5 (the ratio of the medians would be 1.6 / 1 here).
  assert harness.paired_ratio([2.0, 1.6, 1.5], [1.0, 1.6, 1.0]) == 1.5
  assert harness.paired_ratio([1.0], None) is None


@pytest.mark.parametrize('command,argv,message', [
    (train_step, ['--models=nope'], 'no benchmark twin'),
    (train_step, ['--variants=foo'], "--variants: unknown ['foo']"),
    (train_step, ['--torch_modes=jit'], "--torch_modes: unknown ['jit']"),
    (train_step, ['--compare_tree=/nonexistent'], 'no checkout of this project'),
    (levers, ['--sections=13'], "no lever numbered ['13']"),
    (levers, ['--sections=1,x'], "no lever numbered ['x']"),
    (time_to_accuracy, ['--frameworks=jax,tf'], "--frameworks: unknown ['tf']")])
def test_unknown_model_variant_section_or_framework_is_a_usage_error(command, argv, message,
                                                                      capsys):
  with pytest.raises(SystemExit) as e:
    command.main(argv)
  assert e.value.code == 2 and message in capsys.readouterr().err


def test_lever_sections_are_measured_in_the_registrys_order():
  assert levers.parse_args(['--sections=11,3,1']).numbers == [1, 3, 11]
  assert levers.parse_args([]).numbers == list(range(1, 9))


# --- the harness's turn taking


def test_turns_reverse_every_other_round():
  assert harness.turns(['a', 'b', 'c'], 3) == [
      (0, 'a'), (0, 'b'), (0, 'c'), (1, 'c'), (1, 'b'), (1, 'a'), (2, 'a'), (2, 'b'), (2, 'c')]
  assert harness.turns(['a', 'b'], 2, alternate=False) == [(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]


class _FakeServed:
  """A served child without a process: answers windows from `figures`, records every ask."""

  def __init__(self, log, label, figures, fail_at=None):
    self.log, self.label, self.figures, self.fail_at, self.asks = log, label, figures, fail_at, 0

  def ask(self, command):
    self.asks += 1
    if self.asks == self.fail_at:
      raise harness.ChildFailed(f'{self.label}: exited with 1', ['boom'])
    self.log.append((self.label, command))
    return self.figures[command].pop(0)

  def finish(self):
    self.log.append((self.label, 'done'))
    return {'summary_of': self.label}

  def kill(self):
    pass


def _fake_start(log, figures, fail=None):
  def start(label, child):
    del child
    if fail == (label, 'start'):
      raise harness.ChildFailed(f'{label}: exited with 1', ['no start'])
    fail_at = fail[1] if fail and fail[0] == label else None
    return _FakeServed(log, label, figures[label], fail_at)
  return start


def test_interleaved_takes_turns_with_the_loop_window_after_its_step_window():
  log = []
  figures = {'a': {'step': [10.0, 12.0], 'loop': [9.0, 12.0]}, 'b': {'step': [5.0, 4.0]}}
  children = {label: harness.Child('m:f') for label in figures}
  results, windows = harness.interleaved(children, 2, loop_of='a', gap_s=0,
                                         start=_fake_start(log, figures))
  assert log == [('a', 'step'), ('a', 'loop'), ('b', 'step'), ('b', 'step'), ('a', 'step'),
                 ('a', 'loop'), ('a', 'done'), ('b', 'done')]
  assert windows == {'a': [10.0, 12.0], 'b': [5.0, 4.0]}
  assert results['a']['images_per_s'] == 11.0 and results['a']['summary_of'] == 'a'
  assert results['a']['loop_over_step'] == pytest.approx((0.9 + 1.0) / 2)
  assert results['b']['runs'] == [5.0, 4.0] and 'loop_images_per_s' not in results['b']
  assert harness.paired_ratio(windows['a'], windows['b']) == pytest.approx((2.0 + 3.0) / 2)


@pytest.mark.parametrize('fail', [('b', 'start'), ('b', 2)])
def test_interleaved_goes_on_without_a_child_that_fails(fail, capsys):
  log = []
  figures = {'a': {'step': [1.0, 2.0, 3.0]}, 'b': {'step': [1.0, 1.0, 1.0]}}
  children = {label: harness.Child('m:f') for label in figures}
  results, windows = harness.interleaved(children, 3, gap_s=0,
                                         start=_fake_start(log, figures, fail))
  assert results['b'] is None and 'b' not in windows
  assert windows['a'] == [1.0, 2.0, 3.0] and results['a']['images_per_s'] == 2.0
  assert 'exited with 1' in capsys.readouterr().err


def test_fresh_rounds_and_alternating_keep_the_labels_order(monkeypatch):
  calls = []
  monkeypatch.setattr(harness, 'call', lambda child: calls.append(child.target) or len(calls))
  runs = harness.fresh_rounds({'x': harness.Child('m:x'), 'y': harness.Child('m:y')}, 2)
  assert calls == ['m:x', 'm:y', 'm:x', 'm:y'] and runs == {'x': [1, 3], 'y': [2, 4]}
  order = []
  assert harness.alternating(['p', 'q'], 2, lambda label: order.append(label) or label * 2) == {
      'p': ['pp', 'pp'], 'q': ['qq', 'qq']}
  assert order == ['p', 'q', 'p', 'q']


# --- the harness's children


def test_a_child_names_its_function_by_import_path(monkeypatch):
  child = train_step.lone('lenet5', 3)
  assert child.target == 'benchmarks.train_step:jax_child'
  assert child.kwargs == {'name': 'lenet5', 'steps': 3, 'batch': 64, 'dtype': 'float32'}
  argv = train_step.contender('jax', 'resnet20', 4, window_s=1.5).argv(serve=True)
  assert argv[1:4] == ['-m', 'benchmarks.harness', '--call=benchmarks.train_step:JaxBench']
  assert json.loads(argv[4].removeprefix('--kwargs='))['min_seconds'] == 1.5
  assert argv[-1] == '--serve'
  def fn():  # as if defined in a module run with -m
    pass
  fn.__module__, fn.__qualname__ = '__main__', 'run'
  monkeypatch.setitem(sys.modules, '__main__',
                      types.SimpleNamespace(__spec__=types.SimpleNamespace(name='benchmarks.x')))
  assert harness.target_of(fn) == 'benchmarks.x:run'
  assert harness.resolve('benchmarks.train_step:JaxBench') is train_step.JaxBench


def test_child_env_keeps_the_users_xla_flags_and_sets_the_allocator(monkeypatch):
  monkeypatch.setattr(harness.runtime, 'user_xla_flags', lambda: '--user_flag')
  monkeypatch.setenv('XLA_FLAGS', '--user_flag --project_flag')
  assert harness.child_env({'A': '1'})['XLA_FLAGS'] == '--user_flag'
  assert harness.child_env({'XLA_FLAGS': '--own'})['XLA_FLAGS'] == '--own'
  assert harness.child_env({'CNN_JAX_XLA_DEFAULTS': '0'})['CNN_JAX_MALLOC'] == 'system'
  assert harness.child_env({}, malloc='glibc')['CNN_JAX_MALLOC'] == 'glibc'


def test_a_failed_child_raises_with_its_last_error_lines(monkeypatch):
  out = subprocess.CompletedProcess([], 1, stdout='noise\n', stderr='a\nb\nc\nValueError: x\n')
  monkeypatch.setattr(harness, 'run', lambda *a, **k: out)
  with pytest.raises(harness.ChildFailed) as e:
    harness.call(harness.Child('m:f'))
  assert e.value.tail == ['b', 'c', 'ValueError: x']
  out = subprocess.CompletedProcess([], 0, stdout=f'noise\n{harness.REPLY}[1, 2]\nmore\n',
                                    stderr='')
  assert harness.call(harness.Child('m:f')) == [1, 2]

  def timeout(*a, **k):
    raise subprocess.TimeoutExpired('x', 1)
  monkeypatch.setattr(harness, 'run', timeout)
  assert harness.call(harness.Child('m:f'), timeout=1) is None


def test_a_child_process_answers_through_the_harness():
  # One real child (runtime.start() and the reply on stdout); XLA's settings off: no restart.
  pid = harness.call(harness.Child('os:getpid', env={'CNN_JAX_XLA_DEFAULTS': '0'}), timeout=120)
  assert isinstance(pid, int) and pid != os.getpid()


def test_serve_answers_each_request_then_the_summary(monkeypatch, capsys):
  class Bench:
    n, closed = 7, False

    def step(self):
      return 1.5

    def loop(self):
      return 2.5

    def summary(self):
      return {'closed': self.closed}

    def close(self):
      self.closed = True
  monkeypatch.setattr('sys.stdin', io.StringIO('step\nloop\ndone\nstep\n'))
  harness.serve(Bench())
  lines = capsys.readouterr().out.splitlines()
  assert all(line.startswith(harness.REPLY) for line in lines)
  assert [json.loads(line[len(harness.REPLY):]) for line in lines] == [
      {'ready': True, 'steps_per_window': 7}, {'images_per_s': 1.5}, {'images_per_s': 2.5},
      {'closed': True}]


# --- the levers


def _fake_results(number: int):
  """Results of the shape each lever's measure returns, for its render."""
  two = lambda a, b: {a: [100.0, 110.0], b: [120.0, 130.0]}
  names = ('forward', 'input gradient', 'kernel gradient', 'BN+ReLU forward', 'BN+ReLU fwd+bwd')
  lone = {'images_per_s': 100.0, 'page_faults_per_step': 5.0, 'user_s_per_step': 0.1,
          'sys_s_per_step': 0.01}
  return {
      1: {'model': 'resnet20', 'runs': {'XLA defaults': {'images_per_s': 100.0, 'compile_s': 2.0},
                                        'other': {'failed': 'ValueError: x'}}},
      2: {'layers': {'project defaults (YNN)': [['l', '1', '2', '3', '4 (1e-07)', '5 (1e-07)']]}},
      3: {'model': 'resnet20', 'runs': two('flax', 'cnn_jax')},
      4: {'rows': [{'model': 'lenet5', 'chunk': 8, 'runs': {'one': 10.0, 'scan': 5.0}},
                   {'model': 'resnet20', 'chunk': 4, 'runs': None}]},
      5: {'native': False, 'flags': 'none',
          'runs': [['lenet5', {'float32': 100.0, 'bfloat16': 90.0}]]},
      6: {'layers': [['p', 1.0, 2.0, 1.0, 1.0]], 'steps': {'vgg': two('flax', 'cnn_jax')}},
      7: {'layers': [['s', True, 1.0, 2.0, 1.0, 1.0, 1e-7]], 'steps': {'vgg': two('lax', 'ours')}},
      8: {'rounds': 2, 'layers': {'layers': [{'layer': 'k', 'count': 2,
                                              'xla': dict.fromkeys(names, 1.0),
                                              'kernels': dict.fromkeys(names, 0.5)}]},
          'steps': {'lenet5': {'a': [lone, lone], 'b': [lone, lone]}}},
      9: {'rounds': 2, 'steps': {'lenet5': two('dot,eltwise,reduce', 'dot,reduce')}},
      10: two('as written', 'pool first'),
      11: {'rounds': 2, 'steps': {'resnet20': two('oneDNN', 'direct')}},
      12: {'rounds': 2, 'steps': {'resnet20': two('glibc, huge pages', 'mimalloc, purge off')}},
  }[number]


def test_every_lever_section_is_a_module_with_measure_and_render():
  assert sorted(levers.SECTIONS) == list(range(1, 13))
  for number, lever in levers.SECTIONS.items():
    assert lever.__name__.startswith('benchmarks.levers.'), number
    assert callable(lever.measure) and callable(lever.render), lever.__name__
    assert f'{number}. ' in levers.__doc__ and lever.__name__.split('.')[-1] in levers.__doc__
    text = lever.render(_fake_results(number))
    assert text.startswith(f'## {number}. ') and '|---|' in text, lever.__name__


# --- bfloat16 in training


def test_bfloat16_matches_only_within_the_seed_spread():
  from benchmarks import bfloat16_training
  runs = lambda errors: [{'seed': i, 'test_error': e, 'images_per_s': 100.0 + i}
                         for i, e in enumerate(errors)]
  close = bfloat16_training.compare({'float32': runs([0.20, 0.22, 0.21]),
                                     'bfloat16': runs([0.21, 0.23, 0.22])})
  assert close['matches'] is True  # means 1 pp apart, std 1 pp
  apart = bfloat16_training.compare({'float32': runs([0.20, 0.22, 0.21]),
                                     'bfloat16': runs([0.30, 0.31, 0.32])})
  assert apart['matches'] is False and 'does NOT match' in bfloat16_training.render(apart, 'w')
  one_seed = bfloat16_training.compare({'float32': runs([0.2]), 'bfloat16': runs([0.2])})
  assert one_seed['matches'] is None and one_seed['stats']['float32']['images_per_s'] == 100.0


def test_bfloat16_training_sweep_has_both_dtypes_over_the_cpu_recipe_cut_to_2000_steps():
  from cnn_jax import sweep
  module, arg = sweep.load_config_file('configs/bfloat16_training.py')
  config = module.get_config(arg)
  assert (config.num_steps, tuple(config.lr_boundaries)) == (2000, (1000, 1500))
  assert config.model == 'resnet20' and config.learning_rate == 0.1
  assert module.get_sweep(arg) == [{'dtype': 'float32'}, {'dtype': 'bfloat16'}]


def test_suite_cache_records_no_path_of_the_measuring_machine():
  inside = str(suite_cache.ROOT / 'benchmarks' / 'results' / 'suite.md')
  assert suite_cache.recorded_args(['--runs=2', f'--out={inside}', '--out=/tmp/q/suite.md', '-k',
                                    'slow']) == ('--runs=2 --out=benchmarks/results/suite.md '
                                                 '--out=<elsewhere>/suite.md -k slow')
