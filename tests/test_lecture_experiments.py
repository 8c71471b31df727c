"""The lecture-claim experiments: their measurements on known inputs, and their toy presets."""
import json
import math

import numpy as np
import pytest

from experiments import cnn_vs_fc, init_variance, lr_sweep, visualize_filters
from experiments import report_parts, run_records
from tests.helpers import cifar_like_folder, run_module


def test_init_variance_toy_measures_the_c12_facts():
  p = init_variance.PRESETS['toy']
  data = init_variance.run_all(p['depth'], p['width'], p['batch'], p['seeds'])
  he = init_variance.ratio_stats(data[('relu', 'He (2/n)')]['act_var'])
  lecun = init_variance.ratio_stats(data[('relu', 'LeCun (1/n)')]['act_var'])
  assert he['finite'] and he['max_over_min'] <= 2, he
  assert abs(lecun['per_layer_ratio'] - 0.5) < 0.1, lecun  # theory: exactly 1/2 per ReLU layer
  # tanh is ~linear near 0: LeCun keeps the variance far better than through ReLU.
  assert init_variance.ratio_stats(data[('tanh', 'LeCun (1/n)')]['act_var'])['per_layer_ratio'] > 0.8
  rows, holds = init_variance.checks(data, p['depth'])
  assert holds, rows
  assert len(data[('relu', 'He (2/n)')]['grad_std']) == p['depth']


def test_ratio_stats_flags_overflow_and_underflow():
  assert init_variance.ratio_stats([1.0, 2.0, math.inf])['what'] == 'overflows'
  s = init_variance.ratio_stats([1e-3, 1e-20, 0.0])
  assert not s['finite'] and s['first_non_finite_layer'] == 3 and s['what'] == 'underflows to 0'
  assert init_variance.ratio_stats([4.0, 2.0, 1.0])['per_layer_ratio'] == pytest.approx(0.5)


def test_shift_moves_digits_and_fills_with_background():
  img = np.zeros((1, 6, 6, 1), np.uint8)
  img[0, 2, 3] = 7
  img[0, 0, 0] = 9  # leaves the frame when moved up or left
  right = cnn_vs_fc.shift_images(img, 0, 2)
  assert right[0, 2, 5, 0] == 7 and right[0, 0, 2, 0] == 9 and right.sum() == 16
  up = cnn_vs_fc.shift_images(img, -1, 0)
  assert up[0, 1, 3, 0] == 7 and up.sum() == 7
  np.testing.assert_array_equal(cnn_vs_fc.shift_images(img, 0, 0), img)


def test_orientation_selectivity():
  edge = np.zeros((5, 5))
  edge[:, :2], edge[:, 3:] = -1.0, 1.0  # a vertical edge
  osi, angle = visualize_filters.orientation(edge)
  assert osi > 0.5 and abs(angle - 90) < 1  # a 5x5 step edge: 0.56 (finite-size leakage)
  osi_h, angle_h = visualize_filters.orientation(edge.T)
  assert osi_h == pytest.approx(osi) and min(angle_h, 180 - angle_h) < 1
  blob = np.outer(np.hanning(5), np.hanning(5))  # isotropic
  assert visualize_filters.orientation(blob)[0] < 0.1


def test_colour_index():
  rng = np.random.default_rng(0)
  spatial = rng.standard_normal((3, 3, 1))
  grey = np.repeat(spatial, 3, axis=-1)  # the same kernel on R, G and B
  assert visualize_filters.colour_index(grey) == pytest.approx(0.0, abs=1e-12)
  opponent = spatial * np.array([1.0, -1.0, 0.0])  # red against green: no luminance part
  assert visualize_filters.colour_index(opponent) == pytest.approx(1.0)
  mixed = grey + opponent  # orthogonal parts, energies 3|s|^2 and 2|s|^2
  assert visualize_filters.colour_index(mixed) == pytest.approx(2 / 5)
  gaussian = [visualize_filters.colour_index(rng.standard_normal((3, 3, 3))) for _ in range(4000)]
  assert np.mean(gaussian) == pytest.approx(2 / 3, abs=0.01)  # 2 of 3 colour directions
  assert visualize_filters.chroma_dc_share(np.ones((3, 3, 1)) * [0.5, -0.2, 0.1]) == pytest.approx(1)
  checker = np.indices((3, 3)).sum(0) % 2 * 2.0 - 1  # +-1 taps with mean 1/9: DC share (1/9)^2
  assert visualize_filters.chroma_dc_share(checker[..., None] * [1.0, -1.0, 0.0]) == pytest.approx(1 / 81)
  stats = visualize_filters.colour_stats(np.stack([grey, opponent], -1))
  assert [round(s['colour_index'], 6) for s in stats] == [0.0, 1.0]


@pytest.mark.slow
@pytest.mark.parametrize('name', ['lr_sweep', 'cnn_vs_fc', 'gd_variants', 'visualize_filters'])
def test_toy_preset_writes_its_report(tmp_path, name):
  extra = []
  if name == 'visualize_filters':  # its CIFAR-10 half on a generated folder
    data = cifar_like_folder(tmp_path / 'data', per_class=(32, 4))
    extra = [f'--cifar_set={kv}' for kv in (f'data.data_dir={data}', 'data.validation_size=64',
                                           'data.train_subset=256', 'data.train_eval_size=64',
                                           'eval_batch_size=64')]
  out = run_module([f'experiments.{name}', '--preset=toy', f'--workdir={tmp_path}', *extra],
                   timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((tmp_path / 'results.json').read_text())
  report = (tmp_path / 'report.md').read_text()
  assert results['command'].startswith(f'python -m experiments.{name}') and results['checks']
  for fact in ('**Hardware**', '**Data**', 'wall time', '## Environment'):
    assert fact in report
  if name == 'lr_sweep':  # 31 steps already separate the three rates
    assert results['all_checks_hold'], results['checks']
    again = lr_sweep.recompute(tmp_path)  # from the report's curves.csv and results.json alone
    assert again.stored == () and again.checks.rows == results['checks']
    assert again.headline == results['headline']
  if name == 'cnn_vs_fc':  # the parameters, 61,706 vs 1,453,094: a fact, not counted
    assert results['facts'][0][1].startswith('parameters') and results['facts'][0][-1] == 'yes'
    assert {s['num_params'] for s in results['settings']} == {61706, 1453094}
  if name == 'gd_variants':  # the same number of examples seen: a fact, not counted
    assert results['facts'][0][1].startswith('examples seen') and results['facts'][0][-1] == 'yes'
  if name == 'visualize_filters':
    assert len(results['filters']) == 6 and (tmp_path / 'filters.png').exists()
    cifar = results['cifar']
    assert len(cifar['filters']) == 16 and (tmp_path / 'cifar_filters.png').exists()
    assert all(0 <= f['colour_index'] <= 1 for f in cifar['filters'])
    assert len(results['checks']) == 3 and '## CIFAR-10 first layer' in report


def _summary(**inits):
  base = {'runs': 1, 'finished': 1, 'diverged': 0, 'num_test': 10_000, 'signal_first': 1.0}
  return {k: {**base, **v} for k, v in inits.items()}


def test_init_training_checks_hold_and_fail_on_the_numbers():
  good = _summary(he=dict(test_accuracy=0.45, final_train_loss=1.5, signal_last=0.2),
                  lecun=dict(test_accuracy=0.2, final_train_loss=2.2, signal_last=2e-4),
                  small=dict(test_accuracy=0.1, final_train_loss=2.3, signal_last=0.0),
                  normal=dict(finished=0, diverged=1, test_accuracy=math.nan,
                              final_train_loss=math.nan, signal_last=math.inf))
  rows = init_variance.training_checks(good)
  assert len(rows) == 5 and all(r[-1] == 'yes' for r in rows), rows
  bad = _summary(he=dict(test_accuracy=0.105, final_train_loss=2.3, signal_last=0.2),
                 lecun=dict(test_accuracy=0.3, final_train_loss=1.9, signal_last=0.1),
                 small=dict(test_accuracy=0.1, final_train_loss=2.3, signal_last=0.0),
                 normal=dict(test_accuracy=0.3, final_train_loss=1.9, signal_last=5.0))
  holds = [r[-1] for r in init_variance.training_checks(bad)]
  assert holds == ['**no**'] * 5, holds


@pytest.mark.slow  # three small CIFAR trainings in subprocesses: ~90 s of CPU
def test_init_variance_toy_trains_the_plain_net_under_each_init(tmp_path):
  data = cifar_like_folder(tmp_path / 'data', per_class=(32, 4))
  work = tmp_path / 'work'
  out = run_module(['experiments.init_variance', '--preset=toy', f'--workdir={work}',
                    f'--set=data.data_dir={data}', '--set=data.validation_size=64',
                    '--set=data.train_subset=256', '--set=data.train_eval_size=64',
                    '--set=eval_batch_size=64'],
                   env_extra={'CNN_JAX_CACHE_DIR': str(tmp_path / 'cache')}, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads((work / 'results.json').read_text())
  training = results['training']
  assert set(training) == {'he', 'small', 'normal'}
  assert training['he']['finished'] == 1 and training['small']['finished'] == 1
  he, small, normal = training['he'], training['small'], training['normal']
  assert 0 < he['signal_last'] < 10 and small['signal_last'] < 1e-6
  # N(0, 1): x ~8.5 per conv layer, through 7 layers of the toy's plain-8 still finite in float32
  assert normal['diverged'] == 1 or normal['signal_last'] > 1e3 * he['signal_last'], normal
  assert (work / 'training.png').stat().st_size > 1000
  report = (work / 'report.md').read_text()
  assert 'plain-20 trained under each initialisation' in report and 'N(0, 1) init' in report


def test_clock_keeps_the_runs_wall_time_for_a_report_only_regeneration(tmp_path, monkeypatch):
  from experiments import lecture_common
  now = [1000.0]
  monkeypatch.setattr(lecture_common.time, 'time', lambda: now[0])
  run = lecture_common.Clock().bind(tmp_path, report_only=False)
  now[0] += 3600.0  # the run trains for an hour
  assert run.facts() == {'experiment_wall_time_s': 3600.0}  # the load is the runs' own record
  saved = json.loads((tmp_path / lecture_common.Clock.FILE).read_text())
  now[0] += 50.0  # later, a regeneration of the report takes seconds
  regen = lecture_common.Clock().bind(tmp_path, report_only=True)
  now[0] += 4.0
  assert regen.facts() == saved
  assert regen.facts()['experiment_wall_time_s'] == 3600.0
  # An older clock file also held this process's load: a regeneration drops it.
  (tmp_path / lecture_common.Clock.FILE).write_text(json.dumps(
      {'experiment_wall_time_s': 3600.0, 'load_average_start': 6.3, 'cpu_count': 2, 'nice': 19}))
  assert regen.facts() == {'experiment_wall_time_s': 3600.0}
  # Without saved facts a regeneration says whose clock it reports.
  other = lecture_common.Clock().bind(tmp_path / 'none', report_only=True)
  now[0] += 4.0
  facts = other.facts()
  assert facts['experiment_wall_time_s'] == 4.0 and 'report process' in facts['clock_of']


def _run(run_dir, load=None, cores=2, clock=None, host=None):
  """A finished run's results.json, with the load it recorded (cnn_jax.train's keys) or none;
  `clock`: the load an older experiment kept beside the run instead; `host`: the host CPU it
  recorded (with one CPU device), or none."""
  from experiments import lecture_common
  run_dir.mkdir(parents=True)
  results = {'wall_time_s': 60.0}
  if host is not None:
    results.update(host_cpu=host, platform='cpu', device_kind='cpu', device_count=1)
  if load is not None:
    results.update(load_average_start=load, load_average_end=load + 1.0, cpu_count=cores)
  (run_dir / 'results.json').write_text(json.dumps(results))
  if clock is not None:
    (run_dir / lecture_common.Clock.FILE).write_text(json.dumps(
        {'experiment_wall_time_s': 61.0, 'load_average_start': clock, 'cpu_count': cores}))
  return run_dir


def test_runs_load_reads_each_finished_runs_own_record(tmp_path):
  dirs = [_run(tmp_path / 'a', 0.3), _run(tmp_path / 'b', 1.6), _run(tmp_path / 'c'),
          _run(tmp_path / 'd', clock=0.9), tmp_path / 'unfinished']
  (tmp_path / 'unfinished').mkdir()
  load = run_records.runs_load(dirs)
  assert load == {'runs': 4, 'recorded': 3, 'load_average_start': [0.3, 1.6],
                  'cpu_count': [2, 2], 'busy': ['b']}
  assert run_records.runs_load(dirs) == load  # from the files alone: a rerun says the same
  assert run_records.runs_load([tmp_path / 'c']) == {'runs': 1, 'recorded': 0}
  assert run_records.runs_load([]) == {'runs': 0, 'recorded': 0}


@pytest.mark.parametrize('loads, words', [
    ([None, None], ["The 2 runs did not record the machine's load", 'is not known']),
    ([0.3, 0.9], ['Trained on an otherwise idle machine', '0.3 to 0.9 at the start of the 2 runs',
                  'on 2 cores']),
    ([1.5, 3.2], ['Trained while another job ran', '1.5 to 3.2', 'not a speed figure']),
    ([0.3, 1.6, None], ['Not idle throughout', '0.3 to 1.6', 'r1 started above half the cores',
                        '(1 of the 3 runs did not record it)', 'not a speed figure']),
])
def test_busy_note_says_what_the_runs_recorded(tmp_path, loads, words):
  load = run_records.runs_load(_run(tmp_path / f'r{i}', l) for i, l in enumerate(loads))
  note = run_records.busy_note(load)
  for w in words:
    assert w in note, note
  assert ('otherwise idle' in note) == (load['recorded'] > 0 and not load['busy'])
  assert run_records.busy_note({'runs': 0, 'recorded': 0}).startswith('No run trained')


def test_header_reports_the_runs_load_not_the_report_process(tmp_path):
  facts = {'experiment_wall_time_s': 5.0,
           **run_records.runs_facts([_run(tmp_path / 'r', 3.0, host='Host A')])}
  text = report_parts.header(title='t', claims='c', command='x', data='d', protocol='p',
                               train_wall_s=60.0, facts=facts, generator='g')
  assert 'experiment\n  wall time 5 s. Trained while another job ran: 1-minute load average 3.0 ' \
         'at the start of the run, on 2 cores' in text


HOST_A, HOST_B = 'Host A (2 cores, AVX-512)', 'Host B (16 cores, AVX2)'


def _report_process_on_host_b(monkeypatch):
  """The process that writes the report runs on HOST_B (another machine than the runs')."""
  from cnn_jax import report
  env = {**report.environment(), 'host_cpu': HOST_B, 'devices': 'gpu:H100', 'device_count': 8}
  monkeypatch.setattr(report, 'host_cpu', lambda: HOST_B)
  monkeypatch.setattr(report, 'environment', lambda: env)


def test_header_names_the_runs_host_not_the_report_process(tmp_path, monkeypatch):
  """Runs recorded on host A, the report written (--report_only) on host B: the header's
  hardware is A's; B appears only in the environment section, labelled as the report's."""
  _report_process_on_host_b(monkeypatch)
  facts = {'experiment_wall_time_s': 5.0,
           **run_records.runs_facts([_run(tmp_path / f'r{i}', 0.2, host=HOST_A)
                                        for i in range(2)])}
  text = report_parts.header(title='t', claims='c', command='x', data='d', protocol='p',
                               train_wall_s=60.0, facts=facts, generator='g')
  hardware = next(l for l in text.splitlines() if l.startswith('- **Hardware**'))
  assert hardware.startswith(f'- **Hardware**: 1 x cpu:cpu, host CPU {HOST_A}; '), hardware
  assert HOST_B not in text and 'gpu' not in text
  footer = report_parts.footer()
  assert footer.startswith(f'## Environment\n\n{report_parts.ENVIRONMENT_NOTE}\n\n')
  assert f'- **host_cpu**: {HOST_B}' in footer  # the report process's, under its label
  # No run recorded its host: the header says so, and never names the report process's.
  bare = run_records.runs_facts([_run(tmp_path / 'bare')])
  text = report_parts.header(title='t', claims='c', command='x', data='d', protocol='p',
                               train_wall_s=None, facts={'experiment_wall_time_s': 1.0, **bare},
                               generator='g')
  assert '- **Hardware**: device and host CPU not recorded by the run; experiment' in text
  assert HOST_B not in text


def test_machine_note_lists_differing_hosts_with_their_runs(tmp_path):
  dirs = [_run(tmp_path / 'a', host=HOST_A), _run(tmp_path / 'b', host=HOST_B),
          _run(tmp_path / 'c', host=HOST_A), _run(tmp_path / 'd')]
  host = run_records.runs_facts(dirs)['runs_host']
  assert host == {'runs': 4, 'recorded': 3, 'hosts': {HOST_A: 2, HOST_B: 1},
                  'devices': {'1 x cpu:cpu': 3}}
  assert run_records.machine_note(host) == (
      f'1 x cpu:cpu, host CPU {HOST_A} (2 runs) and {HOST_B} (1 run) '
      '(1 of the 4 runs did not record it)')
  assert run_records.machine_note(host, committed=True).endswith(
      '(no committed record of it for 1 of the 4 runs)')
  assert run_records.machine_note(run_records.host_record({})) == (
      'device and host CPU not recorded (no run finished)')
  assert run_records.machine_note(run_records.host_record(None), committed=True) == (
      "device and host CPU in none of the runs' committed records")
  assert run_records.busy_note(run_records.load_record(None)).startswith(
      "The runs did not record the machine's load")


def test_degradation_hardware_counts_each_host(tmp_path):
  from experiments import degradation
  records = run_records.run_records([_run(tmp_path / n, host=h) for n, h in
                                        (('plain20', HOST_A), ('resnet20', HOST_B),
                                         ('plain56', HOST_A))])
  text = degradation.hardware(records)
  assert text.startswith(f'1 x cpu:cpu, host CPU {HOST_A} (2 runs) and {HOST_B} (1 run). '
                         'The runs were not all trained on the same kind of machine'), text
  one = {'resnet20': records['resnet20']}
  assert degradation.hardware(one) == f'1 x cpu:cpu, host CPU {HOST_B}'


def test_lenet5_header_names_the_runs_host(tmp_path, monkeypatch):
  """lenet5_mnist's report from a run recorded on host A, written on host B: host A; a run
  without the record: 'not recorded by the run', never B."""
  import shutil  # pylint: disable=g-import-not-at-top
  from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top
  from experiments import lenet5_mnist
  from tests.helpers import ROOT
  _report_process_on_host_b(monkeypatch)
  for name in ('results.json', 'metrics.jsonl', 'config.json'):
    shutil.copy(f'{ROOT}/reports/lenet5_mnist/{name}', tmp_path / name)
  results = json.loads((tmp_path / 'results.json').read_text())
  config = ConfigDict(json.loads((tmp_path / 'config.json').read_text()))
  for host, says in ((HOST_A, HOST_A), (None, 'not recorded by the run')):
    results['host_cpu'] = host
    text = lenet5_mnist.write_report(tmp_path, results, config, keep_environment=False).read_text()
    assert f'host CPU\n  {says}; wall time' in text
    assert text.count(HOST_B) == 1 and report_parts.ENVIRONMENT_NOTE in text
