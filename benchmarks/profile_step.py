"""Op-level profile of one training step: where the time of `cnn_jax.steps.train_step` goes.

    python -m benchmarks.profile_step [--model=resnet20] [--steps=3] [--out=benchmarks/results/profile_resnet20.md]

Traces a few steps with the JAX profiler, reads every XLA op's time from the trace
(`jax.profiler.ProfileData`) and classifies the op from the compiled HLO: its opcode, the ops
it fuses and their source metadata (`op_name`, e.g. 'jvp(CifarResNet)/stage1_block1/bn1/...'
for the forward pass, 'transpose(jvp(...))' for the backward pass). Writes a Markdown report:
shares per category, the busiest ops, and the threads' utilisation (op time summed over XLA's
worker threads against wall time x threads).
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import pathlib
import re
import tempfile
import time

CATEGORIES = (
    'conv forward', 'conv input gradient', 'conv kernel gradient', 'layout copies (transposes)',
    'BatchNorm forward', 'BatchNorm backward', 'ReLU, shortcuts, pooling, head', 'optimizer update',
    'input: gather, normalise, augment', 'loss and metrics', 'other')


def parse_hlo(text: str) -> dict[str, dict]:
  """instruction name -> {'opcode', 'op_names' (its own and those of what it fuses), 'fuses'}."""
  computations, current = {}, None
  for line in text.splitlines():
    header = re.match(r'^(?:ENTRY )?%([\w.\-]+) .*\{\s*$', line)
    if header:
      current = computations.setdefault(header.group(1), [])
    elif current is not None and line.strip():
      current.append(line)
  info = {}
  for lines in computations.values():
    for line in lines:
      m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(', line)
      if not m:
        m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = \([^=]*\) ([\w\-]+)\(', line)
      if not m:
        continue
      called = re.findall(r'calls=%([\w.\-]+)', line)
      body = [l for c in called for l in computations.get(c, [])]
      target = re.search(r'custom_call_target="(\w+)"', line)
      info[m.group(1)] = {
          'opcode': m.group(2),
          'target': target.group(1) if target else None,
          'op_names': re.findall(r'op_name="([^"]*)"', line + ' '.join(body)),
          'fuses': {re.match(r'\s*(?:ROOT )?%[\w.\-]+ = \S+ ([\w\-]+)\(', l).group(1)
                    for l in body if re.match(r'\s*(?:ROOT )?%[\w.\-]+ = \S+ ([\w\-]+)\(', l)},
      }
  return info


KERNEL_CATEGORIES = {
    'CnnJaxConv2dForward': 'conv forward', 'CnnJaxConv2dBackwardData': 'conv input gradient',
    'CnnJaxConv2dBackwardWeights': 'conv kernel gradient',
    'CnnJaxBatchNormForward': 'BatchNorm forward', 'CnnJaxBatchNormAddReluForward':
    'BatchNorm forward', 'CnnJaxBatchNormBackward': 'BatchNorm backward',
    'CnnJaxBatchNormAddReluBackward': 'BatchNorm backward'}


def classify(name: str, op: dict | None) -> str:
  if op is None:
    return 'other'
  names = ' '.join(op['op_names'])
  ops = op['fuses'] | {op['opcode']}
  backward = 'transpose(' in names
  if op.get('target') in KERNEL_CATEGORIES:  # cnn_jax.kernels' custom calls
    return KERNEL_CATEGORIES[op['target']]
  if 'convolution' in ops:
    if not op['op_names']:  # XLA emits the kernel gradient (batch contracted) without metadata
      return 'conv kernel gradient'
    return 'conv input gradient' if backward else 'conv forward'
  if op['opcode'] == 'copy' or name.startswith(('transpose', 'copy')):
    return 'layout copies (transposes)'
  model = 'jvp(' in names
  if model and re.search(r'(^|/)(\w*bn\w*|BatchNorm\w*)/', names):
    return 'BatchNorm backward' if backward else 'BatchNorm forward'
  if model:
    if re.search(r'cross_entropy|log_softmax|softmax|argmax', names):
      return 'loss and metrics'
    return 'ReLU, shortcuts, pooling, head'
  if re.search(r'random|bernoulli|gather|dynamic_slice|threefry|convert_element_type|pad', names):
    return 'input: gather, normalise, augment'
  if re.search(r'log_softmax|softmax|argmax|reduce_sum|eq', names) and 'optax' not in names:
    return 'loss and metrics'
  if names:
    return 'optimizer update'
  return 'other'


def profile(model_name: str, steps: int, dtype: str = 'float32') -> dict:
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import config_base, input_pipeline, models, optim, parallel  # pylint: disable=g-import-not-at-top
  from cnn_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
  from benchmarks.train_step import BATCH, input_shape  # pylint: disable=g-import-not-at-top
  from cnn_jax import kernels, precision, runtime  # pylint: disable=g-import-not-at-top
  from cnn_jax.kernels import layer_set as cpu_layer_set  # pylint: disable=g-import-not-at-top
  from cnn_jax.models import layer_set  # pylint: disable=g-import-not-at-top

  batch, shape = BATCH.get(model_name, 64), input_shape(model_name)
  config = config_base.base_config()
  config.momentum, config.weight_decay = 0.9, 1e-4
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 100, 100))
  mesh = parallel.make_mesh()
  model = models.create(model_name, num_classes=10, dtype=precision.compute_dtype(dtype))
  layers = cpu_layer_set.for_config(config)  # as the loop chooses: the CPU kernels here
  state = steps_lib.create_train_state(model, tx, shape, jax.random.key(0),
                                       parallel.replicated(mesh),
                                       apply_fn=layer_set.bind(model.apply, layers))
  n = batch * 4
  images = jax.random.randint(jax.random.key(1), (n,) + shape, 0, 255).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.key(2), (n,), 0, 10)
  augment = shape[-1] == 3
  pre = input_pipeline.Preprocess(mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1],
                                  random_crop_padding=4 if augment else 0, horizontal_flip=augment)
  cfg = steps_lib.StepConfig(batch, 10, 0.0, 0.0, pre, parallel.batch_sharded(mesh))
  step = jax.jit(functools.partial(steps_lib.train_step, cfg=cfg), donate_argnums=(0, 1))
  perm, rng = jnp.arange(n), jax.random.key(3)
  totals = steps_lib.zero_totals(parallel.replicated(mesh))
  compiled = step.lower(state, totals, images, labels, perm, 0, rng).compile()
  hlo = parse_hlo(compiled.as_text())
  for i in range(2):
    state, totals = compiled(state, totals, images, labels, perm, i, rng)
  jax.block_until_ready(totals)
  trace_dir = tempfile.mkdtemp(prefix='cnn_jax_profile_')
  jax.profiler.start_trace(trace_dir)
  start = time.perf_counter()
  for i in range(steps):
    state, totals = compiled(state, totals, images, labels, perm, i % 4, rng)
  jax.block_until_ready(totals)
  wall_ms = (time.perf_counter() - start) / steps * 1e3
  jax.profiler.stop_trace()
  path = sorted(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True))[-1]
  data = jax.profiler.ProfileData.from_file(path)
  per_op, threads = collections.Counter(), set()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in hlo:
          per_op[event.name] += event.duration_ns / 1e6 / steps
          threads.add(line.name)
  per_cat = collections.Counter()
  for name, ms in per_op.items():
    per_cat[classify(name, hlo[name])] += ms
  return {'model': model_name, 'batch': batch, 'dtype': dtype, 'wall_ms': wall_ms, 'per_op': per_op,
          'per_cat': per_cat, 'threads': len(threads), 'hlo': hlo,
          'xla_flags': __import__('os').environ.get('XLA_FLAGS', ''),
          'malloc': runtime.current_malloc(),
          'kernels': ', '.join(f'{k} {v}' for k, v in kernels.status().items()),
          'layer_set': layers.name}


def render(p: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  total = sum(p['per_cat'].values())
  cats = report.markdown_table(
      ['category', 'ms / step (summed over threads)', 'share'],
      [[c, f'{p["per_cat"][c]:.1f}', f'{100 * p["per_cat"][c] / total:.1f}%']
       for c in CATEGORIES if p['per_cat'].get(c)])
  top = report.markdown_table(
      ['op', 'ms / step', 'category', 'source (first op_name)'],
      [[name + (f" ({p['hlo'][name]['target']})" if p['hlo'][name].get('target') else ''),
        f'{ms:.1f}', classify(name, p['hlo'][name]),
        f"`{(p['hlo'][name]['op_names'] or [''])[0][:80]}`"]
       for name, ms in p['per_op'].most_common(15)])
  env = report.environment()
  return f"""# Op-level profile of one {p['model']} training step (batch {p['batch']})

Generated by `python -m benchmarks.profile_step --model={p['model']}`: the loop's jitted
`train_step` (forward, backward, SGD-momentum update with weight decay, batch gather and
augmentation inside jit), traced with the JAX profiler; each XLA op's time is read from the
trace and classified from the compiled HLO's metadata.

- Wall time **{p['wall_ms']:.0f} ms / step**; XLA ops add up to {total:.0f} ms over
  {p['threads']} threads, i.e. the threads are busy {100 * total / (p['wall_ms'] * max(p['threads'], 1)):.0f}%
  of the step (the rest: waiting between dependent ops, dispatch, and work that the trace does
  not attribute to an XLA op, such as YNNPACK's own thread pool: read the shares below as shares of
  the traced op time, not of the wall time). A CPU kernel's time (cnn_jax/kernels, named by
  its custom-call target below) is its call's wall time, the pool threads it ran on included.
- XLA_FLAGS: `{p['xla_flags'] or '(none)'}`; layer set: {p['layer_set']} (CPU kernels:
  {p['kernels']});
  allocator: {p['malloc']}
- Host: {env['host_cpu']}; jax {env['jax']}; {env['date']}; commit {env['git_commit']}.

## Share of op time by category

{cats}

"BatchNorm" includes what XLA fused into the BatchNorm ops (often the ReLU after it and, with
YNN fusions, neighbouring elementwise work); the forward convolutions fused with it are counted
as convolutions when the fusion holds the convolution.

## The busiest ops

{top}
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='compute dtype (parameters stay float32)')
  parser.add_argument('--out', default=None)
  args = parser.parse_args()
  text = render(profile(args.model, args.steps, args.dtype))
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == '__main__':
  from cnn_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.start()  # first: may restart the program, then sets XLA up
  main()
