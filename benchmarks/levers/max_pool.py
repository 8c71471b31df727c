"""6. Max pooling: `flax.linen.max_pool` (reduce_window; XLA's select_and_scatter backward) against
cnn_jax.kernels.pooling.max_pool (same forward, a backward of phase masks), per layer and in the
training steps of the CIFAR zoo's pooled models, alternating in one child process."""
from __future__ import annotations

import dataclasses

from benchmarks import harness
from benchmarks.levers import common

POOL_LAYERS = (  # (N, H, W, C), window, stride, padding: where the zoo pools
    ((64, 32, 32, 64), 2, 2, 'VALID'),  # VGG stage 1, U-Net
    ((64, 8, 8, 512), 2, 2, 'VALID'),  # VGG stage 4
    ((64, 31, 31, 64), 3, 2, 'VALID'),  # alexnet_cifar pool 1 (overlapping)
    ((64, 32, 32, 256), 3, 2, 'SAME'),  # googlenet_cifar after inception 3b
    ((64, 16, 16, 480), 3, 1, 'SAME'),  # googlenet_cifar inception 4a, branch 4
)
POOL_MODELS = (('vgg11_bn_cifar', 64), ('alexnet_cifar', 64))


def _variants() -> dict:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top  (after runtime.start())
  from cnn_jax.kernels import pooling  # pylint: disable=g-import-not-at-top
  return {'flax.linen.max_pool': nn.max_pool, 'cnn_jax pooling.max_pool': pooling.max_pool}


def _layer_rows() -> list[list]:
  """Per layer of POOL_LAYERS: forward and forward+backward ms of each variant."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rows = []
  for shape, k, s, pad in POOL_LAYERS:
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), nn.max_pool(x, (k, k), (s, s), pad).shape)
    row = [f'{shape} {k}x{k}/{s} {pad}']
    for pool in _variants().values():
      f = lambda x, pool=pool: pool(x, (k, k), (s, s), pad)
      row += [common.ms_per_call(f, x),
              common.ms_per_call(jax.grad(lambda x, f=f: jnp.sum(f(x) * w)), x)]
    rows.append(row)
  return rows


def child(steps: int, rounds: int = 2) -> dict:
  """In the child: per-layer milliseconds, and the pooled models' step images/s with each
  max_pool (the CPU layer set's, switched between rounds)."""
  from cnn_jax.kernels import layer_set  # pylint: disable=g-import-not-at-top
  layers = _layer_rows()
  for_config = layer_set.for_config
  variants = {label: (lambda c, pool=pool: dataclasses.replace(for_config(c), max_pool=pool))
              for label, pool in _variants().items()}
  return {'layers': layers, 'steps': common.patched_steps(layer_set, 'for_config', variants,
                                                         rounds, POOL_MODELS, steps)}


def measure(args) -> dict:
  return harness.call(harness.Child.of(child, steps=args.steps))


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  layer_rows = [[name] + [f'{v:.1f}' for v in times] + [f'{times[1] / times[3]:.1f}x']
                for name, *times in results['layers']]
  step_rows = common.before_after_rows(results['steps'])
  return f"""## 6. Max pooling: select_and_scatter against phase masks

Per layer (batch 64, the zoo's pooling shapes), milliseconds:

{report.markdown_table(['input, window/stride, padding', 'flax forward', 'flax fwd+bwd',
                        'cnn_jax forward', 'cnn_jax fwd+bwd', 'fwd+bwd speed-up'], layer_rows)}

Training step (batch 64, CIFAR-10 pipeline), images/s, alternating runs:

{report.markdown_table(['model', 'flax.linen.max_pool', 'cnn_jax pooling.max_pool', 'speed-up'],
                       step_rows)}

Kept: cnn_jax.kernels.pooling.max_pool in every model. It has nn.max_pool's forward and exactly
its gradient (the first maximum of each window, ties included; tests/test_pooling.py), so
training is unchanged; only the backward is formulated differently.
"""
