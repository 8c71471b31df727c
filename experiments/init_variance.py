"""Claim C12: how the initial weight variance carries the signal through a deep stack.

    python -m experiments.init_variance [--preset=toy] [--workdir=DIR] [--report_dir=reports/init_variance]

A deep stack of bias-free dense layers (full: 50 layers of width 512) is fed a batch of N(0, 1)
inputs; for each initialisation — N(0, 1), a small fixed scale (std 0.01), LeCun (Var = 1/n_in),
Xavier (2/(n_in + n_out)) and He (2/n_in) — and each activation (tanh, ReLU) the experiment
measures, per layer, the standard deviation of the activations (forward) and of the weight
gradients of a random linear read-out of the last layer (backward), averaged over seeds.

Then the second half of C12 on real data: He et al.'s CIFAR-10 plain-20 without BatchNorm,
trained briefly under He, LeCun, Xavier, std-0.01 and N(0, 1) kernels (configs/init_training.py,
one sweep member each, resumable; `--seeds`, default 1), with the per-block signal at
initialisation, training-loss and training-error curves, and the test accuracy of each.
`--train=False` skips it; `--set=KEY=VALUE` overrides its config (e.g. data.data_dir=DIR).

Writes report.md, init_variance.png, training.png and results.json with the claim checks.
"""
from __future__ import annotations

import math
import pathlib

from absl import app, flags
import numpy as np

from cnn_jax import cli, report, runtime, sweep
from cnn_jax.metric_writers import read_metrics
from experiments import lecture_common as common
from experiments import report_parts, run_records

FLAGS = common.FLAGS


PRESETS = {  # depth, width, batch, seeds
    'full': dict(depth=50, width=512, batch=1024, seeds=3),
    'toy': dict(depth=20, width=256, batch=256, seeds=2),
}
SMALL_STD = 0.01
INITS = {  # name -> weight std as a function of (fan_in, fan_out)
    'N(0,1)': lambda n_in, n_out: 1.0,
    f'small (std {SMALL_STD})': lambda n_in, n_out: SMALL_STD,
    'LeCun (1/n)': lambda n_in, n_out: math.sqrt(1.0 / n_in),
    'Xavier (2/(n_in+n_out))': lambda n_in, n_out: math.sqrt(2.0 / (n_in + n_out)),
    'He (2/n)': lambda n_in, n_out: math.sqrt(2.0 / n_in),
}
ACTIVATIONS = ('tanh', 'relu')
OUTPUTS = ('report.md', 'init_variance.png', 'training.png', 'results.json')
TRAIN_INITS = {'he': 'He (2/n_in)', 'lecun': 'LeCun (1/n_in)', 'xavier': 'Xavier',
               'small': f'std {SMALL_STD}', 'normal': 'N(0,1)'}  # configs/init_training.py


def measure_fn(act: str, depth: int, width: int, batch: int):
  """A jitted (weight std, seed) -> (per-layer Var(h_l), per-layer std of dL/dW_l), for the loss
  L = mean over the batch of <g, z_depth>; compiled once per activation."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  fn = {'tanh': jnp.tanh, 'relu': jax.nn.relu}[act]

  def measure(std, seed):
    kx, kg, kw = jax.random.split(jax.random.key(seed), 3)
    weights = std * jax.random.normal(kw, (depth, width, width))
    x = jax.random.normal(kx, (batch, width))
    g = jax.random.normal(kg, (batch, width))

    def forward(ws):
      def layer(h, w):
        h = fn(h @ w)
        return h, h
      h, acts = jax.lax.scan(layer, x, ws[:-1])
      z = h @ ws[-1]  # the last layer is the linear read-out input
      return jnp.sum(z * g) / batch, acts

    (_, acts), grads = jax.value_and_grad(forward, has_aux=True)(weights)
    return jnp.var(acts, axis=(1, 2)), jnp.std(grads, axis=(1, 2))

  return jax.jit(measure)


def run_all(depth, width, batch, seeds) -> dict:
  out = {}
  for act in ACTIVATIONS:
    fn = measure_fn(act, depth, width, batch)
    for init, std_fn in INITS.items():
      runs = [[np.asarray(a, np.float64) for a in fn(std_fn(width, width), s)]
              for s in range(seeds)]
      with np.errstate(invalid='ignore', over='ignore'):
        out[(act, init)] = {'act_var': np.mean([r[0] for r in runs], axis=0).tolist(),
                            'grad_std': np.mean([r[1] for r in runs], axis=0).tolist()}
  return out


def ratio_stats(var: list[float]) -> dict:
  """Max/min over depth and the geometric-mean ratio of consecutive layers' variance."""
  v = np.asarray(var, np.float64)
  finite = np.isfinite(v) & (v > 0)
  if not finite.all():
    first_bad = int(np.argmin(finite)) + 1
    return {'max_over_min': math.inf, 'per_layer_ratio': math.nan, 'finite': False,
            'first_non_finite_layer': first_bad, 'value_there': float(v[first_bad - 1]),
            'what': 'underflows to 0' if v[first_bad - 1] == 0 else 'overflows'}
  return {'max_over_min': float(v.max() / v.min()),
          'per_layer_ratio': float(np.exp(np.mean(np.diff(np.log(v))))), 'finite': True,
          'last_over_first': float(v[-1] / v[0])}


def plot(data: dict, depth: int, width: int, out: pathlib.Path) -> pathlib.Path:
  plt = common.pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(12, 8))
  for row, act in enumerate(ACTIVATIONS):
    for col, (key, label) in enumerate((('act_var', 'variance of activations'),
                                        ('grad_std', 'std of weight gradients dL/dW'))):
      ax = axes[row][col]
      for init in INITS:
        ys = np.asarray(data[(act, init)][key], np.float64)
        ys = np.where(np.isfinite(ys) & (ys > 0), ys, np.nan)
        ax.plot(np.arange(1, len(ys) + 1), ys, 'o-', markersize=2, label=init)
      ax.set_yscale('log')
      ax.set_title(f'{act}: {label}', fontsize=10)
      ax.set_xlabel('layer')
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.suptitle(f'{depth} dense layers of width {width}, inputs N(0, 1): variance through depth')
  return common.save_figure(fig, out, dpi=100)


def checks(data: dict, depth: int) -> tuple[list[list[str]], bool]:
  he = ratio_stats(data[('relu', 'He (2/n)')]['act_var'])
  lecun = ratio_stats(data[('relu', 'LeCun (1/n)')]['act_var'])
  rows = [
      report_parts.check_row('C12', 'He init, ReLU: activation variance across depth',
                       'Var(w) = 2/n keeps it', 'max / min over layers <= 2',
                       f"{he['max_over_min']:.3f}", he['max_over_min'] <= 2),
      report_parts.check_row('C12', 'LeCun init, ReLU: activation variance from layer to layer',
                       'Var(w) = 1/n is right for linear/tanh, halves through ReLU',
                       'geometric-mean ratio in [0.4, 0.6] (theory 0.5)',
                       f"{lecun['per_layer_ratio']:.3f}",
                       0.4 <= lecun['per_layer_ratio'] <= 0.6),
  ]
  for act in ACTIVATIONS:
    s = ratio_stats(data[(act, f'small (std {SMALL_STD})')]['act_var'])
    v = data[(act, f'small (std {SMALL_STD})')]['act_var']
    vanished = (not s['finite'] and s.get('value_there', 1) == 0) or (
        s['finite'] and s['last_over_first'] < 1e-6)
    rows.append(report_parts.check_row(
        'C12', f'std {SMALL_STD}, {act}: activation variance at layer {len(v)} vs layer 1',
        'too small vanishes', 'ratio < 1e-6 (or underflow to 0)',
        f"{v[-1] / v[0]:.2e}" if v[0] else 'layer 1 is 0', vanished))
  normal = ratio_stats(data[('relu', 'N(0,1)')]['act_var'])
  rows.append(report_parts.check_row(
      'C12', 'N(0,1), ReLU: activation variance', 'too large explodes',
      'grows > 1e6 over depth (or overflows float32)',
      (f"overflow at layer {normal['first_non_finite_layer']}" if not normal['finite'] else
       f"x{normal['last_over_first']:.2e}"),
      (not normal['finite']) or normal['last_over_first'] > 1e6))
  return rows, report_parts.all_hold(rows)


# ------------------------------------------------------- plain-20 on CIFAR-10 under each init


def training_sweep(preset: str, seeds: int, overrides) -> sweep.Sweep:
  return sweep.Sweep('configs/init_training.py' + (':toy' if preset == 'toy' else ''),
                     seeds=seeds, config_args=tuple(overrides))


def read_training(members, workdir: pathlib.Path) -> dict:
  """Per init: status, curves, signal at init and results, over its seeds' runs."""
  out = {}
  for m in members:
    run_dir = workdir / m.name
    init = m.overrides['model_kwargs.kernel_init']
    records = read_metrics(run_dir / 'metrics.jsonl') if (run_dir / 'metrics.jsonl').exists() else []
    error = run_dir / sweep.ERROR_FILE
    results = run_records.read_results(run_dir)
    diag0 = next((r for r in records if r['split'] == 'diagnostics' and r['step'] == 0), {})
    blocks = [k for k in diag0 if k.startswith('act_rms/stage')]
    out.setdefault(init, []).append({
        'status': ('finished' if results else 'diverged' if error.exists() else 'not run'),
        'error': error.read_text().strip().splitlines()[-1] if error.exists() else None,
        'train': [(r['step'], r['loss']) for r in records if r['split'] == 'train'],
        'train_eval': [(r['step'], r['accuracy']) for r in records if r['split'] == 'train_eval'],
        'signal_first': diag0.get(blocks[0]) if blocks else None,
        'signal_last': diag0.get(blocks[-1]) if blocks else None,
        'results': results})
  return out


def _dataset(runs: dict) -> str:
  """How the finished runs' results name their data, e.g. 'cifar10 (CIFAR-10 (JPEG copy))'."""
  for rs in runs.values():
    for r in rs:
      if r['results']:
        return str(r['results'].get('dataset'))
  return 'CIFAR-10 (no run finished yet)'


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else math.nan


def training_summary(runs: dict) -> dict:
  """Per init, averaged over its seeds: test accuracy, final train loss and error, signal."""
  summary = {}
  for init, rs in runs.items():
    done = [r['results'] for r in rs if r['results']]
    summary[init] = {
        'runs': len(rs), 'finished': len(done),
        'diverged': sum(r['status'] == 'diverged' for r in rs),
        'test_accuracy': _mean([d.get('test_accuracy') for d in done]),
        'num_test': done[0].get('num_test') if done else None,
        'final_train_loss': _mean([r['train'][-1][1] if r['train'] else None for r in rs
                                   if r['results']]),
        'final_train_error': _mean([1 - d['final_train_eval_accuracy'] for d in done
                                    if d.get('final_train_eval_accuracy') is not None]),
        'signal_first': _mean([r['signal_first'] for r in rs]),
        'signal_last': _mean([r['signal_last'] for r in rs])}
  return summary


def training_checks(summary: dict) -> list[list[str]]:
  """C12 on the trained net: He learns, the small init does not, N(0, 1) blows up, LeCun's
  signal shrinks through the ReLU layers and He trains faster than LeCun in the same budget."""
  he, lecun, small, normal = (summary.get(k) for k in ('he', 'lecun', 'small', 'normal'))
  rows = []
  if he and he['finished']:
    n = he['num_test'] or 10_000
    above = 0.1 + 5 * math.sqrt(0.09 / n)  # chance + 5 binomial SE
    rows.append(report_parts.check_row(
        'C12', 'plain-20 (no BN), He init: test accuracy', 'Var(w) = 2/n trains a ReLU net',
        f'above chance (10%) by > 5 SE: > {100 * above:.1f}%',
        f"{100 * he['test_accuracy']:.1f}%", he['test_accuracy'] > above))
  if he and small and he['finished'] and small['finished']:
    rows.append(report_parts.check_row(
        'C12', 'std 0.01 init: test accuracy against He', 'too small vanishes',
        'at least 10 points below He', f"{100 * small['test_accuracy']:.1f}% vs "
        f"{100 * he['test_accuracy']:.1f}%", small['test_accuracy'] < he['test_accuracy'] - 0.1))
  if normal:
    blown = normal['diverged'] == normal['runs'] or not math.isfinite(normal['signal_last'])
    rows.append(report_parts.check_row(
        'C12', 'N(0, 1) init: signal and loss', 'too large explodes',
        'the loss is not finite, or the last block\'s signal is', 
        f"{normal['diverged']} of {normal['runs']} runs diverged; last-block RMS at init "
        f"{normal['signal_last']:.3g}", blown))
  if he and lecun and math.isfinite(he['signal_last']) and math.isfinite(lecun['signal_last']):
    ratio = lecun['signal_last'] / he['signal_last']
    rows.append(report_parts.check_row(
        'C12', 'LeCun against He: last-block signal RMS at init',
        '1/n halves the variance per ReLU layer', 'below 1/100 of He\'s (theory 2^-9.5 = 1/724 '
        'in RMS over 19 ReLU layers)', f'{ratio:.3g}', ratio < 0.01))
  if he and lecun and he['finished'] and lecun['finished']:
    rows.append(report_parts.check_row(
        'C12', 'He against LeCun: final training loss', 'the ReLU-correct init trains faster',
        'He below LeCun', f"{he['final_train_loss']:.3f} vs {lecun['final_train_loss']:.3f}",
        he['final_train_loss'] < lecun['final_train_loss']))
  return rows


def plot_training(runs: dict, out: pathlib.Path) -> pathlib.Path:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for init, rs in runs.items():
    for k, r in enumerate(rs):
      label = TRAIN_INITS.get(init, init) if k == 0 else None
      if r['train']:
        steps, losses = zip(*r['train'])
        line, = axes[0].plot(steps, np.where(np.isfinite(losses), losses, np.nan), label=label)
        if r['train_eval']:
          s, acc = zip(*r['train_eval'])
          axes[1].plot(s, 100 * (1 - np.asarray(acc)), 'o-', color=line.get_color(), label=label)
  axes[0].set_title('training loss (mean over each log interval)')
  axes[0].set_yscale('log')
  axes[1].set_title('training error (%) on a fixed train subset, no augmentation')
  for ax in axes:
    ax.set_xlabel('iterations')
    ax.grid(alpha=0.3)
  fig.suptitle('CIFAR-10 plain-20 without BatchNorm under each initialisation')
  return common.save_figure(fig, out, axes=axes, legend_size=8)


def training_section(summary: dict, png: pathlib.Path | None, config, seeds: int) -> str:
  rows = []
  for init, s in summary.items():
    rows.append([TRAIN_INITS.get(init, init), f"{s['finished']} / {s['runs']}", s['diverged'],
                 f"{s['signal_first']:.3g}", f"{s['signal_last']:.3g}",
                 f"{s['final_train_loss']:.3f}", f"{100 * s['final_train_error']:.1f}",
                 f"{100 * s['test_accuracy']:.1f}"])
  table = report.markdown_table(
      ['init', 'finished / runs', 'diverged', 'signal RMS at init, first block', 'last block',
       'final train loss', 'train error %', 'test accuracy %'], rows)
  plot = f'\n![training under each init]({png.name})\n' if png else ''
  return f"""## The CIFAR-10 plain-20 trained under each initialisation

configs/init_training.py: He et al.'s plain-20 without BatchNorm (the convs get zero biases),
{config.num_steps} iterations of batch {config.batch_size}, SGD momentum {config.momentum}, lr
{config.learning_rate} constant, no weight decay, 4-px crop and flip; {max(seeds, 1)} seed(s) per
initialisation. "Signal RMS" is the RMS of the block outputs on one fixed training batch at
initialisation (cnn_jax/diagnostics.py); training error is measured on a fixed subset of
{config.data.train_eval_size:,} training images without augmentation; test accuracy on the test
split at the end. A run whose loss is not finite stops (the loop's own check) and counts as
diverged.

{table}
{plot}"""


def headline(data: dict, depth: int) -> str:
  he = ratio_stats(data[('relu', 'He (2/n)')]['act_var'])
  lecun = ratio_stats(data[('relu', 'LeCun (1/n)')]['act_var'])
  return (f"ReLU: He keeps Var within x{he['max_over_min']:.2f} over {depth} layers; "
          f"LeCun x{lecun['per_layer_ratio']:.2f} per layer")


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/init_variance) computed again from its results.json:
  the variance curves of the dense stack give its checks and the headline; the trained runs'
  checks come from their per-init summary (their curves are not committed)."""
  record = run_records.read_json(report_dir / 'results.json')
  data = {tuple(key.split('/', 1)): d for key, d in record['curves'].items()}
  rows, _ = checks(data, record['depth'])
  if record.get('training'):
    rows += training_checks(record['training'])
  return report_parts.Recomputed(report_parts.Checks.of(rows), headline(data, record['depth']))


def main(argv):
  common.check_argv(argv)
  clock = common.Clock()
  preset = FLAGS.preset
  p = PRESETS[preset]
  workdir = common.default_workdir('init_variance', preset)
  workdir.mkdir(parents=True, exist_ok=True)
  clock.bind(workdir, FLAGS.train and FLAGS.report_only)
  data = run_all(p['depth'], p['width'], p['batch'], p['seeds'])
  png = plot(data, p['depth'], p['width'], workdir / 'init_variance.png')
  rows, _ = checks(data, p['depth'])
  training_text, train_summary, train_data, run_dirs = '', None, '', []
  if FLAGS.train:
    seeds = FLAGS.seeds or 0
    spec = training_sweep(preset, seeds, FLAGS.set)
    members, _ = common.run_sweep(spec, workdir / 'plain20', FLAGS.parallel, FLAGS.report_only,
                                  title='plain-20 (no BN) under each initialisation')
    runs = read_training(members, workdir / 'plain20')
    run_dirs = [workdir / 'plain20' / m.name for m in members]
    train_data = f'; {_dataset(runs)} (the plain-20 runs)'
    train_summary = training_summary(runs)
    rows += training_checks(train_summary)
    training_png = plot_training(runs, workdir / 'training.png')
    training_text = training_section(train_summary, training_png, members[0].config, seeds)
  summary = []
  for (act, init), d in data.items():
    s = ratio_stats(d['act_var'])
    g = ratio_stats(np.square(d['grad_std']).tolist())
    summary.append([act, init, f"{d['act_var'][0]:.3g}", f"{d['act_var'][-1]:.3g}",
                    f"{s['per_layer_ratio']:.3f}" if s['finite'] else
                    f"{s['what']} at layer {s['first_non_finite_layer']}",
                    f"{d['grad_std'][0]:.3g}", f"{d['grad_std'][-1]:.3g}",
                    f"{g['max_over_min']:.3g}" if g['finite'] else g['what']])
  facts = {**clock.facts(), **run_records.runs_facts(run_dirs)}
  command = cli.command_line('experiments.init_variance')
  text = report_parts.header(
      title='Initialisation and signal variance through depth', claims='claim C12',
      command=command,
      data=(f"synthetic: {p['batch']} input vectors with N(0, 1) entries (the dense stack)"
            + train_data + '.'),
      protocol=(f"{p['depth']} bias-free dense layers of width {p['width']} (square, so Xavier's "
                '2/(n_in + n_out) equals LeCun\'s 1/n here), activation after every layer but the '
                'last; loss = mean over the batch of <g, z_last> with fixed g ~ N(0, 1). Variance of '
                'the activations of layers 1..depth-1 and std of dL/dW per layer, averaged over '
                f"{p['seeds']} seeds (weights, inputs, g). float32."),
      train_wall_s=None, facts=facts, generator='experiments/init_variance.py')
  text += f"""
{report_parts.checks_section(rows)}
## Per initialisation and activation

"ratio" is the geometric mean of Var(layer l+1) / Var(layer l) over depth (1 = preserved);
"grad max/min" is the spread of the weight-gradient variance over the layers.

{report.markdown_table(['activation', 'init', 'Var(h), layer 1', 'Var(h), last', 'ratio per layer',
                        'std dL/dW, layer 1', 'std dL/dW, last', 'grad max/min'], summary)}

![variance through depth]({png.name})

{training_text or 'The CIFAR-10 half (plain-20 trained under each init) was skipped (--train=False).'}

{report_parts.footer()}"""
  common.finish(workdir, text, {
      'experiment': 'init_variance', 'claims': 'C12', 'preset': preset, 'command': command,
      **p, **facts, 'headline': headline(data, p['depth']),
      'curves': {f'{act}/{init}': d for (act, init), d in data.items()},
      'training': train_summary},
      OUTPUTS, rows, FLAGS.report_dir)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  common.define_flags('init_variance', '20 layers of width 256; plain-20 8 steps on 256 images.',
                      seeds_of='initialisation')
  flags.DEFINE_bool('train', True, 'Also train the CIFAR-10 plain-20 under each initialisation.')
  app.run(main)
