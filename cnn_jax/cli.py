"""Command-line plumbing shared by cnn_jax.main and the experiment scripts (defines no flags).

Errors of the user's input print one clear message and no traceback: a `ConfigError` (a bad
`--config.*` key or value, a config that does not fit the model or the data; exit code 2) and a
`DataError` (a missing or damaged data file; exit code 1). Any other exception is a bug or an
environment problem and shows its traceback.
"""
from __future__ import annotations

import re
import shlex
import signal
import sys

from absl import flags, logging

from cnn_jax import config_base, parallel, train
from cnn_jax.config_base import ConfigError
from cnn_jax.datasets.splits import DataError

MODEL_KWARGS_PREFIX = '--config.model_kwargs.'
CONFIG_EXIT_CODE = 2
DATA_EXIT_CODE = 1
INTERRUPTED_EXIT_CODE = 130


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; a bad `--config.*` override or value exits with a ConfigError (code 2).

  `--config.model_kwargs.FIELD=VALUE` sets a module field of the chosen model (e.g.
  `shortcut=B`, `aux_logits=True`); the field name is checked against the model's fields.
  When a `--config` flag is defined, the parsed config is validated here, before anything runs.
  """
  is_model_kwarg = lambda arg: arg.startswith(MODEL_KWARGS_PREFIX) and '=' in arg
  # 'model_kwargs.FIELD=VALUE', applied by the one override parser once the flags are parsed
  model_kwargs = [arg[len('--config.'):] for arg in argv if is_model_kwarg(arg)]
  rest = [arg for arg in argv if not is_model_kwarg(arg)]
  saved_argv = sys.argv[:]
  sys.argv[:] = [arg for arg in sys.argv if not is_model_kwarg(arg)]  # config_flags reads it too
  try:
    try:
      remaining = flags.FLAGS(rest)
    except (flags.Error, AttributeError, KeyError, ValueError) as e:
      raise _override_error(rest, e) from e
    config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
    if config is not None:
      config_base.apply_overrides(config, model_kwargs)
      config_base.validate(config)
    return remaining
  except ConfigError as e:
    exit_on_config_error(e)
  finally:
    sys.argv[:] = saved_argv


def _override_error(argv: list[str], error: Exception) -> ConfigError:
  """A ConfigError for a failed flag parse: the first unknown `--config.KEY`, named with the
  nearest valid keys, or the parser's own message (a value of the wrong type, a bad file)."""
  for arg in argv:
    match = re.match(r'--config\.([^=\s]+)', arg)
    if match:
      try:
        config_base.check_key(match.group(1))
      except ConfigError as unknown:
        return unknown
  message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  message = message.replace('\\n', ' ').replace("\\'", "'").strip()
  match = re.match(r'flag --config\.([\w.]+)=', message)
  if match:  # a value of the wrong type: name the key's type and default
    key = match.group(1)
    try:
      default = config_base._get(config_base.base_config(), key)  # pylint: disable=protected-access
      message += f' (config.{key} expects {type(default).__name__} values, e.g. {default!r})'
    except (KeyError, AttributeError):
      pass
  return ConfigError(message)


def exit_on_config_error(error: ConfigError) -> None:
  print(f'Config error: {error}', file=sys.stderr, flush=True)
  sys.exit(CONFIG_EXIT_CODE)


def command_line(module: str) -> str:
  """The command as a user would type it again."""
  return shlex.join(['python', '-m', module] + sys.argv[1:])


def _request_stop(signum, frame):
  del frame
  print(f'Received signal {signum}: stopping at the next step all processes agree on, saving '
        'the state first.', file=sys.stderr, flush=True)
  train.STOP_REQUESTED.set()


def install_signal_handlers() -> None:
  """SIGTERM and Ctrl-C ask the loop to save the state and stop (train.STOP_REQUESTED)."""
  signal.signal(signal.SIGTERM, _request_stop)
  signal.signal(signal.SIGINT, _request_stop)


def setup_process() -> None:
  """Quiet library logs; SIGTERM and Ctrl-C save the state and stop the loop cleanly."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  install_signal_handlers()


def run_training(config, workdir, module: str, should_stop=None) -> dict:
  """train_and_evaluate with the user's errors reported as one clear line and an exit code.

  ConfigError exits with 2, DataError with 1, an interrupted run (SIGTERM, Ctrl-C, or
  `should_stop`, see train.train_and_evaluate) with 130; anything else raises with its traceback.
  """
  try:
    if parallel.maybe_initialize_distributed(config.distributed):
      # jax's preemption service installs its own SIGTERM handler; ours decides the stop step.
      install_signal_handlers()
    results = train.train_and_evaluate(config, workdir, should_stop=should_stop,
                                       command=command_line(module))
  except ConfigError as e:
    exit_on_config_error(e)
  except DataError as e:
    print(f'Data error: {e}', file=sys.stderr, flush=True)
    sys.exit(DATA_EXIT_CODE)
  if results.get('status') == 'interrupted':
    sys.exit(INTERRUPTED_EXIT_CODE)
  return results
