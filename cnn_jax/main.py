"""Command line: train and evaluate one config.

    python -m cnn_jax.main --config=configs/lenet5_mnist.py[:quick] --workdir=DIR [--config.key=value ...]

Rerunning the same command on the same workdir resumes from the latest checkpoint. SIGTERM or
Ctrl-C saves the current state before exiting (exit code 130); rerun to resume.
"""
from absl import app, flags
from ml_collections import config_flags

from cnn_jax import cli, runtime

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError('Both --config and --workdir are required.')
  cli.setup_process()
  results = cli.run_training(_CONFIG.value, _WORKDIR.value, 'cnn_jax.main')
  print(f"test accuracy {results.get('test_accuracy', float('nan')):.4f}  "
        f"test loss {results.get('test_loss', float('nan')):.4f}  "
        f"best epoch {results.get('best_epoch')}  wall time {results['wall_time_s']:.0f} s  "
        f"-> {_WORKDIR.value}/results.json")


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  app.run(main, flags_parser=cli.parse_flags)
