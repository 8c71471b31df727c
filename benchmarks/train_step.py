"""Training-step throughput: cnn_jax's own `train_step` beside a PyTorch twin, on one machine.

    python -m benchmarks.train_step [--models=lenet5,resnet20,resnet56,plain56] [--steps=20]
                                    [--repeats=3] [--variants=defaults,xla,none]
                                    [--json=benchmarks/results/cpu.json]
    # on a GPU: both frameworks in bfloat16, PyTorch compiled, with MFU
    python -m benchmarks.train_step --models=resnet50,resnet20 --variants=defaults \
        --dtype=bfloat16 --torch_mode=compile --json=benchmarks/results/gpu.json

Per model it runs, each in a fresh process (so XLA flags and memory figures are its own):
* `jax (defaults)`: the loop's jitted `cnn_jax.train.train_step` as built by the loop's own
  `train.setup` from the model's experiment config (configs/lenet5_mnist.py,
  configs/cifar_resnet.py): the real data on the device, batches gathered and augmented inside
  jit, donated state; with the project's settings: XLA flags (cnn_jax/xla_setup.py), the CPU
  kernels (cnn_jax/kernels) and glibc's huge pages. Timed alone ("step") and then inside
  `train.train_loop` ("loop": log points, stop checks, epoch permutations), by the loop's own
  images/s bookkeeping;
* `jax (xla)` (`--variants` includes `xla`): the same without the CPU kernels
  (CNN_JAX_CPU_KERNELS=0): every layer is XLA's own op;
* `jax (none)`: every project setting off (CNN_JAX_XLA_DEFAULTS=0, no kernels, no huge pages,
  the user's own XLA_FLAGS), i.e. XLA's defaults: the "before" column;
* `pytorch`: the same network in PyTorch, channels-last, SGD momentum, on the first CUDA device
  if there is one, else on all CPU cores; eager (default) or `--torch_mode=compile`; in the
  benchmark's own environment (huge pages included, as they are a process setting).
The machines this runs on vary by 10-30% from minute to minute, so the whole sequence (every
variant, then PyTorch) repeats `--repeats` times; each figure is the median run, and the ratio
to PyTorch the median of the per-round ratios.
`--dtype=bfloat16` makes both compute in bfloat16 with float32 parameters (PyTorch by autocast).
It prints and (with --json) writes images/s, the ratio to PyTorch, compile time (persistent
cache off), peak memory (resident on a CPU, the device's own on an accelerator), achieved
GFLOP/s = 6 x MACs x images/s (forward 2 x MACs, backward twice the forward) and, where the
device's peak is known (PEAK_BF16_FLOPS, or --peak_tflops), MFU: that rate over the peak. The
README table is generated from the committed JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH = {'lenet5': 64, 'resnet20': 128, 'resnet56': 128, 'plain20': 128, 'plain56': 128,
         'resnet50': 256}
SHAPE = {'lenet5': (32, 32, 1), 'resnet50': (224, 224, 3)}
SHAPE_DEFAULT = (32, 32, 3)
MIN_SECONDS = 5.0  # each timing window at least this long (--min_seconds)
VARIANTS = {'defaults': {}, 'xla': {'CNN_JAX_CPU_KERNELS': '0'},
            'none': {'CNN_JAX_XLA_DEFAULTS': '0', 'CNN_JAX_CPU_KERNELS': '0'}}
# The user's own XLA_FLAGS, before `import cnn_jax` in this process adds the project's: each child
# starts from these, so the `none` variant really runs with XLA's defaults.
USER_XLA_FLAGS = os.environ.get('XLA_FLAGS')


def _shape(name):
  return SHAPE.get(name, SHAPE_DEFAULT)


def _os_costs_per_step(before, steps: int) -> dict:
  """Page faults and user/system CPU seconds per step since the rusage `before`."""
  after = resource.getrusage(resource.RUSAGE_SELF)
  return {'page_faults_per_step': (after.ru_minflt - before.ru_minflt) / steps,
          'user_s_per_step': (after.ru_utime - before.ru_utime) / steps,
          'sys_s_per_step': (after.ru_stime - before.ru_stime) / steps}


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_config(name: str, batch: int, dtype: str = 'float32'):
  """The experiment config a model is trained with, set up for timing: the real data and
  augmentation, SGD momentum 0.9 and weight decay 1e-4 like the PyTorch twin, no validation."""
  from cnn_jax import sweep  # pylint: disable=g-import-not-at-top
  if name == 'lenet5':
    module, arg = sweep.load_config_file('configs/lenet5_mnist.py')
  else:  # CIFAR-10 from its image folder, 4-px crop and flip; another input size by padding
    module, arg = sweep.load_config_file('configs/cifar_resnet.py:resnet20')
  config = module.get_config(arg)
  config.model = name
  config.batch_size = batch
  config.dtype = dtype
  config.momentum, config.weight_decay = 0.9, 1e-4
  config.data.validation_size = 0
  config.data.train_eval_size = 0
  config.eval_test_curve = False
  config.gradient_diagnostics = False
  config.checkpoint_every_steps = 0
  config.progress_bar = False
  if _shape(name)[0] != 32:
    config.data.image_size = _shape(name)[0]  # e.g. ResNet-50 at 224: CIFAR padded, same cost
  return config


def _timed_steps(steps: int, block_seconds: float) -> int:
  """Steps to time: at least `steps`, and enough for MIN_SECONDS at one calibration block's
  pace (a LeNet-5 step takes ~10 ms: 20 steps would be a 0.2 s window, all noise)."""
  return max(steps, int(np.ceil(steps * MIN_SECONDS / max(block_seconds, 1e-6))))


def jax_child(name: str, steps: int, batch: int, dtype: str = 'float32') -> dict:
  """Times the loop's own train_step, built by the loop's own `setup`, alone (bare) and inside
  `train_loop` (log points, stop checks, epoch permutations), each over at least MIN_SECONDS;
  returns images/s, compile time, memory and per-step page faults and CPU time."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (XLA settings first)
  import jax  # pylint: disable=g-import-not-at-top
  from cnn_jax import train  # pylint: disable=g-import-not-at-top

  jax.config.update('jax_enable_compilation_cache', False)  # time a real compile
  config = bench_config(name, batch, dtype)
  warmup = 2
  config.num_steps = 10**7  # cut to what is timed once the pace is known (below)
  with tempfile.TemporaryDirectory() as workdir:
    run, state = train.setup(config, pathlib.Path(workdir))
    try:
      totals = train.zero_totals(run.replicated)
      perm = run.p_permutation(run.data_rng, 0)
      args = lambda i: (*run.train_arrays, perm, i, run.step_rng)
      start = time.perf_counter()
      state, totals = run.p_train_step(state, totals, *args(0))
      jax.block_until_ready(totals)
      compile_s = time.perf_counter() - start  # compile + one step
      for i in range(1, warmup):
        state, totals = run.p_train_step(state, totals, *args(i))
      jax.block_until_ready(totals)
      start = time.perf_counter()  # calibration block, also more warm-up
      for i in range(steps):
        state, totals = run.p_train_step(state, totals, *args(i))
      jax.block_until_ready(totals)
      n = _timed_steps(steps, time.perf_counter() - start)
      usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
      for i in range(n):
        state, totals = run.p_train_step(state, totals, *args(i % run.steps_per_epoch))
      jax.block_until_ready(totals)
      bare = n * batch / (time.perf_counter() - start)
      os_costs = _os_costs_per_step(usage, n)
      # The loop for two log intervals of n steps: the first is not timed by the loop (it may
      # hold a compilation), the second is: the loop's own images/s figure.
      run.config.log_every_steps = n
      run.total_steps = int(state.step) + 2 * n
      state, _ = train.train_loop(run, state, should_stop=lambda step: False)
      loop = run.book.timed_images / run.book.train_seconds
    finally:
      train._close(run, quiet=True)  # pylint: disable=protected-access
  stats = jax.devices()[0].memory_stats() or {}  # an accelerator's own memory; None on CPU
  peak = stats['peak_bytes_in_use'] / 2**20 if 'peak_bytes_in_use' in stats else _peak_rss_mb()
  from cnn_jax import kernels, xla_setup  # pylint: disable=g-import-not-at-top
  return {'images_per_s': bare, 'loop_images_per_s': loop, 'compile_s': compile_s,
          'peak_rss_mb': peak, **os_costs, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
          'malloc': xla_setup.current_malloc(), 'kernels': kernels.status(),
          'jax_version': jax.__version__, 'device_kind': jax.devices()[0].device_kind,
          'dtype': dtype}


def torch_child(name: str, steps: int, batch: int, mode: str = 'eager',
                dtype: str = 'float32') -> dict:
  """PyTorch's training step of the twin network on the first CUDA device if there is one, else
  on all CPU cores: channels-last, SGD momentum; `mode` eager or `compile` (torch.compile),
  `dtype` float32 or bfloat16 (autocast: bfloat16 compute, float32 parameters)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.set_num_threads(os.cpu_count())
  h, w, c = _shape(name)
  model = torch_models.create(name).to(device, memory_format=torch.channels_last)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  x = torch.randn(batch, c, h, w, device=device).to(memory_format=torch.channels_last)
  y = torch.randint(0, 10, (batch,), device=device)
  loss_fn = torch.nn.CrossEntropyLoss()
  model.train()
  forward = torch.compile(model) if mode == 'compile' else model
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == 'bfloat16' else (
      contextlib.nullcontext)

  def one_step():
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(forward(x), y)
    loss.backward()
    opt.step()
    return loss

  start = time.perf_counter()
  one_step().item()
  compile_s = time.perf_counter() - start  # first step: torch.compile's compile, or warm-up
  for _ in range(2):
    one_step()
  one_step().item()
  start = time.perf_counter()  # calibration block, also more warm-up
  for _ in range(steps):
    loss = one_step()
  loss.item()
  steps = _timed_steps(steps, time.perf_counter() - start)
  usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(steps):
    loss = one_step()
  loss.item()  # waits for the device
  seconds = time.perf_counter() - start
  os_costs = _os_costs_per_step(usage, steps)
  peak = (torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else _peak_rss_mb())
  return {'images_per_s': steps * batch / seconds, 'peak_rss_mb': peak, 'compile_s': compile_s,
          **os_costs,
          'num_params': torch_models.num_params(model), 'torch_version': torch.__version__,
          'device': torch.cuda.get_device_name() if device == 'cuda' else 'cpu',
          'mode': mode, 'dtype': dtype}


# Dense bfloat16 tensor-core peaks, FLOP/s (vendor data sheets, SXM parts), for MFU; keyed by a
# substring of jax's `device_kind`. Other devices (CPUs included) need --peak_tflops.
PEAK_BF16_FLOPS = {'H200': 989e12, 'H100': 989e12, 'A100': 312e12, 'L4': 121e12, 'L40S': 362e12}


def peak_flops(device_kind: str | None, override_tflops: float = 0.0) -> float | None:
  if override_tflops:
    return override_tflops * 1e12
  for key, flops in PEAK_BF16_FLOPS.items():
    if device_kind and key in device_kind:
      return flops
  return None


def train_flops_per_image(macs: float) -> float:
  """Forward 2 x MACs FLOPs, backward (input and kernel gradients) twice the forward."""
  return 6 * macs


def model_facts(name: str) -> dict:
  import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import conv_arithmetic, models  # pylint: disable=g-import-not-at-top
  model = models.create(name, num_classes=10 if name != 'resnet50' else 1000)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + _shape(name)),
                                                train=False))
  params = sum(int(x.size) for x in jax.tree.leaves(variables['params']))
  return {'num_params': params, 'macs': conv_arithmetic.count_flops(model, _shape(name)).macs}


def _run_child(kind: str, name: str, steps: int, batch: int, env_extra: dict,
               extra_args: tuple[str, ...] = ()) -> dict | None:
  env = dict(os.environ, **env_extra)
  env.pop('XLA_FLAGS', None)
  if USER_XLA_FLAGS is not None:
    env['XLA_FLAGS'] = USER_XLA_FLAGS
  if env.get('CNN_JAX_XLA_DEFAULTS') == '0':  # none of the project's settings: system malloc
    from cnn_jax import xla_setup  # pylint: disable=g-import-not-at-top
    env = xla_setup.with_malloc('system', env)
  out = subprocess.run([sys.executable, '-m', 'benchmarks.train_step', f'--child={kind}:{name}',
                        f'--steps={steps}', f'--batch={batch}', f'--min_seconds={MIN_SECONDS}',
                        *extra_args], env=env,
                       capture_output=True,
                       text=True, check=False)
  if out.returncode:
    print(f'# {kind} {name}: failed: {out.stderr.strip().splitlines()[-3:]}', file=sys.stderr)
    return None
  return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  flags = ''
  try:
    text = open('/proc/cpuinfo').read()
    flags = ' '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f' {f}' in text)
  except OSError:
    pass
  from cnn_jax import xla_setup  # pylint: disable=g-import-not-at-top
  return {'host_cpu': report.host_cpu(), 'isa': flags, 'malloc': xla_setup.current_malloc(),
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')}


def _fmt(v, spec=',.0f'):
  return '-' if v is None else format(v, spec)


def _median_run(runs: list[dict | None]) -> dict | None:
  """The run with the median images/s (its other figures come with it), all runs' images/s
  under 'runs'."""
  done = sorted((r for r in runs if r), key=lambda r: r['images_per_s'])
  if not done:
    return None
  return {**done[(len(done) - 1) // 2], 'runs': [r['images_per_s'] if r else None for r in runs]}


def _loop_cell(result: dict) -> str:
  loop, step = result.get('loop_images_per_s'), result.get('images_per_s')
  if loop is None or not step:
    return '-'
  return f'{loop:,.0f} ({loop / step:.2f})'


def table(rows: list[dict], variants: list[str]) -> str:
  from cnn_jax.report import markdown_table  # pylint: disable=g-import-not-at-top
  headers = ["model", "batch", "params", "MMACs/img"]
  headers += [f'jax ({v}) img/s' for v in variants] + ['jax loop img/s (loop / step)',
                                                         'pytorch img/s', 'jax / pytorch',
                                                         'compile s', 'peak MB jax / torch',
                                                         'GFLOP/s jax / torch']
  with_mfu = any(r.get('peak_flops') for r in rows)
  if with_mfu:
    headers.append('MFU jax / torch')
  body = []
  for r in rows:
    jax_best = r['jax'].get('defaults') or {}
    pt = r.get('pytorch') or {}
    gf = lambda ips: None if ips is None else train_flops_per_image(r['macs']) * ips / 1e9
    mfu = lambda ips: (None if ips is None or not r.get('peak_flops') else
                       100 * train_flops_per_image(r['macs']) * ips / r['peak_flops'])
    body.append([r['model'], r['batch'], f"{r['num_params']:,}", f"{r['macs'] / 1e6:,.1f}"]
                + [_fmt((r['jax'].get(v) or {}).get('images_per_s')) for v in variants]
                + [_loop_cell(jax_best), _fmt(pt.get('images_per_s')),
                   _fmt(r.get('ratio'), '.2f'), _fmt(jax_best.get('compile_s'), '.1f'),
                   f"{_fmt(jax_best.get('peak_rss_mb'))} / {_fmt(pt.get('peak_rss_mb'))}",
                   f"{_fmt(gf(jax_best.get('images_per_s')), '.1f')} / "
                   f"{_fmt(gf(pt.get('images_per_s')), '.1f')}"]
                + ([f"{_fmt(mfu(jax_best.get('images_per_s')), '.1f')}% / "
                    f"{_fmt(mfu(pt.get('images_per_s')), '.1f')}%"] if with_mfu else []))
  return markdown_table(headers, body)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='lenet5,resnet20,resnet56,plain56')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--batch', type=int, default=0, help='0 = the model\'s benchmark batch')
  parser.add_argument('--variants', default='defaults,xla,none',
                      help='defaults: project settings; xla: without the CPU kernels; '
                           'none: XLA defaults (before)')
  parser.add_argument('--min_seconds', type=float, default=5.0,
                      help='each timing window at least this long')
  parser.add_argument('--repeats', type=int, default=3,
                      help='rounds of every variant and PyTorch; figures are medians')
  parser.add_argument('--no_torch', action='store_true')
  parser.add_argument('--json', default=None, help='Also write the results to this file.')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='compute dtype of both frameworks (parameters stay float32)')
  parser.add_argument('--torch_mode', default='eager', choices=('eager', 'compile'),
                      help='PyTorch eager or torch.compile')
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='peak FLOP/s (TFLOP/s) for the MFU column where the device is not in '
                           'PEAK_BF16_FLOPS (e.g. a CPU)')
  args = parser.parse_args()
  global MIN_SECONDS  # pylint: disable=global-statement
  MIN_SECONDS = args.min_seconds
  if args.child:
    kind, name = args.child.split(':')
    batch = args.batch or BATCH[name]
    if kind == 'jax':
      print(json.dumps(jax_child(name, args.steps, batch, args.dtype)))
    else:
      print(json.dumps(torch_child(name, args.steps, batch, args.torch_mode, args.dtype)))
    return
  variants = args.variants.split(',')
  info = machine()
  print(f"# train-step throughput on {info['host_cpu']} [{info['isa']}], {info['date']}; "
        f'{args.steps} timed steps after 2 warm-up steps, median of {args.repeats} rounds',
        flush=True)
  rows = []
  for name in args.models.split(','):
    batch = args.batch or BATCH[name]
    row = {'model': name, 'batch': batch, **model_facts(name), 'jax': {}}
    runs = {v: [] for v in variants + ['pytorch']}
    for _ in range(args.repeats):
      for v in variants:
        runs[v].append(_run_child('jax', name, args.steps, batch, VARIANTS[v],
                                  (f'--dtype={args.dtype}',)))
      runs['pytorch'].append(None if args.no_torch else _run_child(
          'torch', name, args.steps, batch, {}, (f'--torch_mode={args.torch_mode}',
                                                 f'--dtype={args.dtype}')))
    row['jax'] = {v: _median_run(runs[v]) for v in variants}
    row['pytorch'] = _median_run(runs['pytorch'])
    pt = (row['pytorch'] or {}).get('images_per_s')
    ratios = [a['images_per_s'] / b['images_per_s']
              for a, b in zip(runs.get('defaults', []), runs['pytorch']) if a and b]
    row['ratio'] = statistics.median(ratios) if ratios else None
    kind = next((r['device_kind'] for r in row['jax'].values() if r and 'device_kind' in r), None)
    row['peak_flops'] = peak_flops(kind, args.peak_tflops)
    rows.append(row)
    print(f"{name}: " + ', '.join(f"jax[{v}] {_fmt((row['jax'][v] or {}).get('images_per_s'))}"
                                  for v in variants)
          + f", pytorch {_fmt(pt)} img/s", flush=True)
  text = table(rows, variants)
  print(text)
  if args.json:
    command = 'python -m benchmarks.train_step ' + ' '.join(sys.argv[1:])
    with open(args.json, 'w') as f:
      json.dump({'machine': info, 'command': command, 'variants': variants, 'rows': rows,
                 'repeats': args.repeats,
                 'torch': {'mode': args.torch_mode, 'dtype': args.dtype}}, f, indent=2)
      f.write('\n')


if __name__ == '__main__':
  from cnn_jax import xla_setup  # pylint: disable=g-import-not-at-top
  xla_setup.restart_with_fast_malloc()  # first: it restarts the program
  main()
