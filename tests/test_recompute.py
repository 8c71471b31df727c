"""Every README headline and counted check is computed again from the committed reports' files
(reports/<name>/: results.json, members.csv, shift_eval.json, the runs' results.json and
metrics.jsonl) by the experiments' own functions and agrees with README.md, each results.json
and each report.md; a changed committed number is a mismatch. Reads files only: no training."""
import json
import shutil

import pytest

from experiments import lecture_common, lr_sweep, readme_tables

ROOT = readme_tables.ROOT


@pytest.mark.parametrize('name', readme_tables.REPORTS)
def test_committed_report_recomputes_to_its_readme_row_and_records(name):
  assert readme_tables.mismatches(name) == []


def test_every_readme_row_is_recomputed():
  readme = (ROOT / 'README.md').read_text()
  for name in readme_tables.REPORTS:
    assert readme_tables.readme_cells(readme, name), f'README has no row for {name}'


def test_only_the_curve_check_of_lr_sweep_is_read_back_from_its_report():
  """The one counted check whose per-run records (the training-loss curves) are not committed:
  its row is the report's own until a rerun commits the curves."""
  stored = {name: readme_tables.recompute(name).stored for name in readme_tables.REPORTS}
  assert {name: s for name, s in stored.items() if s} == {'lr_sweep': (lr_sweep.CURVE_CHECK,)}


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
  stale = lecture_common.Checks.of(record['checks'] + record['facts'])
  lecture_common.write_json(report_dir / 'results.json', lecture_common.with_checks(record, stale))
  text = (report_dir / 'report.md').read_text()
  (report_dir / 'report.md').write_text(lecture_common.with_checks_section(text, stale))
  assert 'facts' not in json.loads((report_dir / 'results.json').read_text())
  assert lecture_common.FACTS_TITLE not in (report_dir / 'report.md').read_text()
  assert readme_tables.recheck(tmp_path, ['normalization']) == [
      report_dir / 'results.json', report_dir / 'report.md']
  for name in ('results.json', 'report.md'):
    assert (report_dir / name).read_text() == (ROOT / 'reports/normalization' / name).read_text()
  assert readme_tables.recheck(tmp_path, ['normalization']) == []
