"""8. The CPU kernels (cnn_jax/kernels: oneDNN convolutions, BatchNorm+ReLU) against XLA's ops, per
layer (ResNet-20's shapes, alternating in one child process), and with glibc's huge pages or
jemalloc in the training steps (fresh processes, rounds alternating), with page faults and
system time."""
from __future__ import annotations

import os
import statistics

from benchmarks import harness, train_step
from benchmarks.levers import common

# (H, Cin, Cout, stride) of ResNet-20's convolutions, with how often each occurs in one step.
KERNEL_LAYERS = ((32, 3, 16, 1, 1), (32, 16, 16, 1, 6), (32, 16, 32, 2, 1), (16, 32, 32, 1, 5),
                 (16, 32, 64, 2, 1), (8, 64, 64, 1, 5))
KERNEL_STEP_MODELS = ('lenet5', 'resnet20', 'resnet56')
# (label, kernels, allocator: runtime.MALLOC_CHOICES) of the training steps.
KERNEL_STEP_VARIANTS = (('XLA ops, glibc', '0', 'system'),
                        ('XLA ops, glibc on huge pages', '0', 'glibc'),
                        ('CPU kernels, glibc', '1', 'system'),
                        ('CPU kernels, glibc on huge pages', '1', 'glibc'),
                        ('CPU kernels, jemalloc (project default)', '1', 'jemalloc'))
NAMES = ('forward', 'input gradient', 'kernel gradient', 'BN+ReLU forward', 'BN+ReLU fwd+bwd')


def _layer_calls(h, cin, cout, s) -> tuple[dict, dict]:
  """The functions of NAMES for one layer, and their arguments."""
  import jax  # pylint: disable=g-import-not-at-top  (after runtime.start())
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax.kernels import ops  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), (128, h, h, cin))
  k = 0.1 * jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
  conv = lambda x, k: ops.conv2d(x, k, (s, s), ((1, 1), (1, 1)))
  y = conv(x, k)
  g = jnp.ones_like(y)
  scale, bias = jnp.ones(cout), jnp.zeros(cout)
  bn = lambda y, a, b: ops.batch_norm_train(y, a, b, 1e-5, True)[0]
  fns = {'forward': conv,
         'input gradient': lambda k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0],
         'kernel gradient': lambda x, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0],
         'BN+ReLU forward': bn,
         'BN+ReLU fwd+bwd': lambda y, g: jax.vjp(lambda y, a, b: bn(y, a, b), y, scale,
                                                  bias)[1](g)}
  args = {'forward': (x, k), 'input gradient': (k, g), 'kernel gradient': (x, g),
          'BN+ReLU forward': (y, scale, bias), 'BN+ReLU fwd+bwd': (y, g)}
  return fns, args


def _timed(fns: dict, args: dict, impl: str) -> dict:
  """Median ms of each function with XLA's ops (`impl` 'xla') or the CPU kernels."""
  os.environ['CNN_JAX_CPU_KERNELS'] = '0' if impl == 'xla' else '1'
  return {name: common.ms_per_call(f, *args[name], n=5, median=True) for name, f in fns.items()}


def child(rounds: int = 3) -> dict:
  """In the child: milliseconds of each ResNet-20 layer (batch 128) and of its BatchNorm+ReLU,
  with the CPU kernels and with XLA's ops, alternating (the switch is read at trace time)."""
  rows = []
  for h, cin, cout, s, count in KERNEL_LAYERS:
    fns, args = _layer_calls(h, cin, cout, s)
    runs = harness.alternating(['xla', 'kernels'], rounds,
                               lambda impl, fns=fns, args=args: _timed(fns, args, impl))
    med = {impl: {name: statistics.median(r[name] for r in rs) for name in fns}
           for impl, rs in runs.items()}
    rows.append({'layer': f'{h}x{h}x{cin} -> {cout}, stride {s}', 'count': count, **med})
  return {'layers': rows}


def kernel_steps(steps: int, rounds: int = 3) -> dict:
  """Per model and variant of KERNEL_STEP_VARIANTS: every round's lone child result (the
  jemalloc variant only where libjemalloc.so.2 is installed)."""
  from cnn_jax import runtime  # pylint: disable=g-import-not-at-top
  variants = [v for v in KERNEL_STEP_VARIANTS if v[2] != 'jemalloc' or runtime.find_jemalloc()]
  return {model: harness.fresh_rounds(
      {label: train_step.lone(model, steps, env={'CNN_JAX_CPU_KERNELS': kernels}, malloc=malloc)
       for label, kernels, malloc in variants}, rounds) for model in KERNEL_STEP_MODELS}


def measure(args) -> dict:
  return {'rounds': args.rounds,
          'layers': harness.call(harness.Child.of(child, rounds=args.rounds)),
          'steps': kernel_steps(args.steps, args.rounds)}


def _layer_rows(layers: dict) -> list[list[str]]:
  rows, totals = [], {'xla': dict.fromkeys(NAMES, 0.0), 'kernels': dict.fromkeys(NAMES, 0.0)}
  for row in layers['layers']:
    rows.append([f"{row['layer']} (x{row['count']})"]
                + [f"{row['xla'][n]:.2f} / {row['kernels'][n]:.2f}" for n in NAMES])
    for impl in totals:
      for n in NAMES:
        totals[impl][n] += row['count'] * row[impl][n]
  rows.append(['**one ResNet-20 step** (x count)']
              + [f"**{totals['xla'][n]:.0f} / {totals['kernels'][n]:.0f}**" for n in NAMES])
  return rows


def _step_rows(steps: dict) -> list[list[str]]:
  rows = []
  for model, variants in steps.items():
    base = None
    for label, runs in variants.items():
      med = lambda key, runs=runs: statistics.median(r[key] for r in runs)
      ips = med('images_per_s')
      base = base or ips
      rows.append([model, label, ' / '.join(f"{r['images_per_s']:,.0f}" for r in runs),
                   f'{ips:,.0f}', f'{ips / base:.2f}x', f"{med('page_faults_per_step'):,.0f}",
                   f"{1e3 * med('user_s_per_step'):,.0f} / {1e3 * med('sys_s_per_step'):,.0f}"])
  return rows


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  rounds = results['rounds']
  return f"""## 8. CPU kernels (oneDNN convolutions, BatchNorm+ReLU) and the host allocator

Per layer (batch 128, ResNet-20's shapes), milliseconds, XLA's op / the CPU kernel, medians of
{rounds} alternating rounds in one process:

{report.markdown_table(['layer'] + list(NAMES), _layer_rows(results['layers']))}

Training steps, images/s (batch 64 for LeNet-5, 128 otherwise), each variant a fresh process,
{rounds} rounds alternating; page faults and CPU time per step are the median run's:

{report.markdown_table(['model', 'variant', 'images/s, each round', 'median', 'vs first row',
                        'page faults / step', 'user / system CPU ms / step'],
                       _step_rows(results['steps']))}

Kept, both on by default: the kernels on CPUs (cnn_jax/kernels; `CNN_JAX_CPU_KERNELS=0` turns
them off) and the allocator in the project's programs (cnn_jax/runtime.py; `CNN_JAX_MALLOC`):
jemalloc where it is installed, else glibc on huge pages. XLA's CPU runtime allocates every
step's buffers afresh and glibc hands large blocks back to the kernel when they are freed, so
each step maps and zeroes them again: the page-fault and system-time columns. Huge pages make
the faults ~100x fewer but each still zeroes 2 MiB; jemalloc with page decay off keeps the freed
pages for the next step (at a higher resident peak).
"""
