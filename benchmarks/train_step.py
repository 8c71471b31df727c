"""Training-step throughput: cnn_jax (jit, donated state) beside a PyTorch baseline, same machine.

    python -m benchmarks.train_step [--models=lenet5,resnet20] [--steps=50] [--xla_flags=...]

For each model it times SGD-with-momentum training steps on random data of the model's input
shape (data already on the device, compilation and warm-up excluded) and prints images/s for JAX
and for the equivalent PyTorch model (torch.set_num_threads = all cores). PyTorch comes from
requirements-bench.txt (`make bench` installs it). Each JAX variant runs in its own process so
XLA_FLAGS (e.g. --xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce) take effect.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BATCH = {'lenet5': 64, 'resnet20': 128, 'resnet56': 128, 'plain20': 128}
SHAPE = {'lenet5': (32, 32, 1), 'resnet20': (32, 32, 3), 'resnet56': (32, 32, 3),
         'plain20': (32, 32, 3)}


def jax_images_per_s(name: str, steps: int) -> float:
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import config_base, input_pipeline, models, optim, parallel, train  # pylint: disable=g-import-not-at-top

  batch, shape = BATCH[name], SHAPE[name]
  config = config_base.base_config()
  config.momentum, config.weight_decay = 0.9, 1e-4
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, 100, 100))
  mesh = parallel.make_mesh()
  model = models.create(name, num_classes=10)
  state = train.create_train_state(model, tx, shape, jax.random.key(0), parallel.replicated(mesh))
  n = batch * 8
  images = jax.random.randint(jax.random.key(1), (n,) + shape, 0, 255).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.key(2), (n,), 0, 10)
  pre = input_pipeline.Preprocess(mean=(0.5,) * shape[-1], std=(0.25,) * shape[-1])
  cfg = train.StepConfig(batch, 10, 0.0, 0.0, pre, parallel.batch_sharded(mesh))
  step = jax.jit(functools.partial(train.train_step, cfg=cfg), donate_argnums=(0, 1))
  perm = jnp.arange(n)
  totals = train.zero_totals(parallel.replicated(mesh))
  rng = jax.random.key(3)
  for i in range(3):  # compile + warm-up
    state, totals = step(state, totals, images, labels, perm, i % 8, rng)
  jax.block_until_ready(totals)
  start = time.perf_counter()
  for i in range(steps):
    state, totals = step(state, totals, images, labels, perm, i % 8, rng)
  jax.block_until_ready(totals)
  return steps * batch / (time.perf_counter() - start)


def torch_images_per_s(name: str, steps: int) -> float | None:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  batch, (h, w, c) = BATCH[name], SHAPE[name]
  model = torch_models.create(name)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(batch, c, h, w)
  y = torch.randint(0, 10, (batch,))
  loss_fn = torch.nn.CrossEntropyLoss()
  model.train()

  def one_step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return loss

  for _ in range(3):
    one_step()
  start = time.perf_counter()
  for _ in range(steps):
    loss = one_step()
  loss.item()
  return steps * batch / (time.perf_counter() - start)


def _param_counts(name: str) -> str:
  """Both frameworks' parameter counts: the baseline must be the same network."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create(name, num_classes=10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1,) + SHAPE[name]), train=False))
  ours = sum(int(x.size) for x in jax.tree.leaves(variables['params']))
  try:
    from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
    theirs = f'{torch_models.num_params(torch_models.create(name)):,}'
  except ImportError:
    theirs = '-'
  return f'{ours:,} / {theirs}'


def _child(name, steps):
  print(json.dumps({'jax': jax_images_per_s(name, steps)}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='lenet5,resnet20')
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--xla_flags', default='--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
                      help='An extra XLA_FLAGS variant to time beside the default ("" to skip).')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    _child(args.child, args.steps)
    return
  import platform  # pylint: disable=g-import-not-at-top
  variants = [('jax', '')] + ([('jax+flags', args.xla_flags)] if args.xla_flags else [])
  print(f'# train-step throughput, images/s ({platform.machine()}, {os.cpu_count()} cores, '
        f'{args.steps} timed steps; XLA flags variant: {args.xla_flags or "none"})')
  header = (['model', 'batch', 'params (jax / torch)'] + [v for v, _ in variants]
            + ['pytorch', 'jax / pytorch'])
  print('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header))
  for name in args.models.split(','):
    row = [name, str(BATCH[name]), _param_counts(name)]
    results = []
    for _, flags in variants:
      env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') + ' ' + flags).strip())
      out = subprocess.run([sys.executable, '-m', 'benchmarks.train_step', f'--child={name}',
                            f'--steps={args.steps}'], env=env, capture_output=True, text=True,
                           check=False)
      if out.returncode:
        results.append(None)
        print(f'# {name} {flags}: failed: {out.stderr.strip().splitlines()[-1:]}', file=sys.stderr)
        continue
      results.append(json.loads(out.stdout.strip().splitlines()[-1])['jax'])
    row += [f'{r:,.0f}' if r else 'failed' for r in results]
    pt = torch_images_per_s(name, args.steps)
    row.append(f'{pt:,.0f}' if pt else 'not installed')
    best = max((r for r in results if r), default=None)
    row.append(f'{best / pt:.2f}' if (best and pt) else '-')
    print('| ' + ' | '.join(row) + ' |', flush=True)


if __name__ == '__main__':
  main()
