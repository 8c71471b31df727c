"""Training-step throughput: cnn_jax's own `train_step` beside a PyTorch twin, on one machine.

    python -m benchmarks.train_step [--models=lenet5,resnet20,resnet56,plain56] [--steps=10]
                                    [--repeats=8] [--variants=defaults,xla,none]
                                    [--torch_modes=eager,compile] [--compare_tree=PATH]
                                    [--json=benchmarks/results/cpu.json]
    # on a GPU: both frameworks in bfloat16, PyTorch compiled, with MFU
    python -m benchmarks.train_step --models=resnet50,resnet20 --variants=defaults \
        --dtype=bfloat16 --torch_modes=compile --json=benchmarks/results/gpu.json

Per model it starts one process for each of these (so XLA flags and memory figures are its own):
* `jax (defaults)`: the loop's jitted `cnn_jax.steps.train_step` as built by the loop's own
  `train.setup` from the model's experiment config (configs/lenet5_mnist.py,
  configs/cifar_resnet.py): the real data on the device, batches gathered and augmented inside
  jit, donated state; with the project's settings: XLA flags (cnn_jax/runtime.py), the CPU
  kernels (cnn_jax/kernels) and the allocator. Timed alone ("step") and inside
  `train.train_loop` ("loop": log points, stop checks, epoch permutations, checkpoints at epoch
  ends), by the loop's own images/s bookkeeping;
* `jax (xla)` (`--variants` includes `xla`): the same without the CPU kernels
  (CNN_JAX_CPU_KERNELS=0): the stock layer set, every layer JAX's own ops;
* `jax (none)`: every project setting off (CNN_JAX_XLA_DEFAULTS=0, no kernels, the system
  allocator, the user's own XLA_FLAGS), i.e. XLA's defaults: the "before" column;
* `jax before` (`--compare_tree=PATH`): `jax (defaults)` as another checkout of the project
  builds it, with that checkout's own code (a git worktree at an earlier commit): before/after;
* `pytorch eager`, `pytorch compile` (`--torch_modes`): the same network in PyTorch,
  channels-last, SGD momentum, eager and torch.compile side by side, on the first CUDA device if
  there is one, else on all CPU cores, on the same allocator as `jax (defaults)`.
Each process compiles, warms up and calibrates its window (at least `--steps` steps and
`--min_seconds`), one process at a time; then they take turns (benchmarks.harness.interleaved):
every round times one window of each (and the loop's window right after the bare step's), in
reverse order every other round, for `--repeats` rounds. The machines this runs on vary by
10-30% from minute to minute; taking turns puts a slow spell on every contender alike, where
separate runs minutes apart (this benchmark until 2026-12-06) could not. Each figure is the median window, the ratio to PyTorch
the median of the rounds' ratios, the loop / step ratio likewise.
`--dtype=bfloat16` makes both compute in bfloat16 with float32 parameters (PyTorch by autocast).
It prints and (with --json) writes images/s, the ratio to PyTorch, compile time (persistent
cache off), peak memory (resident on a CPU, the device's own on an accelerator), achieved
GFLOP/s = 6 x MACs x images/s (forward 2 x MACs, backward twice the forward) as a share of the
CPU's peak, measured by an FMA loop (benchmarks.peak), and, where an accelerator's peak is known
(PEAK_BF16_FLOPS, or --peak_tflops), MFU: that rate over the peak. The README table is generated
from the committed JSON.

As a library (benchmarks.levers, benchmarks.profile_step): the timers `JaxBench` and `TorchBench`,
a lone child's figures `jax_child` / `torch_child`, `bench_config`, and `lone` / `contender`, the
harness's children that run them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks import harness
from cnn_jax import runtime

BATCH = {'lenet5': 64, 'resnet20': 128, 'resnet56': 128, 'plain20': 128, 'plain56': 128,
         'resnet50': 256}
SHAPE = {'lenet5': (32, 32, 1), 'resnet50': (224, 224, 3)}
SHAPE_DEFAULT = (32, 32, 3)
MIN_SECONDS = 5.0  # a lone child's timing window at least this long
WINDOW_S = 2.0  # an interleaved window at least this long (the parent's --min_seconds)
ROUNDS = 8  # rounds of interleaved windows (--repeats)
VARIANTS = {'defaults': {}, 'xla': {'CNN_JAX_CPU_KERNELS': '0'},
            'none': {'CNN_JAX_XLA_DEFAULTS': '0', 'CNN_JAX_CPU_KERNELS': '0'}}


def input_shape(name: str) -> tuple[int, int, int]:
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
  if input_shape(name)[0] != 32:
    config.data.image_size = input_shape(name)[0]  # e.g. ResNet-50 at 224: CIFAR padded, same cost
  return config


def _timed_steps(steps: int, block_seconds: float, min_seconds: float) -> int:
  """Steps to time: at least `steps`, and enough for `min_seconds` at one calibration block's
  pace (a LeNet-5 step takes ~10 ms: 20 steps would be a 0.2 s window, all noise)."""
  return max(steps, int(np.ceil(steps * min_seconds / max(block_seconds, 1e-6))))


class JaxBench:
  """The loop's own train_step, built by the loop's own `setup`: compiled, warmed and calibrated
  on construction; then timing windows of `self.n` steps, bare (`step`) or inside
  `train.train_loop` (`loop`: log points, stop checks, epoch permutations)."""

  def __init__(self, name: str, steps: int, batch: int, dtype: str = 'float32',
               min_seconds: float = MIN_SECONDS):
    import tempfile  # pylint: disable=g-import-not-at-top
    import cnn_jax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (XLA settings first)
    import jax  # pylint: disable=g-import-not-at-top
    from cnn_jax import train  # pylint: disable=g-import-not-at-top
    self.jax, self.train, self.batch, self.dtype = jax, train, batch, dtype
    jax.config.update('jax_enable_compilation_cache', False)  # time a real compile
    config = bench_config(name, batch, dtype)
    config.num_steps = 10**7  # cut to what is timed once the pace is known (below)
    self._workdir = tempfile.TemporaryDirectory()
    self.run, self.state = train.setup(config, pathlib.Path(self._workdir.name))
    run = self.run
    self.totals = train.zero_totals(run.replicated)
    self.perm = run.data.permutation(run.data.data_rng, 0)  # the on-device source's first epoch
    start = time.perf_counter()
    self._steps(1)
    self.compile_s = time.perf_counter() - start  # compile + one step
    self._steps(1)  # warm-up
    start = time.perf_counter()  # calibration block, also more warm-up
    self._steps(steps)
    self.n = _timed_steps(steps, time.perf_counter() - start, min_seconds)
    run.config.log_every_steps = self.n
    self.os_costs, self._loop_warm = None, False

  def _steps(self, count: int) -> None:
    run = self.run
    for i in range(count):
      self.state, self.totals = run.data.step(
          self.state, self.totals, *run.data.train_arrays, self.perm, i % run.steps_per_epoch,
          run.step_rng)
    self.jax.block_until_ready(self.totals)

  def step(self) -> float:
    """images/s of about n bare steps, ending one step before a log point of the loop (so that a
    `loop` window's untimed first interval is a single step)."""
    count = self.n + (-(int(self.state.step) + self.n) - 1) % self.n
    usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    self._steps(count)
    seconds = time.perf_counter() - start
    self.os_costs = self.os_costs or _os_costs_per_step(usage, count)
    return count * self.batch / seconds

  def _train_loop(self, steps: int) -> None:
    self.run.total_steps = int(self.state.step) + steps
    self.state, _ = self.train.train_loop(self.run, self.state, should_stop=lambda step: False)
    self.run.ckpts.wait()  # its last step's checkpoint write: not in the next window

  def loop(self) -> float:
    """The loop's own images/s figure over n steps, after one untimed step (its first interval)."""
    if not self._loop_warm:  # its first log point and epoch permutation
      self._train_loop(2)
      self._loop_warm = True
    book = self.run.book
    images, seconds = book.timed_images, book.train_seconds
    self._train_loop(1 + self.n)
    return (book.timed_images - images) / (book.train_seconds - seconds)

  def summary(self) -> dict:
    jax = self.jax
    stats = jax.devices()[0].memory_stats() or {}  # an accelerator's own memory; None on CPU
    peak = stats['peak_bytes_in_use'] / 2**20 if 'peak_bytes_in_use' in stats else _peak_rss_mb()
    from cnn_jax import kernels  # pylint: disable=g-import-not-at-top
    return {'compile_s': self.compile_s, 'peak_rss_mb': peak, **(self.os_costs or {}),
            'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
            'malloc': runtime.current_malloc(), 'kernels': kernels.status(),
            'jax_version': jax.__version__, 'device_kind': jax.devices()[0].device_kind,
            'dtype': self.dtype}

  def close(self) -> None:
    self.train._close(self.run, quiet=True)  # pylint: disable=protected-access
    self._workdir.cleanup()


def jax_child(name: str, steps: int, batch: int, dtype: str = 'float32') -> dict:
  """A lone child: the bare step's images/s over one window, and the summary."""
  bench = JaxBench(name, steps, batch, dtype)
  try:
    return {'images_per_s': bench.step(), **bench.summary()}
  finally:
    bench.close()


class TorchBench:
  """PyTorch's training step of the twin network on the first CUDA device if there is one, else
  on all CPU cores: channels-last, SGD momentum; `mode` eager or `compile` (torch.compile),
  `dtype` float32 or bfloat16 (autocast: bfloat16 compute, float32 parameters)."""

  def __init__(self, name: str, steps: int, batch: int, mode: str = 'eager',
               dtype: str = 'float32', min_seconds: float = MIN_SECONDS):
    import contextlib  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
    self.torch, self.batch, self.mode, self.dtype = torch, batch, mode, dtype
    self.device = device = 'cuda' if torch.cuda.is_available() else 'cpu'
    torch.set_num_threads(os.cpu_count())
    h, w, c = input_shape(name)
    self.model = model = torch_models.create(name).to(device, memory_format=torch.channels_last)
    self.opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    self.x = torch.randn(batch, c, h, w, device=device).to(memory_format=torch.channels_last)
    self.y = torch.randint(0, 10, (batch,), device=device)
    self.loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    self.forward = torch.compile(model) if mode == 'compile' else model
    self.autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == 'bfloat16' \
        else contextlib.nullcontext
    start = time.perf_counter()
    self._steps(1)
    self.compile_s = time.perf_counter() - start  # first step: torch.compile's compile, or warm-up
    self._steps(3)
    start = time.perf_counter()  # calibration block, also more warm-up
    self._steps(steps)
    self.n = _timed_steps(steps, time.perf_counter() - start, min_seconds)
    self.os_costs = None

  def _steps(self, count: int) -> None:
    for _ in range(count):
      self.opt.zero_grad(set_to_none=True)
      with self.autocast():
        loss = self.loss_fn(self.forward(self.x), self.y)
      loss.backward()
      self.opt.step()
    loss.item()  # waits for the device

  def step(self) -> float:
    usage, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    self._steps(self.n)
    seconds = time.perf_counter() - start
    self.os_costs = self.os_costs or _os_costs_per_step(usage, self.n)
    return self.n * self.batch / seconds

  def summary(self) -> dict:
    from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
    torch = self.torch
    peak = (torch.cuda.max_memory_allocated() / 2**20 if self.device == 'cuda' else _peak_rss_mb())
    return {'peak_rss_mb': peak, 'compile_s': self.compile_s, **(self.os_costs or {}),
            'num_params': torch_models.num_params(self.model), 'torch_version': torch.__version__,
            'device': torch.cuda.get_device_name() if self.device == 'cuda' else 'cpu',
            'mode': self.mode, 'dtype': self.dtype}

  def close(self) -> None:
    pass


def torch_child(name: str, steps: int, batch: int, mode: str = 'eager',
                dtype: str = 'float32') -> dict:
  bench = TorchBench(name, steps, batch, mode, dtype)
  return {'images_per_s': bench.step(), **bench.summary()}


def lone(name: str, steps: int, batch: int = 0, dtype: str = 'float32', env: dict | None = None,
         malloc: str | None = None) -> harness.Child:
  """The harness child of `jax_child` (batch 0: the model's benchmark batch), for
  `harness.call` and `harness.fresh_rounds`."""
  return harness.Child.of(jax_child, env=env, malloc=malloc, name=name, steps=steps,
                          batch=batch or BATCH[name], dtype=dtype)


def contender(kind: str, name: str, steps: int, batch: int = 0, env: dict | None = None,
              window_s: float = WINDOW_S, dtype: str = 'float32',
              torch_mode: str = 'eager', malloc: str | None = None) -> harness.Child:
  """The harness child of a timer (`kind` 'jax': JaxBench, 'torch': TorchBench) with windows of
  at least `window_s` seconds, on allocator `malloc` (None: the parent's), for
  `harness.interleaved`."""
  common = dict(env=env, malloc=malloc, name=name, steps=steps, batch=batch or BATCH[name],
                dtype=dtype, min_seconds=window_s)
  if kind == 'jax':
    return harness.Child.of(JaxBench, **common)
  return harness.Child.of(TorchBench, mode=torch_mode, **common)


def tree_contender(tree: str, name: str, steps: int, batch: int = 0,
                   window_s: float = WINDOW_S, dtype: str = 'float32') -> harness.Child:
  """The served child of `jax (defaults)` as another checkout of the project (`tree`, e.g. a git
  worktree at an earlier commit) builds it, with that checkout's own code: through its
  benchmarks.harness where it has one, else through the `--child --serve` command that
  benchmarks.train_step had before it (same line protocol, float32 only)."""
  batch = batch or BATCH[name]
  if (pathlib.Path(tree) / 'benchmarks' / 'harness.py').exists():
    kwargs = dict(name=name, steps=steps, batch=batch, min_seconds=window_s)
    if dtype != 'float32':  # checkouts from before bfloat16 took no dtype
      kwargs['dtype'] = dtype
    command = ['-m', 'benchmarks.harness', '--call=benchmarks.train_step:JaxBench',
               f'--kwargs={json.dumps(kwargs)}', '--serve']
  else:
    command = ['-m', 'benchmarks.train_step', f'--child=jax:{name}', '--serve', f'--steps={steps}',
               f'--batch={batch}', f'--min_seconds={window_s}']
  return harness.Child('', command=command, cwd=str(tree))


def tree_commit(tree: str) -> str:
  """The short commit of checkout `tree` ('+dirty' with uncommitted changes), or its path."""
  def git(*args):
    return subprocess.run(['git', '-C', str(tree), *args], capture_output=True, text=True,
                          check=False).stdout.strip()
  commit = git('rev-parse', '--short', 'HEAD')
  if not commit:
    return str(tree)
  return commit + ('+dirty' if git('status', '--porcelain', '--untracked-files=no') else '')


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
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + input_shape(name)),
                                                train=False))
  params = sum(int(x.size) for x in jax.tree.leaves(variables['params']))
  return {'num_params': params, 'macs': conv_arithmetic.count_flops(model, input_shape(name)).macs}


def machine(measure_peak: bool = True) -> dict:
  """The host, its vector ISA, the allocator, the date and (`measure_peak`) its measured peak
  FLOP/s (benchmarks.peak)."""
  from cnn_jax import report  # pylint: disable=g-import-not-at-top
  flags = ''
  try:
    text = open('/proc/cpuinfo').read()
    flags = ' '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f' {f}' in text)
  except OSError:
    pass
  info = {'host_cpu': report.host_cpu(), 'isa': flags, 'malloc': runtime.current_malloc(),
          'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')}
  if measure_peak:
    from benchmarks import peak  # pylint: disable=g-import-not-at-top
    info['peak_flops'] = peak.measure()
  return info


def upgrade_record(data: dict) -> dict:
  """A results file in today's form: records from before the side-by-side PyTorch modes (one
  `pytorch` result, one `ratio`, the mode in data['torch']) get them keyed by that mode."""
  mode = data.get('torch', {}).get('mode', 'eager')
  for row in data['rows']:
    if isinstance(row.get('ratio'), (float, int)) or row.get('ratio') is None:
      row['ratio'] = {mode: row.get('ratio')}
    if row.get('pytorch') is None or 'images_per_s' in row['pytorch']:
      row['pytorch'] = {mode: row.get('pytorch')}
  data.setdefault('torch_modes', list(row['pytorch']) if data['rows'] else [mode])
  return data


def _fmt(v, spec=',.0f'):
  return '-' if v is None else format(v, spec)


def _loop_cell(result: dict) -> str:
  """The loop's images/s and its ratio to the bare step: the median of the alternating windows'
  ratios where the child measured them (results before 2026-12-06: one window each)."""
  loop, step = result.get('loop_images_per_s'), result.get('images_per_s')
  if loop is None or not step:
    return '-'
  ratio = result.get('loop_over_step') or loop / step
  return f'{loop:,.0f} ({ratio:.2f})'


def _gflops_cell(row: dict, ips: float | None, peak: float | None) -> str:
  """Achieved GFLOP/s, and its share of the machine's measured peak where known."""
  if ips is None:
    return '-'
  flops = train_flops_per_image(row['macs']) * ips
  return f'{flops / 1e9:.1f}' + (f' ({100 * flops / peak:.0f}%)' if peak else '')


def table(rows: list[dict], variants: list[str], torch_modes: list[str] = ('eager',),
          cpu_peak: float | None = None) -> str:
  """The benchmark table of `rows` (upgrade_record's form); `cpu_peak` (FLOP/s, measured) adds
  each contender's share of it to the GFLOP/s column."""
  from cnn_jax.report import markdown_table  # pylint: disable=g-import-not-at-top
  with_before = any(r.get('before') for r in rows)
  with_mfu = any(r.get('peak_flops') for r in rows)
  headers = ['model', 'batch', 'params', 'MMACs/img']
  headers += [f'jax ({v}) img/s' for v in variants]
  headers += ['jax before img/s (after / before)'] if with_before else []
  headers += ['jax loop img/s (loop / step)'] + [f'pytorch {m} img/s' for m in torch_modes]
  headers += [f'jax / {m}' for m in torch_modes] + ['compile s', 'peak MB jax / torch']
  headers += ['GFLOP/s ' + ' / '.join(['jax', *torch_modes]) + (' (% of peak)' if cpu_peak else '')]
  headers += ['MFU jax / torch'] if with_mfu else []
  body = []
  for r in rows:
    jax_best = r['jax'].get('defaults') or {}
    pts = [(r['pytorch'].get(m) or {}) for m in torch_modes]
    first_pt = pts[0] if pts else {}
    cells = [r['model'], r['batch'], f"{r['num_params']:,}", f"{r['macs'] / 1e6:,.1f}"]
    cells += [_fmt((r['jax'].get(v) or {}).get('images_per_s')) for v in variants]
    if with_before:
      before = r.get('before') or {}
      cells.append(f"{_fmt(before.get('images_per_s'))} ({_fmt(r.get('before_ratio'), '.2f')})")
    cells += [_loop_cell(jax_best)] + [_fmt(pt.get('images_per_s')) for pt in pts]
    cells += [_fmt(r['ratio'].get(m), '.2f') for m in torch_modes]
    cells += [_fmt(jax_best.get('compile_s'), '.1f'),
              f"{_fmt(jax_best.get('peak_rss_mb'))} / {_fmt(first_pt.get('peak_rss_mb'))}"]
    cells.append(' / '.join(_gflops_cell(r, x.get('images_per_s'), cpu_peak)
                            for x in [jax_best, *pts]))
    if with_mfu:
      mfu = lambda ips: (None if ips is None else
                         100 * train_flops_per_image(r['macs']) * ips / r['peak_flops'])
      cells.append(f"{_fmt(mfu(jax_best.get('images_per_s')), '.1f')}% / "
                   f"{_fmt(mfu(first_pt.get('images_per_s')), '.1f')}%")
    body.append(cells)
  return markdown_table(headers, body)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--models', default='lenet5,resnet20,resnet56,plain56')
  p.add_argument('--steps', type=int, default=10,
                 help='steps per window at least (and the calibration block)')
  p.add_argument('--batch', type=int, default=0, help='0 = the model\'s benchmark batch')
  p.add_argument('--variants', default='defaults,xla,none',
                 help='defaults: project settings; xla: stock layers (no CPU kernels); '
                      'none: XLA defaults (before)')
  p.add_argument('--min_seconds', type=float, default=WINDOW_S,
                 help='each timing window at least this long')
  p.add_argument('--repeats', type=int, default=ROUNDS,
                 help='rounds of interleaved windows (every variant and PyTorch, and the '
                      'loop); figures are medians')
  p.add_argument('--no_torch', action='store_true')
  p.add_argument('--json', default=None, help='Also write the results to this file.')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                 help='compute dtype of both frameworks (parameters stay float32)')
  p.add_argument('--torch_modes', default='eager,compile',
                 help='PyTorch contenders, side by side: eager and/or compile (torch.compile)')
  p.add_argument('--compare_tree', default=None,
                 help='also time jax (defaults) as this checkout of the project builds it '
                      '(e.g. a git worktree at an earlier commit): the before column')
  p.add_argument('--peak_tflops', type=float, default=0.0,
                 help='peak FLOP/s (TFLOP/s) for the MFU column where the device is not in '
                      'PEAK_BF16_FLOPS')
  return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command's arguments; a usage error (exit 2) for a model without a twin, an unknown
  variant or PyTorch mode, or a --compare_tree that is no checkout of the project."""
  p = parser()
  args = p.parse_args(argv)
  args.models, args.variants = args.models.split(','), args.variants.split(',')
  args.torch_modes = [] if args.no_torch else args.torch_modes.split(',')
  for flag, given, known in (('--models', args.models, BATCH), ('--variants', args.variants, VARIANTS),
                             ('--torch_modes', args.torch_modes, ('eager', 'compile'))):
    unknown = [x for x in given if x not in known]
    if unknown:
      what = 'no benchmark twin for' if flag == '--models' else 'unknown'
      p.error(f'{flag}: {what} {unknown}; choose from {sorted(known)}.')
  if args.compare_tree and not (pathlib.Path(args.compare_tree) / 'benchmarks' /
                                'train_step.py').exists():
    p.error(f'--compare_tree: {args.compare_tree} is no checkout of this project (no '
            'benchmarks/train_step.py); make one with git worktree add PATH COMMIT.')
  return args


def measure_model(name: str, args: argparse.Namespace) -> dict:
  """One model's table row: every variant's and PyTorch's windows, taking turns."""
  batch = args.batch or BATCH[name]
  row = {'model': name, 'batch': batch, **model_facts(name)}
  children = {v: contender('jax', name, args.steps, batch, VARIANTS[v], args.min_seconds,
                           args.dtype) for v in args.variants}
  if args.compare_tree:
    children['before'] = tree_contender(args.compare_tree, name, args.steps, batch,
                                        args.min_seconds, args.dtype)
  for mode in args.torch_modes:
    children[f'pytorch {mode}'] = contender('torch', name, args.steps, batch, {}, args.min_seconds,
                                            args.dtype, mode)
  results, windows = harness.interleaved(
      children, args.repeats, loop_of='defaults' if 'defaults' in args.variants else None)
  row['jax'] = {v: results[v] for v in args.variants}
  row['pytorch'] = {m: results[f'pytorch {m}'] for m in args.torch_modes}
  row['ratio'] = {m: harness.paired_ratio(windows.get('defaults'), windows.get(f'pytorch {m}'))
                  for m in args.torch_modes}
  if args.compare_tree:
    row['before'] = results['before']
    row['before_ratio'] = harness.paired_ratio(windows.get('defaults'), windows.get('before'))
  kind = next((r['device_kind'] for r in row['jax'].values() if r and 'device_kind' in r), None)
  row['peak_flops'] = peak_flops(kind, args.peak_tflops)
  print(f'{name}: ' + ', '.join(f'{label} {_fmt((r or {}).get("images_per_s"))}'
                                for label, r in results.items())
        + ' img/s; ratio ' + ', '.join(f'{m} {_fmt(x, ".2f")}' for m, x in row['ratio'].items()),
        flush=True)
  return row


def main(argv: list[str] | None = None):
  args = parse_args(argv)
  info = machine()
  if args.compare_tree:
    info['compare_tree'] = tree_commit(args.compare_tree)
  print(f"# train-step throughput on {info['host_cpu']} [{info['isa']}], {info['date']}; "
        f"measured peak {info['peak_flops']['float32'] / 1e9:.0f} GFLOP/s float32; windows of >= "
        f'{args.steps} steps and >= {args.min_seconds:g} s, {args.repeats} interleaved rounds, '
        'medians', flush=True)
  rows = [measure_model(name, args) for name in args.models]
  print(table(rows, args.variants, args.torch_modes, cpu_peak_of(info, args.dtype)))
  if args.json:
    command = 'python -m benchmarks.train_step ' + ' '.join(sys.argv[1:] if argv is None else argv)
    if args.compare_tree:  # the checkout's path is this machine's; its commit is what it means
      command = command.replace(args.compare_tree, f"<checkout of {info['compare_tree']}>")
    with open(args.json, 'w') as f:
      json.dump({'machine': info, 'command': command, 'variants': args.variants, 'rows': rows,
                 'repeats': args.repeats, 'interleaved': True, 'window_s': args.min_seconds,
                 'torch_modes': args.torch_modes, 'torch': {'dtype': args.dtype}}, f, indent=2)
      f.write('\n')


def cpu_peak_of(info: dict, dtype: str) -> float | None:
  """The measured peak FLOP/s of `dtype` in a results file's machine record, if any."""
  return (info.get('peak_flops') or {}).get(dtype)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  main()
