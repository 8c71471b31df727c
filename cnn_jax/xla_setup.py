"""Process-wide XLA and JAX settings, applied once, before JAX is first imported.

`cnn_jax/__init__.py` calls `configure()`, so any `import cnn_jax...` that comes before
`import jax` gets them. Each is skipped where the user already chose (a flag of the same name in
`XLA_FLAGS`, a `JAX_*` variable set), and `CNN_JAX_XLA_DEFAULTS=0` turns all of them off.

* CPU: XLA's YNNPACK fusions for dots and reductions, and for elementwise ops too where the CPU
  kernels will not run (`cpu_flags`). With elementwise ops they made a ResNet-20 training step
  (batch 128, XLA's own convolutions) 3.2x faster on an AVX2 EPYC (47 -> 151 images/s) and 1.2x
  on an AVX-512 one; `individual_convolution`, XNNPACK or oneDNN fusions were slower
  (benchmarks/results/levers.md, section 1). With the convolutions and BatchNorm in cnn_jax's
  CPU kernels, the elementwise fusions stop paying (section 9: the ResNets level, LeNet-5 1.08x
  without them): what is left is small work on few channels (LeNet-5's bias, ReLU and input
  normalisation), which XLA's own loops run faster. Without the kernels they still pay (ResNet-20
  1.2x). These flags only touch XLA's CPU backend: GPU and TPU executables are unchanged.
* Persistent compilation cache in `$CNN_JAX_CACHE_DIR/jax` (default `~/.cache/cnn_jax/jax`),
  so rerunning an experiment or the tests skips recompiling what did not change. JAX writes only
  executables that took at least `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` to compile (1 s
  by default); the project lowers that to 0.1 s, so the many sub-second compilations of small
  models and of the tests are kept too (benchmarks/results/suite_compile_cache.md). The folder
  only holds derived files: delete it at any time.
* Host memory: `restart_with_fast_malloc()`, called first by the command-line entry points,
  restarts the program once on an allocator that keeps the memory a step frees. XLA's CPU
  runtime allocates a step's buffers afresh at every execution (hundreds of MB for ResNet-20 at
  batch 128, 1.6 GB for ResNet-56); glibc returns such blocks to the kernel at once, so every
  step faults them in again (~59,000 4 KiB pages per ResNet-20 step, ~20% of its CPU time). The
  first choice is jemalloc with page decay off (`MALLOC_CONF=dirty_decay_ms:-1,...`: freed
  pages stay with the process, so a step reuses the last one's): ResNet-56's step 1.1-1.4x
  faster than on glibc with huge pages (system CPU time 137 -> 14 ms per step), at ~1.6x the
  peak resident memory. Where there is no
  libjemalloc.so.2 (Debian/Ubuntu: `apt-get install libjemalloc2`), glibc >= 2.35 with
  `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`: transparent huge pages, ~100x fewer faults
  (benchmarks/results/levers.md, section 8). `CNN_JAX_MALLOC` chooses: `auto` (default),
  `jemalloc` (required), `glibc` (huge pages only) or `system` (the program as started, as with
  `CNN_JAX_XLA_DEFAULTS=0`). A program started with jemalloc or tcmalloc already preloaded is
  left as it is.
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import re
import sys

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=dot,reduce',)
# Where the CPU kernels will not run (turned off, or several host devices), XLA runs every layer
# and YNN's elementwise fusions pay again (ResNet-20: 1.2x, levers.md section 9).
CPU_FLAGS_XLA_OPS = ('--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',)
KERNELS_OFF = ('0', 'none', 'off', 'false', '')  # CNN_JAX_CPU_KERNELS values that turn all off
# The first jaxlib known to accept the flags above; older ones abort on unknown XLA flags.
MIN_JAXLIB = (0, 10)
CACHE_MIN_COMPILE_SECS = '0.1'
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'  # glibc >= 2.35: madvise(MADV_HUGEPAGE) in malloc
JEMALLOC_CONF = 'dirty_decay_ms:-1,muzzy_decay_ms:-1'  # freed pages stay with the process
JEMALLOC_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64',
                 '/usr/lib', '/usr/local/lib')
MALLOC_CHOICES = ('auto', 'jemalloc', 'glibc', 'system')


def cache_dir() -> pathlib.Path:
  """The project's cache folder: decoded datasets, compiled executables."""
  root = os.environ.get('CNN_JAX_CACHE_DIR')
  if root:
    return pathlib.Path(root)
  xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(xdg) / 'cnn_jax'


def configure() -> None:
  if os.environ.get('CNN_JAX_XLA_DEFAULTS', '1') == '0':
    return
  if 'jax' in sys.modules:  # too late for XLA_FLAGS; the user imported jax first
    return
  if _jaxlib_version() >= MIN_JAXLIB:
    flags = os.environ.get('XLA_FLAGS', '')
    extra = [f for f in cpu_flags(flags) if f.split('=')[0] not in flags]
    if extra:
      os.environ['XLA_FLAGS'] = ' '.join([flags] + extra).strip()
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(cache_dir() / 'jax'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', CACHE_MIN_COMPILE_SECS)


def cpu_flags(xla_flags: str = '') -> tuple[str, ...]:
  """CPU_FLAGS, or CPU_FLAGS_XLA_OPS where the CPU kernels will not be used: turned off
  (`CNN_JAX_CPU_KERNELS=0`) or several forced host devices in `xla_flags` (cnn_jax.kernels.ops
  keeps XLA's ops for programs over several devices)."""
  kernels_off = os.environ.get('CNN_JAX_CPU_KERNELS', '1').strip().lower() in KERNELS_OFF
  devices = re.search(r'--xla_force_host_platform_device_count=(\d+)', xla_flags)
  if kernels_off or (devices and int(devices.group(1)) > 1):
    return CPU_FLAGS_XLA_OPS
  return CPU_FLAGS


def cpu_kernels_default() -> str:
  """config.cpu_kernels' default from `CNN_JAX_CPU_KERNELS`: unset or 1/all/on -> 'auto', one of
  KERNELS_OFF -> 'off', else the comma list it gives (checked by config validation)."""
  value = os.environ.get('CNN_JAX_CPU_KERNELS', '1').strip().lower()
  if value in ('1', 'all', 'on', 'true', 'auto'):
    return 'auto'
  return 'off' if value in KERNELS_OFF else value


def _jaxlib_version() -> tuple[int, ...]:
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(p) for p in version.split('.')[:2] if p.isdigit())


def malloc_choice() -> str:
  """`CNN_JAX_MALLOC`, checked: one of MALLOC_CHOICES ('system' under CNN_JAX_XLA_DEFAULTS=0)."""
  if os.environ.get('CNN_JAX_XLA_DEFAULTS', '1') == '0':
    return 'system'
  choice = os.environ.get('CNN_JAX_MALLOC', 'auto').strip().lower() or 'auto'
  if choice not in MALLOC_CHOICES:
    raise ValueError(f'CNN_JAX_MALLOC={choice!r} is not one of {", ".join(MALLOC_CHOICES)}; '
                     'unset it for the default (auto: jemalloc where installed, else glibc on '
                     'huge pages).')
  return choice


def find_jemalloc() -> str | None:
  """The path of libjemalloc.so.2 in the usual library folders, or None."""
  for folder in JEMALLOC_DIRS:
    path = os.path.join(folder, 'libjemalloc.so.2')
    if os.path.isfile(path):
      return path
  return None


def malloc_env(choice: str, environ: dict[str, str]) -> dict[str, str] | None:
  """The variables to restart with for `choice`, or None to keep the environment as it is."""
  preload = environ.get('LD_PRELOAD', '')
  tunables = environ.get('GLIBC_TUNABLES', '')
  if choice == 'system' or 'jemalloc' in preload or 'tcmalloc' in preload:
    return None
  if choice in ('auto', 'jemalloc'):
    path = find_jemalloc()
    if path:
      return {'LD_PRELOAD': ':'.join(filter(None, [path, preload])),
              'MALLOC_CONF': environ.get('MALLOC_CONF', JEMALLOC_CONF)}
    if choice == 'jemalloc':
      raise RuntimeError('CNN_JAX_MALLOC=jemalloc, but no libjemalloc.so.2 in '
                         f'{", ".join(JEMALLOC_DIRS)}: install it (Debian/Ubuntu: apt-get install '
                         'libjemalloc2) or set CNN_JAX_MALLOC=auto.')
  if 'glibc.malloc.hugetlb' in tunables or not _glibc_at_least(2, 35):
    return None
  return {'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, HUGE_PAGES_TUNABLE]))}


def with_malloc(choice: str, environ: dict[str, str]) -> dict[str, str]:
  """A copy of `environ` for a child process that runs on allocator `choice` from its start
  (benchmarks compare them): the project's own allocator settings dropped, then `choice`'s."""
  env = dict(environ)
  preload = [p for p in env.pop('LD_PRELOAD', '').split(':') if p and 'jemalloc' not in p]
  tunables = [t for t in env.pop('GLIBC_TUNABLES', '').split(':')
              if t and not t.startswith('glibc.malloc.hugetlb')]
  env.update({k: ':'.join(v) for k, v in (('LD_PRELOAD', preload), ('GLIBC_TUNABLES', tunables))
              if v})
  if env.get('MALLOC_CONF') == JEMALLOC_CONF:
    del env['MALLOC_CONF']
  env['CNN_JAX_MALLOC'] = choice
  env.update(malloc_env(choice, env) or {})
  return env


def current_malloc() -> str:
  """This process's allocator, in words, for benchmark records."""
  if 'jemalloc' in os.environ.get('LD_PRELOAD', ''):
    return f"jemalloc ({os.environ.get('MALLOC_CONF', 'its defaults')})"
  if 'tcmalloc' in os.environ.get('LD_PRELOAD', ''):
    return 'tcmalloc'
  if 'glibc.malloc.hugetlb=1' in os.environ.get('GLIBC_TUNABLES', ''):
    return 'glibc, huge pages'
  return 'system'


def restart_with_fast_malloc() -> None:
  """Re-executes this program (same interpreter and arguments) on jemalloc, or on glibc's malloc
  with transparent huge pages (module docstring), unless it runs so already or is told not to.

  The dynamic loader and glibc read these variables only at start-up, hence the restart; call
  this first thing in a program's entry point (nothing the program did before it is undone, and
  it runs again).
  """
  try:
    update = malloc_env(malloc_choice(), dict(os.environ))
  except (ValueError, RuntimeError) as err:  # a bad CNN_JAX_MALLOC: say so, start nothing
    sys.exit(f'error: {err}')
  argv = getattr(sys, 'orig_argv', None)
  if update is None or not argv or not sys.executable:
    return
  os.environ.update(update)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, argv)


def _glibc_at_least(major: int, minor: int) -> bool:
  if not sys.platform.startswith('linux'):
    return False
  lib, version = platform.libc_ver()
  parts = version.split('.')
  try:
    return lib == 'glibc' and (int(parts[0]), int(parts[1])) >= (major, minor)
  except (IndexError, ValueError):
    return False
