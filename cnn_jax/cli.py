"""Command-line plumbing shared by cnn_jax.main and the experiment scripts (defines no flags)."""
from __future__ import annotations

import shlex
import signal
import sys

from absl import flags, logging

from cnn_jax import config_base, train


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a short error (no traceback) for a bad --config.* override."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).replace('\\n', ' ').replace("\\'", "'")
    valid = sorted(config_base._all_keys(config_base.base_config()))  # pylint: disable=protected-access
    print(f'Error: {message}\nValid config keys: {", ".join(valid)}', file=sys.stderr)
    sys.exit(2)


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
