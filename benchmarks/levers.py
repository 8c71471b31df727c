"""What each CPU performance lever does, measured in one run on one machine.

    python -m benchmarks.levers [--model=resnet20] [--steps=8] [--out=benchmarks/results/levers.md]
    python -m benchmarks.levers --sections=6,7 --out=benchmarks/results/levers.md --append

1. XLA CPU options: the loop's ResNet-20 training step (batch 128) under each XLA_FLAGS
   variant, each in a fresh process (benchmarks.train_step's child).
2. Convolution kernel-gradient formulations, one layer at a time (batch 128, 3x3, the shapes of
   ResNet-20): XLA's own (batch-contracted convolution with transposes), nine dots over shifted
   views, and one im2col dot; each checked against XLA's value.
3. BatchNorm: flax.linen.BatchNorm against cnn_jax.models.layers.BatchNorm (one-pass statistics,
   fused scale and shift, hand-written backward) in the model's training step, alternating in
   one process.
4. The loop: the bare step, the same step inside `train.train_loop`, and `lax.scan` over chunks
   of steps (one dispatch per chunk).
5. bfloat16 compute (float32 parameters): whether this host has native bfloat16
   (cnn_jax.precision) and what `config.dtype='bfloat16'` does to the step.
6. Max pooling: `flax.linen.max_pool` (reduce_window; XLA's select_and_scatter backward) against
   cnn_jax.kernels.pooling.max_pool (same forward, a backward of phase masks), per layer and in
   the training steps of the CIFAR zoo's pooled models, alternating in one process.
7. Convolutions of maps smaller than the kernel (VGG's last stage on 32x32 inputs) or with a 1x1
   output (LeNet-5's C5): XLA's convolution against cnn_jax.kernels.conv's im2col or dense
   product, per layer and in VGG's and LeNet-5's steps.
8. The CPU kernels (cnn_jax/kernels: oneDNN convolutions, BatchNorm+ReLU) against XLA's ops, per
   layer (ResNet-20's shapes, alternating in one process), and with glibc's huge pages in the
   training steps (fresh processes, rounds alternating), with page faults and system time.
9. YNN fusion types with the CPU kernels on: which ops XLA hands to YNNPACK now that the
   convolutions and BatchNorm run in cnn_jax's kernels, per model (fresh processes, rounds
   alternating).
10. The order of LeNet-5's activation and max pooling (the same function either way), alternating
   in one process.
11. The convolutions' kernel gradient: oneDNN's or cnn_jax/kernels/conv_kernel_gradient.h's, in
   the ResNets' training steps (processes side by side, taking turns).
The project keeps a lever only where it pays (cnn_jax/runtime.py says which are on).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

XLA_VARIANTS = {
    'XLA defaults': {'CNN_JAX_XLA_DEFAULTS': '0'},
    'YNN dot,reduce (project default since 2026-12-06)': {},
    'YNN dot,eltwise,reduce': {
        'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce'},
    'YNN dot,eltwise,reduce,individual_convolution': {
        'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce,individual_convolution'},
    'XNN dot,eltwise,reduce,individual_convolution': {
        'XLA_FLAGS': '--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce,individual_convolution'},
    'oneDNN dot,individual_convolution': {
        'XLA_FLAGS': '--xla_cpu_experimental_onednn_fusion_type=dot,individual_convolution'},
}
# The project default plus one more option of this jaxlib's XLA CPU flags (2026-12-03 on an AVX2
# EPYC, 8 steps, with the default of then, dot,eltwise,reduce: each within 3% of it or slower;
# not kept).
_YNN = '--xla_cpu_experimental_ynn_fusion_type=dot,reduce'
XLA_VARIANTS.update({
    f'YNN + {extra[2:]}': {'XLA_FLAGS': f'{_YNN} {extra}'}
    for extra in ('--xla_cpu_experimental_onednn_fusion_type=individual_convolution',
                  '--xla_cpu_experimental_xnn_fusion_type=individual_convolution',
                  '--xla_cpu_enable_concurrency_optimized_scheduler=true',
                  '--xla_cpu_multi_thread_eigen=false',
                  '--xla_cpu_enable_fast_math=true',
                  '--xla_cpu_use_fusion_emitters=false',
                  '--xla_cpu_experimental_enable_tiling_propagation=true')})
SCAN_TIMEOUT_S = 300  # a scanned ResNet-20 chunk took over 15 minutes for 32 steps (2026-11-23)
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


def batch_norm_child(model: str, steps: int, rounds: int = 2) -> dict[str, list[float]]:
  """images/s of the model's step with each BatchNorm, alternating `rounds` times."""
  import functools  # pylint: disable=g-import-not-at-top
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  from cnn_jax.models import cifar_resnet, layers  # pylint: disable=g-import-not-at-top

  def flax_batch_norm(train, dtype, epsilon=1e-5):
    return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=epsilon, dtype=dtype)
  variants = {'flax.linen.BatchNorm': flax_batch_norm,
              'cnn_jax BatchNorm (one pass, fused, custom backward)': layers.batch_norm}
  results = {label: [] for label in variants}
  try:
    for _ in range(rounds):
      for label, fn in variants.items():
        cifar_resnet.batch_norm = fn
        results[label].append(ts.jax_child(model, steps, 128)['images_per_s'])
  finally:
    cifar_resnet.batch_norm = layers.batch_norm
  return results


POOL_LAYERS = (  # (N, H, W, C), window, stride, padding: where the zoo pools
    ((64, 32, 32, 64), 2, 2, 'VALID'),  # VGG stage 1, U-Net
    ((64, 8, 8, 512), 2, 2, 'VALID'),  # VGG stage 4
    ((64, 31, 31, 64), 3, 2, 'VALID'),  # alexnet_cifar pool 1 (overlapping)
    ((64, 32, 32, 256), 3, 2, 'SAME'),  # googlenet_cifar after inception 3b
    ((64, 16, 16, 480), 3, 1, 'SAME'),  # googlenet_cifar inception 4a, branch 4
)
POOL_MODELS = (('vgg11_bn_cifar', 64), ('alexnet_cifar', 64))


def pool_child(steps: int, rounds: int = 2) -> dict:
  """Per-layer forward and forward+backward milliseconds, and the pooled models' step images/s,
  with flax.linen.max_pool and with cnn_jax.kernels.pooling.max_pool."""
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  from cnn_jax.kernels import layer_set, pooling  # pylint: disable=g-import-not-at-top

  def bench(f, x, n=10):
    f = jax.jit(f)
    jax.block_until_ready(f(x))
    start = time.perf_counter()
    for _ in range(n):
      out = f(x)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n * 1e3

  variants = {'flax.linen.max_pool': nn.max_pool, 'cnn_jax pooling.max_pool': pooling.max_pool}
  layer_rows = []
  for shape, k, s, pad in POOL_LAYERS:
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), nn.max_pool(x, (k, k), (s, s), pad).shape)
    row = [f'{shape} {k}x{k}/{s} {pad}']
    for pool in variants.values():
      f = lambda x, pool=pool: pool(x, (k, k), (s, s), pad)
      row += [bench(f, x), bench(jax.grad(lambda x, f=f: jnp.sum(f(x) * w)), x)]
    layer_rows.append(row)
  step = {model: {label: [] for label in variants} for model, _ in POOL_MODELS}
  for_config = layer_set.for_config
  try:
    for _ in range(rounds):
      for label, pool in variants.items():
        layer_set.for_config = lambda c, pool=pool: dataclasses.replace(for_config(c), max_pool=pool)
        for model, batch in POOL_MODELS:
          step[model][label].append(ts.jax_child(model, steps, batch)['images_per_s'])
  finally:
    layer_set.for_config = for_config
  return {'layers': layer_rows, 'steps': step}


# (input NHWC, kernel HWIO, padding): VGG's stage-5 maps (3x3, pad 1) and LeNet-5's C5 (1x1 out)
SMALL_MAP_LAYERS = (((64, 2, 2, 512), (3, 3, 512, 512), 1), ((64, 1, 1, 512), (3, 3, 512, 512), 1),
                    ((64, 2, 2, 256), (3, 3, 256, 256), 1), ((64, 4, 4, 512), (3, 3, 512, 512), 1),
                    ((64, 5, 5, 16), (5, 5, 16, 120), 0))
SMALL_MAP_MODELS = (('vgg11_bn_cifar', 64), ('vgg16_bn_cifar', 64), ('lenet5', 64))


def small_map_child(steps: int, rounds: int = 2) -> dict:
  """Per-layer milliseconds and the step images/s of SMALL_MAP_MODELS with and without im2col."""
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  from cnn_jax.kernels import conv  # pylint: disable=g-import-not-at-top

  def bench(f, *args, n=5):
    f = jax.jit(f)
    jax.block_until_ready(f(*args))
    start = time.perf_counter()
    for _ in range(n):
      out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / n * 1e3

  layer_rows = []
  for x_shape, k_shape, p in SMALL_MAP_LAYERS:
    x = jax.random.normal(jax.random.key(0), x_shape)
    k = 0.01 * jax.random.normal(jax.random.key(1), k_shape)
    dn = lax.conv_dimension_numbers(x.shape, k.shape, ('NHWC', 'HWIO', 'NHWC'))
    pads = ((p, p), (p, p))
    ref = lambda x, k, pads=pads: lax.conv_general_dilated(x, k, (1, 1), pads,
                                                           dimension_numbers=dn)
    ours = lambda x, k, pads=pads: conv.conv_general_dilated(x, k, (1, 1), pads,
                                                             dimension_numbers=dn)
    w = jax.random.normal(jax.random.key(2), ref(x, k).shape)
    row = ['x'.join(map(str, x_shape)) + ', ' + 'x'.join(map(str, k_shape)) + f', pad {p}',
           conv.uses_patches(x.shape, k.shape, (1, 1), dimension_numbers=dn, padding=pads)]
    for f in (ref, ours):
      grads = jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * w), argnums=(0, 1))
      row += [bench(f, x, k), bench(grads, x, k)]
    err = float(jnp.max(jnp.abs(ours(x, k) - ref(x, k))) / jnp.max(jnp.abs(ref(x, k))))
    layer_rows.append(row + [err])
  step = {model: {'lax.conv_general_dilated': [], 'cnn_jax conv (im2col, dense at 1x1 output)': []}
          for model, _ in SMALL_MAP_MODELS}
  uses_patches = conv.uses_patches
  try:
    for _ in range(rounds):
      for label, switch in zip(next(iter(step.values())), (lambda *a, **k: False, uses_patches)):
        conv.uses_patches = switch
        for model, batch in SMALL_MAP_MODELS:
          step[model][label].append(ts.jax_child(model, steps, batch)['images_per_s'])
  finally:
    conv.uses_patches = uses_patches
  return {'layers': layer_rows, 'steps': step}


def scan_child(model: str, steps: int, chunk: int) -> dict[str, float]:
  """images/s of `steps` steps dispatched one by one and in lax.scan chunks of `chunk`."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  from cnn_jax import train  # pylint: disable=g-import-not-at-top

  batch = ts.BATCH[model]
  config = ts.bench_config(model, batch)
  with tempfile.TemporaryDirectory() as workdir:
    run, state = train.setup(config, pathlib.Path(workdir))
    step = run.data.step._jitted  # pylint: disable=protected-access  (one process: the jit)

    def chunk_fn(state, totals, images, labels, perm, start, rng):
      def body(carry, i):
        return step(*carry, images, labels, perm, start + i, rng), None
      return jax.lax.scan(body, (state, totals), jnp.arange(chunk))[0]

    p_chunk = jax.jit(chunk_fn, donate_argnums=(0, 1))
    totals = train.zero_totals(run.replicated)
    perm = run.data.permutation(run.data.data_rng, 0)
    data = run.data.train_arrays
    state, totals = step(state, totals, *data, perm, 0, run.step_rng)  # compile both
    state, totals = p_chunk(state, totals, *data, perm, 1, run.step_rng)
    jax.block_until_ready(totals)
    steps = steps // chunk * chunk
    out = {}
    for label in ('one dispatch per step', f'lax.scan, {chunk} steps per dispatch'):
      start = time.perf_counter()
      if label.startswith('one'):
        for i in range(steps):
          state, totals = step(state, totals, *data, perm, (i % 64), run.step_rng)
      else:
        for i in range(steps // chunk):
          state, totals = p_chunk(state, totals, *data, perm, (i * chunk) % 64, run.step_rng)
      jax.block_until_ready(totals)
      out[label] = steps * batch / (time.perf_counter() - start)
    train._close(run, quiet=True)  # pylint: disable=protected-access
  return out


# (H, Cin, Cout, stride) of ResNet-20's convolutions, with how often each occurs in one step.
KERNEL_LAYERS = ((32, 3, 16, 1, 1), (32, 16, 16, 1, 6), (32, 16, 32, 2, 1), (16, 32, 32, 1, 5),
                 (16, 32, 64, 2, 1), (8, 64, 64, 1, 5))
KERNEL_STEP_MODELS = ('lenet5', 'resnet20', 'resnet56')
# (label, kernels, allocator: runtime.MALLOC_CHOICES) of section 8's training steps.
KERNEL_STEP_VARIANTS = (('XLA ops, glibc', '0', 'system'),
                        ('XLA ops, glibc on huge pages', '0', 'glibc'),
                        ('CPU kernels, glibc', '1', 'system'),
                        ('CPU kernels, glibc on huge pages', '1', 'glibc'),
                        ('CPU kernels, jemalloc (project default)', '1', 'jemalloc'))


# (label, YNN fusion types) of section 9's training steps; the first is the reference.
# (label, model, environment) of section 9's rows: the benchmark models, and ResNet-20 without
# the kernels (what a data-parallel CPU program over several devices runs).
FUSION_STEP_MODELS = (('lenet5', 'lenet5', {}), ('resnet20', 'resnet20', {}),
                      ('resnet56', 'resnet56', {}), ('plain56', 'plain56', {}),
                      ('resnet20, CPU kernels off', 'resnet20', {'CNN_JAX_CPU_KERNELS': '0'}))
FUSION_STEP_VARIANTS = (('dot,eltwise,reduce (default until 2026-12-06)', 'dot,eltwise,reduce'),
                        ('dot,reduce', 'dot,reduce'))


def fusion_steps(steps: int, rounds: int = 3) -> dict:
  """Per row of FUSION_STEP_MODELS: each variant's images/s windows, the variants running side by
  side and taking turns (benchmarks.train_step.interleaved)."""
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  out = {}
  for row, model, env_extra in FUSION_STEP_MODELS:
    children = {label: ('jax', model, steps, ts.BATCH[model],
                        {**env_extra, 'XLA_FLAGS': f'--xla_cpu_experimental_ynn_fusion_type={types}'})
                for label, types in FUSION_STEP_VARIANTS}
    out[row] = ts.interleaved(children, rounds)[1]
  return out


def _variant_rows(steps: dict) -> list[list[str]]:
  """Table rows (model, variant, windows, median, paired ratio to the model's first variant)."""
  import statistics  # pylint: disable=g-import-not-at-top
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  rows = []
  for model, variants in steps.items():
    first = next(iter(variants.values()))
    for label, ips in variants.items():
      rows.append([model, label, ' / '.join(f'{v:,.0f}' for v in ips),
                   f'{statistics.median(ips):,.0f}', f'{ts.paired_ratio(ips, first):.2f}x'])
  return rows


def _fusion_section(steps: dict, rounds: int) -> str:
  from cnn_jax import report, runtime  # pylint: disable=g-import-not-at-top
  rows = _variant_rows(steps)
  default = runtime.CPU_FLAGS[0].split('=')[1]
  without = runtime.CPU_FLAGS_XLA_OPS[0].split('=')[1]
  return f"""## 9. YNN fusion types with the CPU kernels on

Training steps, images/s (batch 64 for LeNet-5, 128 otherwise), the CPU kernels and the project's
allocator on, `--xla_cpu_experimental_ynn_fusion_type=` each variant. The variants run side by
side, one process each, and take turns window by window (`benchmarks.train_step.interleaved`),
{rounds} rounds; the last column is the median of the rounds' ratios to the first row:

{report.markdown_table(['model', 'YNN fusion types', 'images/s, each window', 'median',
                        'vs first row'], rows)}

Kept: `{default}` where the CPU kernels run, `{without}` where they will not
(`cnn_jax.runtime.cpu_flags`: kernels off, or several host devices). With the convolutions and
BatchNorm in cnn_jax's kernels, what is left for YNN's elementwise fusions is small elementwise
work on the model's own layouts (a bias add, a ReLU, the input's conversion and normalisation on
maps with 1 to 16 channels), which YNNPACK runs slower than XLA's own loop fusions: one LeNet-5
step spent 0.84 ms converting and normalising a 64x32x32x1 uint8 batch (XLA: ~0.05 ms).
"""


# (label, environment) of section 11's variants; the first is the reference.
KERNEL_GRADIENT_VARIANTS = (('oneDNN (jit:avx2)', {'CNN_JAX_CONV_KERNEL_GRADIENT': 'onednn'}),
                            ('direct AVX2 (project default)', {}))
KERNEL_GRADIENT_MODELS = ('resnet20', 'resnet56', 'plain56')


def kernel_gradient_steps(steps: int, rounds: int = 3) -> dict:
  """Per model: each kernel-gradient variant's images/s windows, taking turns (as section 9)."""
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  return {model: ts.interleaved({label: ('jax', model, steps, ts.BATCH[model], env)
                                 for label, env in KERNEL_GRADIENT_VARIANTS}, rounds)[1]
          for model in KERNEL_GRADIENT_MODELS}


def _kernel_gradient_section(steps: dict, rounds: int) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  return f"""## 11. The convolutions' kernel gradient: oneDNN or direct AVX2

Training steps, images/s (batch 128), project defaults except the kernel gradient of stride-1
convolutions with 12 or more input channels and output channels in 8s: oneDNN's (`jit:avx2` on
this CPU; `CNN_JAX_CONV_KERNEL_GRADIENT=onednn`) or cnn_jax/kernels/conv_kernel_gradient.h (for
each kernel tap, a register-blocked product of the input and output-gradient rows that the tap
pairs, no padded copies). The variants run side by side and take turns (as in section 9),
{rounds} rounds; the last column is the median of the rounds' ratios to the first row:

{report.markdown_table(['model', 'kernel gradient', 'images/s, each window', 'median',
                        'vs first row'], _variant_rows(steps))}

Kept on AVX2 CPUs without AVX-512 (oneDNN has AVX-512 kernels there; not measured), for 12 input
channels or more (with 3, as in a CIFAR stem, or 8, oneDNN's was faster). The kernel gradient was the
largest share of a ResNet step's op time (benchmarks.profile_step).
"""


def act_pool_child(steps: int, rounds: int = 3) -> dict[str, list[float]]:
  """LeNet-5's step images/s with max pooling after the ReLU (as written) and before it (the
  model's default: same function), alternating `rounds` times in this process."""
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from benchmarks import train_step as ts  # pylint: disable=g-import-not-at-top
  from cnn_jax.models import lenet  # pylint: disable=g-import-not-at-top
  default = lenet.NONDECREASING
  variants = {'conv, ReLU, max pool (as written)': (),
              'conv, max pool, ReLU (project default)': default}
  results = {label: [] for label in variants}
  try:
    for _ in range(rounds):
      for label, swap in variants.items():
        lenet.NONDECREASING = swap
        results[label].append(ts.jax_child('lenet5', steps, 64)['images_per_s'])
  finally:
    lenet.NONDECREASING = default
  return results


def _act_pool_section(runs: dict[str, list[float]]) -> str:
  import statistics  # pylint: disable=g-import-not-at-top
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  first = next(iter(runs.values()))
  rows = [[label, ' / '.join(f'{v:,.0f}' for v in ips), f'{statistics.median(ips):,.0f}',
           f'{statistics.median(a / b for a, b in zip(ips, first)):.2f}x']
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


def kernels_child(rounds: int = 3) -> dict:
  """Milliseconds of each ResNet-20 layer (batch 128) and of its BatchNorm+ReLU, with the CPU
  kernels and with XLA's ops, alternating in this process (the switch is read at trace time)."""
  import statistics  # pylint: disable=g-import-not-at-top
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax.kernels import ops  # pylint: disable=g-import-not-at-top

  def bench(f, *args, n=5):
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(n):
      start = time.perf_counter()
      jax.block_until_ready(f(*args))
      times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3

  def timed(kernels: str, fns: dict, args: dict) -> dict:
    os.environ['CNN_JAX_CPU_KERNELS'] = kernels
    return {name: bench(jax.jit(f), *args[name]) for name, f in fns.items()}

  rows = []
  for h, cin, cout, s, count in KERNEL_LAYERS:
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
    runs = {'xla': [], 'kernels': []}
    for _ in range(rounds):
      runs['xla'].append(timed('0', fns, args))
      runs['kernels'].append(timed('1', fns, args))
    med = {impl: {name: statistics.median(r[name] for r in rs) for name in fns}
           for impl, rs in runs.items()}
    rows.append({'layer': f'{h}x{h}x{cin} -> {cout}, stride {s}', 'count': count, **med})
  return {'layers': rows}


def kernel_steps(steps: int, rounds: int = 3) -> dict:
  """Per model and variant of KERNEL_STEP_VARIANTS: every round's train_step child result (the
  jemalloc variant only where libjemalloc.so.2 is installed)."""
  from cnn_jax import runtime  # pylint: disable=g-import-not-at-top
  variants = [v for v in KERNEL_STEP_VARIANTS if v[2] != 'jemalloc' or runtime.find_jemalloc()]
  out = {}
  for model in KERNEL_STEP_MODELS:
    out[model] = {label: [] for label, _, _ in variants}
    for _ in range(rounds):
      for label, kernels, malloc in variants:
        env = runtime.with_malloc(malloc, {k: v for k, v in os.environ.items()
                                             if k != 'XLA_FLAGS'})
        env['CNN_JAX_CPU_KERNELS'] = kernels
        result = subprocess.run([sys.executable, '-m', 'benchmarks.train_step',
                                 f'--child=jax:{model}', f'--steps={steps}', '--batch=0'],
                                env=env, capture_output=True, text=True, check=True)
        out[model][label].append(json.loads(result.stdout.strip().splitlines()[-1]))
  return out


def _kernel_sections(layers: dict, steps: dict, rounds: int) -> str:
  import statistics  # pylint: disable=g-import-not-at-top
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  names = ('forward', 'input gradient', 'kernel gradient', 'BN+ReLU forward', 'BN+ReLU fwd+bwd')
  layer_rows, totals = [], {'xla': dict.fromkeys(names, 0.0), 'kernels': dict.fromkeys(names, 0.0)}
  for row in layers['layers']:
    layer_rows.append([f"{row['layer']} (x{row['count']})"]
                      + [f"{row['xla'][n]:.2f} / {row['kernels'][n]:.2f}" for n in names])
    for impl in totals:
      for n in names:
        totals[impl][n] += row['count'] * row[impl][n]
  layer_rows.append(['**one ResNet-20 step** (x count)']
                    + [f"**{totals['xla'][n]:.0f} / {totals['kernels'][n]:.0f}**" for n in names])
  step_rows = []
  for model, variants in steps.items():
    base = None
    for label, runs in variants.items():
      med = lambda key: statistics.median(r[key] for r in runs)
      ips = med('images_per_s')
      base = base or ips
      step_rows.append([model, label, ' / '.join(f"{r['images_per_s']:,.0f}" for r in runs),
                        f'{ips:,.0f}', f'{ips / base:.2f}x',
                        f"{med('page_faults_per_step'):,.0f}",
                        f"{1e3 * med('user_s_per_step'):,.0f} / {1e3 * med('sys_s_per_step'):,.0f}"])
  return f"""## 8. CPU kernels (oneDNN convolutions, BatchNorm+ReLU) and the host allocator

Per layer (batch 128, ResNet-20's shapes), milliseconds, XLA's op / the CPU kernel, medians of
{rounds} alternating rounds in one process:

{report.markdown_table(['layer'] + list(names), layer_rows)}

Training steps, images/s (batch 64 for LeNet-5, 128 otherwise), each variant a fresh process,
{rounds} rounds alternating; page faults and CPU time per step are the median run's:

{report.markdown_table(['model', 'variant', 'images/s, each round', 'median', 'vs first row',
                        'page faults / step', 'user / system CPU ms / step'], step_rows)}

Kept, both on by default: the kernels on CPUs (cnn_jax/kernels; `CNN_JAX_CPU_KERNELS=0` turns
them off) and the allocator in the project's programs (cnn_jax/runtime.py; `CNN_JAX_MALLOC`):
jemalloc where it is installed, else glibc on huge pages. XLA's CPU runtime allocates every
step's buffers afresh and glibc hands large blocks back to the kernel when they are freed, so
each step maps and zeroes them again: the page-fault and system-time columns. Huge pages make
the faults ~100x fewer but each still zeroes 2 MiB; jemalloc with page decay off keeps the freed
pages for the next step (at a higher resident peak).
"""


def _child(args: list[str], env_extra: dict | None = None, timeout: float | None = None):
  """A fresh process's JSON answer; None when it runs past `timeout` seconds."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(env_extra or {})
  try:
    out = subprocess.run([sys.executable, '-m', 'benchmarks.levers'] + args, env=env,
                         capture_output=True, text=True, check=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])


def _step_child(model: str, steps: int, dtype: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run([sys.executable, '-m', 'benchmarks.train_step', f'--child=jax:{model}',
                        f'--steps={steps}', f'--batch=0', f'--dtype={dtype}'], env=env,
                       capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


BF16_NATIVE = ('This host has it: the ratios above are what `auto` gives here, a gain only where '
               'the bfloat16 column is the larger.')
BF16_EMULATED = ('Without native support a difference of the size above between separate processes '
                 "is within this machine's noise rather than a speed-up to rely on.")


def _before_after_rows(steps: dict) -> list[list[str]]:
  """Table rows `model, old runs, new runs, speed-up` from {model: {old: [...], new: [...]}}."""
  rows = []
  for model, runs in steps.items():
    (_, old), (_, new) = runs.items()
    rows.append([model, ' / '.join(f'{v:,.1f}' for v in old),
                 ' / '.join(f'{v:,.1f}' for v in new),
                 f'{(sum(new) / len(new)) / (sum(old) / len(old)):.2f}x'])
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--out', default=None)
  parser.add_argument('--append', action='store_true',
                      help='add the measured sections to --out instead of replacing it')
  parser.add_argument('--layers_child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--bn_child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--scan_child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--pool_child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--small_map_child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--kernels_child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--act_pool_child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--rounds', type=int, default=3, help='rounds of sections 8 to 11')
  parser.add_argument('--sections', default='1,2,3,4,5,6,7,8', help='which levers to measure')
  args = parser.parse_args()
  if args.layers_child:
    print(json.dumps(layer_formulations()))
    return
  if args.bn_child:
    print(json.dumps(batch_norm_child(args.bn_child, args.steps)))
    return
  if args.pool_child:
    print(json.dumps(pool_child(args.steps)))
    return
  if args.small_map_child:
    print(json.dumps(small_map_child(args.steps)))
    return
  if args.kernels_child:
    print(json.dumps(kernels_child(args.rounds)))
    return
  if args.act_pool_child:
    print(json.dumps(act_pool_child(args.steps, args.rounds)))
    return
  if args.scan_child:
    model, chunk = args.scan_child.split(':')
    print(json.dumps(scan_child(model, 4 * int(chunk) * 2, int(chunk))))
    return
  sections = set(args.sections.split(','))
  from cnn_jax import precision, report  # pylint: disable=g-import-not-at-top
  env = report.environment()
  parts = [f"""# CPU performance levers, measured

Generated by `python -m benchmarks.levers --model={args.model} --steps={args.steps}
--sections={args.sections}` on {env['host_cpu']}, jax {env['jax']}, {env['date']} (commit
{env['git_commit']}), with no other job running. Throughput varies by 5-15% between processes on
this machine, so compare rows within a section, each measured in one run.
"""]
  if '1' in sections:
    steps = step_variants(args.model, args.steps)
    parts.append(f"""## 1. XLA CPU options: {args.model} training step (batch 128), images/s

{report.markdown_table(['XLA_FLAGS', 'images/s', 'compile s', 'vs XLA defaults'], steps)}

Kept: the project default (cnn_jax/runtime.py), set before jax is imported and overridable
(`XLA_FLAGS`, or `CNN_JAX_XLA_DEFAULTS=0` to turn it off).
""")
  if '2' in sections:
    layers = {label: _child(['--layers_child'], env_extra) for label, env_extra in (
        ('project defaults (YNN)', {}), ('XLA defaults', {'CNN_JAX_XLA_DEFAULTS': '0'}))}
    layer_tables = '\n\n'.join(
        f'**{label}**\n\n' + report.markdown_table(
            ['layer', 'forward', 'input gradient', 'kernel gradient (XLA)',
             'kernel gradient: 9 dots (rel. err.)', 'kernel gradient: im2col dot (rel. err.)'],
            rows)
        for label, rows in layers.items())
    parts.append(f"""## 2. Convolution formulations, one layer, batch 128, milliseconds

{layer_tables}

Reading: under the YNN fusions XLA's own kernel gradient is the fastest formulation measured, so
no custom VJP is kept; without them the shifted-view dots beat XLA's kernel gradient on the
largest layer, but YNN's gain on the whole step is larger.
""")
  if '3' in sections:
    bn = _child([f'--bn_child={args.model}', f'--steps={args.steps}'])
    base = sum(next(iter(bn.values()))) / len(next(iter(bn.values())))
    rows = [[label, ' / '.join(f'{v:,.0f}' for v in runs), f'{sum(runs) / len(runs):,.0f}',
             f'{sum(runs) / len(runs) / base:.2f}x'] for label, runs in bn.items()]
    parts.append(f"""## 3. BatchNorm: {args.model} training step (batch 128), images/s

{report.markdown_table(['BatchNorm', 'images/s, alternating runs', 'mean', 'vs flax'], rows)}

Kept: cnn_jax.models.layers.BatchNorm in every model (same variables and results as
flax.linen.BatchNorm; tests/test_layers.py checks values, gradients and statistics). At
evaluation it applies the running statistics as one folded multiply-add per element.
""")
  if '4' in sections:
    rows = []
    for model, chunk in (('lenet5', 8), (args.model, 4)):
      r = _child([f'--scan_child={model}:{chunk}'], timeout=SCAN_TIMEOUT_S)
      if r is None:
        rows.append([model, '-', f'did not finish {8 * chunk} steps in {SCAN_TIMEOUT_S} s', '-'])
        continue
      (_, one), (scan_label, scan) = r.items()
      rows.append([model, f'{one:,.0f}', f'{scan:,.0f} ({scan_label})', f'{scan / one:.2f}x'])
    parts.append(f"""## 4. The loop: one dispatch per step against lax.scan over a chunk of steps, images/s

{report.markdown_table(['model', 'one dispatch per step', 'lax.scan', 'scan / per step'], rows)}

The loop already dispatches asynchronously (metrics stay on the device until a log point, no
host sync per step), so a chunked scan only pays where a step is short enough for dispatch to
show; the loop keeps one step per dispatch unless the gain above is clearly above the noise. The
loop's own images/s against the bare step is in the README's benchmark table
(benchmarks/results/cpu_2core.json).
""")
  if '5' in sections:
    native = precision.native_bfloat16()
    rows = []
    for model in ('lenet5', args.model):
      f32 = _step_child(model, args.steps, 'float32')['images_per_s']
      bf16 = _step_child(model, args.steps, 'bfloat16')['images_per_s']
      rows.append([model, f'{f32:,.0f}', f'{bf16:,.0f}', f'{bf16 / f32:.2f}x'])
    flags = ', '.join(sorted(precision.cpu_flags() & precision.CPU_BF16_FLAGS)) or 'none'
    parts.append(f"""## 5. bfloat16 compute, float32 parameters: images/s

This host's bfloat16 instruction flags: {flags}; `cnn_jax.precision.native_bfloat16()` =
{native}, so `config.dtype='auto'` computes in {'bfloat16' if native else 'float32'} here.

{report.markdown_table(['model', 'float32', 'bfloat16', 'bfloat16 / float32'], rows)}

Kept as `config.dtype='auto'` (opt-in; the configs' default stays float32 so that results do not
depend on the machine): bfloat16 only where `native_bfloat16()` detects hardware support. {BF16_NATIVE if native else BF16_EMULATED}
""")
  if '6' in sections:
    pool = _child(['--pool_child', f'--steps={args.steps}'])
    layer_rows = [[name] + [f'{v:.1f}' for v in times] + [f'{times[1] / times[3]:.1f}x']
                  for name, *times in pool['layers']]
    step_rows = _before_after_rows(pool['steps'])
    parts.append(f"""## 6. Max pooling: select_and_scatter against phase masks

Per layer (batch 64, the zoo's pooling shapes), milliseconds:

{report.markdown_table(['input, window/stride, padding', 'flax forward', 'flax fwd+bwd',
                        'cnn_jax forward', 'cnn_jax fwd+bwd', 'fwd+bwd speed-up'], layer_rows)}

Training step (batch 64, CIFAR-10 pipeline), images/s, alternating runs:

{report.markdown_table(['model', 'flax.linen.max_pool', 'cnn_jax pooling.max_pool', 'speed-up'],
                       step_rows)}

Kept: cnn_jax.kernels.pooling.max_pool in every model. It has nn.max_pool's forward and exactly
its gradient (the first maximum of each window, ties included; tests/test_pooling.py), so
training is unchanged; only the backward is formulated differently.
""")
  if '7' in sections:
    small = _child(['--small_map_child', f'--steps={args.steps}'])
    layer_rows = [[name, 'im2col' if patches else 'XLA'] + [f'{v:.1f}' for v in times[:4]]
                  + [f'{times[1] / times[3]:.1f}x', f'{times[4]:.0e}']
                  for name, patches, *times in small['layers']]
    step_rows = _before_after_rows(small['steps'])
    parts.append(f"""## 7. Convolutions of maps smaller than the kernel, or with a 1x1 output

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
""")
  if '8' in sections:
    parts.append(_kernel_sections(_child(['--kernels_child', f'--rounds={args.rounds}']),
                                  kernel_steps(args.steps, args.rounds), args.rounds))
  if '9' in sections:
    parts.append(_fusion_section(fusion_steps(args.steps, args.rounds), args.rounds))
  if '10' in sections:
    parts.append(_act_pool_section(_child(['--act_pool_child', f'--steps={args.steps}',
                                           f'--rounds={args.rounds}'])))
  if '11' in sections:
    parts.append(_kernel_gradient_section(kernel_gradient_steps(args.steps, args.rounds),
                                          args.rounds))
  text = '\n'.join(parts)
  print(text)
  if args.out:
    out = pathlib.Path(args.out)
    if args.append and out.exists():
      text = out.read_text().rstrip() + '\n\n---\n\n' + text
    out.write_text(text)


if __name__ == '__main__':
  from cnn_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.start()  # first: may restart the program, then sets XLA up
  main()
