"""Claim C26 (MNIST part): LeNet-5's first-layer filters and feature maps, and how oriented the
learned filters are compared with random ones.

    python -m experiments.visualize_filters [--run_dir=workdirs/lenet5_mnist_seeds/seed=0]
                                            [--preset=toy] [--workdir=DIR] [--report_dir=DIR]
                                            [--set=KEY=VALUE ...] [--cifar_set=KEY=VALUE ...]
                                            [--report_only]

Restores the best checkpoint of a LeNet-5 run (`--run_dir`; trained here with `--config` first
when it has no results.json) and writes filters.png (the six 5x5 C1 kernels), feature_maps.png
(C1 responses, after ReLU, to test digits), report.md and results.json. Measured statement:
each filter's orientation selectivity, OSI = |sum P(f) exp(2i theta_f)| / sum P(f) over its
zero-padded Fourier power spectrum P without the DC term (1 = a single orientation, 0 = none),
against the same statistic for filters drawn from the initialiser (LeCun normal, Flax's default).

CIFAR-10 part: the first convolution (3x3, RGB -> 16) of a trained CIFAR ResNet (`--cifar_run_dir`,
default the `cpu` degradation run of ResNet-20; trained here with `--cifar_config` first when it
has no results.json) as RGB tiles (cifar_filters.png) and its responses to test images
(cifar_feature_maps.png). Measured: each filter's colour index, CI = the share of its energy
outside the luminance direction (each tap's RGB vector projected on (1,1,1)/sqrt(3) is the
luminance part; CI = 0: a grey edge or blob detector, CI = 1: purely colour-opponent; 2/3 on
average for i.i.d. Gaussian taps), and the orientation selectivity of its luminance part. The
check: the learned filters split into achromatic and colour filters, i.e. the spread (std) of CI
across the 16 filters exceeds that of 95% of random sets of 16 initial filters; and the colour filters
are blobs: their chromatic part's energy sits in its spatial mean (DC) more than in random ones.

The harness (experiments/lecture_common.py) runs it: both runs' configs are built first (`--set`
for both runs, `--cifar_set` for the CIFAR-10 run after it, by the one override parser: a bad key
or value exits with its ConfigError and code 2 before anything trains), an unfinished run trains
or resumes in its directory and a finished one is skipped, and `--report_only` trains nothing and
writes the report from the finished runs' checkpoints. `--report_dir` copies the report there.
"""
from __future__ import annotations

import functools
import pathlib

from absl import app, flags
import numpy as np

from cnn_jax import config_base, report, runtime, sweep
from cnn_jax.config_base import ConfigError
from experiments import lecture_common as common
from experiments import report_parts, run_records

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The harness's flags (lecture_common.define_flags) and where this experiment's two runs are;
  defined only when run as a script, so that tests can import several experiments."""
  common.define_flags('visualize_filters', 'trains LeNet-5 for 1 epoch on 2,000 images first '
                      f'(and {CIFAR_TOY_CONFIG} for the CIFAR-10 part).', sweep_flags=False)
  flags.DEFINE_string('run_dir', None, f'A LeNet-5 workdir (default: {MNIST_RUN_DIR}; toy: '
                      f'<workdir>/{TOY_RUNS[0]}).')
  flags.DEFINE_string('config', MNIST_CONFIG,
                      'Config file of that run (to restore it or train it).')
  flags.DEFINE_string('cifar_run_dir', None, f'A CIFAR-10 CifarResNet workdir (default: '
                      f'{CIFAR_RUN_DIR}; toy: <workdir>/{TOY_RUNS[1]}). "none" skips the CIFAR-10 '
                      'part.')
  flags.DEFINE_string('cifar_config', None, f'Config of that run (default {CIFAR_CONFIG}; toy: '
                      f'{CIFAR_TOY_CONFIG}).')
  flags.DEFINE_multi_string('cifar_set', [], 'Config override KEY=VALUE for the CIFAR-10 run '
                            'only, after --set, e.g. --cifar_set=data.data_dir=/data/cifar10.')


OUTPUTS = ('report.md', 'filters.png', 'feature_maps.png', 'results.json', 'cifar_filters.png',
           'cifar_feature_maps.png')
MNIST_RUN_DIR, MNIST_CONFIG = 'workdirs/lenet5_mnist_seeds/seed=0', 'configs/lenet5_mnist.py'
MNIST_TOY = ('data.train_subset=2000', 'num_epochs=1')  # the toy preset's cut of that config
CIFAR_RUN_DIR = 'workdirs/degradation_cpu/resnet20'
CIFAR_CONFIG, CIFAR_TOY_CONFIG = ('configs/cifar_resnet.py:resnet20,cpu',
                                  'configs/cifar_resnet.py:resnet8,toy')
TOY_RUNS = ('run', 'cifar_run')  # the toy preset's LeNet-5 and CIFAR-10 runs, in the workdir
QUIET = ('progress_bar=False',)  # every run's, before --set
# What a begun LeNet-5 run's config.json sets whatever the flags say: it resumes and is restored
# as it trained.
SAVED_KEYS = ('seed', 'num_epochs', 'learning_rate', 'momentum', 'batch_size', 'data.train_subset')
CIFAR_SKIPPED = '## CIFAR-10 first layer\n\nSkipped (`--cifar_run_dir=none`).\n'
RANDOM_SETS = 2000
FFT_SIZE = 32


def run_dirs(workdir: pathlib.Path, toy: bool, run_dir: str | None = None,
             cifar_run_dir: str | None = None) -> tuple[pathlib.Path, pathlib.Path | None]:
  """The LeNet-5 and the CIFAR-10 run's directories, absolute: the given ones (--run_dir,
  --cifar_run_dir), else the toy preset's in `workdir`, else the committed report's runs; the
  CIFAR-10 one None for 'none' (that part skipped)."""
  def where(given, toy_run, default):
    return pathlib.Path(given or (workdir / toy_run if toy else common.ROOT / default)).resolve()
  cifar = None if cifar_run_dir == 'none' else where(cifar_run_dir, TOY_RUNS[1], CIFAR_RUN_DIR)
  return where(run_dir, TOY_RUNS[0], MNIST_RUN_DIR), cifar


def config_file(spec: str, overrides=()):
  """The config of `spec` (configs/<file>.py[:arg]) with QUIET and the 'KEY=VALUE' `overrides`
  applied by the one parser, validated (lecture_common.configured). A missing file, an argument
  the file rejects, an unknown key or a bad value: a ConfigError."""
  try:
    config = sweep.Sweep(spec).base_config()
  except ConfigError:
    raise
  except ValueError as e:  # the file's get_config rejects its argument
    raise ConfigError(f'{spec}: {e}') from None
  return common.configured(config, (*QUIET, *overrides))


def mnist_config(spec: str, run_dir: pathlib.Path, toy: bool, overrides=()):
  """The LeNet-5 run's config: `spec`, cut by the toy preset (MNIST_TOY), with the --set
  `overrides`; where the run has begun (its config.json), its own SAVED_KEYS."""
  config = config_file(spec, (*(MNIST_TOY if toy else ()), *overrides))
  if (run_dir / 'config.json').exists():  # resume and restore with the run's own settings
    saved = run_records.read_json(run_dir / 'config.json')
    for key in SAVED_KEYS:
      config_base.set_key(config, key, functools.reduce(dict.__getitem__, key.split('.'), saved))
  return config


def run_configs(mnist_dir: pathlib.Path, cifar_dir: pathlib.Path | None, toy: bool,
                overrides=(), *, config: str = MNIST_CONFIG, cifar_config: str | None = None,
                cifar_overrides=()) -> dict:
  """{run directory: config} of the LeNet-5 run (`config`, `mnist_config`) and the CIFAR-10 one
  (`cifar_config`, default the preset's), in training order: `overrides` (--set) for both runs,
  `cifar_overrides` (--cifar_set) after them for the CIFAR-10 run. Its config is built and
  checked even when its part is skipped (`cifar_dir` None): a mistyped --cifar_set is an error."""
  runs = {mnist_dir: mnist_config(config, mnist_dir, toy, overrides)}
  cifar = config_file(cifar_config or (CIFAR_TOY_CONFIG if toy else CIFAR_CONFIG),
                      (*overrides, *cifar_overrides))
  if cifar_dir is not None:
    runs[cifar_dir] = cifar
  return runs


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


def colour_index(kernel: np.ndarray) -> float:
  """Share of a (kh, kw, 3) kernel's energy outside the luminance direction (1, 1, 1)/sqrt(3)."""
  luminance = np.broadcast_to(kernel.mean(-1, keepdims=True), kernel.shape)
  return float(1.0 - np.sum(luminance ** 2) / max(np.sum(kernel ** 2), 1e-30))


def chroma_dc_share(kernel: np.ndarray) -> float:
  """Share of the chromatic part's energy in its spatial mean (1 = a uniform colour blob; 1/(kh kw)
  on average for i.i.d. Gaussian taps)."""
  chroma = kernel - kernel.mean(-1, keepdims=True)
  taps = kernel.shape[0] * kernel.shape[1]
  return float(taps * np.sum(chroma.mean((0, 1)) ** 2) / max(np.sum(chroma ** 2), 1e-30))


def colour_stats(kernels: np.ndarray) -> list[dict]:
  """Per filter of (kh, kw, 3, n): colour index, the chromatic part's DC share, and OSI and
  orientation of the luminance part."""
  out = []
  for i in range(kernels.shape[-1]):
    k = kernels[..., i]
    osi, angle = orientation(k.mean(-1))
    out.append({'colour_index': colour_index(k), 'chroma_dc_share': chroma_dc_share(k),
                'luminance_osi': osi, 'orientation_deg': angle, 'l2': float(np.linalg.norm(k))})
  return out


def random_colour_spread(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
  """Std of CI over the filters of each of `RANDOM_SETS` sets of i.i.d. Gaussian kernels of
  `shape` (kh, kw, 3, n): CI does not depend on the scale, so any Gaussian initialiser gives it."""
  rng = np.random.default_rng(seed)
  spreads = []
  for _ in range(RANDOM_SETS):
    k = rng.standard_normal(shape)
    spreads.append(np.std([colour_index(k[..., i]) for i in range(shape[-1])]))
  return np.asarray(spreads)


def _rgb_tile(kernel: np.ndarray) -> np.ndarray:
  """A (kh, kw, 3) kernel as an image: grey = 0, each filter scaled by its own largest tap."""
  return 0.5 + 0.5 * kernel / max(np.abs(kernel).max(), 1e-30)


def plot_cifar_filters(kernels: np.ndarray, stats: list[dict], out: pathlib.Path,
                       title: str) -> pathlib.Path:
  plt = common.pyplot()
  n = kernels.shape[-1]
  cols = min(n, 8)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.75 * rows), squeeze=False)
  order = np.argsort([s['colour_index'] for s in stats])  # achromatic first
  for ax in axes.flat:
    ax.axis('off')
  for ax, i in zip(axes.flat, order):
    ax.imshow(_rgb_tile(kernels[..., i]), interpolation='nearest')
    ax.set_title(f"#{i} CI {stats[i]['colour_index']:.2f}", fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out


def plot_cifar_maps(images: np.ndarray, maps: np.ndarray, order, out: pathlib.Path) -> pathlib.Path:
  plt = common.pyplot()
  shown = list(order[:4]) + list(order[-4:])  # the 4 most achromatic and the 4 most chromatic
  rows, cols = len(images), len(shown) + 1
  fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows), squeeze=False)
  for r in range(rows):
    axes[r][0].imshow(images[r])
    for c, f in enumerate(shown):
      axes[r][c + 1].imshow(maps[r, :, :, f], cmap='viridis')
      if r == 0:
        axes[r][c + 1].set_title(f'#{f}', fontsize=8)
    for ax in axes[r]:
      ax.axis('off')
  fig.suptitle('first-conv responses (before BatchNorm) to test images; left 4: the most '
               'achromatic filters, right 4: the most chromatic', fontsize=8)
  fig.tight_layout()
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def claim_checks(record: dict) -> report_parts.Checks:
  """C26 from the figures in results.json, each part when present. MNIST: the learned C1
  filters' mean OSI ('filters', 'trained_mean_osi') above the 95th percentile of random sets
  ('random_mean_osi_p95', 'p_value'). CIFAR-10 ('cifar'): the spread of the colour index over
  the filters, and the DC share of the colour filters' chromatic part, each above the 95th
  percentile of random sets. All counted: other learned filters could fail them."""
  checks = report_parts.Checks()
  if 'trained_mean_osi' in record:
    n, mean, p95 = len(record['filters']), record['trained_mean_osi'], record['random_mean_osi_p95']
    checks.add('C26', f'orientation selectivity (OSI) of the {n} C1 filters, mean',
               'first layers learn edges and lines',
               f'> 95th percentile of the mean of {n} random initial filters ({p95:.3f})',
               f"{mean:.3f} (fraction of random sets at least as high: {record['p_value']:.4f})",
               mean > p95)
  cifar = record.get('cifar')
  if cifar:
    n = len(cifar['filters'])
    coloured = sum(f['colour_index'] > 0.5 for f in cifar['filters'])
    spread, p95 = cifar['colour_index_std'], cifar['random_std_p95']
    blob, blob_p95 = cifar['colour_filters_chroma_dc_share'], cifar['random_chroma_dc_share_p95']
    lecture = 'colour images: first layers learn grey edges and colour blobs'
    checks.add('C26', f'spread (std) of the colour index over the {n} first-layer filters',
               lecture, f'> 95th percentile of random sets of {n} initial filters ({p95:.3f})',
               f"{spread:.3f} (fraction of random sets at least as high: {cifar['p_value']:.4f})",
               spread > p95)
    checks.add('C26', f'DC share of the chromatic part, mean over the {coloured} colour filters '
               '(CI > 0.5)', lecture,
               f'> 95th percentile of the mean over as many random filters ({blob_p95:.3f})',
               f'{blob:.3f}', coloured > 0 and blob > blob_p95)
  return checks


def cifar_figures(kernels: np.ndarray) -> tuple[dict, tuple[float, float]]:
  """The CIFAR-10 half's figures of first-layer `kernels` (kh, kw, 3, n) against seeded random
  Gaussian filters: (results entries: per-filter `colour_stats`, the spread of CI and its random
  95th percentile and p-value, the colour filters' (CI > 0.5) mean chromatic DC share and its
  random 95th percentile, the counts of nearly grey and nearly chromatic filters; the shares of
  random filters that are nearly grey and nearly chromatic)."""
  stats = colour_stats(kernels)
  ci = np.array([s['colour_index'] for s in stats])
  spreads = random_colour_spread(kernels.shape)
  spread = float(np.std(ci))
  rng = np.random.default_rng(1)
  random_ci = np.array([colour_index(rng.standard_normal(kernels.shape[:3]))
                        for _ in range(RANDOM_SETS)])
  # Colour blobs: the chromatic part of the colour filters (CI > 0.5) is spatially uniform.
  coloured = [s['chroma_dc_share'] for s in stats if s['colour_index'] > 0.5]
  random_dc = np.array([chroma_dc_share(rng.standard_normal(kernels.shape[:3]))
                        for _ in range(RANDOM_SETS * max(len(coloured), 1))])
  entries = {
      'filters': stats, 'colour_index_std': spread,
      'random_std_p95': float(np.percentile(spreads, 95)),
      'p_value': float(np.mean(spreads >= spread)),
      'colour_filters_chroma_dc_share': float(np.mean(coloured)) if coloured else float('nan'),
      'random_chroma_dc_share_p95': float(np.percentile(
          random_dc.reshape(RANDOM_SETS, -1).mean(1), 95)),
      'n_grey': int(np.sum(ci < 0.2)), 'n_colour': int(np.sum(ci > 0.8))}
  return entries, (float(np.mean(random_ci < 0.2)), float(np.mean(random_ci > 0.8)))


def cifar_part(config, run_dir: pathlib.Path, workdir: pathlib.Path) -> tuple[str, dict]:
  """The CIFAR-10 half of C26 from the finished run in `run_dir` (its best checkpoint), with
  cifar_filters.png and cifar_feature_maps.png in `workdir`: (markdown section, results entries)."""
  import jax  # pylint: disable=g-import-not-at-top
  _, variables, preprocess, splits = common.restore_best(config, run_dir)
  kernels = np.asarray(variables['params']['stem_conv']['kernel'])  # (3, 3, 3, 16)
  if kernels.shape[2] != 3:
    raise SystemExit(f'{run_dir}: the first convolution takes {kernels.shape[2]} channels, not RGB.')
  entry, random_shares = cifar_figures(kernels)
  stats = entry['filters']
  order = np.argsort([s['colour_index'] for s in stats])
  test_x, test_y = splits.test
  picks = [int(np.flatnonzero(test_y == c)[0]) for c in range(3)]
  x = preprocess(test_x[picks], None, train=False)
  maps = np.asarray(jax.lax.conv_general_dilated(
      x, kernels, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  title = f'{config.model} first convolution (3x3, RGB), sorted by colour index'
  pngs = (plot_cifar_filters(kernels, stats, workdir / 'cifar_filters.png', title),
          plot_cifar_maps(np.asarray(test_x[picks]), maps, order,
                          workdir / 'cifar_feature_maps.png'))
  results = run_records.read_json(run_dir / 'results.json')
  entry = {'run_dir': str(common.rel(run_dir)), 'model': config.model,
           'test_accuracy': results['test_accuracy'], **entry}
  entry['check_holds'] = claim_checks({'cifar': entry}).all_hold
  return cifar_section(config, results, entry, kernels.shape, random_shares, order, pngs), {
      'cifar': entry}


def cifar_section(config, results: dict, entry: dict, shape: tuple[int, ...], random_shares,
                  order, pngs) -> str:
  """The report's CIFAR-10 section: the run (its results.json `results`), the statistics, the
  per-filter table of `entry` in `order` and the figures `pngs`."""
  stats, (grey_random, colour_random) = entry['filters'], random_shares
  rel, n_grey, n_colour = entry['run_dir'], entry['n_grey'], entry['n_colour']
  rows = [[i, f"{stats[i]['colour_index']:.3f}", f"{stats[i]['chroma_dc_share']:.3f}",
           f"{stats[i]['luminance_osi']:.3f}",
           f"{stats[i]['orientation_deg']:.0f}°", f"{stats[i]['l2']:.3f}"] for i in order]
  return f"""## CIFAR-10 first layer

The run in `{rel}`: {config.model}, {results['dataset']}, {results['num_train']:,} training
images, {results['steps']:,} iterations, test accuracy {results['test_accuracy']:.2%} (best
checkpoint at step {results['best_step']:,}); its command: `{results['command']}`. Its first
convolution is {shape[0]}x{shape[1]} over the normalised RGB channels with
{shape[-1]} filters.

Colour index CI: the share of a filter's energy outside the luminance direction (each tap's RGB
vector projected on (1,1,1)/sqrt(3)); 0 = grey, 1 = purely colour-opponent, 2/3 on average for
i.i.d. Gaussian (initial) taps. DC share of the chromatic part: the share of that part's energy
in its spatial mean (1 = one uniform colour, a blob; 1/{shape[0] * shape[1]} on
average for Gaussian taps). Baselines: {RANDOM_SETS:,} sets of Gaussian kernels of the same shape
(both statistics are scale-free, so any Gaussian initialiser gives the same). The checks are in
the table at the top.

{n_grey} of {len(stats)} learned filters are nearly grey (CI < 0.2; {grey_random:.1%} of random
filters are) and {n_colour} nearly purely chromatic (CI > 0.8; {colour_random:.1%} of random ones).

{report.markdown_table(['filter', 'colour index', 'DC share of the chromatic part', 'OSI of the luminance part', 'preferred edge orientation', 'L2 norm'], rows)}

![CIFAR first-layer filters]({pngs[0].name})

![CIFAR first-layer responses]({pngs[1].name})
"""


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


def mnist_part(config, run_dir: pathlib.Path, workdir: pathlib.Path) -> tuple[str, dict, int]:
  """The MNIST half of C26 from the finished LeNet-5 run in `run_dir` (its best checkpoint), with
  filters.png and feature_maps.png in `workdir`: (markdown sections, results entries, how many
  filters are individually more oriented than 95% of random ones)."""
  import jax  # pylint: disable=g-import-not-at-top
  _, variables, preprocess, splits = common.restore_best(config, run_dir)
  kernels = np.asarray(variables['params']['c1']['kernel'])  # (5, 5, 1, 6)
  bias = np.asarray(variables['params']['c1']['bias'])
  stats = [orientation(kernels[:, :, 0, i]) for i in range(kernels.shape[-1])]
  random_means, random_all = random_osi(kernels.shape[-1])
  trained_mean = float(np.mean([s[0] for s in stats]))
  individual_p95, n_above = oriented([s[0] for s in stats], random_all)

  # C1 responses to the first test digit of four classes.
  test_x, test_y = splits.test
  picks = [int(np.flatnonzero(test_y == c)[0]) for c in (0, 1, 4, 7)]
  x = preprocess(test_x[picks], None, train=False)
  c1 = jax.lax.conv_general_dilated(x, kernels, (1, 1), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias
  maps = np.asarray(jax.nn.relu(c1))
  f_png = plot_filters(kernels, stats, workdir / 'filters.png')
  m_png = plot_maps(test_x[picks], maps, workdir / 'feature_maps.png')
  text = f"""## MNIST first layer (LeNet-5 C1)

{n_above} of {len(stats)} learned filters are individually more oriented than 95% of random
initial filters.

## Filters

{per_filter_table(kernels, stats, individual_p95)}

![C1 kernels]({f_png.name})

## Feature maps

C1 responses (after ReLU) to the first test digit of classes 0, 1, 4 and 7.

![C1 feature maps]({m_png.name})"""
  entries = {
      'filters': [{'osi': s[0], 'orientation_deg': s[1]} for s in stats],
      'trained_mean_osi': trained_mean,
      'random_mean_osi_p95': float(np.percentile(random_means, 95)),
      'p_value': float(np.mean(random_means >= trained_mean))}
  return text, entries, n_above


def per_filter_table(kernels: np.ndarray, stats, individual_p95: float) -> str:
  return report.markdown_table(
      ['filter', 'OSI', 'preferred edge orientation', 'above the random 95th percentile '
       f'({individual_p95:.3f})', 'L2 norm'],
      [[i, f'{s[0]:.3f}', f'{s[1]:.0f}°', 'yes' if s[0] > individual_p95 else 'no',
        f'{np.linalg.norm(kernels[:, :, 0, i]):.3f}'] for i, s in enumerate(stats)])


def oriented(osi: list[float], random_osi_all: np.ndarray) -> tuple[float, int]:
  """The 95th percentile of single random filters' OSI, and how many of `osi` lie above it."""
  p95 = float(np.percentile(random_osi_all, 95))
  return p95, sum(o > p95 for o in osi)


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/visualize_filters) computed again from its
  results.json (the filters' figures) and the random baseline (seeded): checks and headline."""
  record = run_records.read_json(report_dir / 'results.json')
  _, random_all = random_osi(len(record['filters']))
  _, n_above = oriented([f['osi'] for f in record['filters']], random_all)
  return report_parts.Recomputed(claim_checks(record), headline(record, n_above))


def headline(record: dict, n_above: int) -> str:
  cifar = record.get('cifar')
  return (f"MNIST: mean OSI {record['trained_mean_osi']:.2f} vs random 95th pct "
          f"{record['random_mean_osi_p95']:.2f}, {n_above}/{len(record['filters'])} filters "
          'oriented' + (f"; CIFAR-10: CI spread {cifar['colour_index_std']:.2f} vs random 95th "
                        f"pct {cifar['random_std_p95']:.2f}, {cifar['n_grey']} grey and "
                        f"{cifar['n_colour']} colour filters" if cifar else ''))


def report_text(session: common.Session, run_dir: pathlib.Path, mnist_text: str, cifar_text: str,
                checks: report_parts.Checks) -> str:
  """report.md: the harness's header (the LeNet-5 run in `run_dir` as its data), the claim
  checks, the MNIST and the CIFAR-10 sections, the environment."""
  results = run_records.read_json(run_dir / 'results.json')
  text = report_parts.header(
      title='What first layers learn: LeNet-5 on MNIST, a ResNet on CIFAR-10', claims='claim C26',
      command=session.command,
      data=(f"MNIST, bundled IDX files; the run in `{common.rel(run_dir)}` "
            f"({results['num_train']:,} training images, {results['epochs']} epochs, test accuracy "
            f"{results['test_accuracy']:.2%}, best checkpoint at epoch {results['best_epoch']}; "
            f"its command: `{results['command']}`)."),
      protocol=(f'OSI over the {FFT_SIZE}x{FFT_SIZE} zero-padded power spectrum of each '
                'zero-mean 5x5 kernel, DC excluded; baseline: '
                f'{RANDOM_SETS:,} sets of 6 kernels drawn from the LeCun-normal initialiser.'),
      train_wall_s=results['wall_time_s'], facts=session.facts(),
      generator='experiments/visualize_filters.py')
  return text + f"""
{report_parts.checks_section(checks)}
{mnist_text}

{cifar_text}

{report_parts.footer()}"""


def main(argv):
  session = common.start(argv, 'visualize_filters')
  toy = session.preset == 'toy'
  mnist_dir, cifar_dir = run_dirs(session.workdir, toy, FLAGS.run_dir, FLAGS.cifar_run_dir)
  configs = session.configs(lambda: run_configs(  # both before anything trains
      mnist_dir, cifar_dir, toy, session.overrides, config=FLAGS.config,
      cifar_config=FLAGS.cifar_config, cifar_overrides=FLAGS.cifar_set))
  session.train(configs)  # each in its own directory: finished ones skipped, others resumed
  for run_dir in configs:
    if not sweep.is_done(run_dir):  # --report_only
      raise SystemExit(f'No finished run in {run_dir}; train it first (drop --report_only).')
  mnist_text, mnist, n_above = mnist_part(configs[mnist_dir], mnist_dir, session.workdir)
  cifar_text, cifar = (cifar_part(configs[cifar_dir], cifar_dir, session.workdir) if cifar_dir
                       else (CIFAR_SKIPPED, {}))
  record = {'experiment': 'visualize_filters', 'claims': 'C26', 'preset': session.preset,
            'command': session.command, 'run_dir': str(common.rel(mnist_dir)),
            **session.facts(), **mnist, **cifar}
  record['headline'] = headline(record, n_above)
  checks = claim_checks(record)
  session.finish(report_text(session, mnist_dir, mnist_text, cifar_text, checks), record,
                 OUTPUTS, checks)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main)
