"""experiments.visualize_filters on the shared harness: where its two runs are, their configs
(--set for both, --cifar_set for the CIFAR-10 run, one override parser and one error type) and
its command line, without training."""
import pytest

from cnn_jax.config_base import ConfigError
from experiments import lecture_common
from experiments import visualize_filters as vf
from tests.helpers import run_module

ROOT = lecture_common.ROOT


def test_visualize_filters_run_dirs(tmp_path, monkeypatch):
  assert vf.run_dirs(tmp_path, True) == (tmp_path / 'run', tmp_path / 'cifar_run')
  assert vf.run_dirs(tmp_path, False) == (ROOT / vf.MNIST_RUN_DIR, ROOT / vf.CIFAR_RUN_DIR)
  monkeypatch.chdir(tmp_path)  # a given directory: as typed, made absolute
  assert vf.run_dirs(ROOT, False, 'a', 'none') == (tmp_path / 'a', None)


def test_visualize_filters_set_for_both_runs_cifar_set_after_it(tmp_path):
  mnist_dir, cifar_dir = vf.run_dirs(tmp_path, True)
  configs = vf.run_configs(mnist_dir, cifar_dir, True, ('eval_batch_size=64', 'seed=2'),
                           cifar_overrides=('eval_batch_size=32', 'data.train_subset=256'))
  assert list(configs) == [mnist_dir, cifar_dir]  # training order
  mnist, cifar = configs.values()
  assert (mnist.model, mnist.num_epochs, mnist.data.train_subset) == ('lenet5', 1, 2000)  # toy
  assert (mnist.eval_batch_size, mnist.seed, mnist.progress_bar) == (64, 2, False)
  assert (cifar.model, cifar.eval_batch_size, cifar.seed) == ('resnet8', 32, 2)
  assert cifar.data.train_subset == 256 and not cifar.progress_bar
  full = vf.run_configs(*vf.run_dirs(tmp_path, False), False)
  assert [c.name for c in full.values()] == ['lenet5_mnist', 'resnet20_cifar10_cpu']


def test_visualize_filters_begun_run_restores_with_its_own_settings(tmp_path):
  saved = vf.mnist_config(vf.MNIST_CONFIG, tmp_path, False, ('seed=3', 'num_epochs=5'))
  (tmp_path / 'config.json').write_text(saved.to_json_best_effort())  # as cnn_jax.train does
  config = vf.mnist_config(vf.MNIST_CONFIG, tmp_path, True, ('seed=1',))
  assert (config.seed, config.num_epochs) == (3, 5)  # not the toy preset's 1 epoch, nor --set
  assert config.data.train_subset == saved.data.train_subset


@pytest.mark.parametrize('overrides, cifar, match', [
    ((), ('data.nme=x',), "Unknown config key 'data.nme'"),
    ((), ('batch_size=abc',), 'batch_size'),
    (('learnin_rate=0.1',), (), "Did you mean 'learning_rate'"),
    ((), ('no_equals_sign',), 'KEY=VALUE'),
])
def test_visualize_filters_bad_override_is_a_config_error(tmp_path, overrides, cifar, match):
  mnist_dir, _ = vf.run_dirs(tmp_path, True)
  with pytest.raises(ConfigError, match=match):  # the CIFAR-10 part skipped: checked all the same
    vf.run_configs(mnist_dir, None, True, overrides, cifar_overrides=cifar)


def test_visualize_filters_bad_config_file_is_a_config_error(tmp_path):
  with pytest.raises(ConfigError, match="Unknown model 'resnet9'"):
    vf.run_configs(*vf.run_dirs(tmp_path, True), True,
                   cifar_config='configs/cifar_resnet.py:resnet9,toy')
  with pytest.raises(ConfigError, match='No config file'):
    vf.run_configs(*vf.run_dirs(tmp_path, True), True, config='configs/no_such_file.py')


def test_visualize_filters_bad_cifar_set_exits_2_with_one_line_before_training(tmp_path):
  """As a bad --set does in every experiment (the same ConfigError, exit code and line)."""
  out = run_module(['experiments.visualize_filters', '--preset=toy', f'--workdir={tmp_path}',
                    '--cifar_set=data.nme=x'])
  assert out.returncode == 2, out.stderr[-3000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith("Config error: Unknown config key 'data.nme'. Did you mean")
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'cifar_run').exists()


def test_visualize_filters_flags_parse_and_report_only_trains_nothing(tmp_path):
  """Every flag, the harness's and the experiment's, parses; --report_only with no finished run
  stops with one line naming it."""
  run_dir = tmp_path / 'mnist'
  out = run_module([
      'experiments.visualize_filters', '--preset=toy', f'--workdir={tmp_path / "work"}',
      f'--report_dir={tmp_path / "out"}', '--report_only', '--set=eval_batch_size=64',
      f'--run_dir={run_dir}', f'--config={vf.MNIST_CONFIG}',
      f'--cifar_run_dir={tmp_path / "cifar"}', f'--cifar_config={vf.CIFAR_TOY_CONFIG}',
      '--cifar_set=data.train_subset=256', '--cifar_set=data.validation_size=64'])
  assert out.returncode == 1, out.stderr[-3000:]
  assert out.stderr.strip() == (f'No finished run in {run_dir}; train it first (drop '
                                '--report_only).')
  assert not run_dir.exists() and not (tmp_path / 'out').exists()
