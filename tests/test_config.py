"""Locked configs: unknown keys fail before anything runs and name the nearest valid keys."""
import pytest

from cnn_jax import config_base
from configs import lenet5_mnist
from tests.helpers import run_module


def test_every_config_key_is_in_the_schema():
  config_base.validate(lenet5_mnist.get_config())
  config_base.validate(lenet5_mnist.get_config('quick'))


def test_unknown_key_in_config_file_names_nearest():
  c = lenet5_mnist.get_config()
  c.unlock()
  c.lerning_rate = 0.1
  with pytest.raises(KeyError, match="Did you mean 'learning_rate'"):
    config_base.validate(c)


def test_bad_values_are_rejected():
  c = lenet5_mnist.get_config()
  c.lr_schedule = 'cosin'
  with pytest.raises(ValueError, match='lr_schedule'):
    config_base.validate(c)
  c = lenet5_mnist.get_config()
  c.nesterov = True
  with pytest.raises(ValueError, match='momentum'):
    config_base.validate(c)


def test_command_line_unknown_key_fails_before_running(tmp_path):
  workdir = tmp_path / 'wd'
  r = run_module(['cnn_jax.main', '--config=configs/lenet5_mnist.py', f'--workdir={workdir}',
                  '--config.lerning_rate=0.5'], timeout=120)
  assert r.returncode == 2, r.stderr
  assert 'lerning_rate' in r.stderr and 'learning_rate' in r.stderr
  assert 'Traceback' not in r.stderr
  assert not workdir.exists()  # nothing ran
  r = run_module(['cnn_jax.main', '--config=configs/lenet5_mnist.py', f'--workdir={workdir}',
                  '--config.data.validaton_size=10'], timeout=120)
  assert r.returncode == 2 and 'validation_size' in r.stderr
