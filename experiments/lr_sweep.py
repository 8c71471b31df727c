"""Claim C15: one epoch of LeNet-5 on MNIST at alpha = 1, 0.1, 0.01 — training-loss curves.

    python -m experiments.lr_sweep [--preset=toy] [--workdir=DIR] [--report_dir=reports/lr_sweep]
                                   [--parallel=N] [--report_only]

Runs the sweep of configs/lr_sweep.py (every learning rate x `--seeds`) with cnn_jax.sweep in
`<workdir>/learning_rate=...,seed=...` (finished members are skipped, interrupted ones resume),
then writes report.md, loss_curves.png, curves.csv and results.json in the workdir: the
training-loss curves in one plot (and every logged point in curves.csv) and the claim checks
(alpha = 1 does not learn; alpha = 0.1 ends lower and gets there faster than alpha = 0.01),
computed for every seed.
"""
from __future__ import annotations

import math
import pathlib
import shlex

from absl import app

from cnn_jax import cli, report, runtime, sweep
from cnn_jax.metric_writers import read_metrics
from experiments import lecture_common as common
from experiments import report_parts, run_records

FLAGS = common.FLAGS


CHANCE = 0.1
NOT_LEARNED_ACCURACY = 0.2  # "does not learn": test accuracy at most twice chance, or diverged
# "Faster": the first step at which α = 0.1's logged training loss is below the loss α = 0.01
# ends the epoch with (its last-10% mean); converging faster means well before the end.
CURVE_CHECK = 'step at which α = 0.1 reaches the final training loss of α = 0.01'
CURVES = 'curves.csv'  # every member's logged training-loss points: the plot and CURVE_CHECK
OUTPUTS = ('report.md', 'loss_curves.png', 'results.json', 'sweep.md', 'sweep.csv', 'members.csv',
           CURVES)


def final_loss(curve: list[tuple[int, float]], total_steps: int) -> float:
  """The mean of the logged training losses in the last 10% of the epoch."""
  tail = [loss for step, loss in curve if step > 0.9 * total_steps]
  return sum(tail) / len(tail) if tail else math.nan


def member_outcome(run_dir: pathlib.Path, total_steps: int) -> dict:
  """Curve, final figures and divergence of one member, from its files."""
  records = read_metrics(run_dir / 'metrics.jsonl') if (run_dir / 'metrics.jsonl').exists() else []
  curve = [(r['step'], r['loss']) for r in records if r['split'] == 'train']
  results = run_records.read_results(run_dir)
  error = (run_dir / sweep.ERROR_FILE).read_text().strip() if sweep.has_failed(run_dir) else ''
  return {
      'curve': curve, 'diverged': 'diverged' in error, 'error': error,
      'first_loss': curve[0][1] if curve else math.nan,
      'final_loss': final_loss(curve, total_steps),
      'test_accuracy': results['test_accuracy'] if results else None,
      'val_loss': results['val_loss'] if results else None,
      'val_accuracy': results['val_accuracy'] if results else None,
      'wall_time_s': results['wall_time_s'] if results else 0.0,
  }


def write_curves(outcomes: dict, path: pathlib.Path) -> pathlib.Path:
  """`path` (curves.csv): a row per logged training-loss point of every member."""
  run_records.write_csv(path, ['learning_rate', 'seed', 'step', 'loss'],
                   ([lr, seed, step, loss] for (lr, seed), o in outcomes.items()
                    for step, loss in o['curve']))
  return path


def read_curves(path: pathlib.Path) -> dict:
  """{(learning rate, seed): [(step, loss), ...]} from `write_curves`' file."""
  curves = {}
  for r in run_records.read_csv(path):
    curves.setdefault((r['learning_rate'], r['seed']), []).append((r['step'], r['loss']))
  return curves


def plot(outcomes: dict, out: pathlib.Path, title: str) -> pathlib.Path:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(8, 4.5))
  colors = {1.0: 'tab:red', 0.1: 'tab:blue', 0.01: 'tab:green'}
  for (lr, seed), o in sorted(outcomes.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
    if not o['curve']:
      continue
    steps, losses = zip(*o['curve'])
    label = f'α = {lr:g}' if seed in (None, 0) else None
    ax.plot(steps, losses, color=colors.get(lr), alpha=0.85, linewidth=1.2, label=label)
    if o['diverged']:
      ax.plot(steps[-1], losses[-1], 'x', color=colors.get(lr), markersize=9)
  ax.axhline(math.log(10), color='grey', linestyle=':', linewidth=1, label='chance: ln 10')
  ax.set_yscale('log')
  ax.set_xlabel('SGD step (batch 64)')
  ax.set_ylabel('training loss (mean of each logging interval)')
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  return common.save_figure(fig, out)


def checks(outcomes: dict) -> tuple[list[list[str]], bool]:
  seeds = sorted({s for _, s in outcomes}, key=lambda s: -1 if s is None else s)
  by = lambda lr: [outcomes[(lr, s)] for s in seeds if (lr, s) in outcomes]
  fmt = lambda xs: ', '.join(xs)
  out = report_parts.Checks()
  add = out.add

  big = by(1.0)
  not_learned = [o['diverged'] or (o['test_accuracy'] is not None and
                                   o['test_accuracy'] <= NOT_LEARNED_ACCURACY) for o in big]
  add('C15', 'α = 1 after one epoch', 'does not learn',
      f'diverges, or test accuracy <= {NOT_LEARNED_ACCURACY:.0%} (chance {CHANCE:.0%})',
      fmt(['diverged' if o['diverged'] else f"test acc {o['test_accuracy']:.1%}, final loss "
           f"{o['final_loss']:.3f}" for o in big]),
      holds=bool(big) and all(not_learned))
  fast, slow = by(0.1), by(0.01)
  pairs = list(zip(fast, slow))
  add('C15', 'final training loss (last 10% of the epoch), α = 0.1 vs 0.01', '0.1 lower',
      'α = 0.1 < α = 0.01 for every seed',
      fmt([f"{a['final_loss']:.3f} vs {b['final_loss']:.3f}" for a, b in pairs]),
      holds=bool(pairs) and all(a['final_loss'] < b['final_loss'] for a, b in pairs))
  add('C15', 'validation loss after the epoch, α = 0.1 vs 0.01', '0.1 lower',
      'α = 0.1 < α = 0.01 for every seed',
      fmt([f"{a['val_loss']:.3f} vs {b['val_loss']:.3f}" for a, b in pairs
           if a['val_loss'] is not None and b['val_loss'] is not None]),
      holds=bool(pairs) and all(a['val_loss'] is not None and b['val_loss'] is not None
                                and a['val_loss'] < b['val_loss'] for a, b in pairs))
  if any(a['curve'] is None for a in fast):  # a committed report: the curves are not there
    return out.rows, out.all_hold
  reach = lambda o, level: next((st for st, loss in o['curve'] if loss < level), None)
  steps = [(reach(a, b['final_loss']), a['curve'][-1][0] if a['curve'] else None) for a, b in pairs]
  add('C15', CURVE_CHECK, '0.1 converges faster', 'before half of the epoch, for every seed',
      fmt([f'step {k} of {n}' if k else 'never' for k, n in steps]),
      holds=bool(pairs) and all(k is not None and k <= n / 2 for k, n in steps))
  return out.rows, out.all_hold


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/lr_sweep) computed again from its per-run records: the
  training-loss curves (curves.csv) give each run's final loss and the curve check, results.json
  the runs' other figures; then the checks and the headline. A report committed before
  curves.csv existed gets the final losses from results.json and its own CURVE_CHECK row."""
  record = run_records.read_json(report_dir / 'results.json')
  if not (report_dir / CURVES).exists():
    outcomes = {(r['learning_rate'], r['seed']): {**r, 'curve': None} for r in record['runs']}
    rows, _ = checks(outcomes)
    stored = report_parts.stored_rows(record, CURVE_CHECK)
    return report_parts.Recomputed(report_parts.Checks.of(rows + stored), headline(outcomes),
                                   stored=(CURVE_CHECK,))
  curves = read_curves(report_dir / CURVES)
  outcomes = {}
  for r in record['runs']:
    curve = curves.get((r['learning_rate'], r['seed']), [])
    outcomes[(r['learning_rate'], r['seed'])] = {
        **r, 'curve': curve, 'final_loss': final_loss(curve, record['total_steps'])}
  rows, _ = checks(outcomes)
  return report_parts.Recomputed(report_parts.Checks.of(rows), headline(outcomes))


def main(argv):
  run = common.start_sweep(argv, 'lr_sweep', 'C15: one epoch of LeNet-5 at α = 1, 0.1, 0.01')
  config, workdir = run.config, run.workdir
  steps_per_epoch = None
  outcomes = {}
  for m in run.members:
    run_dir = workdir / m.name
    results = run_records.read_results(run_dir)
    if steps_per_epoch is None and results:
      steps_per_epoch = results['steps_per_epoch']
    outcomes[(m.overrides['learning_rate'], m.overrides.get('seed'))] = run_dir
  total = (steps_per_epoch or 1) * config.num_epochs
  outcomes = {k: member_outcome(v, total) for k, v in outcomes.items()}
  png = plot(outcomes, workdir / 'loss_curves.png',
             f'LeNet-5 on MNIST, one epoch of SGD (batch {config.batch_size}) per learning rate')
  curves = write_curves(outcomes, workdir / CURVES)
  rows, _ = checks(outcomes)
  per_run = report.markdown_table(
      ['α', 'seed', 'status', 'first logged loss', 'final loss (last 10%)',
       'val loss', 'val accuracy', 'test accuracy'],
      [[f'{lr:g}', '—' if seed is None else seed, 'diverged' if o['diverged'] else
        ('done' if o['test_accuracy'] is not None else o['error'] or 'pending'),
        f"{o['first_loss']:.3f}", f"{o['final_loss']:.3f}",
        '—' if o['val_loss'] is None else f"{o['val_loss']:.4f}",
        '—' if o['val_accuracy'] is None else f"{o['val_accuracy']:.2%}",
        '—' if o['test_accuracy'] is None else f"{o['test_accuracy']:.2%}"]
       for (lr, seed), o in outcomes.items()])
  train_wall = sum(o['wall_time_s'] for o in outcomes.values())
  facts = run.facts()
  command = cli.command_line('experiments.lr_sweep')
  n_seeds = len({seed for _, seed in outcomes})
  text = report_parts.header(
      title='Learning rate: one epoch of LeNet-5 at α = 1, 0.1, 0.01', claims='claim C15',
      command=command,
      data=(f'MNIST, bundled IDX files; {config.data.validation_size:,} validation images carved '
            'from train' + (f', {config.data.train_subset:,} training images'
                            if config.data.train_subset else ', the remaining 58,976 for training')
            + ', 10,000 test; padded to 32x32.'),
      protocol=(f'LeNet-5 (lecture variant), plain SGD, batch {config.batch_size}, one epoch '
                f'({total} steps), constant α ∈ {{1, 0.1, 0.01}}, {n_seeds} seed(s) per α '
                f'(seed = init and data order); sweep `{shlex.join(run.spec.command(workdir))}`. '
                'Training loss logged as the mean of every '
                f'{config.log_every_steps} steps.'),
      train_wall_s=train_wall, facts=facts, generator='experiments/lr_sweep.py')
  text += f"""
{report_parts.checks_section(rows)}
## Runs

{per_run}

![training loss per learning rate]({png.name})

Per-setting means over seeds: [sweep.md](sweep.md); every logged training loss (the plot's and
the checks' points): [{curves.name}]({curves.name}).

{report_parts.footer()}"""
  common.finish(workdir, text, {
      'experiment': 'lr_sweep', 'claims': 'C15', 'preset': run.preset, 'command': command,
      'train_wall_time_s': train_wall, **facts, 'headline': headline(outcomes),
      'total_steps': total,
      'runs': [{'learning_rate': lr, 'seed': seed, **{k: v for k, v in o.items() if k != 'curve'}}
               for (lr, seed), o in outcomes.items()]}, OUTPUTS, rows, FLAGS.report_dir)


def headline(outcomes: dict) -> str:
  def mean(lr, key):
    vals = [o[key] for (l, _), o in outcomes.items() if l == lr and o[key] is not None]
    return sum(vals) / len(vals) if vals else math.nan
  big = [o for (lr, _), o in outcomes.items() if lr == 1.0]
  first = ('α=1 diverged' if all(o['diverged'] for o in big) else
           f"α=1 test acc {mean(1.0, 'test_accuracy'):.0%}")
  return (f"{first}; final train loss α=0.1 {mean(0.1, 'final_loss'):.3f} vs α=0.01 "
          f"{mean(0.01, 'final_loss'):.3f}")


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  common.define_flags('lr_sweep', '2,000 images, one seed.', seeds_of='learning rate')
  app.run(main, flags_parser=cli.parse_flags)
