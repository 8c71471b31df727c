"""cnn_jax.sweep: grid syntax, early failures, resume/skip, aggregation over seeds."""
import csv
import json
import math
import statistics
import textwrap

import pytest

from cnn_jax import sweep, train
from cnn_jax.config_base import ConfigError
from tests.helpers import run_module, tiny_config

TINY_CONFIG_FILE = '''
from tests.helpers import tiny_config

def get_config(arg=None):
  return tiny_config(num_epochs=1, **({'learning_rate': float(arg)} if arg else {}))
'''


def test_axis_syntax():
  assert sweep.parse_axis('learning_rate=[1,0.1,0.01]') == ('learning_rate', [1, 0.1, 0.01])
  assert sweep.parse_axis('model=[lenet5, mlp]') == ('model', ['lenet5', 'mlp'])
  assert sweep.parse_axis("model_kwargs.hidden=[(300,100),(84,)]")[1] == [(300, 100), (84,)]
  for bad in ('learning_rate=0.1', 'learning_rate', '=[1]', 'learning_rate=[]'):
    with pytest.raises(sweep.SweepError, match='KEY=\\[v1,v2|non-empty'):
      sweep.parse_axis(bad)


def test_grid_order_names_and_settings():
  axes = [sweep.parse_axis('learning_rate=[0.1,0.01]'), sweep.parse_axis('momentum=[0,0.9]')]
  members = sweep.build_members(tiny_config(), sweep.expand([{'batch_size': 50}], axes, seeds=2))
  assert len(members) == 8
  assert members[3].name == 'batch_size=50,learning_rate=0.1,momentum=0.9,seed=1'
  assert members[3].config.momentum == 0.9 and members[3].config.seed == 1
  assert members[3].setting == {'batch_size': 50, 'learning_rate': 0.1, 'momentum': 0.9}
  assert members[4].config.learning_rate == 0.01


def test_bad_keys_and_values_fail_before_anything_runs(tmp_path):
  with pytest.raises(ConfigError, match="Unknown config key 'learnin_rate'.*'learning_rate'"):
    sweep.build_members(tiny_config(), [{'learnin_rate': 1.0}])
  with pytest.raises(sweep.SweepError, match="Sweep member optimizer=adam: .*optimizer='adam'"):
    sweep.build_members(tiny_config(), [{'optimizer': 'adam'}])
  with pytest.raises(sweep.SweepError, match="has no field.*'widths'"):
    sweep.build_members(tiny_config(), [{'model': 'mlp', 'model_kwargs.widths': (10,)}])
  with pytest.raises(sweep.SweepError, match='both named'):
    sweep.build_members(tiny_config(), [{'seed': 1}, {'seed': 1}])
  out = run_module(['cnn_jax.sweep', '--config=configs/lenet5_mnist.py',
                    '--sweep=momentum=[0,0.9]', '--sweep=learnin_rate=[1,0.1]',
                    f'--workdir={tmp_path / "w"}'], timeout=300)
  assert out.returncode == 2, out.stderr
  assert "Unknown config key 'learnin_rate'. Did you mean 'learning_rate'" in out.stderr
  assert not (tmp_path / 'w').exists()


def test_config_file_get_sweep_times_axes_times_seeds(tmp_path):
  path = tmp_path / 'cfg.py'
  path.write_text(TINY_CONFIG_FILE + textwrap.dedent('''
      def get_sweep(arg=None):
        return [{'model': 'lenet5'}, {'model': 'lenet5_classic'}]
      '''))
  spec = sweep.Sweep(f'{path}:0.03', axes=('batch_size=[50,100]',), seeds=3)
  members = spec.members()
  assert len(members) == 2 * 2 * 3
  assert members[-1].name == 'model=lenet5_classic,batch_size=100,seed=2'
  assert all(m.config.learning_rate == 0.03 for m in members)
  assert spec.command('W', '--member=5')[-2:] == ['--workdir=W', '--member=5']


def _results(workdir, name):
  return json.loads((workdir / name / 'results.json').read_text())


def test_sweep_resumes_skips_and_aggregates_over_seeds(tmp_path):
  """Member 1 is interrupted; the sweep runs member 0 and resumes member 1; a rerun skips both;
  sweep.csv holds the mean and sample std of the two seeds."""
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(TINY_CONFIG_FILE)
  workdir = tmp_path / 'sweep'
  members = sweep.Sweep(str(cfg), seeds=2).members()
  assert [m.name for m in members] == ['seed=0', 'seed=1']
  halted = train.train_and_evaluate(members[1].config, workdir / 'seed=1',
                                    should_stop=lambda step: step >= 7, command='test')
  assert halted['status'] == 'interrupted'
  commands = lambda m: f'member {m.index}'
  assert sweep.run_sequential(members, workdir, commands) == 'done'
  results = [_results(workdir, m.name) for m in members]
  assert [r['steps'] for r in results] == [20, 20] and results[1]['command'] == 'member 1'
  mtimes = [(workdir / m.name / 'results.json').stat().st_mtime for m in members]
  assert sweep.pending(members, workdir) == []
  assert sweep.run_sequential(members, workdir, commands) == 'done'
  assert [(workdir / m.name / 'results.json').stat().st_mtime for m in members] == mtimes

  summary = sweep.aggregate(members, workdir)
  with (workdir / 'sweep.csv').open() as f:
    (row,) = list(csv.DictReader(f))
  accs = [r['test_accuracy'] for r in results]
  assert row['n_seeds'] == '2' and summary['done'] == 2
  assert math.isclose(float(row['test_accuracy_mean']), statistics.mean(accs))
  assert math.isclose(float(row['test_accuracy_std']), statistics.stdev(accs))
  assert '2 of 2 members finished' in (workdir / 'sweep.md').read_text()
  assert len((workdir / 'members.csv').read_text().splitlines()) == 3


@pytest.mark.slow
def test_cli_parallel_member_and_aggregate_only(tmp_path):
  """The command line: two members at once in subprocesses (each `--member=i`), then a rerun
  that skips them, then `--aggregate_only`."""
  cfg = tmp_path / 'cfg.py'
  cfg.write_text(TINY_CONFIG_FILE)
  workdir = tmp_path / 'sweep'
  args = ['cnn_jax.sweep', f'--config={cfg}:0.03', '--sweep=batch_size=[50,100]',
          f'--workdir={workdir}']
  out = run_module(args + ['--parallel=2'], timeout=900)
  assert out.returncode == 0, out.stderr
  names = ['batch_size=50', 'batch_size=100']
  assert [_results(workdir, n)['steps'] for n in names] == [20, 10]
  assert _results(workdir, names[1])['command'].endswith(f'--workdir={workdir} --member=1')
  assert 'step 10/10' in (workdir / 'logs' / f'{names[1]}.log').read_text()
  rerun = run_module(args, timeout=300)
  assert rerun.returncode == 0 and 'start member' not in rerun.stderr, rerun.stderr
  (workdir / 'sweep.md').unlink()
  again = run_module(args + ['--aggregate_only'], timeout=300)
  assert again.returncode == 0 and '2/2 members done' in again.stderr, again.stderr
  assert (workdir / 'sweep.md').exists()
