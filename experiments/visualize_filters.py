"""Claim C26 (MNIST part): LeNet-5's first-layer filters and feature maps, and how oriented the
learned filters are compared with random ones.

    python -m experiments.visualize_filters [--run_dir=workdirs/lenet5_mnist_seeds/seed=0]
                                            [--preset=toy] [--workdir=DIR] [--report_dir=DIR]

Restores the best checkpoint of a LeNet-5 run (`--run_dir`; trained here with `--config` first
when it has no results.json) and writes filters.png (the six 5x5 C1 kernels), feature_maps.png
(C1 responses, after ReLU, to test digits), report.md and results.json. Measured statement:
each filter's orientation selectivity, OSI = |sum P(f) exp(2i theta_f)| / sum P(f) over its
zero-padded Fourier power spectrum P without the DC term (1 = a single orientation, 0 = none),
against the same statistic for filters drawn from the initialiser (LeCun normal, Flax's default).
The CIFAR-10 part of C26 (colour blobs, AlexNet-like first layers) is left for later.
"""
from __future__ import annotations

import json
import pathlib

from absl import app, flags
import numpy as np

from cnn_jax import cli, report, sweep
from experiments import lecture_common as common


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so that tests can import
  several experiments."""
  global _PRESET, _RUN_DIR, _CONFIG, _WORKDIR, _REPORT_DIR
  _PRESET = flags.DEFINE_enum('preset', 'full', ['full', 'toy'],
                              'toy: trains LeNet-5 for 1 epoch on 2,000 images first.')
  _RUN_DIR = flags.DEFINE_string('run_dir', None, 'A LeNet-5 workdir (default: workdirs/'
                                 'lenet5_mnist_seeds/seed=0; toy: <workdir>/run).')
  _CONFIG = flags.DEFINE_string('config', 'configs/lenet5_mnist.py',
                                'Config file of that run (to restore it or train it).')
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Default: workdirs/visualize_filters[_toy].')
  _REPORT_DIR = flags.DEFINE_string('report_dir', None, 'Also copy the report and records here.')


OUTPUTS = ('report.md', 'filters.png', 'feature_maps.png', 'results.json')
RANDOM_SETS = 2000
FFT_SIZE = 32


def orientation(kernel: np.ndarray) -> tuple[float, float]:
  """(OSI, preferred edge orientation in degrees) of one 2-D kernel."""
  k = kernel - kernel.mean()
  power = np.abs(np.fft.fftshift(np.fft.fft2(k, (FFT_SIZE, FFT_SIZE)))) ** 2
  f = np.arange(FFT_SIZE) - FFT_SIZE // 2
  fy, fx = np.meshgrid(f, f, indexing='ij')
  theta = np.arctan2(fy, fx)
  power[FFT_SIZE // 2, FFT_SIZE // 2] = 0.0
  z = np.sum(power * np.exp(2j * theta)) / max(np.sum(power), 1e-30)
  # The spectrum of an edge lies perpendicular to it: edge angle = spectral angle + 90 degrees.
  return float(np.abs(z)), float((np.degrees(np.angle(z) / 2) + 90) % 180)


def random_osi(n_filters: int, seed: int = 0) -> np.ndarray:
  """Mean OSI of `RANDOM_SETS` sets of `n_filters` 5x5 kernels from Flax's default initialiser."""
  import jax  # pylint: disable=g-import-not-at-top
  init = jax.nn.initializers.lecun_normal()
  kernels = np.asarray(init(jax.random.key(seed), (5, 5, 1, RANDOM_SETS * n_filters)))
  osi = np.array([orientation(kernels[:, :, 0, i])[0] for i in range(kernels.shape[-1])])
  return osi.reshape(RANDOM_SETS, n_filters).mean(1), osi


def plot_filters(kernels: np.ndarray, stats, out: pathlib.Path) -> pathlib.Path:
  plt = common.pyplot()
  n = kernels.shape[-1]
  fig, axes = plt.subplots(1, n, figsize=(1.9 * n, 2.3))
  lim = np.abs(kernels).max()
  for i, ax in enumerate(np.atleast_1d(axes)):
    ax.imshow(kernels[:, :, 0, i], cmap='gray', vmin=-lim, vmax=lim, interpolation='nearest')
    ax.set_title(f'C1 #{i}\nOSI {stats[i][0]:.2f}, {stats[i][1]:.0f}°', fontsize=8)
    ax.axis('off')
  fig.suptitle('LeNet-5 first-layer (C1) kernels, 5x5 (grey = 0)', fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def plot_maps(images: np.ndarray, maps: np.ndarray, out: pathlib.Path) -> pathlib.Path:
  plt = common.pyplot()
  rows, cols = maps.shape[0], maps.shape[-1] + 1
  fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows))
  for r in range(rows):
    axes[r][0].imshow(images[r, :, :, 0], cmap='gray')
    axes[r][0].set_title('input' if r == 0 else '', fontsize=8)
    for c in range(maps.shape[-1]):
      axes[r][c + 1].imshow(maps[r, :, :, c], cmap='viridis')
      if r == 0:
        axes[r][c + 1].set_title(f'C1 #{c} (ReLU)', fontsize=8)
    for ax in axes[r]:
      ax.axis('off')
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_process()
  clock = common.Clock()
  toy = _PRESET.value == 'toy'
  workdir = pathlib.Path(_WORKDIR.value or common.ROOT / 'workdirs' /
                         ('visualize_filters' + ('_toy' if toy else '')))
  workdir.mkdir(parents=True, exist_ok=True)
  run_dir = pathlib.Path(_RUN_DIR.value or (workdir / 'run' if toy else common.ROOT / 'workdirs'
                                            / 'lenet5_mnist_seeds' / 'seed=0'))
  overrides = (('data.train_subset=2000', 'num_epochs=1', 'progress_bar=False') if toy
               else ('progress_bar=False',))
  config = sweep.Sweep(_CONFIG.value, config_args=overrides).base_config()
  if (run_dir / 'config.json').exists():  # restore with the run's own settings
    saved = json.loads((run_dir / 'config.json').read_text())
    for key in ('seed', 'num_epochs', 'learning_rate', 'momentum', 'batch_size'):
      sweep.set_key(config, key, saved[key])
    sweep.set_key(config, 'data.train_subset', saved['data']['train_subset'])
  if not sweep.is_done(run_dir):
    from cnn_jax import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, run_dir, command=cli.command_line('experiments.visualize_filters'))
  results = json.loads((run_dir / 'results.json').read_text())

  import jax  # pylint: disable=g-import-not-at-top
  model, variables, preprocess, splits = common.restore_best(config, run_dir)
  kernels = np.asarray(variables['params']['c1']['kernel'])  # (5, 5, 1, 6)
  bias = np.asarray(variables['params']['c1']['bias'])
  stats = [orientation(kernels[:, :, 0, i]) for i in range(kernels.shape[-1])]
  random_means, random_all = random_osi(kernels.shape[-1])
  trained_mean = float(np.mean([s[0] for s in stats]))
  p95 = float(np.percentile(random_means, 95))
  p_value = float(np.mean(random_means >= trained_mean))
  individual_p95 = float(np.percentile(random_all, 95))
  n_above = sum(s[0] > individual_p95 for s in stats)

  # C1 responses to the first test digit of four classes.
  test_x, test_y = splits.test
  picks = [int(np.flatnonzero(test_y == c)[0]) for c in (0, 1, 4, 7)]
  x = preprocess(test_x[picks], None, train=False)
  c1 = jax.lax.conv_general_dilated(x, kernels, (1, 1), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias
  maps = np.asarray(jax.nn.relu(c1))
  f_png = plot_filters(kernels, stats, workdir / 'filters.png')
  m_png = plot_maps(test_x[picks], maps, workdir / 'feature_maps.png')

  holds = trained_mean > p95
  checks = [common.check_row(
      'C26', 'orientation selectivity (OSI) of the 6 C1 filters, mean', 'first layers learn '
      'edges and lines', f'> 95th percentile of the mean of 6 random initial filters ({p95:.3f})',
      f'{trained_mean:.3f} (fraction of random sets at least as high: {p_value:.4f})', holds)]
  per_filter = report.markdown_table(
      ['filter', 'OSI', 'preferred edge orientation', 'above the random 95th percentile '
       f'({individual_p95:.3f})', 'L2 norm'],
      [[i, f'{s[0]:.3f}', f'{s[1]:.0f}°', 'yes' if s[0] > individual_p95 else 'no',
        f'{np.linalg.norm(kernels[:, :, 0, i]):.3f}'] for i, s in enumerate(stats)])
  facts = clock.facts()
  command = cli.command_line('experiments.visualize_filters')
  text = common.header(
      title='What LeNet-5 learns in its first layer (MNIST)', claims='claim C26', command=command,
      data=(f"MNIST, bundled IDX files; the run in `{run_dir.relative_to(common.ROOT) if run_dir.is_relative_to(common.ROOT) else run_dir}` "
            f"({results['num_train']:,} training images, {results['epochs']} epochs, test accuracy "
            f"{results['test_accuracy']:.2%}, best checkpoint at epoch {results['best_epoch']}; "
            f"its command: `{results['command']}`)."),
      protocol=(f'OSI over the {FFT_SIZE}x{FFT_SIZE} zero-padded power spectrum of each '
                'zero-mean 5x5 kernel, DC excluded; baseline: '
                f'{RANDOM_SETS:,} sets of 6 kernels drawn from the LeCun-normal initialiser.'),
      train_wall_s=results['wall_time_s'], facts=facts, generator='experiments/visualize_filters.py')
  text += f"""
## Claim check

{report.markdown_table(common.CHECK_HEADERS, checks)}

{n_above} of {len(stats)} learned filters are individually more oriented than 95% of random
initial filters.

## Filters

{per_filter}

![C1 kernels]({f_png.name})

## Feature maps

C1 responses (after ReLU) to the first test digit of classes 0, 1, 4 and 7.

![C1 feature maps]({m_png.name})

Not done here (left for later): the CIFAR-10 half of C26 (colour-blob filters of a first layer
trained on colour images, deeper-layer compositions).

{common.footer()}"""
  (workdir / 'report.md').write_text(text)
  common.write_json(workdir / 'results.json', {
      'experiment': 'visualize_filters', 'claims': 'C26', 'preset': _PRESET.value,
      'command': command, 'run_dir': str(run_dir), 'all_checks_hold': holds, 'checks': checks,
      **facts, 'filters': [{'osi': s[0], 'orientation_deg': s[1]} for s in stats],
      'trained_mean_osi': trained_mean, 'random_mean_osi_p95': p95, 'p_value': p_value,
      'headline': (f'mean OSI {trained_mean:.2f} vs random 95th pct {p95:.2f}; '
                   f'{n_above}/{len(stats)} filters oriented')})
  print(f"claim holds: {holds}; report: {workdir / 'report.md'}")
  common.copy_outputs(workdir, _REPORT_DIR.value, OUTPUTS)


if __name__ == '__main__':
  define_flags()
  app.run(main)
