"""Claim C25: LeNet-5 against a fully-connected net of the same depth on 1k, 10k and all MNIST
training images, over seeds: parameters, test accuracy, and accuracy on shifted test digits.

    python -m experiments.cnn_vs_fc [--preset=toy] [--seeds=3] [--workdir=DIR]
                                    [--report_dir=reports/cnn_vs_fc] [--report_only]

Runs the sweep of configs/cnn_vs_fc.py (model x training-set size x seeds) with cnn_jax.sweep,
then restores each member's best checkpoint and evaluates it on the first `--shift_images` test
images shifted by 1-4 pixels (left, right, up, down; the vacated border is background, 0),
averaged over the four directions. Writes report.md, cnn_vs_fc.png and results.json.
"""
from __future__ import annotations

import collections
import json
import pathlib

from absl import app, flags
import numpy as np

from cnn_jax import cli, report, runtime, sweep
from experiments import lecture_common as common
from experiments import report_parts, run_records

FLAGS = common.FLAGS


def define_flags() -> None:
  """The shared flags and --shift_images; defined only when run as a script."""
  common.define_flags('cnn_vs_fc', '40 steps, two small sizes.')
  flags.DEFINE_integer('shift_images', None, 'Test images for the shift test '
                       '(default 2,000; toy 500).')


SHIFTS = (0, 1, 2, 3, 4)
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx): right, left, down, up
OUTPUTS = ('report.md', 'cnn_vs_fc.png', 'results.json', 'sweep.md', 'sweep.csv', 'members.csv',
           'shift_eval.json')


def shift_images(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """uint8 NHWC images moved by (dy, dx) pixels; the vacated border is 0 (MNIST background)."""
  out = np.zeros_like(images)
  h, w = images.shape[1:3]
  src = images[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  out[:, max(dy, 0):max(dy, 0) + src.shape[1], max(dx, 0):max(dx, 0) + src.shape[2]] = src
  return out


def shift_eval(config, run_dir: pathlib.Path, num_images: int) -> dict:
  """Accuracy and agreement with the unshifted prediction per shift, from the best checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top
  model, variables, preprocess, splits = common.restore_best(config, run_dir)
  images, labels = splits.test[0][:num_images], splits.test[1][:num_images]
  predict = jax.jit(lambda x: model.apply(variables, preprocess(x, None, train=False),
                                          train=False).argmax(-1))

  def preds(x):
    return np.concatenate([np.asarray(predict(x[i:i + 500])) for i in range(0, len(x), 500)])

  base = preds(images)
  out = {}
  for k in SHIFTS:
    dirs = DIRECTIONS if k else ((0, 0),)
    p = [preds(shift_images(images, dy * k, dx * k)) for dy, dx in dirs]
    out[k] = {'accuracy': float(np.mean([np.mean(q == labels) for q in p])),
              'agreement': float(np.mean([np.mean(q == base) for q in p]))}
  return out


def size_label(n: int, num_train: int | None = None) -> str:
  return f'{n:,}' if n else f'all ({num_train:,})' if num_train else 'all'


def load_settings(run: common.SweepRun, num_images: int) -> dict:
  """(model, size) -> list over finished seeds of {'results', 'shift'}; the shift tests are
  cached in shift_eval.json."""
  cache_path = run.workdir / 'shift_eval.json'
  cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
  table = collections.defaultdict(list)
  for m in run.members:
    run_dir = run.workdir / m.name
    if not sweep.is_done(run_dir):
      continue
    if cache.get(m.name, {}).get('num_images') != num_images:
      print(f'[cnn_vs_fc] shift test of {m.name}', flush=True)
      cache[m.name] = {'num_images': num_images,
                       'shifts': {str(k): v for k, v in shift_eval(m.config, run_dir,
                                                                   num_images).items()}}
      cache_path.write_text(json.dumps(cache, indent=2) + '\n')
    results = run_records.read_results(run_dir)
    table[(m.overrides['model'], m.overrides['data.train_subset'])].append(
        {'results': results, 'shift': {int(k): v for k, v in cache[m.name]['shifts'].items()}})
  return table


def aggregate(table: dict) -> dict:
  """(model, size) -> figures over its seeds (mean and std of accuracies and agreements)."""
  stat = run_records.stat
  agg = {}
  for (model, size), runs in table.items():
    agg[(model, size)] = {
        'n': len(runs), 'num_params': runs[0]['results']['num_params'],
        'num_train': runs[0]['results']['num_train'],
        'test_accuracy': stat([r['results']['test_accuracy'] for r in runs]),
        'wall_time_s': sum(r['results']['wall_time_s'] for r in runs),
        'shift_accuracy': {k: stat([r['shift'][k]['accuracy'] for r in runs]) for k in SHIFTS},
        'shift_agreement': {k: stat([r['shift'][k]['agreement'] for r in runs]) for k in SHIFTS},
    }
  return agg


def results_table(agg: dict, sizes) -> str:
  rows = []
  for size in sizes:
    for model in ('lenet5', 'mlp'):
      a = agg.get((model, size))
      if a is None:
        continue
      rows.append([model, size_label(size, a['num_train']), f"{a['num_params']:,}", a['n'],
                   sweep.pm(a['test_accuracy'], '{:.2f}%', 100)]
                  + [sweep.pm(a['shift_accuracy'][k], '{:.1f}%', 100) for k in SHIFTS[1:]]
                  + [sweep.pm(a['shift_agreement'][1], '{:.1f}%', 100)])
  return report.markdown_table(
      ['model', 'training images', 'parameters', 'seeds', 'test accuracy']
      + [f'accuracy, {k}-px shift' for k in SHIFTS[1:]] + ['unchanged predictions, 1 px'], rows)


def pairs_of(agg: dict, sizes) -> list[tuple]:
  """(size, CNN figures, FC figures) for each size both models finished."""
  return [(size, agg[('lenet5', size)], agg[('mlp', size)]) for size in sizes
          if ('lenet5', size) in agg and ('mlp', size) in agg]


def claim_checks(agg: dict, sizes) -> report_parts.Checks:
  """C25 from the figures of `aggregate` (per (model, size): 'num_params', 'num_train',
  'test_accuracy' and per shift 'shift_accuracy' and 'shift_agreement', each {'mean', ...}).
  Counted, per training-set size: CNN above FC in test accuracy, losing less to a 2-px shift,
  and changing fewer predictions under a 1-px shift. Fact: the parameter ratio (the
  architectures fix it)."""
  checks = report_parts.Checks()
  pairs = pairs_of(agg, sizes)
  if pairs:
    _, c, f = pairs[0]
    checks.add('C25', 'parameters, CNN vs FC of the same depth', 'far fewer', 'CNN < FC / 10',
               f"{c['num_params']:,} vs {f['num_params']:,} "
               f"(x{f['num_params'] / c['num_params']:.1f})",
               holds=c['num_params'] * 10 < f['num_params'], fact=True)
  for size, c, f in pairs:
    checks.add('C25', f"test accuracy, {size_label(size, c['num_train'])} training images",
               'better generalisation', 'CNN mean > FC mean',
               f"{c['test_accuracy']['mean']:.2%} vs {f['test_accuracy']['mean']:.2%}",
               holds=c['test_accuracy']['mean'] > f['test_accuracy']['mean'])
  drop = lambda a, k: a['shift_accuracy'][0]['mean'] - a['shift_accuracy'][k]['mean']
  agree = lambda a: a['shift_agreement'][1]['mean']
  for size, c, f in pairs:
    lab = size_label(size, c['num_train'])
    checks.add('C25', f'accuracy lost to a 2-px shift, {lab} images', 'small shifts leave the '
               'prediction unchanged', 'CNN loses less than FC',
               f'{drop(c, 2):.1%} vs {drop(f, 2):.1%}', holds=drop(c, 2) < drop(f, 2))
    checks.add('C25', f'predictions unchanged by a 1-px shift, {lab} images', 'unchanged',
               'CNN > FC', f'{agree(c):.1%} vs {agree(f):.1%}', holds=agree(c) > agree(f))
  return checks


def headline(agg: dict, sizes) -> str:
  pairs = pairs_of(agg, sizes)
  if not pairs:
    return ''
  big = max(sizes, key=lambda s: s or 10 ** 9)
  _, c, f = [p for p in pairs if p[0] == big][0]
  small = pairs[0]
  return (f"{c['num_params']:,} vs {f['num_params']:,} params; "
          f"test acc {small[1]['test_accuracy']['mean']:.1%} vs "
          f"{small[2]['test_accuracy']['mean']:.1%} on {size_label(small[0])} images; "
          f"3-px shift: {c['shift_accuracy'][3]['mean']:.0%} vs "
          f"{f['shift_accuracy'][3]['mean']:.0%}")


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/cnn_vs_fc) computed again from its per-run records:
  each member's results (members.csv) and shift test (shift_eval.json) aggregated over seeds
  give the checks and the headline. The training-set size of 'all' is results.json's."""
  shifts = run_records.read_json(report_dir / 'shift_eval.json')
  num_train = {(s['model'], s['train_subset']): s['num_train']
               for s in run_records.read_json(report_dir / 'results.json')['settings']}
  table = collections.defaultdict(list)
  for m in run_records.read_csv(report_dir / 'members.csv'):
    if m['status'] == 'completed':
      key = (m['model'], m['data.train_subset'])
      table[key].append({'results': {**m, 'num_train': num_train[key]}, 'shift': {
          int(k): v for k, v in shifts[m['name']]['shifts'].items()}})
  agg = aggregate(table)
  sizes = sorted({s for _, s in agg}, key=lambda s: s or 10 ** 9)
  return report_parts.Recomputed(claim_checks(agg, sizes), headline(agg, sizes))


def main(argv):
  run = common.start_sweep(argv, 'cnn_vs_fc', 'C25: LeNet-5 vs a fully-connected net')
  workdir = run.workdir
  num_images = FLAGS.shift_images or (500 if run.preset == 'toy' else 2000)
  agg = aggregate(load_settings(run, num_images))
  sizes = sorted({s for _, s in agg}, key=lambda s: s or 10 ** 9)
  checks = claim_checks(agg, sizes)
  png = plot(agg, sizes, workdir / 'cnn_vs_fc.png')
  config = run.config
  facts = run.facts()
  command = cli.command_line('experiments.cnn_vs_fc')
  train_wall = sum(a['wall_time_s'] for a in agg.values())
  text = report_parts.header(
      title='CNN vs fully-connected network', claims='claim C25', command=command,
      data=(f'MNIST, bundled IDX files; {config.data.validation_size:,} validation images carved '
            'from train; training subsets of ' + ', '.join(size_label(s) for s in sizes)
            + ' images (the same images for every seed); 10,000 test images, the first '
            f'{num_images:,} of them for the shift test.'),
      protocol=(f'plain SGD lr {config.learning_rate}, batch {config.batch_size}, '
                f'{config.num_steps} steps for every model and size, validation every '
                f'{config.eval_every_steps} steps, best checkpoint by {config.selection_metric}; '
                f'{max(run.seeds, 1)} seed(s) per setting (mean ± sample std). LeNet-5 sees the digits '
                'padded to 32x32; the FC net (784-1176-400-120-84-10, ReLU: LeNet-5\'s depth and '
                'pooled-map widths) the 28x28 pixels. Shift test: each test image moved by k px '
                'left, right, up and down (zero fill), accuracy averaged over the four; '
                f'sweep `{" ".join(run.spec.command(common.rel(workdir)))}`.'),
      train_wall_s=train_wall, facts=facts, generator='experiments/cnn_vs_fc.py')
  text += f"""
{report_parts.checks_section(checks)}
## Results (mean ± std over seeds)

{results_table(agg, sizes)}

![accuracy against training-set size and shift]({png.name})

Per-member records: [members.csv](members.csv), [sweep.md](sweep.md), [shift_eval.json](shift_eval.json).

{report_parts.footer()}"""
  common.finish(workdir, text, {
      'experiment': 'cnn_vs_fc', 'claims': 'C25', 'preset': run.preset, 'command': command,
      'train_wall_time_s': train_wall, **facts, 'headline': headline(agg, sizes),
      'settings': [{'model': m, 'train_subset': s, **a} for (m, s), a in agg.items()]},
      OUTPUTS, checks, FLAGS.report_dir)


def plot(agg: dict, sizes, out: pathlib.Path) -> pathlib.Path:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  styles = {'lenet5': ('tab:blue', 'LeNet-5'), 'mlp': ('tab:orange', 'FC (same depth)')}
  for model, (color, label) in styles.items():
    xs = [agg[(model, s)]['num_train'] for s in sizes if (model, s) in agg]
    ys = [100 * agg[(model, s)]['test_accuracy']['mean'] for s in sizes if (model, s) in agg]
    es = [100 * np.nan_to_num(agg[(model, s)]['test_accuracy']['std']) for s in sizes
          if (model, s) in agg]
    axes[0].errorbar(xs, ys, yerr=es, fmt='o-', color=color, label=label, capsize=3)
    for i, s in enumerate(sizes):
      if (model, s) not in agg:
        continue
      a = agg[(model, s)]
      axes[1].plot(SHIFTS, [100 * a['shift_accuracy'][k]['mean'] for k in SHIFTS], 'o-',
                   color=color, alpha=0.4 + 0.6 * (i + 1) / len(sizes),
                   label=f"{label}, {a['num_train']:,} images")
  axes[0].set_xscale('log')
  axes[0].set_xlabel('training images')
  axes[0].set_ylabel('test accuracy (%)')
  axes[1].set_xlabel('shift (pixels)')
  axes[1].set_ylabel('test accuracy on shifted digits (%)')
  return common.save_figure(fig, out, axes=axes, legend_size=7)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
