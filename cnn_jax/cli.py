"""Command-line plumbing shared by cnn_jax.main and the experiment scripts (defines no flags)."""
from __future__ import annotations

import shlex
import signal
import sys

from absl import flags, logging

from cnn_jax import config_base, train


MODEL_KWARGS_PREFIX = '--config.model_kwargs.'


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a short error (no traceback) for a bad --config.* override.

  `--config.model_kwargs.FIELD=VALUE` sets a module field of the chosen model (e.g.
  `shortcut=B`, `aux_logits=True`); the model checks the field name when it is built.
  """
  is_model_kwarg = lambda arg: arg.startswith(MODEL_KWARGS_PREFIX) and '=' in arg
  model_kwargs = dict(arg[len(MODEL_KWARGS_PREFIX):].split('=', 1) for arg in argv
                      if is_model_kwarg(arg))
  model_kwargs = {key: literal(value) for key, value in model_kwargs.items()}
  rest = [arg for arg in argv if not is_model_kwarg(arg)]
  saved_argv = sys.argv[:]
  sys.argv[:] = [arg for arg in sys.argv if not is_model_kwarg(arg)]  # config_flags reads it too
  try:
    remaining = flags.FLAGS(rest)
    if model_kwargs:
      config = flags.FLAGS['config'].value
      with config.unlocked():
        config.model_kwargs.update(model_kwargs)
    return remaining
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).replace('\\n', ' ').replace("\\'", "'")
    valid = sorted(config_base.all_keys(config_base.base_config()))
    print(f'Error: {message}\nValid config keys: {", ".join(valid)}', file=sys.stderr)
    sys.exit(2)
  finally:
    sys.argv[:] = saved_argv


def literal(text: str):
  """'True' -> True, '3' -> 3, 'B' -> 'B'."""
  import ast  # pylint: disable=g-import-not-at-top
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def command_line(module: str) -> str:
  """The command as a user would type it again."""
  return shlex.join(['python', '-m', module] + sys.argv[1:])


def _request_stop(signum, frame):
  del frame
  print(f'Received signal {signum}: saving the state and stopping.', file=sys.stderr, flush=True)
  train.STOP_REQUESTED.set()


def setup_process() -> None:
  """Quiet library logs; SIGTERM and Ctrl-C save the state and stop the loop cleanly."""
  logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  signal.signal(signal.SIGTERM, _request_stop)
  signal.signal(signal.SIGINT, _request_stop)


def run_training(config, workdir, module: str) -> dict:
  """train_and_evaluate with errors reported as one clear line and an exit code."""
  try:
    results = train.train_and_evaluate(config, workdir, command=command_line(module))
  except (ValueError, KeyError, RuntimeError, FloatingPointError) as e:
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(1)
  if results.get('status') == 'interrupted':
    sys.exit(130)
  return results
