"""Every README headline and counted check is computed again from the committed reports' files
(reports/<name>/: results.json, members.csv, shift_eval.json, curves.csv, the runs' results.json
and metrics.jsonl) by the experiments' own functions and agrees with README.md, each results.json
and each report.md; a changed committed number is a mismatch. Reads files only: no training."""
import json
import shutil

import pytest

from experiments import lr_sweep, readme_tables
from experiments import report_parts, run_records

ROOT = readme_tables.ROOT


@pytest.mark.parametrize('name', readme_tables.REPORTS)
def test_committed_report_recomputes_to_its_readme_row_and_records(name):
  assert readme_tables.mismatches(name) == []


def test_every_readme_row_is_recomputed():
  readme = (ROOT / 'README.md').read_text()
  for name in readme_tables.REPORTS:
    assert readme_tables.readme_cells(readme, name), f'README has no row for {name}'


def test_no_counted_check_is_read_back_from_a_report_once_its_records_are_committed():
  """Every counted check is recomputed from committed per-run records. The one exception is
  lr_sweep's curve check while reports/lr_sweep has no curves.csv (a report made before the
  sweep wrote its training-loss curves): its row is the report's own until a rerun commits
  them; from then on no report has a stored row."""
  stored = {name: readme_tables.recompute(name).stored for name in readme_tables.REPORTS}
  curves_committed = (ROOT / 'reports' / 'lr_sweep' / lr_sweep.CURVES).exists()
  allowed = {} if curves_committed else {'lr_sweep': (lr_sweep.CURVE_CHECK,)}
  assert {name: s for name, s in stored.items() if s} == allowed


# α = 0.01's curve: its final training loss (the last 10% of 100 steps) is 0.9.
LR_SWEEP_CURVES = {1.0: [(10, 2.4), (100, 2.31)], 0.01: [(10, 2.3), (50, 1.5), (100, 0.9)]}
LR_SWEEP_RUNS = {1.0: (0.11, 2.3), 0.1: (0.95, 0.3), 0.01: (0.8, 0.9)}  # test acc, val loss


def _lr_sweep_report(report_dir, fast_curve) -> report_parts.Recomputed:
  """lr_sweep.recompute of a report folder with one seed per rate, 100 steps, α = 0.1's
  training-loss curve `fast_curve`; results.json holds no final loss (curves.csv gives it)."""
  curves = {**LR_SWEEP_CURVES, 0.1: fast_curve}
  lr_sweep.write_curves({(lr, 0): {'curve': c} for lr, c in curves.items()},
                        report_dir / lr_sweep.CURVES)
  run_records.write_json(report_dir / 'results.json', {'total_steps': 100, 'runs': [
      {'learning_rate': lr, 'seed': 0, 'diverged': False, 'final_loss': None,
       'test_accuracy': acc, 'val_loss': val} for lr, (acc, val) in LR_SWEEP_RUNS.items()]})
  return lr_sweep.recompute(report_dir)


@pytest.mark.parametrize('fast_curve, measured, failing', [
    ([(10, 2.0), (30, 0.8), (100, 0.3)], 'step 30 of 100', []),
    # below 0.9 only after half of the epoch, though it ends lower
    ([(10, 2.0), (60, 0.8), (100, 0.3)], 'step 60 of 100', [lr_sweep.CURVE_CHECK]),
    # never below α = 0.01's final loss: it ends higher too
    ([(10, 2.0), (60, 1.0), (100, 0.95)], 'never', ['final training loss', lr_sweep.CURVE_CHECK]),
])
def test_lr_sweep_curve_check_is_computed_from_the_committed_curves(tmp_path, fast_curve,
                                                                     measured, failing):
  got = _lr_sweep_report(tmp_path, fast_curve)
  assert got.stored == ()
  rows = {r[1]: r for r in got.checks.rows}
  assert len(rows) == 4 and rows[lr_sweep.CURVE_CHECK][4] == measured, rows
  failed = [q for q, r in rows.items() if r[-1] != 'yes']
  assert len(failed) == len(failing) and all(map(str.startswith, failed, failing)), failed
  assert f'α=0.1 {fast_curve[-1][1]:.3f} vs α=0.01 0.900' in got.headline


def _edit_json(path, edit) -> None:
  data = json.loads(path.read_text())
  edit(data)
  path.write_text(json.dumps(data, indent=2) + '\n')


def _edit_last(path, split: str, key: str, value: float) -> None:
  """Sets `key` of the last `split` record of a metrics.jsonl to `value`."""
  records = [json.loads(line) for line in path.read_text().splitlines()]
  last = max(i for i, r in enumerate(records) if r['split'] == split)
  records[last][key] = value
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def _batch_1_wins(record: dict) -> None:  # BN with single-image statistics above running averages
  record['runs']['batch'][0]['test_time']['batch_statistics']['1'] = 0.9


def _replace(path, old: str, new: str) -> None:
  text = path.read_text()
  assert old in text
  path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize('name, edit', [
    # results.json's per-run figures
    ('normalization', lambda d: _edit_json(d / 'results.json', _batch_1_wins)),
    # a member's test accuracy in members.csv
    ('cnn_vs_fc', lambda d: _replace(d / 'members.csv', ',0.9452000260353088,', ',0.10,')),
    # the run's test record in metrics.jsonl
    ('lenet5_mnist', lambda d: _edit_last(d / 'metrics.jsonl', 'test', 'accuracy', 0.985)),
    # plain-56's last training-error evaluation: below plain-20's
    ('degradation_cpu', lambda d: _edit_last(d / 'plain56/metrics.jsonl', 'train_eval',
                                             'accuracy', 0.95)),
    # one ResNet-20 seed's last test error: the seed mean in the headline moves
    ('degradation_quarter', lambda d: _edit_last(d / 'resnet20_seed2/metrics.jsonl',
                                                 'test_curve', 'accuracy', 0.80)),
])
def test_a_changed_committed_number_is_a_mismatch(tmp_path, name, edit):
  """A copy of the README and of one report with one committed number changed: the
  recomputation disagrees with the README's row and with the report's own records."""
  shutil.copy(ROOT / 'README.md', tmp_path / 'README.md')
  shutil.copytree(ROOT / 'reports' / name, tmp_path / 'reports' / name)
  assert readme_tables.mismatches(name, tmp_path) == []
  edit(tmp_path / 'reports' / name)
  readme_tables.recompute.cache_clear()
  problems = readme_tables.mismatches(name, tmp_path)
  assert any(p.startswith('README row') for p in problems), problems
  assert len(problems) >= 2, problems


def test_recheck_rewrites_only_the_checks_of_a_stale_report(tmp_path):
  """A report written before facts were split from the counted checks (all rows under 'checks',
  one table): --recheck gives back the committed files, byte for byte."""
  report_dir = tmp_path / 'reports' / 'normalization'
  shutil.copytree(ROOT / 'reports' / 'normalization', report_dir)
  record = json.loads((report_dir / 'results.json').read_text())
  stale = report_parts.Checks.of(record['checks'] + record['facts'])
  run_records.write_json(report_dir / 'results.json', report_parts.with_checks(record, stale))
  text = (report_dir / 'report.md').read_text()
  (report_dir / 'report.md').write_text(report_parts.with_checks_section(text, stale))
  assert 'facts' not in json.loads((report_dir / 'results.json').read_text())
  assert report_parts.FACTS_TITLE not in (report_dir / 'report.md').read_text()
  assert readme_tables.recheck(tmp_path, ['normalization']) == [
      report_dir / 'results.json', report_dir / 'report.md']
  for name in ('results.json', 'report.md'):
    assert (report_dir / name).read_text() == (ROOT / 'reports/normalization' / name).read_text()
  assert readme_tables.recheck(tmp_path, ['normalization']) == []


def _committed_run(run_dir, host=None, load=None):
  run_dir.mkdir(parents=True)
  results = {'status': 'completed', 'wall_time_s': 60.0}
  if host:
    results.update(host_cpu=host, platform='cpu', device_kind='cpu', device_count=1)
  if load is not None:
    results.update(load_average_start=load, load_average_end=load, cpu_count=2)
  run_records.write_json(run_dir / 'results.json', results)
  return run_dir


def _header(facts) -> str:
  return report_parts.header(title='t', claims='c', command='x', data='d', protocol='p',
                               train_wall_s=120.0, facts=facts, generator='g')


OLD_ENVIRONMENT = '\n## Environment\n\n- **date**: then\n- **host_cpu**: Host B\n'


@pytest.mark.parametrize('load, says', [
    (None, "The 2 runs did not record the machine's load (made before cnn_jax.train recorded "
           "it): whether another job ran is not known. The experiment process's 1-minute load "
           'average at its start was 3.1, on 2 cores.'),
    (0.2, 'Trained on an otherwise idle machine: 1-minute load average 0.2 at the start of the '
          '2 runs, on 2 cores.'),
])
def test_recheck_writes_the_runs_host_and_load_as_a_fresh_report(tmp_path, load, says):
  """A committed report whose runs recorded host A, written on host B by an older version (host
  B and the experiment process's load in its hardware bullet): --recheck writes host A and the
  runs' load, as a fresh report does, the older process's load labelled as that."""
  report_dir = tmp_path / 'reports' / 'exp'
  dirs = [_committed_run(report_dir / n, 'Host A', load) for n in ('a', 'b')]
  fresh = _header({'experiment_wall_time_s': 5.0, **run_records.runs_facts(dirs)})
  old = fresh.replace('1 x cpu:cpu, host CPU Host A;', '1 x cpu:cpu, host CPU Host B;')
  old = old[:old.index('wall time 5 s.') + len('wall time 5 s.')] + (
      ' Measured on an otherwise idle machine (load average 3.1 at the start).\n')
  run_records.write_json(report_dir / 'results.json', {
      'experiment_wall_time_s': 5.0, 'load_average_start': 3.1, 'cpu_count': 2})
  (report_dir / 'report.md').write_text(old + OLD_ENVIRONMENT)
  assert 'Host A' not in old
  texts = readme_tables.run_facts_texts('exp', tmp_path)  # what --recheck writes
  assert list(texts) == [report_dir / 'report.md']
  assert texts[report_dir / 'report.md'] == fresh.replace(
      fresh[fresh.index('wall time 5 s. ') + 15:], says + '\n') + OLD_ENVIRONMENT.replace(
          '\n\n', f'\n\n{report_parts.ENVIRONMENT_NOTE}\n\n')
  (report_dir / 'report.md').write_text(texts[report_dir / 'report.md'])
  assert readme_tables.run_facts_texts('exp', tmp_path) == {}  # a fixed point


def test_recheck_leaves_a_fresh_report_as_it_is(tmp_path):
  """A report written by today's header from its runs' records (results.json with 'runs_host'
  and 'runs_load', whose per-run files are not committed) is what --recheck writes."""
  work = tmp_path / 'reports' / 'exp'
  facts = {'experiment_wall_time_s': 5.0, **run_records.runs_facts(
      [_committed_run(tmp_path / 'runs' / n, 'Host A', 1.7) for n in ('a', 'b')])}
  work.mkdir(parents=True)
  run_records.write_json(work / 'results.json', facts)
  text = _header(facts) + '\n' + report_parts.footer()
  (work / 'report.md').write_text(text)
  assert readme_tables.run_facts_texts('exp', tmp_path) == {}


def _outside_run_facts(name: str, text: str) -> tuple[str, list[str]]:
  """report.md or seeds.md `text` less its machine and load sentences and the environment
  label, and what the hardware bullet keeps between them (the wall times)."""
  pattern, _ = readme_tables.HARDWARE.get(readme_tables.experiment_of(name),
                                          readme_tables.HARDWARE['header'])
  kept = [m['kept'] for m in pattern.finditer(text)]
  text = readme_tables.SEEDS_LOAD.sub(lambda m: m['head'], pattern.sub('', text))
  return text.replace(report_parts.ENVIRONMENT_NOTE + '\n\n', ''), kept


@pytest.mark.parametrize('name', readme_tables.REPORTS)
def test_recheck_of_the_machine_and_load_changes_no_number(tmp_path, name):
  """On a copy of each committed report, the machine and load rewrite changes the hardware
  bullet's machine and load sentence, lenet5_mnist's seeds sentence and the environment
  section's label only (the wall times between them as they were), never results.json; a second
  pass changes nothing."""
  shutil.copytree(ROOT / 'reports' / name, tmp_path / 'reports' / name)
  texts = readme_tables.run_facts_texts(name, tmp_path)
  for path, new in texts.items():
    assert _outside_run_facts(name, new) == _outside_run_facts(name, path.read_text())
    path.write_text(new)
  assert readme_tables.run_facts_texts(name, tmp_path) == {}
  assert all(p.suffix == '.md' for p in texts)
