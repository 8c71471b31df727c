"""Claim C24: transfer learning, and "the less new data, the fewer layers should be trained".

    python -m experiments.transfer --preset=quick --report_dir=reports/transfer
    python -m experiments.transfer --preset=quick --report_only     # report from the workdir
    python -m experiments.transfer --preset=toy                      # seconds (tests)

Pretrains `configs/transfer.py:pretrain,<preset>` on CIFAR-10 classes 0-4 in `<workdir>/pretrain`,
then for every images-per-class count of `--per_class` (0 = all), every method of `--methods`
(configs/transfer.py METHODS: scratch, linear probe 'head', 'last_stage', fine-tuning 'all') and
`--seeds` seeds trains `configs/transfer.py:transfer,<preset>` on classes 5-9 in
`<workdir>/per_class=N,method=M,seed=S`, one after another (experiments/lecture_common.py runs
them: finished runs are skipped, interrupted ones resume from their checkpoints). Then writes
report.md, transfer.png and results.json: test accuracy, mean ± sample std over seeds, per size
and method (aggregated as a sweep's members: sweep.md, members.csv), and the checks of the
lecture's statement computed from those numbers.
"""
from __future__ import annotations

import collections
import json
import math
import pathlib

from absl import app, flags

from cnn_jax import cli, report, runtime, sweep, transfer
from configs import transfer as transfer_config
from experiments import lecture_common as common
from experiments import report_parts, run_records

FLAGS = flags.FLAGS
PRESETS = ('', *transfer_config.PRESETS)
DEFAULT_SEEDS = {'': 3, 'quick': 3, 'toy': 1}
TOY_PER_CLASS = (4, 0)
# Fewer trained layers first: the order in which the statement ranks the methods.
DEPTH = {'head': 1, 'last_stage': 2, 'all': 3}
OUTPUTS = ('report.md', 'results.json', 'transfer.png', 'sweep.md', 'sweep.csv', 'members.csv',
           'pretrain/results.json', 'pretrain/config.json')


def define_flags() -> None:
  """The harness's flags, and the sizes, methods and seeds of this one; defined only when run as a
  script, so tests can import the module."""
  common.define_flags('transfer', 'seconds (tests).', sweep_flags=False, presets=PRESETS,
                      default_preset='quick', preset_help='configs/transfer.py preset ("" = '
                      'ResNet-20 protocol; quick = ResNet-8, the committed report).')
  flags.DEFINE_integer('seeds', None, 'Seeds per size and method (default: 3; toy: 1).')
  flags.DEFINE_list('per_class', None, 'Images per class of the new task; 0 = all (default: '
                    '50,100,500,0; toy: 4,0).')
  flags.DEFINE_list('methods', list(transfer_config.METHODS), 'Any of '
                    f'{", ".join(transfer_config.METHODS)}.')


def pretrain_config(preset: str, overrides=()):
  """configs/transfer.py:pretrain,<preset> with the --set `overrides`, validated."""
  return common.configured(
      transfer_config.get_config('pretrain' + (f',{preset}' if preset else '')), overrides)


def members(preset: str, per_class, methods, seeds: int, pretrained: pathlib.Path,
            overrides=()) -> list[sweep.Member]:
  """One sweep member per size, method and seed; `setting` is (per_class, method)."""
  out = []
  for n in per_class:
    for method in methods:
      for seed in range(seeds):
        c = transfer_config.member_config(preset, method, n, seed, str(pretrained))
        ov = {'per_class': n or 'all', 'method': method, 'seed': seed}
        out.append(sweep.Member(len(out), sweep.member_name(ov), ov,
                                common.configured(c, overrides)))
  return out


def plan(preset: str) -> tuple[int, list[int], list[str]]:
  """Seeds, images per class and methods from the flags (and the preset's defaults)."""
  seeds = FLAGS.seeds if FLAGS.seeds is not None else DEFAULT_SEEDS[preset]
  per_class = ([int(v) for v in FLAGS.per_class] if FLAGS.per_class is not None else
               list(TOY_PER_CLASS if preset == 'toy' else transfer_config.PER_CLASS))
  unknown = [m for m in FLAGS.methods if m not in transfer_config.METHODS]
  if unknown:
    raise app.UsageError(f'Unknown method(s) {unknown}; choose from '
                         f'{list(transfer_config.METHODS)}.')
  return seeds, per_class, list(FLAGS.methods)


def _n(value) -> str:
  return f'{value:,}' if isinstance(value, int) else '?'


def label(n) -> str:
  return 'all' if n in (0, 'all') else str(n)


# ------------------------------------------------------------------------------- analysis


def table_of(summary: dict) -> dict:
  """{(per_class label, method): {'mean', 'std', 'values', ...}} of test accuracy."""
  out = {}
  for s in summary['settings']:
    stat = s['metrics'].get('test_accuracy')
    if stat:
      out[(label(s['setting']['per_class']), s['setting']['method'])] = {
          **stat, 'n': s['n'], 'wall': s['metrics'].get('wall_time_s', {}).get('mean')}
  return out


def _se(stat: dict) -> float:
  """Standard error of a mean over seeds (0 with one seed: no spread measured)."""
  if stat is None or not stat.get('values') or len(stat['values']) < 2:
    return 0.0
  return stat['std'] / math.sqrt(len(stat['values']))


def checks(acc: dict, sizes: list[str], methods: list[str]) -> tuple[list, list]:
  """The statement's checks from the measured accuracies; also the best method per size."""
  rows = []
  tl = [m for m in methods if m in DEPTH]
  best = []
  for n in sizes:
    cands = [(acc[(n, m)]['mean'], m) for m in tl if (n, m) in acc]
    if cands:
      best.append((n, max(cands)[1], max(cands)[0]))
  if len(best) >= 2:
    depths = [DEPTH[m] for _, m, _ in best]
    monotone = all(a <= b for a, b in zip(depths, depths[1:]))
    fewer_at_small = depths[0] < depths[-1]
    rows.append(report_parts.check_row(
        'C24', 'method with the best mean test accuracy, by images per class (trained layers: '
        'head < last_stage < all)', 'the less new data, the fewer layers trained',
        'the best method never trains more layers at a smaller size, and trains fewer at the '
        'smallest size than at the largest',
        '; '.join(f'{n}: {m} ({100 * a:.1f}%)' for n, m, a in best), monotone and fewer_at_small))
  if {'head', 'all'} <= set(methods):
    gaps = [(n, acc[(n, 'all')]['mean'] - acc[(n, 'head')]['mean'],
             math.hypot(_se(acc[(n, 'all')]), _se(acc[(n, 'head')])))
            for n in sizes if (n, 'all') in acc and (n, 'head') in acc]
    if len(gaps) >= 2:
      rows.append(report_parts.check_row(
          'C24', 'gain of fine-tuning everything over the linear probe (test accuracy, pp)',
          'training more layers pays off only with more data',
          'the gain at the largest size exceeds the gain at the smallest by more than 2 SE',
          '; '.join(f'{n}: {100 * g:+.1f} ± {100 * e:.1f}' for n, g, e in gaps),
          gaps[-1][1] - gaps[0][1] > 2 * math.hypot(gaps[-1][2], gaps[0][2])))
  if 'scratch' in methods and tl:
    n = sizes[0]
    if (n, 'scratch') in acc and any((n, m) in acc for m in tl):
      top = max((acc[(n, m)]['mean'], m) for m in tl if (n, m) in acc)
      rows.append(report_parts.check_row(
          'C24', f'transfer against training from scratch at {n} images per class',
          'with little data, start from a pretrained network',
          'the best transfer method beats from-scratch',
          f'{top[1]} {100 * top[0]:.1f}% vs scratch {100 * acc[(n, "scratch")]["mean"]:.1f}%',
          top[0] > acc[(n, 'scratch')]['mean']))
  return rows, best


def plot(acc: dict, sizes: list[str], methods: list[str], out: pathlib.Path,
         title: str) -> pathlib.Path:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  xs = list(range(len(sizes)))
  for method in methods:
    pts = [(x, acc[(n, method)]) for x, n in zip(xs, sizes) if (n, method) in acc]
    if pts:
      ax.errorbar([x for x, _ in pts], [100 * s['mean'] for _, s in pts],
                  yerr=[100 * (0 if math.isnan(s['std']) else s['std']) for _, s in pts],
                  marker='o', capsize=3, label={'head': 'linear probe (head)',
                                                'last_stage': 'last stage + head',
                                                'all': 'fine-tune all'}.get(method, method))
  ax.set_xticks(xs)
  ax.set_xticklabels(sizes)
  ax.set_xlabel('training images per class of the new task')
  ax.set_ylabel('test accuracy (%), mean ± std over seeds')
  ax.set_title(title, fontsize=10)
  return common.save_figure(fig, out, axes=[ax])


# --------------------------------------------------------------------------------- report


def trainable_params(workdir: pathlib.Path, mems: list[sweep.Member], methods: list[str],
                     first: dict | None) -> dict:
  """Parameters each method trains, from the runs' transfer.json (scratch: all of them)."""
  trainable = {}
  for m in mems:
    rec = workdir / m.name / transfer.RECORD
    if rec.exists() and m.overrides['method'] not in trainable:
      trainable[m.overrides['method']] = json.loads(rec.read_text())['num_trainable_params']
  if first and 'scratch' in methods:
    trainable['scratch'] = first['num_params']
  return trainable


def accuracy_table(acc: dict, sizes: list[str], methods: list[str], seeds: int, trainable: dict,
                   preset: str) -> str:
  """Test accuracy, mean ± std over seeds, by images per class (rows) and method (columns)."""
  rows = []
  for n in sizes:
    cells = []
    for method in methods:
      s = acc.get((n, method))
      cells.append('—' if s is None else sweep.pm(s, '{:.2f}', 100)
                   + ('' if s['n'] == seeds else f" ({s['n']}/{seeds} seeds)"))
    steps = transfer_config.transfer_steps(0 if n == 'all' else int(n), preset)
    rows.append([n, f'{steps:,}'] + cells)
  return report.markdown_table(
      ['images per class', 'steps'] + [f'{m} (trains {trainable[m]:,} params)' if m in trainable
                                       else m for m in methods], rows)


def statement_verdict(check_rows: list) -> tuple[bool | None, str]:
  """Whether the statement holds: the best method by size and the probe-vs-fine-tune gain (rows
  that compare sizes; the from-scratch row is context, not the statement), and a sentence."""
  statement = [r for r in check_rows if r[1].startswith(('method with the best', 'gain of'))]
  holds = report_parts.all_hold(statement) if statement else None
  return holds, ('"The less new data, the fewer layers should be trained" **holds** on these runs.'
                 if holds else '**The statement does not hold on these runs**: see which check '
                 'fails and by how much.' if statement else
                 'Not enough sizes finished to check the statement yet (it needs two sizes of the '
                 'linear probe and of fine-tuning).')


def _header(pre: dict, first: dict | None, c0, preset: str, overrides, sizes: list[str],
            methods: list[str], train_wall: float, facts: dict, command: str) -> str:
  pc = pretrain_config(preset, overrides)
  return report_parts.header(
      title='Transfer learning on CIFAR-10: from scratch, linear probe, fine-tuning', claims='C24',
      command=command,
      data=(f"{first['dataset'] if first else 'CIFAR-10'}. Source task: classes 0-4 (airplane, "
            f"automobile, bird, cat, deer), {_n(pre.get('num_train'))} training and "
            f"{_n(pre.get('num_val'))} validation images. New task: classes 5-9 (dog, frog, "
            f"horse, ship, truck) relabelled 0-4, {', '.join(sizes)} training images per class "
            '(nested subsets fixed by data.split_seed, the same for every method and seed), tested '
            f"on their {_n(first and first['num_test'])} test images."),
      protocol=(f'{c0.model} ({pc.num_steps:,} pretraining steps of {pc.batch_size}, best of '
                f'{pc.data.validation_size:,} validation images); every run SGD momentum '
                f'{c0.momentum}, weight decay {c0.weight_decay:g} (L2), cosine decay, batch '
                f'{c0.batch_size}, 4-pixel crop + flip. Per method: ' + '; '.join(
                    f"{m}: trainable={t!r}, {'from the pretrained run' if p else 'fresh init'}, "
                    f'lr {0.1 * s:g}' for m, (t, p, s) in transfer_config.METHODS.items()
                    if m in methods) + '. Steps on the new task grow with its size (column '
                '"steps"); no validation split, the last state is tested. Frozen BatchNorm layers '
                'run in inference mode with the source statistics (cnn_jax/transfer.py). Each '
                "run normalises its inputs with its own training split's mean and std."),
      train_wall_s=train_wall, facts=facts, generator='experiments/transfer.py')


def make_report(workdir: pathlib.Path, preset: str, mems: list[sweep.Member], sizes: list[str],
                methods: list[str], seeds: int, facts: dict, command: str,
                overrides=()) -> tuple[str, dict, list]:
  """report.md's text, results.json's record and the check rows from the runs in `workdir`;
  aggregates the members (sweep.md, sweep.csv, members.csv) and draws transfer.png there."""
  summary = sweep.aggregate(mems, workdir, title='Transfer learning members')
  acc = table_of(summary)
  pre = run_records.read_results(workdir / 'pretrain') or {}
  results = [run_records.read_results(workdir / m.name) for m in mems]
  first = next((r for r in results if r), None)
  trainable = trainable_params(workdir, mems, methods, first)
  check_rows, best = checks(acc, sizes, methods)
  fig = plot(acc, sizes, methods, workdir / 'transfer.png',
             f'CIFAR-10 classes 5-9 after pretraining on 0-4 ({mems[0].config.model})')
  holds, verdict = statement_verdict(check_rows)
  train_wall = sum((r or {}).get('wall_time_s', 0) for r in [pre] + results)
  text = _header(pre, first, mems[0].config, preset, overrides, sizes, methods, train_wall, facts,
                 command) + f"""
Pretrained source network: validation accuracy {100 * pre.get('val_accuracy', math.nan):.2f}%,
test accuracy {100 * pre.get('test_accuracy', math.nan):.2f}% on classes 0-4 (best checkpoint at
step {pre.get('best_step')}).

## Test accuracy (%) on classes 5-9, mean ± sample std over {seeds} seed(s)

{accuracy_table(acc, sizes, methods, seeds, trainable, preset)}

![accuracy against data size]({fig.name})

{report_parts.checks_section(check_rows)}
{verdict}

Per-member figures: `sweep.md`, `members.csv`; every run's `results.json`, `config.json` and
(transfer runs) `transfer.json` are in the workdir.

{report_parts.footer()}"""
  record = {
      'experiment': 'transfer', 'claims': 'C24', 'preset': preset, 'command': command,
      'model': mems[0].config.model, 'seeds': seeds, 'per_class': sizes, 'methods': methods,
      'pretrain': {k: pre.get(k) for k in ('val_accuracy', 'test_accuracy', 'best_step',
                                           'wall_time_s', 'num_train')},
      'test_accuracy': {f'{n}/{m}': s for (n, m), s in acc.items()},
      'best_method': {n: m for n, m, _ in best}, 'trainable_params': trainable,
      'statement_holds': holds, 'train_wall_time_s': train_wall,
      'headline': headline(acc, best, sizes), 'done': summary['done'], 'total': summary['total'],
  }
  return text, record, check_rows


def headline(acc: dict, best: list[tuple], sizes: list[str]) -> str:
  """The README's line: the best method per size (from `checks`), and from-scratch at the
  smallest."""
  if not best:
    return 'no run finished yet'
  scratch = acc.get((sizes[0], 'scratch'))
  return ('best method by images per class: ' + '; '.join(f'{n}: {m} {a:.1%}' for n, m, a in best)
          + (f" (scratch at {sizes[0]}: {scratch['mean']:.1%})" if scratch else ''))


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/transfer) computed again from its per-run records:
  each member's test accuracy (members.csv), mean ± std over seeds per size and method, gives
  the checks and the headline."""
  record = run_records.read_json(report_dir / 'results.json')
  values = collections.defaultdict(list)
  for m in run_records.read_csv(report_dir / 'members.csv'):
    if m['status'] == 'completed':
      values[(label(m['per_class']), m['method'])].append(m['test_accuracy'])
  acc = {k: {**run_records.stat(v), 'values': v} for k, v in values.items()}
  rows, best = checks(acc, record['per_class'], record['methods'])
  return report_parts.Recomputed(report_parts.Checks.of(rows),
                                 headline(acc, best, record['per_class']))


def main(argv):
  session = common.start(argv, 'transfer', blank='resnet20')
  preset = session.preset
  seeds, per_class, methods = plan(preset)
  pre_dir = session.workdir / 'pretrain'
  # Every config is built, and a bad --set fails, before any training.
  pre_cfg = session.configs(lambda: pretrain_config(preset, session.overrides))
  mems = session.configs(
      lambda: members(preset, per_class, methods, seeds, pre_dir, session.overrides))
  session.train({'pretrain': pre_cfg, **{m.name: m.config for m in mems}})
  text, record, check_rows = make_report(
      session.workdir, preset, mems, [label(n) for n in per_class], methods, seeds,
      session.facts(), session.command, session.overrides)
  print(f'report: {session.finish(text, record, OUTPUTS, check_rows)}')


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
