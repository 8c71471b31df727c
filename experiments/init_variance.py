"""Claim C12: how the initial weight variance carries the signal through a deep stack.

    python -m experiments.init_variance [--preset=toy] [--workdir=DIR] [--report_dir=reports/init_variance]

A deep stack of bias-free dense layers (full: 50 layers of width 512) is fed a batch of N(0, 1)
inputs; for each initialisation — N(0, 1), a small fixed scale (std 0.01), LeCun (Var = 1/n_in),
Xavier (2/(n_in + n_out)) and He (2/n_in) — and each activation (tanh, ReLU) the experiment
measures, per layer, the standard deviation of the activations (forward) and of the weight
gradients of a random linear read-out of the last layer (backward), averaged over seeds. Writes
report.md, init_variance.png and results.json with the claim checks. No training is involved.
"""
from __future__ import annotations

import math
import pathlib

from absl import app
import numpy as np

from cnn_jax import cli, report
from experiments import lecture_common as common

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
OUTPUTS = ('report.md', 'init_variance.png', 'results.json')


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
      common.check_row('C12', 'He init, ReLU: activation variance across depth',
                       'Var(w) = 2/n keeps it', 'max / min over layers <= 2',
                       f"{he['max_over_min']:.3f}", he['max_over_min'] <= 2),
      common.check_row('C12', 'LeCun init, ReLU: activation variance from layer to layer',
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
    rows.append(common.check_row(
        'C12', f'std {SMALL_STD}, {act}: activation variance at layer {len(v)} vs layer 1',
        'too small vanishes', 'ratio < 1e-6 (or underflow to 0)',
        f"{v[-1] / v[0]:.2e}" if v[0] else 'layer 1 is 0', vanished))
  normal = ratio_stats(data[('relu', 'N(0,1)')]['act_var'])
  rows.append(common.check_row(
      'C12', 'N(0,1), ReLU: activation variance', 'too large explodes',
      'grows > 1e6 over depth (or overflows float32)',
      (f"overflow at layer {normal['first_non_finite_layer']}" if not normal['finite'] else
       f"x{normal['last_over_first']:.2e}"),
      (not normal['finite']) or normal['last_over_first'] > 1e6))
  return rows, common.all_hold(rows)


def main(argv):
  common.check_argv(argv)
  clock = common.Clock()
  preset = FLAGS.preset
  p = PRESETS[preset]
  workdir = common.default_workdir('init_variance', preset)
  workdir.mkdir(parents=True, exist_ok=True)
  data = run_all(p['depth'], p['width'], p['batch'], p['seeds'])
  png = plot(data, p['depth'], p['width'], workdir / 'init_variance.png')
  rows, _ = checks(data, p['depth'])
  summary = []
  for (act, init), d in data.items():
    s = ratio_stats(d['act_var'])
    g = ratio_stats(np.square(d['grad_std']).tolist())
    summary.append([act, init, f"{d['act_var'][0]:.3g}", f"{d['act_var'][-1]:.3g}",
                    f"{s['per_layer_ratio']:.3f}" if s['finite'] else
                    f"{s['what']} at layer {s['first_non_finite_layer']}",
                    f"{d['grad_std'][0]:.3g}", f"{d['grad_std'][-1]:.3g}",
                    f"{g['max_over_min']:.3g}" if g['finite'] else g['what']])
  facts = clock.facts()
  command = cli.command_line('experiments.init_variance')
  text = common.header(
      title='Initialisation and signal variance through depth', claims='claim C12',
      command=command,
      data=f"synthetic: {p['batch']} input vectors with N(0, 1) entries (no dataset needed).",
      protocol=(f"{p['depth']} bias-free dense layers of width {p['width']} (square, so Xavier's "
                '2/(n_in + n_out) equals LeCun\'s 1/n here), activation after every layer but the '
                'last; loss = mean over the batch of <g, z_last> with fixed g ~ N(0, 1). Variance of '
                'the activations of layers 1..depth-1 and std of dL/dW per layer, averaged over '
                f"{p['seeds']} seeds (weights, inputs, g). float32."),
      train_wall_s=None, facts=facts, generator='experiments/init_variance.py')
  text += f"""
{common.checks_section(rows)}
## Per initialisation and activation

"ratio" is the geometric mean of Var(layer l+1) / Var(layer l) over depth (1 = preserved);
"grad max/min" is the spread of the weight-gradient variance over the layers.

{report.markdown_table(['activation', 'init', 'Var(h), layer 1', 'Var(h), last', 'ratio per layer',
                        'std dL/dW, layer 1', 'std dL/dW, last', 'grad max/min'], summary)}

![variance through depth]({png.name})

Not done here (left for later): the second half of C12 — training the CIFAR plain-20 under each
initialisation and comparing how fast (and whether) each trains.

{common.footer()}"""
  he = ratio_stats(data[('relu', 'He (2/n)')]['act_var'])
  lecun = ratio_stats(data[('relu', 'LeCun (1/n)')]['act_var'])
  common.finish(workdir, text, {
      'experiment': 'init_variance', 'claims': 'C12', 'preset': preset, 'command': command,
      **p, **facts,
      'headline': (f"ReLU: He keeps Var within x{he['max_over_min']:.2f} over {p['depth']} layers; "
                   f"LeCun x{lecun['per_layer_ratio']:.2f} per layer"),
      'curves': {f'{act}/{init}': d for (act, init), d in data.items()}},
      OUTPUTS, rows, FLAGS.report_dir)


if __name__ == '__main__':
  common.define_flags('init_variance', '20 layers of width 256.', sweep_flags=False)
  app.run(main)
