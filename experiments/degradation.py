"""Claims C20, C21: deeper plain nets train worse (degradation); residual connections fix it.

    python -m experiments.degradation --preset=cpu                       # plain/ResNet-20 and -56
    python -m experiments.degradation --preset=paper --models=plain20,plain32,plain44,plain56,resnet20,resnet32,resnet44,resnet56,resnet110
    python -m experiments.degradation --preset=cpu --report_only         # report from the workdirs
    python -m experiments.degradation --preset=quarter --models=resnet20,resnet56,plain56,plain20,resnet20_seed1,resnet20_seed2

Trains each run of `--models` (a model, optionally `_seed<N>`) with
`configs/cifar_resnet.py:<model>,<preset>` in `<workdir>/<run>` (resuming whatever is there;
finished runs are skipped), one after another, then writes `report.md`, `results.json`,
`figure6.png` and `diagnostics.png` in `<workdir>` from the runs' files, finished or partial:
error curves like He et al.'s Figure 6, final errors beside their Table 6 (mean ± std over a
model's seeds, and whether each lies within 1.5 pp), the claim checks on the seed means, the time
to Table 6's ResNet-20 accuracy, wall time and images/s per run, and the per-block signal and
gradient norms (dy/dx = 1 + dF/dx). `--report_dir` copies the report and every run's records
(config.json, metrics.jsonl, results.json) there.
"""
from __future__ import annotations

import json
import math
import pathlib
import re

from absl import app

from configs import cifar_resnet
from cnn_jax import cli, report, runtime
from cnn_jax.metric_writers import read_metrics
from experiments import lecture_common as common
from experiments import report_parts, run_records

ROOT = common.ROOT


def define_flags() -> None:
  """The harness's flags; defined only when run as a script, so tests can import the module."""
  common.define_flags(
      'degradation', 'a few steps on 512 images, seconds (plain8, resnet8).', sweep_flags=False,
      presets=('', *cifar_resnet.PRESETS), default_preset='cpu',
      preset_help='Protocol of configs/cifar_resnet.py ("" = the recipe, 45k/5k split).',
      models=('plain20', 'plain56', 'resnet20', 'resnet56'),
      models_help=('Runs: any of plain{20,32,44,56,110}, resnet{20,32,44,56,110}, each with an '
                   'optional _seed<N> (resnet20_seed1: seed 1 in its own workdir; no suffix: 0).'))


# He et al. 2016, Table 6: CIFAR-10 test error (%) of the ResNets; parameters.
PAPER_TEST_ERROR = {'resnet20': 8.75, 'resnet32': 7.51, 'resnet44': 7.17, 'resnet56': 6.97,
                    'resnet110': 6.43}
PAPER_PARAMS = {'resnet20': '0.27M', 'resnet32': '0.46M', 'resnet44': '0.66M',
                'resnet56': '0.85M', 'resnet110': '1.7M'}
RECORDS = ('results.json', 'metrics.jsonl', 'config.json')  # per run, copied to --report_dir
OUTPUTS = ('report.md', 'results.json', 'figure6.png', 'diagnostics.png')
PAPER_STEPS, PAPER_BOUNDARIES = cifar_resnet.PAPER_STEPS, cifar_resnet.PAPER_BOUNDARIES  # 64k


def parse_run(name: str) -> tuple[str, int]:
  """'resnet20_seed2' -> ('resnet20', 2); 'resnet20' -> ('resnet20', 0)."""
  model, sep, seed = name.partition('_seed')
  if model not in cifar_resnet.MODELS or (sep and not seed.isdigit()):
    raise ValueError(f'Unknown run {name!r}: use a model of {", ".join(cifar_resnet.MODELS)}, '
                     'optionally followed by _seed<N>.')
  return model, int(seed or 0)


def model_config(name: str, preset: str, overrides=()):
  """Run `name`'s config (configs/cifar_resnet.py:<model>,<preset>, its seed) with the --set
  `overrides`, validated."""
  model, seed = parse_run(name)
  config = cifar_resnet.get_config(f'{model},{preset}' if preset else model)
  config.seed = seed
  return common.configured(config, overrides)


def depth(name: str) -> int:
  return int(parse_run(name)[0].lstrip('plainresnet'))


def load_run(run_dir: pathlib.Path) -> dict | None:
  """A run's curves and results; None if it has not logged anything yet."""
  if not (run_dir / 'metrics.jsonl').exists():
    return None
  records = read_metrics(run_dir / 'metrics.jsonl')
  by_split = lambda s: [r for r in records if r['split'] == s]
  results = run_dir / 'results.json'
  speeds = sorted(r['images_per_s'] for r in by_split('train') if r.get('images_per_s'))
  return {
      'train': by_split('train_eval'), 'test': by_split('test_curve'), 'val': by_split('val'),
      'diagnostics': by_split('diagnostics'),
      'results': json.loads(results.read_text()) if results.exists() else None,
      'last_step': max((r['step'] for r in records), default=0),
      'logged_images_per_s': speeds[len(speeds) // 2] if speeds else None,  # median so far
  }


def seed_groups(names) -> dict[str, list[str]]:
  """Run names by model, plain nets then ResNets by depth, each model's runs by seed:
  {'resnet20': ['resnet20', 'resnet20_seed1', 'resnet20_seed2'], ...}."""
  groups: dict[str, list[str]] = {}
  for name in sorted(names, key=lambda n: parse_run(n)[1]):
    groups.setdefault(parse_run(name)[0], []).append(name)
  return dict(sorted(groups.items(), key=lambda kv: (kv[0].startswith('resnet'), depth(kv[0]))))


def run_order(names) -> list[str]:
  """Run names as the tables list them: by model (plain, then ResNet, by depth), then seed."""
  return [name for group in seed_groups(names).values() for name in group]


# ----------------------------------------------------------------------------------- plots

COLORS = {8: 'tab:purple', 20: 'tab:orange', 32: 'tab:blue', 44: 'tab:green', 56: 'tab:red',
          110: 'black'}


def plot_figure6(runs: dict, out: pathlib.Path, num_steps: int | None = None) -> pathlib.Path:
  """He et al.'s Figure 6: error against iterations, plain nets (left) and ResNets (right) on
  the same axes (0 to `num_steps`, the schedule); training error dashed, test error bold; one
  colour per depth. A model's lowest seed is drawn in full, its other seeds thin and faint."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True, sharey=True)
  top = 0.0
  for ax, family in zip(axes, ('plain', 'resnet')):
    models = [m for m in seed_groups(runs) if m.startswith(family)]
    for model in models:
      top = max(top, _plot_model(ax, model, seed_groups(runs)[model], runs))
    ax.set_title('plain networks' if family == 'plain' else 'residual networks (ResNets)')
    ax.set_xlabel('iterations')
    if not models:
      ax.text(0.5, 0.5, 'no run yet', transform=ax.transAxes, ha='center', color='gray')
  axes[0].set_ylim(0, _error_axis_top(runs, top))  # one y axis for both panels
  axes[0].set_xlim(0, num_steps or None)
  axes[0].set_ylabel('error (%)')
  fig.suptitle('CIFAR-10 (JPEG copy), He et al. Figure 6 style: dashed = training error, '
               'bold = test error')
  return common.save_figure(fig, out, axes=axes, legend_size=8)


def _error_axis_top(runs: dict, top: float) -> float:
  """He et al.'s 0-20% once every final test error is below 15%, else up to the highest error."""
  finals = [fe['test'] for r in runs.values() if 'test' in (fe := final_errors(r))]
  if finals and max(finals) < 15:
    return 20.0
  return min(100.0, 5 * math.ceil(top / 5 + 1e-9)) if top else 100.0


def _plot_model(ax, model: str, names: list[str], runs: dict) -> float:
  """One model's curves, every seed; returns the highest error drawn."""
  label = f"{'plain' if model.startswith('plain') else 'ResNet'}-{depth(model)}"
  if len(names) > 1:
    seeds = [parse_run(n)[1] for n in names]
    label += (f" (seed {seeds[0]}; seed{'s' if len(seeds) > 2 else ''} "
              f"{', '.join(map(str, seeds[1:]))} faint)")
  top = 0.0
  for i, name in enumerate(names):
    for split, style, width in (('train', '--', 1.2), ('test', '-', 2.6)):
      rows = runs[name][split]
      if not rows:
        continue
      errors = [100 * (1 - r['accuracy']) for r in rows]
      top = max(top, *errors)
      ax.plot([r['step'] for r in rows], errors, linestyle=style, color=COLORS.get(depth(model)),
              linewidth=width if i == 0 else 0.9, alpha=1.0 if i == 0 else 0.4,
              label=label if (i == 0 and split == 'test') else None)
  return top


def plot_diagnostics(runs: dict, out: pathlib.Path) -> pathlib.Path | None:
  """Backward signal |dL/dy| and forward signal RMS per block, at init and later, per model
  (seed 0 runs only)."""
  plt = common.pyplot()
  with_diag = {m: r for m, r in runs.items() if r['diagnostics'] and parse_run(m)[1] == 0}
  if not with_diag:
    return None
  fig, axes = plt.subplots(2, len(with_diag), figsize=(4 * len(with_diag), 7), squeeze=False)
  for col, model in enumerate(run_order(with_diag)):
    diags = with_diag[model]['diagnostics']
    picks = sorted({0, len(diags) // 2, len(diags) - 1})
    for row, kind in enumerate(('grad_rms', 'act_rms')):
      ax = axes[row][col]
      for i in picks:
        rec = diags[i]
        names = _block_names(rec, kind)
        ax.plot(range(len(names)), [rec[f'{kind}/{n}'] for n in names], 'o-', markersize=2,
                label=f"step {rec['step']}")
      ax.set_yscale('log')
      ax.set_title(f'{model}: ' + ('|dL/d(block output)|' if kind == 'grad_rms'
                                   else 'RMS of block output'), fontsize=9)
      ax.set_xlabel('block (stem ... head)')
  return common.save_figure(fig, out, dpi=100, axes=axes.flat, legend_size=7)


def _block_names(record: dict, kind: str) -> list[str]:
  """Blocks in network order, the BN of the stem and the head left out."""
  names = [k.split('/', 1)[1] for k in record if k.startswith(kind + '/')]
  return [n for n in names if n.startswith('stage') or n == 'stem_conv']


# ------------------------------------------------------------------------- errors and seeds

BAND_PP = 1.5  # issue 24: ResNet-20 and ResNet-56 within 1.5 percentage points of Table 6
SETS = {'train': 'training subset', 'test': 'test set'}


def final_errors(run: dict, at_step: int | None = None) -> dict:
  """Training and test error (%) at the last evaluation (at or before `at_step` if given)."""
  out = {}
  for split in ('train', 'test'):
    rows = [r for r in run[split] if at_step is None or r['step'] <= at_step]
    if rows:
      out[split] = 100 * (1 - rows[-1]['accuracy'])
      out[f'{split}_step'] = rows[-1]['step']
  out['step'] = max([r['step'] for r in run['train'] + run['test']], default=0)
  return out


def model_error(runs: dict, names: list[str], split: str,
                at_step: int | None = None) -> tuple[list[float], int] | None:
  """Each seed's `split` error (%) at its last evaluation at or before `at_step`, and that
  iteration; None unless every seed has one, at the same iteration."""
  fes = [final_errors(runs[n], at_step) for n in names]
  steps = {fe.get(f'{split}_step') for fe in fes}
  if None in steps or len(steps) != 1:
    return None
  return [fe[split] for fe in fes], steps.pop()


def seed_stat(values: list[float]) -> dict:
  """Mean and sample standard deviation (ddof=1; None for one seed) over seeds."""
  s = run_records.stat(values)
  return {'mean': s['mean'], 'std': s['std'] if len(values) > 1 else None, 'n': len(values)}


def pm(values: list[float], unit: str = '%') -> str:
  """'8.90 ± 0.21% (3 seeds)' over several seeds, '8.90%' for one run."""
  s = seed_stat(values)
  if s['std'] is None:
    return f"{s['mean']:.2f}{unit}"
  return f"{s['mean']:.2f} ± {s['std']:.2f}{unit} ({s['n']} seeds)"


def seed_summary(runs: dict) -> dict:
  """Per model: its runs (lowest seed first), the seeds in its mean (the finished ones, or all
  while none is), their common last evaluation, whether all are finished, and mean ± std over
  those seeds of the training and test error there."""
  out = {}
  for model, names in seed_groups(runs).items():
    used = [n for n in names if runs[n]['results'] is not None] or names
    step = min(final_errors(runs[n])['step'] for n in used)
    errs = {split: model_error(runs, used, split, step) for split in ('train', 'test')}
    out[model] = {
        'runs': names, 'in_mean': used, 'step': errs['test'][1] if errs['test'] else step,
        'finished': all(runs[n]['results'] is not None for n in names),
        **{split: seed_stat(e[0]) if e else None for split, e in errs.items()},
        'test_by_run': dict(zip(used, errs['test'][0])) if errs['test'] else {},
    }
  return out


def band_verdict(ours: float | None, paper: float | None, finished: bool,
                 band: float = BAND_PP) -> str:
  """Whether a test error lies within `band` percentage points of Table 6's."""
  if ours is None or paper is None:
    return '–'
  within = abs(ours - paper) <= band
  if not finished:
    return f"{'inside' if within else 'outside'} so far (running)"
  return 'yes' if within else '**no**'


def table6_entries(runs: dict, summary: dict) -> list[dict]:
  """The Table 6 comparison: a model with several seeds gets a mean ± std row (its headline)
  followed by each seed's run; a model with one run has that run as its headline."""
  entries = []
  for model, s in summary.items():
    several = len(s['runs']) > 1
    if several:
      k, n = len(s['in_mean']), len(s['runs'])
      label = f'{model}: mean ± std over ' + (  # the finished seeds, or all while none is
          f'{n} seeds' if k == n else f"{k} finished seed{'s' if k > 1 else ''} (of {n})")
      entries.append(_entry(label, model, s['train'], s['test'], s['step'], s['finished'], True,
                            None))
      entries[-1]['num_params'] = next((runs[n]['results']['num_params'] for n in s['runs']
                                        if runs[n]['results']), None)
    for name in s['runs']:
      fe, res = final_errors(runs[name]), runs[name]['results']
      stats = {split: seed_stat([fe[split]]) if split in fe else None for split in SETS}
      entries.append(_entry(name, model, stats['train'], stats['test'], fe['step'],
                            res is not None, not several, res))
  return entries


def _entry(label, model, train, test, step, finished, headline, res) -> dict:
  paper = PAPER_TEST_ERROR.get(model)
  ours = test['mean'] if test else None
  best_val = (100 * (1 - res['test_accuracy'])
              if res and res.get('best_step') and res.get('num_val') else None)
  return {'row': label, 'model': model, 'headline': headline, 'step': step, 'finished': finished,
          'train': train, 'test': test, 'paper': paper,
          'difference_pp': ours - paper if ours is not None and paper is not None else None,
          'within_band': band_verdict(ours, paper, finished),
          'num_params': res['num_params'] if res else None,
          'best_val_test': best_val, 'best_step': res.get('best_step') if res else None}


def table6_markdown(entries: list[dict]) -> str:
  with_val = any(e['best_val_test'] is not None for e in entries)
  fmt = lambda s: '…' if s is None else (f"{s['mean']:.2f}" if s['std'] is None
                                         else f"{s['mean']:.2f} ± {s['std']:.2f}")
  rows = []
  for e in entries:
    label = f"**{e['row']}**" if e['headline'] and e['paper'] is not None else e['row']
    row = [label, f"{e['num_params']:,}" if e['num_params'] else '…',
           f"{e['step']:,}" + ('' if e['finished'] else ' (running)'), fmt(e['train']),
           fmt(e['test'])]
    if with_val:
      row.append(f"{e['best_val_test']:.2f} (step {e['best_step']:,})"
                 if e['best_val_test'] is not None else '–')
    row += [f"{e['paper']:.2f} ({PAPER_PARAMS[e['model']]})" if e['paper'] is not None else '–',
            f"{e['difference_pp']:+.2f}" if e['difference_pp'] is not None else '–',
            e['within_band']]
    rows.append(row)
  headers = ['run', 'params', 'iterations', 'train error % (final)', 'test error % (final)']
  headers += ['test error % (best val ckpt)'] if with_val else []
  headers += ['Table 6 test error %', 'ours − Table 6 (pp)', f'within {BAND_PP} pp of Table 6']
  return report.markdown_table(headers, rows)


# ------------------------------------------------------------------------------ claim checks


def _se(err_pct: float, n: int) -> float:
  """Binomial standard error of an error rate measured on n images, in percentage points."""
  p = err_pct / 100
  return 100 * (p * (1 - p) / max(n, 1)) ** 0.5


def difference_text(a: list[float], b: list[float], n: int, split: str) -> str:
  """Mean difference of two models, in pp and in binomial SEs of the n-image evaluation set (the
  noise of measuring one net on a finite set; the same images for every seed), and the spread
  over seeds (sample std) where a model has several."""
  ma, mb = seed_stat(a)['mean'], seed_stat(b)['mean']
  z = (ma - mb) / max((_se(ma, n) ** 2 + _se(mb, n) ** 2) ** 0.5, 1e-9)
  text = f'{ma - mb:+.2f} pp = {z:+.1f} binomial SE of the {n:,}-image {SETS[split]}'
  spreads = [f"std over {len(v)} seeds {seed_stat(v)['std']:.2f} pp" for v in (a, b) if len(v) > 1]
  return text + (f" ({'; '.join(spreads)})" if spreads else '')


def claim_checks(runs: dict, n_train: int, n_test: int) -> list[list[str]]:
  """Each check as measured, on the seed means where a model has several runs: the compared
  numbers (mean ± std over seeds), their difference, the verdict."""
  groups = seed_groups(runs)
  rows = []
  plains = sorted((m for m in groups if m.startswith('plain')), key=depth)
  shallow, deep = (plains[0], plains[-1]) if len(plains) > 1 else ('plain20', 'plain56')
  twin = deep.replace('plain', 'resnet')
  for claim, text, a, b, split, n in (
      ('C20, C21', f'{deep} training error above {shallow} (degradation)', deep, shallow, 'train',
       n_train),
      ('C20', f'{deep} training error above {twin} (residuals remove it)', deep, twin, 'train',
       n_train),
      ('C21', f'{deep} test error above {shallow}', deep, shallow, 'test', n_test)):
    rows.append([claim, text, *_compare(runs, groups, [a, b], split, n)])
  rows.append(['C21', 'ResNet test error falls with depth', *_depth_check(runs, groups, n_test)])
  return rows


def _common_errors(runs: dict, groups: dict, models: list[str], split: str):
  """(per-model seed errors, iteration) at the last evaluation every run of `models` has reached,
  or a string that says why there is none."""
  if any(m not in groups for m in models) or any(
      split not in final_errors(runs[n]) for m in models for n in groups[m]):
    return 'not run'
  common = min(final_errors(runs[n])['step'] for m in models for n in groups[m])
  errs = [model_error(runs, groups[m], split, common) for m in models]
  if any(e is None for e in errs) or len({e[1] for e in errs}) != 1:
    return 'no common evaluation point yet'
  return [e[0] for e in errs], errs[0][1]


def _compare(runs: dict, groups: dict, models: list[str], split: str, n: int) -> list[str]:
  """The `measured`, `difference` and `holds` cells of 'first model's error above second's'."""
  got = _common_errors(runs, groups, models, split)
  if isinstance(got, str):
    return [got, '', '']
  (ea, eb), step = got
  (a, b) = models
  holds = seed_stat(ea)['mean'] > seed_stat(eb)['mean']
  return [f'{a} {pm(ea)} vs {b} {pm(eb)} at iteration {step:,}',
          difference_text(ea, eb, n, split), 'yes' if holds else '**no**']


def _depth_check(runs: dict, groups: dict, n_test: int) -> list[str]:
  """Test error (seed means) strictly falling from the shallowest to the deepest ResNet."""
  resnets = sorted((m for m in groups if m.startswith('resnet')), key=depth)
  if len(resnets) < 2:
    return ['needs two ResNets', '', '']
  got = _common_errors(runs, groups, resnets, 'test')
  if isinstance(got, str):
    return [got, '', '']
  errs, step = got
  means = [seed_stat(e)['mean'] for e in errs]
  falls = all(a > b for a, b in zip(means, means[1:]))
  return [', '.join(f'{m} {pm(e)}' for m, e in zip(resnets, errs)) + f' at iteration {step:,}',
          'deepest vs shallowest ' + difference_text(errs[-1], errs[0], n_test, 'test'),
          'yes' if falls else '**no**']


def diagnostics_table(runs: dict) -> str:
  """At initialisation and at the end: the backward signal at the first block over that at the
  last block (seed 0 runs only)."""
  rows = []
  for model in run_order(runs):
    run = runs[model]
    if not run['diagnostics'] or parse_run(model)[1] != 0:
      continue
    ends = {r['step']: r for r in (run['diagnostics'][0], run['diagnostics'][-1])}
    for rec in ends.values():  # one row while a run has only its initial record
      names = [n for n in _block_names(rec, 'grad_rms') if n.startswith('stage')]
      first, last = rec[f'grad_rms/{names[0]}'], rec[f'grad_rms/{names[-1]}']
      acts = [rec[f'act_rms/{n}'] for n in names]
      rows.append([model, rec['step'], f'{first:.3g}', f'{last:.3g}', f'{first / last:.3g}',
                   f'{min(acts):.3g} – {max(acts):.3g}'])
  return report.markdown_table(
      ['model', 'step', 'norm of dL/dy, first block', 'last block', 'first / last',
       'block output RMS (min – max)'], rows)


# --------------------------------------------------------------------- time and throughput

TTA_MODEL = 'resnet20'
TTA_TARGET = 100 - PAPER_TEST_ERROR[TTA_MODEL]  # 91.25% test accuracy: Table 6's 8.75% error


def duration(seconds: float | None) -> str:
  if seconds is None:
    return '–'
  if seconds < 600:
    return f'{seconds / 60:.1f} min'
  return f'{seconds / 60:.0f} min' if seconds < 6000 else f'{seconds / 3600:.1f} h'


def time_to_accuracy(run: dict, target_pct: float = TTA_TARGET) -> dict:
  """From the test curve: the first evaluation at which test accuracy reaches `target_pct` (its
  iteration and the run's wall time then, summed over resumes), else None; and the best."""
  curve = run['test']
  hit = next((r for r in curve if 100 * r['accuracy'] >= target_pct - 1e-6), None)
  best = max(curve, key=lambda r: r['accuracy'], default=None)
  return {
      'target_accuracy_pct': target_pct, 'reached': hit is not None,
      'step': hit['step'] if hit else None, 'wall_time_s': hit.get('wall_time_s') if hit else None,
      'best_accuracy_pct': 100 * best['accuracy'] if best else None,
      'best_step': best['step'] if best else None,
      'best_wall_time_s': best.get('wall_time_s') if best else None,
      'evaluated_to_step': curve[-1]['step'] if curve else None,
      'finished': run['results'] is not None,
  }


def tta_runs(runs: dict) -> list[str]:
  """The runs timed to Table 6's ResNet-20 accuracy: ResNet-20's seeds, else (toy presets) the
  shallowest ResNet's."""
  groups = {m: names for m, names in seed_groups(runs).items() if m.startswith('resnet')}
  return groups.get(TTA_MODEL) or next(iter(groups.values()), [])


def tta_table(tta: dict) -> str:
  rows = []
  for name, t in tta.items():
    best = (f"{t['best_accuracy_pct']:.2f}% (iteration {t['best_step']:,}, "
            f"{duration(t['best_wall_time_s'])})" if t['best_step'] is not None else '–')
    upto = (f"{t['evaluated_to_step']:,}" if t['evaluated_to_step'] is not None else '–') + (
        '' if t['finished'] else ' (running)')
    rows.append([name, f"iteration {t['step']:,}" if t['reached'] else 'not reached',
                 duration(t['wall_time_s']) if t['reached'] else '–', best, upto])
  return report.markdown_table(
      ['run', f'first ≥ {TTA_TARGET:.2f}% test accuracy', 'wall time then', 'best test accuracy',
       'test curve up to iteration'], rows)


def timing_table(runs: dict, num_steps: int, models=()) -> str:
  """Per run: wall time (over every sitting), train images/s, host and code commit from
  results.json; a run still training shows how far it is and its wall time at its last test
  evaluation."""
  rows = []
  for name in run_order(set(runs) | set(models)):
    if name not in runs:
      rows.append([name, 'not started', '–', '–', '–', '–'])
      continue
    run, res = runs[name], runs[name]['results']
    if res:
      ips = res.get('train_images_per_s')
      rows.append([name, f"{res['steps']:,} (finished)", duration(res['wall_time_s']),
                   f'{ips:,.0f}' if ips else '–', res.get('host_cpu', '?'),
                   res.get('git_commit', 'not recorded')])
      continue
    so_far = next((r['wall_time_s'] for r in reversed(run['test']) if 'wall_time_s' in r), None)
    ips = run['logged_images_per_s']
    rows.append([name, f"{run['last_step']:,} of {num_steps:,} (running)",
                 f'{duration(so_far)} at its last test evaluation' if so_far else '…',
                 f'{ips:,.0f} (median of the logs so far)' if ips else '…', '…', '…'])
  return report.markdown_table(
      ['run', 'iterations', 'wall time', 'train images/s', 'host (last sitting)',
       'code commit (last sitting)'], rows)


# ----------------------------------------------------------------------------------- report


def _facts(runs: dict, models: list[str], preset: str, overrides) -> dict:
  """What the report says about data, sizes and hardware, from the finished runs' results."""
  done = {m: r['results'] for m, r in runs.items() if r['results']}
  res = next(iter(done.values()), None)
  config = model_config(models[0], preset, list(overrides))
  return {
      'config': config, 'done': done, 'hardware': hardware(done), 'models': list(models),
      'n_train': res['num_train_eval'] if res else config.data.train_eval_size,
      'n_test': res['num_test'] if res else 10_000,
      'num_train': res['num_train'] if res else None,
      'num_val': res['num_val'] if res else config.data.validation_size,
      'dataset': res['dataset'] if res else config.data.dataset,
      'status': run_status(runs, models),
  }


def hardware(done: dict, committed: bool = False) -> str:
  """The device and host CPU the finished runs recorded ({run: results.json};
  run_records.machine_note, `committed` as there), and where they differ, which speeds
  compare."""
  if not done:
    return 'not recorded yet (a run records its device and host when it finishes)'
  host = run_records.host_record(done)
  text = run_records.machine_note(host, committed)
  if len(host['hosts']) > 1:
    text += ('. The runs were not all trained on the same kind of machine, and a run resumed '
             'in a later sitting records the host of its last one (its wall time and images/s '
             'cover every sitting): compare speeds only between rows with the same host. '
             "XLA's CPU convolutions run about 3x faster with AVX-512 than with AVX2")
  return text


def run_status(runs: dict, models: list[str]) -> str:
  """'all runs finished', or how many are finished, partial and not started."""
  done = [m for m in models if m in runs and runs[m]['results']]
  if len(done) == len(models):
    return 'all runs finished'
  partial = [m for m in models if m in runs and not runs[m]['results']]
  missing = [m for m in models if m not in runs]
  text = f'{len(done)} of {len(models)} runs finished'
  text += f"; partial: {', '.join(partial)}" if partial else ''
  text += f"; not started: {', '.join(missing)}" if missing else ''
  return text + ' — rerun the command to resume them'



def _header(facts: dict, models: list[str], preset: str, load: dict) -> str:
  """The report's title and its command, data, protocol and hardware (`load`: the runs' own
  record of the machine's load, run_records.runs_load)."""
  f, c = facts, facts['config']
  train = (f"{f['num_train']:,} training images" if f['num_train'] else 'all training images'
           if not f['num_val'] else f"the training images less {f['num_val']:,}")
  val = f"{f['num_val']:,} validation" if f['num_val'] else 'no validation split'
  selection = ("'Final' is the last state; the best-validation checkpoint's test error is also "
               'given' if f['num_val'] else "'Final' is the last state (nothing is selected)")
  return f"""# Degradation: plain networks against ResNets on CIFAR-10 — claims C20, C21

Generated by `experiments/degradation.py` from the runs' `metrics.jsonl` and `results.json`
({f['status']}).

- **Command**: `python -m experiments.degradation --preset={preset} --models={','.join(models)}`
  (each run: `configs/cifar_resnet.py:<model>{',' + preset if preset else ''}`, with seed N
  for a `_seedN` run); per-run commands below.
- **Data**: {f['dataset']}: {train}, {val}, {f['n_test']:,} test. Per-channel normalisation with
  the training split's statistics; 4-pixel zero padding, random 32x32 crop and horizontal flip,
  on the device.
- **Protocol**: {_protocol(c, preset)}
- **How errors are measured**: at every evaluation point (every {c.eval_every_steps:,}
  iterations), without augmentation and with BatchNorm's running averages, on a fixed subset of
  {f['n_train']:,} training images (training error) and on the whole test split (test error).
  {selection}. Where a model has several seeds, its error is the mean ± sample std (ddof=1)
  over seeds, and the checks compare seed means. Differences are in percentage points (pp);
  "binomial SE" is the standard error of one net's error rate measured on a finite evaluation
  set (the {f['n_train']:,}-image training subset or the {f['n_test']:,}-image test set): it
  says nothing of the spread between seeds, which the std gives.
- **Hardware**: {f['hardware']}. {run_records.busy_note(load)}
"""


def _body(runs: dict, entries: list[dict], checks: str, tta: dict, fig6: pathlib.Path,
          diag_png, facts: dict) -> str:
  done = facts['done']
  commands = ('\n'.join(sorted({f"- `{r['command']}`" for r in done.values()}))
              or '- (none finished)')
  return f"""
## Final errors beside He et al. (2016), Table 6

{table6_markdown(entries)}

Table 6 gives no numbers for the plain nets; Figure 6 shows their error rising with depth
(plain-56 above plain-20 in both training and test error). "Within {BAND_PP} pp" is the band
issue 24 asks of ResNet-20 (seed mean) and ResNet-56; a running run's verdict is provisional.

## Claim checks (computed from the runs)

{checks}

![Figure 6 style curves]({fig6.name})

## Time to accuracy

The first evaluation at which test accuracy reaches {TTA_TARGET:.2f}% (Table 6's
{100 - TTA_TARGET:.2f}% error for ResNet-20), else the best reached; wall time is the run's own,
summed over resumes and including its evaluations (`wall_time_s` of the test-curve records; '–'
where a record has none). The test curve is read here, never used to choose anything.

{tta_table(tta) if tta else '(no ResNet run)'}

## Wall time and throughput per run

{timing_table(runs, facts['config'].num_steps, facts['models'])}

## Signal and gradient through depth (C20: dy/dx = 1 + dF/dx)

On one fixed training batch, in train mode: the RMS over examples of |dL/d(block output)| (the
backward signal reaching each block) and the RMS of each block's output, at initialisation and
at the end (seed 0 runs; `cnn_jax/diagnostics.py`).

{diagnostics_table(runs)}

{f'![diagnostics]({diag_png.name})' if diag_png else ''}

## Per-run commands

{commands}

{report_parts.footer()}"""


def make_report(workdir: pathlib.Path, models: list[str], preset: str,
                overrides: tuple[str, ...] = ()) -> tuple[str, dict]:
  """report.md's text and results.json's record from the runs' files in `workdir`, finished or
  partial; draws figure6.png and diagnostics.png there."""
  runs = {m: r for m in models if (r := load_run(workdir / m)) is not None}
  if not runs:
    raise SystemExit(f'No runs with metrics under {workdir}; train first (drop --report_only).')
  facts = _facts(runs, models, preset, overrides)
  fig6 = plot_figure6(runs, workdir / 'figure6.png', facts['config'].num_steps)
  diag_png = plot_diagnostics(runs, workdir / 'diagnostics.png')
  summary = seed_summary(runs)
  entries = table6_entries(runs, summary)
  check_rows = claim_checks(runs, facts['n_train'], facts['n_test'])
  checks = report.markdown_table(['claim', 'check', 'measured', 'difference', 'holds'], check_rows)
  checks += reading(check_rows, facts['config'], preset, entries, runs, facts['dataset'])
  tta = {name: time_to_accuracy(runs[name]) for name in tta_runs(runs)}
  text = (_header(facts, models, preset, run_records.runs_load(workdir / m for m in runs))
          + _body(runs, entries, checks, tta, fig6, diag_png, facts))
  return text, _record(runs, models, preset, facts, summary, entries, check_rows, tta)


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/degradation_cpu) computed again from its committed
  per-run records (each run's config.json, metrics.jsonl and results.json): the claim checks and
  the headline."""
  record = run_records.read_json(report_dir / 'results.json')
  names = list(record['final_errors'])
  runs = {n: load_run(report_dir / n) for n in names}
  facts = _facts(runs, names, record['preset'], ())
  rows = claim_checks(runs, facts['n_train'], facts['n_test'])
  again = _record(runs, names, record['preset'], facts, seed_summary(runs), [], rows, {})
  return report_parts.Recomputed(report_parts.Checks.of(again['checks']), again['headline'])


def _record(runs, models, preset, facts, summary, entries, check_rows, tta) -> dict:
  """The report's results.json: headline, per-run and per-model errors, checks, time to accuracy."""
  finals = {m: final_errors(r) for m, r in runs.items()}
  parts = []
  for model, s in summary.items():
    fmt = lambda st: '?' if st is None else (f"{st['mean']:.1f}" if st['std'] is None
                                             else f"{st['mean']:.1f} ± {st['std']:.1f}")
    parts.append(f"{model} train {fmt(s['train'])}% / test {fmt(s['test'])}% at {s['step']:,} it"
                 + (f" ({len(s['runs'])} seeds)" if len(s['runs']) > 1 else '')
                 + ('' if s['finished'] else ' (running)'))
  done = facts['done']
  return {
      'experiment': 'degradation', 'claims': 'C20, C21', 'preset': preset,
      'status': facts['status'],
      'command': f"python -m experiments.degradation --preset={preset} --models={','.join(models)}",
      'headline': '; '.join(parts), 'final_errors': finals, 'seed_summary': summary,
      'table6': entries, 'band_pp': BAND_PP,
      'checks': [row for row in check_rows if row[-1]],  # verdicts only, not the 'not run' rows
      'time_to_accuracy': tta,
      'train_wall_time_s': sum(r['wall_time_s'] for r in done.values()),
      'runs': dict(done),
  }


def reading(check_rows: list[list[str]], config, preset: str, entries: list[dict] = (),
            runs: dict | None = None, dataset: str = '') -> str:
  """What the verdicts say, written from them: which checks do not hold, which nets miss
  Table 6's band (and, on the JPEG copy of CIFAR-10 (`dataset`), that part of the gap is the
  data), and what that means."""
  failed = [row[1] for row in check_rows if row[-1] == '**no**']
  narrow = narrow_checks(check_rows)
  misses = [e for e in entries if e['headline'] and e['within_band'] == '**no**']
  depth_failed = any('with depth' in f for f in failed)
  text = ''
  if failed:
    text += '\n\n**Not reproduced here**: ' + '; '.join(failed) + '.'
  if depth_failed and preset and preset != 'paper':
    text += (f" He et al.'s ResNet ordering (Table 6: ResNet-56 {PAPER_TEST_ERROR['resnet56']}% "
             f"against ResNet-20 {PAPER_TEST_ERROR['resnet20']}% test error) is measured on "
             f'networks trained for the full 64k iterations; this protocol trains '
             f'{config.num_steps:,} ({config.num_steps / PAPER_STEPS:.1%} of the schedule, with '
             'its learning-rate decays as early), and in that budget the deeper ResNet has not '
             'caught up with the shallower one. The degradation checks need no convergence: '
             "He et al.'s Figure 6 shows plain-56 above plain-20 from the first thousand "
             'iterations on. The `paper` preset tests the ordering.')
  if narrow:
    text += ('\n\n**Holds by a narrow margin**: ' + '; '.join(
        f'{row[1]}, {row[3]}' for row in narrow) + f'. A difference under {NARROW_SE:g} '
        'binomial SE is within what measuring the same nets on another set of that size could '
        'move; more seeds of the nets compared (the seed counts are in the table above) would '
        'tell whether it stands.')
  if misses:
    text += (f"\n\n**Outside Table 6's ±{BAND_PP} pp band**: " + '; '.join(
        f"{e['row']} {e['test']['mean']:.2f}% against {e['paper']:.2f}% "
        f"({e['difference_pp']:+.2f} pp)" for e in misses) + '.')
    if 'JPEG' in dataset:
      text += (' These nets train and test on a JPEG re-encoding of CIFAR-10 (quality 75, 4:2:0 '
               'chroma; ../shared/data/README.md), on which absolute errors run above published '
               'CIFAR-10 figures: part of each gap is the data, not the schedule. The claim checks '
               'compare nets trained on the same copy and are not affected.')
  if preset == 'quarter' and (depth_failed or misses):
    text += longer_run_note(runs or {}, config)
  return text


NARROW_SE = 2.0  # a check holding by fewer binomial SEs than this is called narrow


def narrow_checks(check_rows: list[list[str]]) -> list[list[str]]:
  """The checks that hold by less than NARROW_SE binomial SEs (read from their difference cell)."""
  se = lambda row: re.search(r'= ([+-]?[0-9.]+) binomial SE', row[3])
  return [row for row in check_rows
          if row[-1] == 'yes' and (m := se(row)) and abs(float(m.group(1))) < NARROW_SE]


def longer_run_note(runs: dict, config) -> str:
  """For a shortened schedule: what He et al.'s full one would take, from the measured runs."""
  finished = {n: r['results'] for n in run_order(runs) if (r := runs[n])['results']
              and n.startswith('resnet') and parse_run(n)[1] == 0 and r['results'].get('steps')}
  cost = [f"{n} about {duration(res['wall_time_s'] * PAPER_STEPS / res['steps'])}"
          for n, res in finished.items()]
  text = (f"\n\n**What a longer run would need**: Table 6's errors come from {PAPER_STEPS:,} "
          f"iterations with the learning rate divided by 10 at "
          f"{' and '.join(f'{b:,}' for b in PAPER_BOUNDARIES)}; these runs have "
          f'{config.num_steps / PAPER_STEPS:.0%} of that, and their last, lowest-rate phase is '
          f'{config.num_steps - config.lr_boundaries[-1]:,} iterations instead of '
          f'{PAPER_STEPS - PAPER_BOUNDARIES[-1]:,}. The full schedule is the `paper` preset, on '
          'the same 50k images; at the speeds measured here, one seed of ' +
          (', '.join(cost) if cost else 'each net would take four times these runs') +
          ' (on the hosts in the wall-time table).')
  spread = seed_summary(runs).get('resnet20', {}).get('test') if runs else None
  if spread and spread['std'] is not None:
    gap = PAPER_TEST_ERROR['resnet20'] - PAPER_TEST_ERROR['resnet56']
    text += (f" Table 6's ResNet-20 to ResNet-56 gap is {gap:.2f} pp; ResNet-20's test error "
             f"varies by {spread['std']:.2f} pp (std) over its {spread['n']} seeds here: "
             + ('the gap is large against that spread, if ResNet-56 varies no more.'
                if 2 * spread['std'] < gap else
                'comparable to the gap, so ResNet-56 needs several seeds too to resolve it.'))
  return text


def _protocol(config, preset: str) -> str:
  base = (f'batch {config.batch_size}, SGD momentum {config.momentum}, lr {config.learning_rate} '
          f'divided by 10 at iterations {" and ".join(f"{b:,}" for b in config.lr_boundaries)} of '
          f'{config.num_steps:,}, weight decay {config.weight_decay:g} (L2; the '
          f'lecture says 1e-5, He et al. 1e-4), He-normal init, option-A shortcuts.')
  if preset == 'cpu':
    base += (' **Reduced for a 2-core CPU**: the same networks, data and recipe, with the paper\'s '
             f'64k-iteration schedule scaled by {config.num_steps / 64_000:.3g} (decays at the same '
             'fractions, 50% and 75%). Depth is what the claim is about, so the networks keep '
             'their full depth and width; the reduction is in training length only. He et al.\'s '
             'Figure 6 shows the plain-56 curve above plain-20 from the first thousand iterations '
             'on, so a short run can test the ordering of training errors; absolute errors are far '
             'above the paper\'s converged values.')
  if preset == 'quarter':
    base += (f' **A quarter of the paper\'s schedule**: He et al.\'s recipe unchanged for '
             f'{config.num_steps:,} iterations, {config.num_steps / PAPER_STEPS:.0%} of their '
             f'{PAPER_STEPS:,}, the learning-rate decays at the same fractions (50% and 75%: '
             f'{" and ".join(f"{b:,}" for b in config.lr_boundaries)}). Trained on all 50k '
             'training images as for Table 6: the schedule is the paper\'s, fixed in advance (He '
             'et al. chose it on a 45k/5k train/validation split), so there is nothing to select '
             'and no validation split, and every error reported is that of the last state. The '
             f'test error is measured every {config.eval_every_steps:,} iterations for the '
             'curves and the time to accuracy only; it is never used to choose anything.')
  return base


def main(argv):
  session = common.start(argv, 'degradation', blank='recipe', check_model=parse_run)
  preset, models = session.preset, session.models
  session.train(session.configs(  # every config before any training
      lambda: {m: model_config(m, preset, session.overrides) for m in models}))
  text, record = make_report(session.workdir, models, preset, session.overrides)
  path = session.finish(text, record, OUTPUTS + tuple(f'{m}/{n}' for m in models for n in RECORDS))
  print(f'report: {path}')


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
