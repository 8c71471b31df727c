"""What each CPU performance lever does, measured in one run on one machine.

    python -m benchmarks.levers [--model=resnet20] [--steps=8] [--out=benchmarks/results/levers.md]

1. XLA CPU options: the loop's ResNet-20 training step (batch 128) under each XLA_FLAGS
   variant, each in a fresh process (benchmarks.train_step's child).
2. Convolution kernel-gradient formulations, one layer at a time (batch 128, 3x3, the shapes of
   ResNet-20): XLA's own (batch-contracted convolution with transposes), nine dots over shifted
   views, and one im2col dot; each checked against XLA's value.
The project keeps a lever only where it pays (cnn_jax/xla_setup.py says which are on).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

XLA_VARIANTS = {
    'XLA defaults': {'CNN_JAX_XLA_DEFAULTS': '0'},
    'YNN dot,eltwise,reduce (project default)': {},
    'YNN dot,eltwise,reduce,individual_convolution': {
        'CNN_JAX_XLA_DEFAULTS': '0',
        'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce,individual_convolution'},
    'XNN dot,eltwise,reduce,individual_convolution': {
        'CNN_JAX_XLA_DEFAULTS': '0',
        'XLA_FLAGS': '--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce,individual_convolution'},
    'oneDNN dot,individual_convolution': {
        'CNN_JAX_XLA_DEFAULTS': '0',
        'XLA_FLAGS': '--xla_cpu_experimental_onednn_fusion_type=dot,individual_convolution'},
}
LAYERS = ((32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (8, 64, 64, 1))  # (H, Cin, Cout, s)


def step_variants(model: str, steps: int) -> list[list[str]]:
  rows = []
  for label, env_extra in XLA_VARIANTS.items():
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env.update(env_extra)
    out = subprocess.run([sys.executable, '-m', 'benchmarks.train_step', f'--child=jax:{model}',
                          f'--steps={steps}', '--batch=128'], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
      rows.append([label, 'failed', '', out.stderr.strip().splitlines()[-1][:80]])
      continue
    r = json.loads(out.stdout.strip().splitlines()[-1])
    rows.append([label, f"{r['images_per_s']:,.0f}", f"{r['compile_s']:.1f}", ''])
  base = float(rows[0][1].replace(',', '')) if rows[0][1] != 'failed' else None
  for row in rows:
    row[3] = row[3] or (f"{float(row[1].replace(',', '')) / base:.2f}x" if base and row[1] != 'failed'
                        else '')
  return rows


def layer_formulations() -> list[list[str]]:
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  def bench(f, *args, n=10):
    out = f(*args)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(n):
      out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n * 1e3

  def views(x, s, ho, wo):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + s * (ho - 1) + 1, j + s * (wo - 1) + 1,
                                         xp.shape[3]), (1, s, s, 1))
            for i in range(3) for j in range(3)]

  def dots(x, g, s):
    _, ho, wo, d = g.shape
    g2 = g.reshape(-1, d)
    return jnp.stack([lax.dot_general(v.reshape(-1, v.shape[-1]), g2, (((0,), (0,)), ((), ())))
                      for v in views(x, s, ho, wo)]).reshape(3, 3, x.shape[-1], d)

  def im2col(x, g, s):
    _, ho, wo, d = g.shape
    p = jnp.concatenate(views(x, s, ho, wo), axis=-1)
    return lax.dot_general(p.reshape(-1, p.shape[-1]), g.reshape(-1, d),
                           (((0,), (0,)), ((), ()))).reshape(3, 3, x.shape[-1], d)

  rows = []
  key = jax.random.key(0)
  for hw, ci, co, s in LAYERS:
    x = jax.random.normal(key, (128, hw, hw, ci))
    w = jax.random.normal(key, (3, 3, ci, co)) * 0.1
    conv = lambda x, w, s=s: lax.conv_general_dilated(x, w, (s, s), ((1, 1), (1, 1)),
                                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    g = jax.random.normal(key, conv(x, w).shape)
    fwd = jax.jit(conv)
    gx = jax.jit(lambda w, g, x=x, conv=conv: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0])
    gw = jax.jit(lambda x, g, w=w, conv=conv: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0])
    ref = gw(x, g)
    err = lambda a, ref=ref: float(jnp.max(jnp.abs(a - ref)) / jnp.max(jnp.abs(ref)))
    f_dots = jax.jit(lambda x, g, s=s: dots(x, g, s))
    f_i2c = jax.jit(lambda x, g, s=s: im2col(x, g, s))
    rows.append([f'{hw}x{hw}x{ci} -> {co}, stride {s}', f'{bench(fwd, x, w):.1f}',
                 f'{bench(gx, w, g):.1f}', f'{bench(gw, x, g):.1f}',
                 f'{bench(f_dots, x, g):.1f} ({err(f_dots(x, g)):.0e})',
                 f'{bench(f_i2c, x, g):.1f} ({err(f_i2c(x, g)):.0e})'])
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--out', default=None)
  parser.add_argument('--layers_child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.layers_child:
    print(json.dumps(layer_formulations()))
    return
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  steps = step_variants(args.model, args.steps)
  layers = {}
  for label, env_extra in (('project defaults (YNN)', {}),
                           ('XLA defaults', {'CNN_JAX_XLA_DEFAULTS': '0'})):
    env = dict({k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}, **env_extra)
    out = subprocess.run([sys.executable, '-m', 'benchmarks.levers', '--layers_child'], env=env,
                         capture_output=True, text=True, check=True)
    layers[label] = json.loads(out.stdout.strip().splitlines()[-1])
  env = report.environment()
  layer_tables = '\n\n'.join(
      f'**{label}**\n\n' + report.markdown_table(
          ['layer', 'forward', 'input gradient', 'kernel gradient (XLA)',
           'kernel gradient: 9 dots (rel. err.)', 'kernel gradient: im2col dot (rel. err.)'], rows)
      for label, rows in layers.items())
  text = f"""# CPU performance levers, measured

Generated by `python -m benchmarks.levers --model={args.model} --steps={args.steps}` on
{env['host_cpu']}, jax {env['jax']}, {env['date']} (commit {env['git_commit']}), with no other job running.

## 1. XLA CPU options: {args.model} training step (batch 128), images/s

{report.markdown_table(['XLA_FLAGS', 'images/s', 'compile s', 'vs XLA defaults'], steps)}

Kept: the project default (cnn_jax/xla_setup.py), set before jax is imported and overridable
(`XLA_FLAGS`, or `CNN_JAX_XLA_DEFAULTS=0` to turn it off).

## 2. Convolution formulations, one layer, batch 128, milliseconds

{layer_tables}

Reading: under the YNN fusions XLA's own kernel gradient is the fastest formulation measured, so
no custom VJP is kept; without them the shifted-view dots beat XLA's kernel gradient on the
largest layer, but YNN's gain on the whole step is larger.
"""
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == '__main__':
  main()
