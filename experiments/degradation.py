"""Claims C20, C21: deeper plain nets train worse (degradation); residual connections fix it.

    python -m experiments.degradation --preset=cpu                       # plain/ResNet-20 and -56
    python -m experiments.degradation --preset=paper --models=plain20,plain32,plain44,plain56,resnet20,resnet32,resnet44,resnet56,resnet110
    python -m experiments.degradation --preset=cpu --report_only         # report from the workdirs

Trains each model of `--models` with `configs/cifar_resnet.py:<model>,<preset>` in
`<workdir>/<model>` (resuming whatever is there; finished runs are skipped), one after another,
then writes `report.md`, `figure6.png` and `diagnostics.png` in `<workdir>` from the runs' files:
error curves like He et al.'s Figure 6, final errors beside their Table 6, the claim checks, and
the per-block signal and gradient norms (dy/dx = 1 + dF/dx). `--report_dir` copies the report and
every run's records there.
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

from configs import cifar_resnet
from cnn_jax import cli, config_base, report
from cnn_jax.metric_writers import read_metrics
from experiments import lecture_common as common

ROOT = common.ROOT
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so tests can import the module."""
  flags.DEFINE_enum('preset', 'cpu', ['', *cifar_resnet.PRESETS],
                    'Protocol of configs/cifar_resnet.py ("" = the recipe, 45k/5k split).')
  flags.DEFINE_list('models', ['plain20', 'plain56', 'resnet20', 'resnet56'],
                    'Runs: any of plain{20,32,44,56,110}, resnet{20,32,44,56,110}, each with an '
                    'optional _seed<N> (resnet20_seed1: seed 1 in its own workdir; no suffix: 0).')
  flags.DEFINE_string('workdir', None, 'Default: workdirs/degradation_<preset>.')
  flags.DEFINE_string('report_dir', None, 'Also copy the report and records here.')
  flags.DEFINE_bool('report_only', False, 'Only write the report from the workdirs.')
  flags.DEFINE_multi_string('set', [], 'Config override KEY=VALUE for every run, e.g. '
                            '--set=data.data_dir=/data/cifar10.')


# He et al. 2016, Table 6: CIFAR-10 test error (%) of the ResNets; parameters.
PAPER_TEST_ERROR = {'resnet20': 8.75, 'resnet32': 7.51, 'resnet44': 7.17, 'resnet56': 6.97,
                    'resnet110': 6.43}
PAPER_PARAMS = {'resnet20': '0.27M', 'resnet32': '0.46M', 'resnet44': '0.66M',
                'resnet56': '0.85M', 'resnet110': '1.7M'}
RECORDS = ('results.json', 'metrics.jsonl', 'config.json')


def parse_run(name: str) -> tuple[str, int]:
  """'resnet20_seed2' -> ('resnet20', 2); 'resnet20' -> ('resnet20', 0)."""
  model, sep, seed = name.partition('_seed')
  if model not in cifar_resnet.MODELS or (sep and not seed.isdigit()):
    raise ValueError(f'Unknown run {name!r}: use a model of {", ".join(cifar_resnet.MODELS)}, '
                     'optionally followed by _seed<N>.')
  return model, int(seed or 0)


def model_config(name: str, preset: str, overrides: list[str]):
  model, seed = parse_run(name)
  config = cifar_resnet.get_config(f'{model},{preset}' if preset else model)
  config.seed = seed
  for item in overrides:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--set expects KEY=VALUE, got {item!r}.')
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    if leaf not in target:
      raise KeyError(config_base.unknown_key_message(key, config_base.all_keys(config)))
    target[leaf] = cli.literal(value)
  config_base.validate(config)
  return config


def depth(name: str) -> int:
  return int(parse_run(name)[0].lstrip('plainresnet'))


def load_run(run_dir: pathlib.Path) -> dict | None:
  """A run's curves and results; None if it has not logged anything yet."""
  if not (run_dir / 'metrics.jsonl').exists():
    return None
  records = read_metrics(run_dir / 'metrics.jsonl')
  by_split = lambda s: [r for r in records if r['split'] == s]
  results = run_dir / 'results.json'
  return {
      'train': by_split('train_eval'), 'test': by_split('test_curve'), 'val': by_split('val'),
      'diagnostics': by_split('diagnostics'),
      'results': json.loads(results.read_text()) if results.exists() else None,
  }


# ----------------------------------------------------------------------------------- plots


def plot_figure6(runs: dict, out: pathlib.Path) -> pathlib.Path:
  """Error against iterations: plain (left) and residual (right); train dashed, test solid."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  colors = {20: 'tab:orange', 32: 'tab:blue', 44: 'tab:green', 56: 'tab:red', 110: 'black'}
  for ax, family in zip(axes, ('plain', 'resnet')):
    for model, run in sorted(runs.items(), key=lambda kv: depth(kv[0])):
      if not model.startswith(family):
        continue
      c = colors.get(depth(model), None)
      label = f"{'plain' if family == 'plain' else 'ResNet'}-{depth(model)}"
      for split, style in (('train', '--'), ('test', '-')):
        rows = run[split]
        if rows:
          ax.plot([r['step'] for r in rows], [100 * (1 - r['accuracy']) for r in rows], style,
                  color=c, label=f'{label} {split}', linewidth=1.5)
    ax.set_title('plain networks' if family == 'plain' else 'residual networks')
    ax.set_xlabel('iterations')
  axes[0].set_ylabel('error (%)  [dashed: training, solid: test]')
  fig.suptitle('CIFAR-10 (JPEG copy): degradation of plain nets, He et al. Figure 6 style')
  return common.save_figure(fig, out, axes=axes, legend_size=8)


def plot_diagnostics(runs: dict, out: pathlib.Path) -> pathlib.Path | None:
  """Backward signal |dL/dy| and forward signal RMS per block, at init and later, per model."""
  plt = common.pyplot()
  with_diag = {m: r for m, r in runs.items() if r['diagnostics']}
  if not with_diag:
    return None
  fig, axes = plt.subplots(2, len(with_diag), figsize=(4 * len(with_diag), 7), squeeze=False)
  for col, (model, run) in enumerate(sorted(with_diag.items())):
    diags = run['diagnostics']
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


# ----------------------------------------------------------------------------------- report


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


def _se(err_pct: float, n: int) -> float:
  """Binomial standard error of an error rate, in percentage points."""
  p = err_pct / 100
  return 100 * (p * (1 - p) / max(n, 1)) ** 0.5


def claim_checks(runs: dict, n_train: int, n_test: int) -> list[list[str]]:
  """Each check as measured: the compared numbers, their difference in standard errors, verdict."""
  err = {m: final_errors(r) for m, r in runs.items()}
  rows = []

  def compare(claim, text, a, b, split, n):
    """At the last iteration both runs have reached, so a partial run is compared fairly."""
    if a not in err or b not in err or split not in err[a] or split not in err[b]:
      rows.append([claim, text, 'not run', '', ''])
      return
    common = min(err[a]['step'], err[b]['step'])
    fa, fb = final_errors(runs[a], common), final_errors(runs[b], common)
    if split not in fa or split not in fb or fa[f'{split}_step'] != fb[f'{split}_step']:
      rows.append([claim, text, 'no common evaluation point yet', '', ''])
      return
    ea, eb = fa[split], fb[split]
    z = (ea - eb) / max((_se(ea, n) ** 2 + _se(eb, n) ** 2) ** 0.5, 1e-9)
    rows.append([claim, text, f'{a} {ea:.2f}% vs {b} {eb:.2f}% at iteration {common:,}',
                 f'{ea - eb:+.2f} pp ({z:+.1f} SE)', 'yes' if ea > eb else '**no**'])

  plains = sorted((m for m in err if m.startswith('plain')), key=depth) or ['plain20', 'plain56']
  deep, shallow = plains[-1], plains[0] if len(plains) > 1 else 'plain20'
  twin = deep.replace('plain', 'resnet')
  compare('C20, C21', f'{deep} training error above {shallow} (degradation)', deep, shallow,
          'train', n_train)
  compare('C20', f'{deep} training error above {twin} (residuals remove it)', deep, twin,
          'train', n_train)
  compare('C21', f'{deep} test error above {shallow}', deep, shallow, 'test', n_test)
  resnets = sorted((m for m in err if m.startswith('resnet') and 'test' in err[m]), key=depth)
  if len(resnets) >= 2:
    common = min(err[m]['step'] for m in resnets)
    errs = [final_errors(runs[m], common)['test'] for m in resnets]
    falls = all(a > b for a, b in zip(errs, errs[1:]))
    gap = errs[-1] - errs[0]
    z = gap / max((_se(errs[-1], n_test) ** 2 + _se(errs[0], n_test) ** 2) ** 0.5, 1e-9)
    rows.append(['C21', 'ResNet test error falls with depth',
                 ', '.join(f'{m} {e:.2f}%' for m, e in zip(resnets, errs)) + f' at {common:,}',
                 f'{gap:+.2f} pp deepest vs shallowest ({z:+.1f} SE)',
                 'yes' if falls else '**no**'])
  else:
    rows.append(['C21', 'ResNet test error falls with depth', 'needs two ResNets', '', ''])
  return rows


def diagnostics_table(runs: dict) -> str:
  """At initialisation: the backward signal at the first block over that at the last block."""
  rows = []
  for model, run in sorted(runs.items(), key=lambda kv: (kv[0].startswith('resnet'), depth(kv[0]))):
    if not run['diagnostics']:
      continue
    for rec in (run['diagnostics'][0], run['diagnostics'][-1]):
      names = [n for n in _block_names(rec, 'grad_rms') if n.startswith('stage')]
      first, last = rec[f'grad_rms/{names[0]}'], rec[f'grad_rms/{names[-1]}']
      acts = [rec[f'act_rms/{n}'] for n in names]
      rows.append([model, rec['step'], f'{first:.3g}', f'{last:.3g}', f'{first / last:.3g}',
                   f'{min(acts):.3g} – {max(acts):.3g}'])
  return report.markdown_table(
      ['model', 'step', 'norm of dL/dy, first block', 'last block', 'first / last',
       'block output RMS (min – max)'], rows)


def write_report(workdir: pathlib.Path, models: list[str], preset: str,
                 overrides: tuple[str, ...] = ()) -> pathlib.Path:
  runs = {m: r for m in models if (r := load_run(workdir / m)) is not None}
  if not runs:
    raise SystemExit(f'No runs with metrics under {workdir}; train first (drop --report_only).')
  fig6 = plot_figure6(runs, workdir / 'figure6.png')
  diag_png = plot_diagnostics(runs, workdir / 'diagnostics.png')
  done = {m: r['results'] for m, r in runs.items() if r['results']}
  any_results = next(iter(done.values()), None)
  config = model_config(models[0], preset, list(overrides))
  n_train = any_results['num_train_eval'] if any_results else config.data.train_eval_size
  n_test = any_results['num_test'] if any_results else 10_000

  table_rows = []
  for model in sorted(runs, key=lambda m: (m.startswith('resnet'), depth(m))):
    run, res = runs[model], runs[model]['results']
    fe = final_errors(run)
    table_rows.append([
        model, f"{res['num_params']:,}" if res else '…',
        f"{fe['step']:,}" + ('' if res else ' (running)'),
        f"{fe.get('train', float('nan')):.2f}", f"{fe.get('test', float('nan')):.2f}",
        f"{100 * (1 - res['test_accuracy']):.2f} (step {res['best_step']:,})"
        if res and res.get('best_step') else '–',
        f"{PAPER_TEST_ERROR[model]:.2f} ({PAPER_PARAMS[model]})" if model in PAPER_TEST_ERROR else '–',
        f"{res['wall_time_s'] / 60:.0f} min" if res else '…',
        f"{res['train_images_per_s']:,.0f}" if res and res['train_images_per_s'] else '…',
        res.get('host_cpu', '?') if res else '…'])
  table = report.markdown_table(
      ['model', 'params', 'iterations', 'train error % (final)', 'test error % (final)',
       'test error % (best val ckpt)', 'paper test error % (Table 6)', 'wall time',
       'train images/s', 'host (last sitting)'], table_rows)
  check_rows = claim_checks(runs, n_train, n_test)
  checks = report.markdown_table(['claim', 'check', 'measured', 'difference', 'holds'], check_rows)
  checks += reading(check_rows, config, preset)
  env = report.environment()
  hosts = sorted({r['host_cpu'] for r in done.values()}) or [env['host_cpu']]
  hardware = (f"{any_results['device_count']} x {any_results['device_kind']}" if any_results
              else 'cpu') + f", host {' / '.join(hosts)}"
  if len(hosts) > 1:
    hardware += ('. The runs were not all trained on the same kind of machine, and a run resumed '
                 'in a later sitting records the host of its last one (its wall time and images/s '
                 'cover every sitting): compare speeds only between rows with the same host. '
                 "XLA's CPU convolutions run about 3x faster with AVX-512 than with AVX2")
  dataset = any_results['dataset'] if any_results else config.data.dataset
  commands = '\n'.join(sorted({f"- `{r['command']}`" for r in done.values()})) or '- (none finished)'
  status = ('all runs finished' if len(done) == len(models) else
            f'{len(done)} of {len(models)} runs finished; the others are partial — rerun the '
            'command to resume them')
  text = f"""# Degradation: plain networks against ResNets on CIFAR-10 — claims C20, C21

Generated by `experiments/degradation.py` from the runs' `metrics.jsonl` and `results.json`
({status}).

- **Command**: `python -m experiments.degradation --preset={preset} --models={','.join(models)}`
  (each run: `configs/cifar_resnet.py:<model>{',' + preset if preset else ''}`); per-run commands below.
- **Data**: {dataset}: {any_results['num_train'] if any_results else '?':,} training images,
  {any_results['num_val'] if any_results else '?':,} validation, {n_test:,} test. Per-channel
  normalisation with the training split's statistics; 4-pixel zero padding, random 32x32 crop and
  horizontal flip, on the device.
- **Protocol**: {_protocol(config, preset)}
- **How errors are measured**: at every evaluation point, without augmentation and with BatchNorm's
  running averages, on a fixed subset of {n_train:,} training images (training error) and on the whole
  test split (test error). "Final" is the last state; the best-validation checkpoint's test error is
  also given. Differences are in percentage points with their binomial standard error (SE).
- **Hardware**: {hardware}.

## Final errors beside He et al. (2016), Table 6

{table}

Table 6 gives no numbers for the plain nets; Figure 6 shows their error rising with depth
(plain-56 above plain-20 in both training and test error).

## Claim checks (computed from the runs)

{checks}

![Figure 6 style curves]({fig6.name})

## Signal and gradient through depth (C20: dy/dx = 1 + dF/dx)

On one fixed training batch, in train mode: the RMS over examples of |dL/d(block output)| (the
backward signal reaching each block) and the RMS of each block's output, at initialisation and
along training (`cnn_jax/diagnostics.py`).

{diagnostics_table(runs)}

{f'![diagnostics]({diag_png.name})' if diag_png else ''}

## Per-run commands

{commands}

## Environment

{report.environment_markdown(env)}
"""
  path = workdir / 'report.md'
  path.write_text(text)
  finals = {m: final_errors(r) for m, r in runs.items()}
  headline = '; '.join(
      f"{m} train {finals[m].get('train', float('nan')):.1f}% / test "
      f"{finals[m].get('test', float('nan')):.1f}% at {finals[m]['step']:,} it"
      + ('' if runs[m]['results'] else ' (running)')
      for m in sorted(runs, key=lambda m: (m.startswith('resnet'), depth(m))))
  summary = {
      'experiment': 'degradation', 'claims': 'C20, C21', 'preset': preset, 'status': status,
      'command': f"python -m experiments.degradation --preset={preset} --models={','.join(models)}",
      'headline': headline, 'final_errors': finals,
      'checks': [row for row in check_rows if row[-1]],  # verdicts only, not the 'not run' rows
      'train_wall_time_s': sum(r['wall_time_s'] for r in done.values()),
      'runs': {m: r for m, r in done.items()},
  }
  (workdir / 'results.json').write_text(json.dumps(summary, indent=2) + '\n')
  return path


def reading(check_rows: list[list[str]], config, preset: str) -> str:
  """What the verdicts say, written from them: which checks do not hold, and what that means."""
  failed = [row[1] for row in check_rows if row[-1] == '**no**']
  if not failed:
    return ''
  text = '\n\n**Not reproduced here**: ' + '; '.join(failed) + '.'
  if preset and preset != 'paper' and any('with depth' in f for f in failed):
    text += (f" He et al.'s ResNet ordering (Table 6: ResNet-56 {PAPER_TEST_ERROR['resnet56']}% "
             f"against ResNet-20 {PAPER_TEST_ERROR['resnet20']}% test error) is measured on "
             f'networks trained for the full 64k iterations; this protocol trains '
             f'{config.num_steps:,} ({config.num_steps / 64_000:.1%} of the schedule, with its '
             'learning-rate decays as early), and in that budget the deeper ResNet has not caught '
             'up with the shallower one. The degradation checks above need no convergence: '
             "He et al.'s Figure 6 shows plain-56 above plain-20 from the first thousand "
             'iterations on. The `paper` preset tests the ordering.')
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
  return base


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.setup_process()
  preset, models = FLAGS.preset, FLAGS.models
  for name in models:
    try:
      parse_run(name)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  workdir = pathlib.Path(FLAGS.workdir or ROOT / 'workdirs' / f"degradation_{preset or 'recipe'}")
  workdir.mkdir(parents=True, exist_ok=True)
  configs = {m: model_config(m, preset, FLAGS.set) for m in models}  # fail before training
  if not FLAGS.report_only:
    for model in models:
      run_dir = workdir / model
      if (run_dir / 'results.json').exists():
        print(f'{model}: finished, skipped ({run_dir}).', file=sys.stderr)
        continue
      print(f'{model}: training in {run_dir} ...', file=sys.stderr, flush=True)
      cli.run_training(configs[model], run_dir, 'experiments.degradation')
  path = write_report(workdir, models, preset, FLAGS.set)
  print(f'report: {path}')
  common.copy_outputs(workdir, FLAGS.report_dir,
                      ['report.md', 'results.json', 'figure6.png', 'diagnostics.png']
                      + [f'{model}/{name}' for model in models for name in RECORDS])


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
