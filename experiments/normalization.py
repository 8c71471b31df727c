"""Claim C11: no normalisation, BatchNorm, LayerNorm, InstanceNorm and GroupNorm in one small
CIFAR-10 CNN; which axes each layer normalises over; BatchNorm at test time with running
averages against batch statistics.

    python -m experiments.normalization [--preset=quick|toy] [--seeds=2] [--workdir=DIR]
                                        [--report_dir=reports/normalization] [--report_only]
                                        [--set=data.data_dir=/data/cifar10]

Runs the sweep of configs/normalization.py (norm x seeds) with cnn_jax.sweep in
`<workdir>/model_kwargs.norm=...,seed=...` (finished members are skipped, interrupted ones
resume), then
  * the axes check: each layer of cnn_jax.models.layers.norm_layer applied to a random NHWC
    tensor whose mean and scale differ per example and channel; its output is tested for zero
    mean and unit variance over each candidate set of axes, and the pattern is compared with
    the one the lecture's definitions imply (no training involved);
  * for every finished run, its best checkpoint on a fixed random order of test images: in
    inference mode at test batches of 1 and 1,000 (predictions must not depend on the batch),
    and, for BatchNorm, with the statistics of the test batch itself at several batch sizes;
and writes report.md, curves.png and results.json in the workdir.
"""
from __future__ import annotations

import functools
import json
import pathlib

from absl import app, flags
import numpy as np

from cnn_jax import cli, report, runtime, sweep
from cnn_jax.metric_writers import read_metrics
from cnn_jax.models import layers
from experiments import lecture_common as common
from experiments import report_parts, run_records

FLAGS = common.FLAGS
NORMS = layers.NORMS
NAMES = {'none': 'no norm', 'batch': 'BatchNorm', 'layer': 'LayerNorm',
         'instance': 'InstanceNorm', 'group': 'GroupNorm'}
COLORS = {'none': 'black', 'batch': 'tab:blue', 'layer': 'tab:orange', 'instance': 'tab:green',
          'group': 'tab:red'}
OUTPUTS = ('report.md', 'curves.png', 'results.json', 'sweep.md', 'sweep.csv', 'members.csv',
           'test_time.json')
BN_BATCHES = (1000, 100, 16, 4, 1)  # test-batch sizes for BatchNorm with batch statistics
SAME_LOGITS = 1e-3  # logits equal up to float rounding


def define_flags() -> None:
  """The shared flags (--set among them) and --test_images; defined only when run as a script."""
  common.define_flags('normalization', '512 images, 16 steps per norm, one seed; quick: 150 '
                      'steps of batch 64 per run.', seeds_of='norm',
                      presets=('full', 'quick', 'toy'))
  flags.DEFINE_integer('test_images', None, 'Test images (fixed random order) for the test-time '
                       'comparison (default 2,000; toy 200).')


# ------------------------------------------------------------------------------ axes check

# The lecture's normalisation groups (notes 000 §5.1.4, CLAIMS C11) as a block id for every
# element (n, h, w, c) of an NHWC tensor; GroupNorm's groups are adjacent channels (Wu & He).
# 'pixel' is a control: per example and position over the channels (flax's LayerNorm default).
PARTITIONS = {
    'batch': 'per channel, over (N, H, W)',
    'layer': 'per example, over (H, W, C)',
    'instance': 'per example and channel, over (H, W)',
    'group': 'per example and channel group, over (H, W, group)',
    'pixel': 'per example and pixel, over C',
}
TOLERANCE = {'mean': 1e-3, 'var': 1e-2}  # |mean| and |var - 1| of a normalised block


def block_ids(shape: tuple[int, int, int, int], partition: str, groups: int) -> np.ndarray:
  n, h, w, c = np.indices(shape)
  size = shape[3] // groups
  return {'batch': c, 'layer': n, 'instance': n * shape[3] + c,
          'group': n * groups + c // size, 'pixel': (n * shape[1] + h) * shape[2] + w}[partition]


def refines(fine: np.ndarray, coarse: np.ndarray) -> bool:
  """True when every block of `fine` lies inside one block of `coarse`: then an output with
  zero mean and unit variance in every fine block has them in every coarse block too."""
  pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
  return len(np.unique(pairs[0])) == pairs.shape[1]


def block_stats(y: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
  """The largest |mean| and |variance - 1| over the blocks (population variance)."""
  ids, y = ids.ravel(), y.astype(np.float64).ravel()
  count = np.bincount(ids)
  mean = np.bincount(ids, y) / count
  var = np.bincount(ids, (y - mean[ids]) ** 2) / count
  return float(np.abs(mean).max()), float(np.abs(var - 1).max())


def noise_tensor(shape=(8, 6, 6, 16), seed: int = 0) -> np.ndarray:
  """N(0, 1) noise shifted and scaled differently for every (example, channel)."""
  rng = np.random.default_rng(seed)
  loc = rng.uniform(-2, 2, (shape[0], 1, 1, shape[3]))
  scale = rng.uniform(0.5, 3, (shape[0], 1, 1, shape[3]))
  return (loc + scale * rng.standard_normal(shape)).astype(np.float32)


def apply_norm(layer, x: np.ndarray) -> np.ndarray:
  """A freshly initialised layer (gamma 1, beta 0) applied in training mode."""
  import jax  # pylint: disable=g-import-not-at-top
  variables = layer.init(jax.random.key(0), x)
  y, _ = layer.apply(variables, x, mutable=['batch_stats'])
  return np.asarray(y)


def axes_check(shape=(8, 6, 6, 16), groups: int = 4, layer_for=None) -> dict:
  """For each norm of NORMS: is its output normalised over each partition's blocks, measured,
  against what the definitions imply (normalised exactly over the partitions its own blocks
  refine). `layer_for(norm)` builds the layer (default: layers.norm_layer in training mode)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  layer_for = layer_for or (lambda norm: layers.norm_layer(norm, True, jnp.float32, groups)())
  x = noise_tensor(shape)
  ids = {p: block_ids(shape, p, groups) for p in PARTITIONS}
  out = {'shape': list(shape), 'groups': groups, 'tolerance': TOLERANCE, 'norms': {}}
  outputs = {}
  for norm in NORMS[1:]:
    y = outputs[norm] = apply_norm(layer_for(norm), x)
    cells = {}
    for p in PARTITIONS:
      mean, var = block_stats(y, ids[p])
      cells[p] = {'max_abs_mean': mean, 'max_abs_var_minus_1': var,
                  'normalised': mean < TOLERANCE['mean'] and var < TOLERANCE['var'],
                  'expected': refines(ids[norm], ids[p])}
    out['norms'][norm] = {'cells': cells,
                          'as_lecture': all(c['normalised'] == c['expected']
                                            for c in cells.values())}
  # GroupNorm generalises LayerNorm (one group) and InstanceNorm (one channel a group).
  gn = lambda **kw: apply_norm(nn.GroupNorm(epsilon=1e-5, **kw), x)
  out['gn_one_group_vs_layer'] = float(np.abs(gn(num_groups=1) - outputs['layer']).max())
  out['gn_size_one_vs_instance'] = float(
      np.abs(gn(num_groups=None, group_size=1) - outputs['instance']).max())
  return out


def axes_table(check: dict) -> str:
  def cell(c):
    mark = 'normalised' if c['normalised'] else 'not'
    ok = '' if c['normalised'] == c['expected'] else ' **(unexpected)**'
    return (f"{mark} ({c['max_abs_mean']:.0e} / {c['max_abs_var_minus_1']:.0e}){ok}")
  rows = [[NAMES[n], *(cell(d['cells'][p]) for p in PARTITIONS),
           'yes' if d['as_lecture'] else '**no**'] for n, d in check['norms'].items()]
  return report.markdown_table(['layer', *(f'{p}: {w}' for p, w in PARTITIONS.items()),
                                'pattern as the lecture\'s axes imply'], rows)


# ------------------------------------------------------------------------- test-time eval


def shuffled_test_subset(num_test: int, num_images: int) -> np.ndarray:
  """A fixed random subset of the test split: the folder is sorted by class, and a test batch
  of one class would give BatchNorm's batch statistics a biased sample."""
  return np.random.default_rng(0).permutation(num_test)[:num_images]


def evaluate_at_test_time(config, run_dir: pathlib.Path, num_images: int,
                          batches=BN_BATCHES) -> dict:
  """Accuracy of the best checkpoint on `num_images` test images: in inference mode at test
  batches of 1 and of 1,000 (and the largest difference of their logits), and for
  BatchNorm with the test batch's own statistics at each size of `batches`."""
  import jax  # pylint: disable=g-import-not-at-top
  model, variables, preprocess, splits = common.restore_best(config, run_dir)
  idx = shuffled_test_subset(len(splits.test[0]), num_images)
  images, labels = splits.test[0][idx], splits.test[1][idx]

  def logits(x, train):  # train=True: BatchNorm normalises with the batch's statistics
    x = preprocess(x, None, train=False)
    if train:
      return model.apply(variables, x, train=True, mutable=['batch_stats'])[0]
    return model.apply(variables, x, train=False)

  @functools.partial(jax.jit, static_argnums=1)
  def batched_logits(x, train):  # x: (batches, batch, H, W, C); each batch on its own
    return jax.vmap(lambda b: logits(b, train))(x)

  def infer(batch: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of the first images that fill whole batches of `batch`."""
    n = len(images) - len(images) % batch
    x = images[:n].reshape((-1, batch) + images.shape[1:])
    per_call = max(1, 1000 // batch)
    out = [np.asarray(batched_logits(x[i:i + per_call], train))
           for i in range(0, len(x), per_call)]
    return np.concatenate(out).reshape(n, -1), labels[:n]

  result = {'num_images': int(len(images))}
  (big, y), (one, _) = infer(min(1000, len(images)), False), infer(1, False)
  n = len(big)
  result['inference'] = {
      'accuracy': float(np.mean(big.argmax(-1) == y)),
      'accuracy_batch_1': float(np.mean(one[:n].argmax(-1) == y)),
      'max_logit_diff_batch_1_vs_1000': float(np.abs(one[:n] - big).max())}
  if config.model_kwargs.norm == 'batch':
    result['batch_statistics'] = {}
    for b in batches:
      if b <= len(images):
        z, y = infer(b, True)
        result['batch_statistics'][str(b)] = float(np.mean(z.argmax(-1) == y))
  return result


# ----------------------------------------------------------------------------------- runs


def load_runs(run: common.SweepRun, num_images: int) -> dict:
  """norm -> list over finished seeds of {'seed', 'results', 'train', 'val', 'test_time'};
  the test-time evaluations are cached in test_time.json."""
  cache_path = run.workdir / 'test_time.json'
  cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
  runs = {}
  for m in run.members:
    run_dir = run.workdir / m.name
    results = run_records.read_results(run_dir)
    if results is None:
      continue
    if cache.get(m.name, {}).get('requested') != num_images:
      print(f'[normalization] test-time evaluation of {m.name}', flush=True)
      cache[m.name] = {'requested': num_images,
                       **evaluate_at_test_time(m.config, run_dir, num_images)}
      cache_path.write_text(json.dumps(cache, indent=2) + '\n')
    records = read_metrics(run_dir / 'metrics.jsonl')
    runs.setdefault(m.config.model_kwargs.norm, []).append({
        'seed': m.overrides.get('seed'), 'results': results, 'test_time': cache[m.name],
        'train': [(r['step'], r['loss']) for r in records if r['split'] == 'train'],
        'val': [(r['step'], r['accuracy']) for r in records if r['split'] == 'val']})
  return runs


def plot(runs: dict, out: pathlib.Path) -> pathlib.Path:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for norm, seeds in runs.items():
    for i, r in enumerate(seeds):
      for ax, key in zip(axes, ('train', 'val')):
        if r[key]:
          steps, ys = zip(*r[key])
          ax.plot(steps, [100 * v for v in ys] if key == 'val' else ys, '-' if key == 'train'
                  else 'o-', markersize=3, color=COLORS[norm], alpha=0.8,
                  label=NAMES[norm] if i == 0 else None)
  axes[0].set_ylabel('training loss (mean of each logging interval)')
  axes[1].set_ylabel('validation accuracy (%)')
  for ax in axes:
    ax.set_xlabel('SGD step')
  fig.suptitle('CIFAR-10, cifar_cnn: one line per norm and seed')
  return common.save_figure(fig, out, axes=axes, legend_size=8)


def accuracy(runs: dict, norm: str, key=lambda r: r['results']['test_accuracy']) -> dict:
  return run_records.stat([key(r) for r in runs.get(norm, [])])


def claim_checks(axes: dict, runs: dict) -> report_parts.Checks:
  """C11. Counted, from the trained runs (`load_runs`): BatchNorm's test accuracy with running
  averages against the statistics of single test images, and BatchNorm against no
  normalisation. Facts, from the definitions and the code, whatever the runs learned: the axes
  each layer normalises over and GroupNorm generalising LayerNorm and InstanceNorm (`axes_check`,
  no training), and BatchNorm's inference output not depending on the test batch (running
  averages replace the batch's statistics by construction)."""
  out = report_parts.Checks()
  for norm, d in axes['norms'].items():
    normalised = [p for p, c in d['cells'].items() if c['normalised']]
    out.add('C11', f'{NAMES[norm]}: the blocks its output has mean 0 and variance 1 over',
            PARTITIONS[norm], 'exactly the partitions its own blocks refine',
            ', '.join(normalised) or 'none', d['as_lecture'], fact=True)
  gap = max(axes['gn_one_group_vs_layer'], axes['gn_size_one_vs_instance'])
  out.add('C11', 'GroupNorm with one group vs LayerNorm; with one channel a group vs '
          'InstanceNorm', 'GroupNorm generalises LN and IN', 'max |difference| < 1e-4',
          f"{axes['gn_one_group_vs_layer']:.1e}, {axes['gn_size_one_vs_instance']:.1e}",
          gap < 1e-4, fact=True)
  bn = runs.get('batch', [])
  if bn:
    diff = [r['test_time']['inference']['max_logit_diff_batch_1_vs_1000'] for r in bn]
    out.add('C11', 'BatchNorm at inference: largest logit difference, test batch 1 vs 1,000',
            'running averages used at inference: the output does not depend on the batch',
            f'< {SAME_LOGITS:g} (float rounding) for every seed',
            ', '.join(f'{d:.1e}' for d in diff), all(d < SAME_LOGITS for d in diff), fact=True)
    running = [r['test_time']['inference']['accuracy'] for r in bn]
    single = [r['test_time']['batch_statistics']['1'] for r in bn]
    out.add('C11', 'BatchNorm test accuracy: running averages vs the statistics of single '
            'test images', 'running averages at inference', 'running > batch-1 for every seed',
            ', '.join(f'{a:.2%} vs {b:.2%}' for a, b in zip(running, single)),
            all(a > b for a, b in zip(running, single)))
  if bn and runs.get('none'):
    b, n = accuracy(runs, 'batch'), accuracy(runs, 'none')
    out.add('C11', 'test accuracy, BatchNorm vs no normalisation (same recipe and budget)',
            'BN keeps layer outputs at one scale, easing training', 'BN mean > none mean',
            f"{b['mean']:.2%} vs {n['mean']:.2%}", b['mean'] > n['mean'])
  return out


def observations(runs: dict) -> str:
  """The ranking of the norms by mean test accuracy, said plainly; not a lecture claim."""
  means = {n: accuracy(runs, n)['mean'] for n in NORMS if runs.get(n)}
  if not means:
    return ''
  ranked = sorted(means, key=means.get, reverse=True)
  text = ('Ranked by mean test accuracy: '
          + ' > '.join(f'{NAMES[n]} {means[n]:.1%}' for n in ranked) + '.')
  below = [NAMES[n] for n in ranked if n != 'none' and means[n] < means.get('none', -1)]
  if below:
    text += (f" At this budget {', '.join(below)} end{'s' if len(below) == 1 else ''} **below** "
             'the net without normalisation. The lecture makes no claim about LayerNorm, '
             'InstanceNorm or GroupNorm against no normalisation, so this is reported, not checked.')
  return text + (
      ' A likely reason for InstanceNorm (not tested separately): it removes every channel\'s '
      'per-image mean and scale, and the global average pool right after the last one then sees '
      'ReLU(γ x̂ + β), whose average depends on the shape of the channel\'s distribution over the '
      'image only; the head gets little of what the image contains.')


def accuracy_table(runs: dict, num_images: int) -> str:
  """Per norm, over its seeds: test, validation and one-at-a-time accuracy, loss, wall time."""
  rows = []
  for norm in NORMS:
    seeds = runs.get(norm, [])
    if not seeds:
      rows.append([NAMES[norm], '—', '0', '—', '—', '—', '—', '—'])
      continue
    res = seeds[0]['results']
    rows.append([
        NAMES[norm], f"{res['num_params']:,}", len(seeds),
        sweep.pm(accuracy(runs, norm), '{:.2f}%', 100),
        sweep.pm(accuracy(runs, norm, lambda r: r['results']['val_accuracy']), '{:.2f}%', 100),
        sweep.pm(accuracy(runs, norm, lambda r: r['train'][-1][1] if r['train'] else
                          float('nan')), '{:.3f}'),
        sweep.pm(accuracy(runs, norm, lambda r: r['test_time']['inference']['accuracy_batch_1']),
                 '{:.2f}%', 100),
        sweep.pm(accuracy(runs, norm, lambda r: r['results']['wall_time_s']), '{:.0f} s')])
  return report.markdown_table(
      ['layer', 'parameters', 'seeds', 'test accuracy (best val checkpoint, all test images)',
       'val accuracy', 'last logged training loss', f'test accuracy, {num_images:,} test images '
       'one at a time', 'wall time per run'], rows)


def bn_table(runs: dict) -> str:
  """BatchNorm's test accuracy per seed: running averages, then batch statistics."""
  bn_rows = []
  for r in runs.get('batch', []):
    t = r['test_time']
    bn_rows.append([r['seed'], f"{t['inference']['accuracy']:.2%}"]
                   + [f"{t['batch_statistics'][str(b)]:.2%}" if str(b) in t['batch_statistics']
                      else '—' for b in BN_BATCHES])
  return report.markdown_table(
      ['seed', 'running averages'] + [f'batch statistics, test batch {b}' for b in BN_BATCHES],
      bn_rows) if bn_rows else '(no finished BatchNorm run)'


def axes_section(axes: dict) -> str:
  """The report's section on the axes each layer normalises over (`axes_check`)."""
  pattern_note = ', '.join(
      f"{NAMES[n]} {'as the lecture' if d['as_lecture'] else '**not** as the lecture'}"
      for n, d in axes['norms'].items())
  return f"""## Which axes each layer normalises over (no training)

Each layer as the model builds it (`cnn_jax.models.layers.norm_layer`, training mode, γ = 1,
β = 0) is applied to a {' x '.join(map(str, axes['shape']))} NHWC tensor of N(0, 1) noise shifted by
U(-2, 2) and scaled by U(0.5, 3) per example and channel ({axes['groups']} groups for GroupNorm).
Each cell: whether the output has mean 0 and variance 1 in every block of that partition
(largest |mean| / |variance - 1|; tolerance {TOLERANCE['mean']:g} / {TOLERANCE['var']:g}). A layer is
also normalised over every coarser partition that its own blocks refine (InstanceNorm's blocks
lie inside BatchNorm's, LayerNorm's and GroupNorm's), and over no other; "pixel" is a control,
the axis flax's `nn.LayerNorm()` reduces by default, which the lecture's LayerNorm is not.
Result: {pattern_note}.

{axes_table(axes)}

The lecture writes BatchNorm as (z - μ) / (σ + ε); flax (like PyTorch and Ioffe & Szegedy)
divides by sqrt(σ² + ε), ε = 1e-5: the same up to ε.
"""


def headline(runs: dict) -> str:
  means = {n: accuracy(runs, n)['mean'] for n in NORMS if runs.get(n)}
  bn_single = [r['test_time']['batch_statistics'].get('1') for r in runs.get('batch', [])]
  return ('test acc ' + ', '.join(f'{NAMES[n]} {m:.1%}' for n, m in means.items())
          + (f'; BN with single-image batch stats {np.mean(bn_single):.1%}'
             if bn_single and None not in bn_single else ''))


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/normalization) computed again from its results.json:
  each run's results and test-time evaluation give the checks and the headline; the axes facts
  are the report's `axes_check` (no training)."""
  record = run_records.read_json(report_dir / 'results.json')
  return report_parts.Recomputed(claim_checks(record['axes_check'], record['runs']),
                           headline(record['runs']))


def main(argv):
  run = common.start_sweep(argv, 'normalization', 'C11: normalisation layers in cifar_cnn')
  workdir, config = run.workdir, run.config
  num_images = FLAGS.test_images or (200 if run.preset == 'toy' else 2000)
  axes = axes_check()
  runs = load_runs(run, num_images)
  png = plot(runs, workdir / 'curves.png')
  result_checks = claim_checks(axes, runs)
  facts = run.facts()
  # The command that trains the runs and writes this report (--report_only only rewrites it).
  command = cli.command_line('experiments.normalization').replace(' --report_only', '')
  train_wall = sum(r['results']['wall_time_s'] for seeds in runs.values() for r in seeds)
  any_res = next((s[0]['results'] for s in runs.values() if s), None)
  count = lambda key: f'{any_res[key]:,}' if any_res else '?'
  seen = config.num_steps * config.batch_size
  images_seen = (f'{seen:,} images, {seen / any_res["num_train"]:.2f} epochs' if any_res
                 else f'{seen:,} images')
  text = report_parts.header(
      title='Normalisation layers: none, BatchNorm, LayerNorm, InstanceNorm, GroupNorm',
      claims='claim C11', command=command,
      data=(f"{any_res['dataset'] if any_res else config.data.dataset}: "
            f"{count('num_train')} training images, "
            f"{config.data.validation_size:,} validation images carved from train, "
            f"{count('num_test')} test. Per-channel standardisation with "
            'the training split\'s statistics' + (', random horizontal flips'
                                                  if config.data.horizontal_flip else '') + '.'),
      protocol=(f"`cifar_cnn` (five 3x3 convolutions 32-32-64-64-128, each followed by the norm "
                f"and ReLU, 2x2 max pooling after the 2nd and 4th, global average pool, dense 10; "
                f"GroupNorm with {config.model_kwargs.get('groups', 8)} groups), the same recipe "
                f"for every norm: SGD momentum {config.momentum}, lr {config.learning_rate} "
                f"({config.lr_schedule}), weight decay {config.weight_decay:g} on kernels, batch "
                f"{config.batch_size}, {config.num_steps:,} steps ({images_seen}), validation every "
                f"{config.eval_every_steps} steps, best checkpoint by {config.selection_metric}; "
                f"{max(run.seeds, 1)} seed(s) per norm (seed = init and data order); sweep "
                f"`{' '.join(run.spec.command(common.rel(workdir)))}`."),
      train_wall_s=train_wall, facts=facts, generator='experiments/normalization.py')
  text += f"""
{report_parts.checks_section(result_checks)}
## Accuracy (mean ± sample std over seeds)

{accuracy_table(runs, num_images)}

{observations(runs)}

![training loss and validation accuracy]({png.name})

## BatchNorm at test time: running averages against batch statistics

The best checkpoint of each BatchNorm run on {num_images:,} test images in a fixed random order
(the image folder is sorted by class; a batch of one class would bias its statistics). Running
averages: inference mode, the exponential moving averages of the training batches' mean and
variance (momentum 0.9). Batch statistics: each test batch normalised with its own mean and
variance, as in training.

{bn_table(runs)}

{axes_section(axes)}
Per-member records: [members.csv](members.csv), [sweep.md](sweep.md),
[test_time.json](test_time.json).

{report_parts.footer()}"""
  common.finish(workdir, text, {
      'experiment': 'normalization', 'claims': 'C11', 'preset': run.preset, 'command': command,
      'train_wall_time_s': train_wall, **facts, 'headline': headline(runs), 'axes_check': axes,
      'runs': {n: [{k: v for k, v in r.items() if k not in ('train', 'val')} for r in seeds]
               for n, seeds in runs.items()}},
      OUTPUTS, result_checks, FLAGS.report_dir)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
