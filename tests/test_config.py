"""Locked configs: unknown keys and values fail before anything runs with a ConfigError naming
the nearest valid key or value; the command line prints ConfigError and DataError without a
traceback and every other error with one."""
import pytest

from cnn_jax import config_base
from cnn_jax.config_base import ConfigError
from configs import lenet5_mnist
from tests.helpers import run_module


def test_every_config_key_is_in_the_schema():
  config_base.validate(lenet5_mnist.get_config())
  config_base.validate(lenet5_mnist.get_config('quick'))


def test_unknown_key_in_config_file_names_nearest():
  c = lenet5_mnist.get_config()
  c.unlock()
  c.lerning_rate = 0.1
  with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
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


@pytest.mark.parametrize('key,nearest', [
    ('data.name', "'data.dataset'"),  # a nested key: its siblings and the same word elsewhere
    ('data.name', "'name'"),
    ('dat.image_size', "'data.image_size'"),
    ('data.validaton_size', "'data.validation_size'"),
    ('eval_every_step', "'eval_every_steps'"),
    ('xyz', 'Did you mean'),  # nothing close: still the nearest one
])
def test_unknown_keys_name_the_nearest_at_any_depth(key, nearest):
  with pytest.raises(ConfigError, match='Did you mean') as info:
    config_base.check_key(key)
  assert nearest in str(info.value)
  if key.startswith('data.'):
    assert 'Valid keys of config.data: crop_size, data_dir, dataset' in str(info.value)


@pytest.mark.parametrize('key,value,nearest', [
    ('optimizer', 'sgdd', "'sgd'"),
    ('lr_schedule', 'cosin', "'cosine'"),
    ('data.source', 'tfsd', "'tfds'"),
    ('data.dataset', 'cifar', "'cifar10'"),
    ('model', 'resnet21', "'resnet20'"),
    ('dtype', 'bf16', "'bfloat16'"),
])
def test_unknown_values_name_the_nearest(key, value, nearest):
  c = lenet5_mnist.get_config()
  *parents, leaf = key.split('.')
  target = c
  for part in parents:
    target = target[part]
  target[leaf] = value
  with pytest.raises(ConfigError, match=f'Did you mean [^?]*{nearest}'):
    config_base.validate(c)


def test_model_kwargs_name_the_nearest_field_and_value():
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  c = lenet5_mnist.get_config()
  c.model = 'resnet20'
  c.model_kwargs.shortcutt = 'B'
  with pytest.raises(ConfigError, match="no field 'shortcutt'.*Did you mean 'shortcut'"):
    config_base.validate(c)
  x = jax.numpy.zeros((1, 32, 32, 3))
  for kwargs, message in (({'depth': 19}, 'Did you mean 20'), ({'shortcut': 'b'}, "'B'")):
    model = models.create('resnet20', num_classes=10, **kwargs)
    with pytest.raises(ConfigError, match=message):
      jax.eval_shape(model.init, jax.random.key(0), x)
  with pytest.raises(ConfigError, match='Did you mean 18'):
    jax.eval_shape(models.create('resnet18', num_classes=10, depth=17).init, jax.random.key(0), x)


def test_library_config_errors_are_config_errors(tmp_path):
  from cnn_jax import parallel  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  assert issubclass(ConfigError, ValueError)  # callers that caught ValueError still do
  with pytest.raises(ConfigError, match='validation_size'):  # raised by the data loader
    train.train_and_evaluate(tiny_config(**{'data.validation_size': 10**6}), tmp_path,
                             command='test')
  with pytest.raises(ConfigError, match=r'exceeds the 1000 training images'):
    train.train_and_evaluate(tiny_config(batch_size=2000), tmp_path, command='test')
  del parallel


def test_cli_prints_only_config_and_data_errors_without_traceback(tmp_path, monkeypatch, capsys):
  from cnn_jax import cli, train  # pylint: disable=g-import-not-at-top
  from cnn_jax.datasets import DataError  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  for error, code, prefix in ((ConfigError('bad key'), 2, 'Config error: bad key'),
                              (DataError('missing file'), 1, 'Data error: missing file')):
    monkeypatch.setattr(train, 'train_and_evaluate', _raiser(error))
    with pytest.raises(SystemExit) as info:
      cli.run_training(tiny_config(), tmp_path, 'test')
    assert info.value.code == code
    assert capsys.readouterr().err.strip() == prefix
  for error in (RuntimeError('a bug'), KeyError('k'), FloatingPointError('nan')):
    monkeypatch.setattr(train, 'train_and_evaluate', _raiser(error))
    with pytest.raises(type(error)):  # propagates: Python prints its traceback
      cli.run_training(tiny_config(), tmp_path, 'test')


def _raiser(error):
  def fail(*args, **kwargs):
    del args, kwargs
    raise error
  return fail


def test_command_line_bad_values_and_nested_keys_exit_2_without_traceback(tmp_path):
  workdir = tmp_path / 'wd'
  for flags, expected in ((['--config.data.name=x'], "'data.dataset'"),
                          (['--config.optimizer=sgdd'], "Did you mean 'sgd'"),
                          (['--config.model=resnet20', '--config.model_kwargs.shortcutt=B'],
                           "Did you mean 'shortcut'")):
    r = run_module(['cnn_jax.main', '--config=configs/lenet5_mnist.py', f'--workdir={workdir}',
                    *flags], timeout=300)
    assert r.returncode == 2, (flags, r.stderr[-2000:])
    assert expected in r.stderr and 'Traceback' not in r.stderr, (flags, r.stderr[-2000:])
    assert r.stderr.startswith('Config error: ')
  assert not workdir.exists()


def test_flag_value_of_the_wrong_type_names_the_type():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from cnn_jax import cli  # pylint: disable=g-import-not-at-top
  error = cli._override_error(  # pylint: disable=protected-access
      ['--config.batch_size=abc'],
      flags.IllegalFlagValueError("flag --config.batch_size=abc: invalid literal for int()"))
  assert isinstance(error, ConfigError)
  assert 'config.batch_size expects int values, e.g. 64' in str(error)
  error = cli._override_error(['--config.data.nme=x'], AttributeError(KeyError("'nme'")))  # pylint: disable=protected-access
  assert "Unknown config key 'data.nme'. Did you mean 'data.name'" not in str(error)
  assert "'name'" in str(error) and 'Valid keys of config.data' in str(error)


# ------------------------------------------------------- KEY=VALUE overrides: the one parser


def test_overrides_read_values_as_python_literals():
  c = config_base.apply_overrides(lenet5_mnist.get_config(), [
      'learning_rate=0.5', 'batch_size=32', 'progress_bar=False', 'data.data_dir=/data/cifar 10',
      'lr_boundaries=(3, 6)', 'model_kwargs.widths=(4, 8)', 'name=a=b'])
  assert c.learning_rate == 0.5 and c.batch_size == 32 and c.progress_bar is False
  assert c.data.data_dir == '/data/cifar 10'  # not a literal: the string itself
  assert c.lr_boundaries == (3, 6) and c.model_kwargs.widths == (4, 8)
  assert c.name == 'a=b'  # split at the first '='
  assert config_base.literal('B') == 'B' and config_base.literal('1e-4') == 1e-4


def test_override_of_a_nested_key_names_the_valid_keys_of_its_section():
  c = config_base.apply_overrides(lenet5_mnist.get_config(), ['data.validation_size=80'])
  assert c.data.validation_size == 80
  with pytest.raises(ConfigError, match="Unknown config key 'data.validaton_size'. Did you mean "
                     "'data.validation_size'.*Valid keys of config.data: .*validation_size"):
    config_base.apply_overrides(c, ['data.validaton_size=80'])


def test_override_with_an_unknown_key_names_the_nearest():
  with pytest.raises(ConfigError, match="Unknown config key 'lerning_rate'. Did you mean "
                     "'learning_rate'"):
    config_base.apply_overrides(lenet5_mnist.get_config(), ['lerning_rate=0.1'])
  with pytest.raises(ConfigError, match="Unknown config key 'model_kwargs.a.b'"):
    config_base.apply_overrides(lenet5_mnist.get_config(), ['model_kwargs.a.b=1'])


def test_override_without_equals_or_key_or_with_a_wrong_type_fails():
  for bad in ('learning_rate', '=0.1', ''):
    with pytest.raises(ConfigError, match='KEY=VALUE, e.g. data.data_dir=/data/cifar10; got'):
      config_base.apply_overrides(lenet5_mnist.get_config(), [bad])
  with pytest.raises(ConfigError, match='config.batch_size expects int values, e.g. '):
    config_base.apply_overrides(lenet5_mnist.get_config(), ['batch_size=abc'])


def test_every_override_parser_is_the_one():
  """cnn_jax.sweep and the experiments' --set fail alike: the same ConfigError."""
  from cnn_jax import sweep  # pylint: disable=g-import-not-at-top
  from experiments import degradation  # pylint: disable=g-import-not-at-top
  spec = sweep.Sweep('configs/lenet5_mnist.py', config_args=('lerning_rate=0.1',))
  with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
    spec.base_config()
  with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
    degradation.model_config('resnet8', 'toy', ['lerning_rate=0.1'])
  with pytest.raises(ConfigError, match='KEY=VALUE'):
    degradation.model_config('resnet8', 'toy', ['data.data_dir'])
