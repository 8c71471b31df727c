"""experiments.lenet5_mnist and lenet5_mnist_seeds on the shared harness: their command lines
(the Makefile's and the committed report's spelling included) and their reports rewritten from
the committed records, without training."""
import json
import shutil

import pytest

from cnn_jax.config_base import ConfigError
from experiments import lecture_common, lenet5_mnist, lenet5_mnist_seeds
from tests.helpers import run_module

ROOT = lecture_common.ROOT
REPORT = ROOT / 'reports' / 'lenet5_mnist'
CONFIG = lenet5_mnist.CONFIG_FILE


@pytest.mark.parametrize('argv, harness', [
    (['--config=configs/lenet5_mnist.py:quick'], ['--preset=quick']),  # make lenet5-mnist-quick
    ([f'--config={ROOT / CONFIG}', '--config.progress_bar=False', '--report_dir=r'],
     ['--preset=full', '--set=progress_bar=False', '--report_dir=r']),
    (['--config.model_kwargs.dropout=0.1'], ['--set=model_kwargs.dropout=0.1']),
    (['--preset=quick', '--set=seed=1', '--report_only'],
     ['--preset=quick', '--set=seed=1', '--report_only']),
])
def test_cnn_jax_main_spelling_reads_as_the_harness_flags(monkeypatch, argv, harness):
  monkeypatch.chdir(ROOT)
  assert lecture_common.config_file_flags(['prog'] + argv, CONFIG) == ['prog'] + harness


def test_another_config_file_is_a_config_error(monkeypatch):
  monkeypatch.chdir(ROOT)
  with pytest.raises(ConfigError, match='trains configs/lenet5_mnist.py'):
    lecture_common.config_file_flags(['prog', '--config=configs/lr_sweep.py'], CONFIG)


def test_presets_are_the_config_files_and_set_overrides_them():
  full = lenet5_mnist.model_config('full')
  assert full.name == 'lenet5_mnist' and full.num_epochs == 20  # workdirs/lenet5_mnist
  quick = lenet5_mnist.model_config('quick', ('seed=3',))
  assert quick.name == 'lenet5_mnist_quick' and quick.num_epochs == 2 and quick.seed == 3


def test_report_only_rewrites_the_committed_report_in_the_makefiles_spelling(tmp_path):
  """The committed run's records, rewritten and copied by the command the README shows for it
  (with --report_only: nothing trains)."""
  work, out = tmp_path / 'work', tmp_path / 'out'
  shutil.copytree(REPORT, work)
  done = run_module(['experiments.lenet5_mnist', '--config=configs/lenet5_mnist.py',
                     '--config.progress_bar=False', f'--workdir={work}', f'--report_dir={out}',
                     '--report_only'])
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((REPORT / 'results.json').read_text())
  text = (out / 'report.md').read_text()
  assert f"{results['test_accuracy']:.2%}" in text and text.count('<!-- seeds:begin -->') == 1
  assert "The run did not record the machine's load" in text  # it predates that record
  for name in ('results.json', 'metrics.jsonl', 'config.json'):  # the run's own, as committed
    assert (out / name).read_text() == (REPORT / name).read_text()
  # A mistyped key, in cnn_jax.main's spelling too, stops with the harness's one error.
  bad = run_module(['experiments.lenet5_mnist', '--config.lerning_rate=0.1', f'--workdir={work}',
                    '--report_only'])
  assert bad.returncode == 2 and 'Config error' in bad.stderr and 'learning_rate' in bad.stderr


def test_with_section_replaces_or_adds_the_seeds_block():
  old = '# r\n\n<!-- seeds:begin -->\nold\n<!-- seeds:end -->\n\n## Environment\n'
  assert lenet5_mnist_seeds.with_section(old, 'new\n') == old.replace('old', 'new')
  added = lenet5_mnist_seeds.with_section('# r\n\n## Environment\n', 'new\n')
  assert added == '# r\n\n<!-- seeds:begin -->\nnew\n<!-- seeds:end -->\n\n## Environment\n'


def test_seeds_report_only_gives_the_committed_figures_again(tmp_path):
  """The sweep's members with the committed per-seed test accuracies: seeds.json's figures and
  sweep command come out as committed, and the section lands in the report folder's report.md."""
  seeds = json.loads((REPORT / 'seeds.json').read_text())
  work, out = tmp_path / 'work', tmp_path / 'report'
  shutil.copytree(REPORT, out)
  for seed, accuracy in enumerate(seeds['test_accuracies']):
    (work / f'seed={seed}').mkdir(parents=True)
    (work / f'seed={seed}' / 'results.json').write_text(json.dumps(
        {'status': 'completed', 'test_accuracy': accuracy, 'test_loss': 0.04, 'best_epoch': 20,
         'wall_time_s': 100.0}))
  done = run_module(['experiments.lenet5_mnist_seeds', f'--workdir={work}',
                     f'--report_dir={out}', '--report_only'])
  assert done.returncode == 0, done.stderr[-3000:]
  again = json.loads((out / 'seeds.json').read_text())
  for key in ('seeds_done', 'seeds_total', 'test_accuracies', 'mean', 'std', 'min'):
    assert again[key] == seeds[key], key
  assert again['command'] == seeds['command'].replace('workdirs/lenet5_mnist_seeds', str(work))
  text = (out / 'report.md').read_text()
  assert text.count('<!-- seeds:begin -->') == 1 and f"**{seeds['mean']:.2%} ± " in text
  assert "The 5 runs did not record the machine's load" in text
