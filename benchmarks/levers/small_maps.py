"""7. Convolutions of maps smaller than the kernel (VGG's last stage on 32x32 inputs) or with a 1x1
output (LeNet-5's C5): XLA's convolution against cnn_jax.kernels.conv's im2col or dense product,
per layer and in VGG's and LeNet-5's steps, alternating in one child process."""
from __future__ import annotations

from benchmarks import harness
from benchmarks.levers import common

# (input NHWC, kernel HWIO, padding): VGG's stage-5 maps (3x3, pad 1) and LeNet-5's C5 (1x1 out)
SMALL_MAP_LAYERS = (((64, 2, 2, 512), (3, 3, 512, 512), 1), ((64, 1, 1, 512), (3, 3, 512, 512), 1),
                    ((64, 2, 2, 256), (3, 3, 256, 256), 1), ((64, 4, 4, 512), (3, 3, 512, 512), 1),
                    ((64, 5, 5, 16), (5, 5, 16, 120), 0))
SMALL_MAP_MODELS = (('vgg11_bn_cifar', 64), ('vgg16_bn_cifar', 64), ('lenet5', 64))
STEP_VARIANTS = ('lax.conv_general_dilated', 'cnn_jax conv (im2col, dense at 1x1 output)')


def _layer_row(x_shape, k_shape, p) -> list:
  """One layer's path, forward and forward + both gradients ms (XLA's, then cnn_jax's) and
  the relative error of cnn_jax's value."""
  import jax  # pylint: disable=g-import-not-at-top  (after runtime.start())
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from cnn_jax.kernels import conv  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(0), x_shape)
  k = 0.01 * jax.random.normal(jax.random.key(1), k_shape)
  dn = lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))
  pads = ((p, p), (p, p))
  ref = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=dn)
  ours = lambda x, k: conv.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=dn)
  w = jax.random.normal(jax.random.key(2), ref(x, k).shape)
  row = ['x'.join(map(str, x_shape)) + ', ' + 'x'.join(map(str, k_shape)) + f', pad {p}',
         conv.uses_patches(x.shape, k.shape, (1, 1), dimension_numbers=dn, padding=pads)]
  for f in (ref, ours):
    grads = jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * w), argnums=(0, 1))
    row += [common.ms_per_call(f, x, k, n=5), common.ms_per_call(grads, x, k, n=5)]
  err = float(jnp.max(jnp.abs(ours(x, k) - ref(x, k))) / jnp.max(jnp.abs(ref(x, k))))
  return row + [err]


def child(steps: int, rounds: int = 2) -> dict:
  """In the child: per-layer milliseconds and the step images/s of SMALL_MAP_MODELS with and
  without im2col (cnn_jax.kernels.conv.uses_patches switched between rounds)."""
  from cnn_jax.kernels import conv  # pylint: disable=g-import-not-at-top
  layers = [_layer_row(*layer) for layer in SMALL_MAP_LAYERS]
  variants = dict(zip(STEP_VARIANTS, (lambda *a, **k: False, conv.uses_patches)))
  return {'layers': layers, 'steps': common.patched_steps(conv, 'uses_patches', variants,
                                                         rounds, SMALL_MAP_MODELS, steps)}


def measure(args) -> dict:
  return harness.call(harness.Child.of(child, steps=args.steps))


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  layer_rows = [[name, 'im2col' if patches else 'XLA'] + [f'{v:.1f}' for v in times[:4]]
                + [f'{times[1] / times[3]:.1f}x', f'{times[4]:.0e}']
                for name, patches, *times in results['layers']]
  step_rows = common.before_after_rows(results['steps'])
  return f"""## 7. Convolutions of maps smaller than the kernel, or with a 1x1 output

Per layer (batch 64), milliseconds; "path" is what cnn_jax.kernels.conv chooses (im2col where a
map is smaller than the kernel, one dense matrix product where the output is 1x1):

{report.markdown_table(['layer', 'path', 'XLA forward', 'XLA fwd + both grads',
                        'cnn_jax forward', 'cnn_jax fwd + both grads', 'speed-up', 'rel. err.'],
                       layer_rows)}

Training step (batch 64; VGGs on the CIFAR-10 pipeline, LeNet-5 on MNIST), images/s,
alternating runs:

{report.markdown_table(['model', 'lax.conv_general_dilated', 'cnn_jax conv', 'speed-up'],
                       step_rows)}

Kept: `cnn_jax.kernels.conv.conv_general_dilated` (the CPU layer set's convolution) in the VGGs, the
only zoo models with maps smaller than their kernels (2x2 in stage 5 on 32x32 inputs), and in
LeNet-5, whose C5 has a 1x1 output; the parameters and the layer's values are unchanged
(tests/test_kernels_conv.py).
"""
