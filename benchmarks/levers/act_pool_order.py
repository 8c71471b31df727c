"""10. The order of LeNet-5's activation and max pooling (the same function either way),
alternating in one child process."""
from __future__ import annotations

import statistics

from benchmarks import harness, train_step
from benchmarks.levers import common


def child(steps: int, rounds: int = 3) -> dict[str, list[float]]:
  """In the child: LeNet-5's step images/s with max pooling after the ReLU (as written) and
  before it (the model's default: same function), alternating `rounds` times."""
  from cnn_jax.models import lenet  # pylint: disable=g-import-not-at-top  (after runtime.start())
  variants = {'conv, ReLU, max pool (as written)': (),
              'conv, max pool, ReLU (project default)': lenet.NONDECREASING}
  return common.patched_rounds(lenet, 'NONDECREASING', variants, rounds,
                               lambda: train_step.jax_child('lenet5', steps, 64)['images_per_s'])


def measure(args) -> dict:
  return harness.call(harness.Child.of(child, steps=args.steps, rounds=args.rounds))


def render(runs: dict[str, list[float]]) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  first = next(iter(runs.values()))
  rows = [[label, ' / '.join(f'{v:,.0f}' for v in ips), f'{statistics.median(ips):,.0f}',
           f'{harness.paired_ratio(ips, first):.2f}x']
          for label, ips in runs.items()]
  return f"""## 10. Activation and max pooling order: LeNet-5 training step (batch 64), images/s

Max pooling commutes with a non-decreasing activation (values and gradients: tests/test_models_classic.py),
so `cnn_jax.models.lenet.LeNet5` pools first and runs the ReLU and its gradient on a quarter of
the elements. Alternating in one process, {len(first)} rounds; the last column is the median of
the rounds' ratios to the first row:

{report.markdown_table(['order', 'images/s, each round', 'median', 'vs first row'], rows)}

Kept where it pays, in LeNet-5 (its C1 map, 28x28x6, is wide and shallow: the ReLU and the pooling
gradient after it took ~1.1 of a 6 ms step, benchmarks.profile_step). In the other zoo models the activation before a pool is fused
into BatchNorm's kernel or also feeds a skip connection (U-Net), so there is nothing to move.
"""
