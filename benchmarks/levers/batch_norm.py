"""3. BatchNorm: flax.linen.BatchNorm against cnn_jax.models.layers.BatchNorm (one-pass
statistics, fused scale and shift, hand-written backward) in the model's training step,
alternating in one child process."""
from __future__ import annotations

from benchmarks import harness, train_step
from benchmarks.levers import common


def _flax_batch_norm(train, dtype, epsilon=1e-5):
  import functools  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top  (after runtime.start())
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=epsilon, dtype=dtype)


def child(model: str, steps: int, rounds: int = 2) -> dict[str, list[float]]:
  """In the child: images/s of the model's step with each BatchNorm, alternating `rounds`
  times."""
  from cnn_jax.models import cifar_resnet, layers  # pylint: disable=g-import-not-at-top
  variants = {'flax.linen.BatchNorm': _flax_batch_norm,
              'cnn_jax BatchNorm (one pass, fused, custom backward)': layers.batch_norm}
  return common.patched_rounds(
      cifar_resnet, 'batch_norm', variants, rounds,
      lambda: train_step.jax_child(model, steps, 128)['images_per_s'])


def measure(args) -> dict:
  runs = harness.call(harness.Child.of(child, model=args.model, steps=args.steps))
  return {'model': args.model, 'runs': runs}


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  bn = results['runs']
  base = sum(next(iter(bn.values()))) / len(next(iter(bn.values())))
  rows = [[label, ' / '.join(f'{v:,.0f}' for v in runs), f'{sum(runs) / len(runs):,.0f}',
           f'{sum(runs) / len(runs) / base:.2f}x'] for label, runs in bn.items()]
  return f"""## 3. BatchNorm: {results['model']} training step (batch 128), images/s

{report.markdown_table(['BatchNorm', 'images/s, alternating runs', 'mean', 'vs flax'], rows)}

Kept: cnn_jax.models.layers.BatchNorm in every model (same variables and results as
flax.linen.BatchNorm; tests/test_layers.py checks values, gradients and statistics). At
evaluation it applies the running statistics as one folded multiply-add per element.
"""
