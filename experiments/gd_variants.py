"""Claim C13: full-batch GD, SGD (batch 1) and mini-batch SGD on the same budget of examples
seen; validation curves; early stopping picks the best epoch.

    python -m experiments.gd_variants [--preset=toy] [--seeds=3] [--workdir=DIR]
                                      [--report_dir=reports/gd_variants] [--report_only]

Runs the sweep of configs/gd_variants.py (variant x seeds) with cnn_jax.sweep, then writes
report.md, gd_variants.png and results.json: validation loss and accuracy per epoch (= per pass
over the training subset, the same examples-seen budget for every variant), the epoch early
stopping selects (lowest validation loss) and the test accuracy of that checkpoint.
"""
from __future__ import annotations

import pathlib

from absl import app
import numpy as np

from cnn_jax import cli, report, runtime, sweep
from cnn_jax.metric_writers import read_metrics
from experiments import lecture_common as common
from experiments import report_parts, run_records

FLAGS = common.FLAGS


OUTPUTS = ('report.md', 'gd_variants.png', 'results.json', 'sweep.md', 'sweep.csv', 'members.csv')
OVERFIT = 1.05  # "the validation loss turns up": final > 1.05 x its minimum


def variant_name(batch: int, subset: int) -> str:
  return ('full-batch GD' if batch == subset else 'SGD (batch 1)' if batch == 1 else
          f'mini-batch SGD ({batch})')


def read_variants(run: common.SweepRun) -> dict[str, dict]:
  """variant name -> its settings and finished runs (validation curves per epoch, best epoch,
  test accuracy, examples seen), with the curves' means over seeds."""
  subset = run.config.data.train_subset
  variants: dict[str, dict] = {}
  for m in run.members:
    run_dir = run.workdir / m.name
    results = run_records.read_results(run_dir)
    if results is None:
      continue
    val = [r for r in read_metrics(run_dir / 'metrics.jsonl') if r['split'] == 'val']
    v = variants.setdefault(variant_name(m.config.batch_size, subset), {
        'batch_size': m.config.batch_size, 'learning_rate': m.config.learning_rate,
        'steps': results['steps'], 'runs': []})
    v['runs'].append({
        'seed': m.overrides.get('seed'), 'val_loss': [r['loss'] for r in val],
        'val_accuracy': [r['accuracy'] for r in val], 'best_epoch': results['best_epoch'],
        'test_accuracy': results['test_accuracy'], 'wall_time_s': results['wall_time_s'],
        'examples_seen': results['steps'] * m.config.batch_size})
  return summarise(variants)


def summarise(variants: dict[str, dict]) -> dict[str, dict]:
  """Adds to each variant, from its runs' validation curves, the mean curves over seeds and
  each run's lowest validation loss and final / lowest ratio."""
  for v in variants.values():
    curves = np.asarray([r['val_loss'] for r in v['runs']])
    v['mean_val_loss'] = curves.mean(0).tolist()
    v['mean_val_accuracy'] = np.asarray([r['val_accuracy'] for r in v['runs']]).mean(0).tolist()
    v['min_val_loss'] = [min(r['val_loss']) for r in v['runs']]
    v['final_over_min'] = [r['val_loss'][-1] / min(r['val_loss']) for r in v['runs']]
  return variants


def argmin_epoch(run: dict) -> int:
  """The epoch (from 1) of a run's lowest validation loss."""
  return int(np.argmin(run['val_loss'])) + 1


def claim_checks(variants: dict[str, dict], num_epochs: int) -> report_parts.Checks:
  """C13 from the runs of `read_variants` (each run needs 'val_loss' per epoch, 'best_epoch' and
  'examples_seen'; each variant 'min_val_loss' per run). Counted: mini-batch SGD reaches a lower
  validation loss than full-batch GD, and a validation curve turns up, so that early stopping
  has something to stop. Facts: the examples seen (the config fixes them) and each run's best
  epoch at its lowest validation loss (what selecting by validation loss does)."""
  checks = report_parts.Checks()
  budgets = {k: sorted({r['examples_seen'] for r in v['runs']}) for k, v in variants.items()}
  checks.add('C13', 'examples seen by each variant', 'same budget', 'equal',
             ', '.join(f'{k}: {b[0]:,}' for k, b in budgets.items()),
             holds=len({b[0] for b in budgets.values()}) == 1, fact=True)
  gd, mb = variants.get('full-batch GD'), variants.get('mini-batch SGD (64)')
  if gd and mb:
    checks.add('C13', 'lowest validation loss, mini-batch vs full-batch GD (same examples seen)',
               'mini-batches: many more updates per pass', 'mini-batch < GD (mean over seeds)',
               f"{np.mean(mb['min_val_loss']):.3f} vs {np.mean(gd['min_val_loss']):.3f}",
               holds=np.mean(mb['min_val_loss']) < np.mean(gd['min_val_loss']))
  # A curve that ends above OVERFIT x its minimum has that minimum before the last epoch.
  turned = {k: [r for r in v['runs'] if r['val_loss'][-1] > OVERFIT * min(r['val_loss'])]
            for k, v in variants.items()}
  checks.add('C13', 'early stopping: the validation loss turns up, its minimum before the end',
             'stop at the validation minimum',
             f'final val loss > {OVERFIT} x its minimum in at least one run',
             '; '.join(f"{k}: {len(turned[k])} of {len(v['runs'])} runs, minima at epochs "
                       f"{[argmin_epoch(r) for r in turned[k]]} of {num_epochs}"
                       for k, v in variants.items()),
             holds=any(turned.values()))
  picks = [r['best_epoch'] == argmin_epoch(r) for v in variants.values() for r in v['runs']]
  checks.add('C13', "each run's best checkpoint is the epoch of its lowest validation loss",
             'stop at the validation minimum', 'best epoch = argmin of the validation curve',
             '; '.join(f"{k}: best epochs {[r['best_epoch'] for r in v['runs']]} vs minima at "
                       f"{[argmin_epoch(r) for r in v['runs']]}" for k, v in variants.items()),
             holds=bool(picks) and all(picks), fact=True)
  return checks


def variants_table(variants: dict[str, dict]) -> str:
  rows = []
  for k, v in variants.items():
    rows.append([k, v['batch_size'], v['learning_rate'], f"{v['steps']:,}", len(v['runs']),
                 sweep.pm(run_records.stat(v['min_val_loss'])),
                 ', '.join(str(r['best_epoch']) for r in v['runs']),
                 sweep.pm(run_records.stat([r['test_accuracy'] for r in v['runs']]), '{:.2f}%',
                          100),
                 f"{np.mean(v['final_over_min']):.2f}",
                 f"{np.mean([r['wall_time_s'] for r in v['runs']]):.0f} s"])
  return report.markdown_table(
      ['variant', 'batch', 'α', 'updates', 'seeds', 'lowest val loss', 'best epoch per seed',
       'test accuracy at the best epoch', 'final / lowest val loss', 'wall time per run'], rows)


def main(argv):
  run = common.start_sweep(argv, 'gd_variants', 'C13: GD, SGD and mini-batch SGD')
  config, workdir = run.config, run.workdir
  subset = config.data.train_subset
  variants = read_variants(run)
  checks = claim_checks(variants, config.num_epochs)
  png = plot(variants, workdir / 'gd_variants.png', subset)
  facts = run.facts()
  command = cli.command_line('experiments.gd_variants')
  train_wall = sum(r['wall_time_s'] for v in variants.values() for r in v['runs'])
  text = report_parts.header(
      title='Gradient descent, SGD and mini-batch SGD', claims='claim C13', command=command,
      data=(f'MNIST, bundled IDX files; {subset:,} training images (a fixed subset, the same for '
            f'every seed), {config.data.validation_size:,} validation images carved from train, '
            '10,000 test; padded to 32x32.'),
      protocol=(f'LeNet-5, plain SGD, {config.num_epochs} epochs = {config.num_epochs * subset:,} '
                'examples seen by every variant; validation after every epoch; the best '
                f'checkpoint (early stopping\'s choice) is the epoch of lowest {config.selection_metric}'
                f', evaluated once on test; {max(run.seeds, 1)} seed(s); sweep '
                f'`{" ".join(run.spec.command(common.rel(workdir)))}`.'),
      train_wall_s=train_wall, facts=facts, generator='experiments/gd_variants.py')
  text += f"""
{report_parts.checks_section(checks)}
## Variants

{variants_table(variants)}

![validation curves]({png.name})

Wall times are per run and include validation after every epoch and one checkpoint per epoch;
SGD with batch 1 pays a dispatch per example, which dominates on a CPU.

{report_parts.footer()}"""
  common.finish(workdir, text, {
      'experiment': 'gd_variants', 'claims': 'C13', 'preset': run.preset, 'command': command,
      'train_wall_time_s': train_wall, **facts, 'headline': headline(variants),
      'variants': variants}, OUTPUTS, checks, FLAGS.report_dir)


def headline(variants: dict[str, dict]) -> str:
  return 'lowest val loss at equal examples seen: ' + ', '.join(
      f"{k.split(' (')[0] if 'mini' not in k else 'mini-batch'} {np.mean(v['min_val_loss']):.3f}"
      for k, v in variants.items())


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/gd_variants) computed again from its results.json:
  each run's validation curve, best epoch and examples seen give the summaries, the checks and
  the headline."""
  record = run_records.read_json(report_dir / 'results.json')
  runs = {k: {'runs': v['runs']} for k, v in record['variants'].items()}
  variants = summarise(runs)
  num_epochs = len(next(iter(variants.values()))['runs'][0]['val_loss'])
  return report_parts.Recomputed(claim_checks(variants, num_epochs), headline(variants))


def plot(variants: dict, out: pathlib.Path, subset: int) -> pathlib.Path:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for k, v in variants.items():
    for ax, key in zip(axes, ('val_loss', 'val_accuracy')):
      mean = v[f'mean_{key}']
      line, = ax.plot(np.arange(1, len(mean) + 1) * subset, mean, 'o-', markersize=3,
                      label=f"{k}, α {v['learning_rate']}")
      for r in v['runs']:
        ax.plot(np.arange(1, len(r[key]) + 1) * subset, r[key], alpha=0.25,
                color=line.get_color())
        ax.axvline(r['best_epoch'] * subset, color=line.get_color(), linestyle=':', alpha=0.5)
  axes[0].set_yscale('log')
  axes[0].set_ylabel('validation loss (dotted: best epoch per seed)')
  axes[1].set_ylabel('validation accuracy')
  for ax in axes:
    ax.set_xlabel('training examples seen')
  return common.save_figure(fig, out, axes=axes, legend_size=7)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  common.define_flags('gd_variants', '128 images, 5 epochs.', seeds_of='variant')
  app.run(main, flags_parser=cli.parse_flags)
