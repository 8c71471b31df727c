"""The process's runtime: the one module that reads the project's environment variables and
applies the XLA, JAX and allocator settings. Importing it, or `cnn_jax`, changes nothing; the
entry points call `start()` first thing, before JAX's backend is used:

    if __name__ == '__main__':
      runtime.start()      # may restart the program once (the allocator), then sets XLA up
      app.run(main)

Variables (each parsed by one function here, with an error naming the valid values):

    CNN_JAX_XLA_DEFAULTS=0      none of the settings below: XLA's, JAX's and the system's own
    CNN_JAX_MALLOC=auto|jemalloc|mimalloc|glibc|system   the allocator start() restarts on
    CNN_JAX_CPU_KERNELS=1|0|NAMES     the default of config.cpu_kernels (auto, off, a comma list)
    CNN_JAX_CONV_KERNEL_GRADIENT=direct|onednn  the CPU convolution kernel's weight gradient
    CNN_JAX_CONV_WINOGRAD=1|0   3x3 CPU convolutions by Winograd's F(2x2, 3x3) where it applies
    CNN_JAX_CACHE_DIR=DIR       decoded datasets, compiled executables and kernels
                                (default $XDG_CACHE_HOME/cnn_jax, i.e. ~/.cache/cnn_jax)
    CNN_JAX_SYNC_TIMEOUT_S=S    how long processes wait for each other at a barrier (3600)
    JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAX_COORDINATOR_ADDRESS   the cluster of
                                config.distributed (else jax's auto-detection)
    CXX                         the C++ compiler that builds the CPU kernels

What `start()` applies, each skipped where the user already chose (a flag of the same name in
`XLA_FLAGS`, a `JAX_*` variable set); `applied()` says what, for results.json and reports:

* the host allocator (`restart_with_fast_malloc`): XLA's CPU runtime allocates each step's
  buffers afresh, and glibc returns large blocks to the kernel at once, so every step faults them
  in again. The program restarts once on an allocator that keeps freed pages: mimalloc from the
  cmeel-mimalloc wheel (requirements.txt), else jemalloc where libjemalloc.so.2 is installed,
  else glibc's malloc with transparent huge pages (docs/cpu.md has the figures);
* XLA's CPU flags (`cpu_flags`): YNNPACK fusions for dots and reductions, and for elementwise
  ops too where the CPU kernels will not run; GPU and TPU executables are unchanged;
* JAX's persistent compilation cache in `$CNN_JAX_CACHE_DIR/jax`, keeping compilations of 0.1 s
  and more (JAX's default is 1 s).
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import re
import shutil
import sys

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=dot,reduce',)
# Where the CPU kernels will not run (turned off, or several host devices), XLA runs every layer
# and YNN's elementwise fusions pay again (docs/cpu.md).
CPU_FLAGS_XLA_OPS = ('--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',)
KERNELS_OFF = ('0', 'none', 'off', 'false', '')  # CNN_JAX_CPU_KERNELS values that turn all off
CPU_KERNEL_NAMES = ('conv2d', 'batch_norm')  # cnn_jax.kernels.library.KERNELS
KERNEL_GRADIENT_CHOICES = ('direct', 'onednn')  # CNN_JAX_CONV_KERNEL_GRADIENT
# The first jaxlib known to accept the flags above; older ones abort on unknown XLA flags.
MIN_JAXLIB = (0, 10)
CACHE_MIN_COMPILE_SECS = '0.1'
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'  # glibc >= 2.35: madvise(MADV_HUGEPAGE) in malloc
JEMALLOC_CONF = 'dirty_decay_ms:-1,muzzy_decay_ms:-1'  # freed pages stay with the process
JEMALLOC_DIRS = ('/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64',
                 '/usr/lib', '/usr/local/lib')
MALLOC_CHOICES = ('auto', 'jemalloc', 'mimalloc', 'glibc', 'system')
MIMALLOC_DIST = 'cmeel-mimalloc'  # a wheel shipping libmimalloc.so.3 (requirements.txt)
MIMALLOC_OPTIONS = {'MIMALLOC_PURGE_DELAY': '-1'}  # freed pages stay with the process


def cache_dir() -> pathlib.Path:
  """The project's cache folder: decoded datasets, compiled executables."""
  root = os.environ.get('CNN_JAX_CACHE_DIR')
  if root:
    return pathlib.Path(root)
  xdg = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(xdg) / 'cnn_jax'


_applied: dict = {}


def start() -> dict:
  """An entry point's first call: every variable checked (a bad one stops the program with one
  line naming the fix), the allocator (may restart the program), then `configure()`."""
  try:
    check_environment()
  except ValueError as err:
    sys.exit(f'error: {err}')
  restart_with_fast_malloc()
  return configure()


def check_environment() -> None:
  """Parses every variable this module reads; ValueError naming the first bad one."""
  for parse in (xla_defaults_on, malloc_choice, cpu_kernels_default, conv_kernel_gradient,
                conv_winograd, sync_timeout_ms, cluster):
    parse()


def configure() -> dict:
  """XLA's CPU flags and JAX's compilation cache, before JAX's backend starts; returns
  `applied()`. Tests and library users who want the project's settings call this."""
  _applied['user_xla_flags'] = _applied.get('user_xla_flags', os.environ.get('XLA_FLAGS', ''))
  if xla_defaults_on():
    if _backend_started():
      raise RuntimeError('cnn_jax.runtime.configure() must run before JAX starts its backend '
                         '(call it first thing in the program).')
    flags = os.environ.get('XLA_FLAGS', '')
    extra = [f for f in cpu_flags(flags) if f.split('=')[0] not in flags]
    if extra and _jaxlib_version() >= MIN_JAXLIB:
      os.environ['XLA_FLAGS'] = ' '.join([flags] + extra).strip()
    import jax  # pylint: disable=g-import-not-at-top  (not before the allocator restart)
    if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
      jax.config.update('jax_compilation_cache_dir', str(cache_dir() / 'jax'))
    if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
      jax.config.update('jax_persistent_cache_min_compile_time_secs',
                        float(CACHE_MIN_COMPILE_SECS))
  _applied['configured'] = True
  return applied()


def child_environment(*pythonpath: str) -> dict[str, str]:
  """This process's environment for a child Python process, with `pythonpath` put first on its
  PYTHONPATH (so the child imports the same cnn_jax)."""
  paths = [*pythonpath, os.environ.get('PYTHONPATH', '')]
  return {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in paths if p)}


def user_xla_flags() -> str:
  """XLA_FLAGS as the user set them, before `configure()` added the project's."""
  return _applied.get('user_xla_flags', os.environ.get('XLA_FLAGS', ''))


def applied() -> dict:
  """What this process runs with: XLA flags (the user's and the project's), allocator, CPU
  kernels' default, threads, compilation cache."""
  import jax  # pylint: disable=g-import-not-at-top  (not before the allocator restart)
  return {
      'runtime_configured': bool(_applied.get('configured')),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'user_xla_flags': user_xla_flags(),
      'malloc': current_malloc(),
      'cpu_kernels_default': cpu_kernels_default(),
      'cpu_threads': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                     else os.cpu_count(),
      'compilation_cache': home_relative(jax.config.jax_compilation_cache_dir or ''),
  }


def home_relative(path: str) -> str:
  """`path` with the user's home folder written as '~', for records that leave this machine."""
  home = os.path.expanduser('~').rstrip(os.sep)
  if home and (path == home or path.startswith(home + os.sep)):
    return '~' + path[len(home):]
  return path


def _backend_started() -> bool:
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top  (as above)
  return bool(xla_bridge._backends)  # pylint: disable=protected-access


def xla_defaults_on() -> bool:
  """`CNN_JAX_XLA_DEFAULTS`: 1 (default) or 0."""
  value = os.environ.get('CNN_JAX_XLA_DEFAULTS', '1').strip()
  if value not in ('0', '1'):
    raise ValueError(f'CNN_JAX_XLA_DEFAULTS={value!r}: use 1 (the project\'s settings, the '
                     'default) or 0 (XLA\'s, JAX\'s and the system\'s own).')
  return value == '1'


def cpu_flags(xla_flags: str = '') -> tuple[str, ...]:
  """CPU_FLAGS, or CPU_FLAGS_XLA_OPS where the CPU kernels will not be used: turned off
  (`CNN_JAX_CPU_KERNELS=0`) or several forced host devices in `xla_flags` (cnn_jax.kernels.ops
  keeps XLA's ops for programs over several devices)."""
  kernels_off = cpu_kernels_default() == 'off'
  devices = re.search(r'--xla_force_host_platform_device_count=(\d+)', xla_flags)
  if kernels_off or (devices and int(devices.group(1)) > 1):
    return CPU_FLAGS_XLA_OPS
  return CPU_FLAGS


def cpu_kernels_default() -> str:
  """config.cpu_kernels' default from `CNN_JAX_CPU_KERNELS`: unset or 1/all/on -> 'auto', one of
  KERNELS_OFF -> 'off', else the comma list of CPU_KERNEL_NAMES it gives."""
  value = os.environ.get('CNN_JAX_CPU_KERNELS', '1').strip().lower()
  if value in ('1', 'all', 'on', 'true', 'auto'):
    return 'auto'
  if value in KERNELS_OFF:
    return 'off'
  names, unknown = kernel_names(value)
  if unknown:
    raise ValueError(f'CNN_JAX_CPU_KERNELS={value!r} names unknown kernels {unknown}; use 1 (all), '
                     f'0 (none) or a comma list of {list(CPU_KERNEL_NAMES)}.')
  return ','.join(names)


def kernel_names(value: str) -> tuple[tuple[str, ...], list[str]]:
  """A comma list of CPU kernels: (the names, the ones not in CPU_KERNEL_NAMES)."""
  names = tuple(n.strip() for n in str(value).split(',') if n.strip())
  return names, sorted(set(names) - set(CPU_KERNEL_NAMES))


def conv_kernel_gradient() -> str:
  """`CNN_JAX_CONV_KERNEL_GRADIENT`: 'direct' (default: cnn_jax's own kernel gradient where it
  applies: float32 on AVX2, bfloat16 on AVX-512 BF16) or 'onednn' (oneDNN's everywhere)."""
  value = os.environ.get('CNN_JAX_CONV_KERNEL_GRADIENT', 'direct')
  if value not in KERNEL_GRADIENT_CHOICES:
    raise ValueError(f'CNN_JAX_CONV_KERNEL_GRADIENT={value!r}: use one of '
                     f'{list(KERNEL_GRADIENT_CHOICES)} (direct, the default, is cnn_jax\'s own '
                     'kernel gradient where it applies; onednn keeps oneDNN\'s everywhere).')
  return value


def conv_winograd() -> bool:
  """`CNN_JAX_CONV_WINOGRAD`: 1 (default: the CPU convolution's forward, input gradient and
  kernel gradient by Winograd's F(2x2, 3x3) where it applies: float32 3x3 stride-1 convolutions, AVX2 or AVX-512)
  or 0 (oneDNN's everywhere)."""
  value = os.environ.get('CNN_JAX_CONV_WINOGRAD', '1')
  if value not in ('0', '1'):
    raise ValueError(f'CNN_JAX_CONV_WINOGRAD={value!r}: use 1 (the default, Winograd where it '
                     'applies) or 0 (oneDNN\'s convolutions everywhere).')
  return value == '1'


def sync_timeout_ms() -> int:
  """`CNN_JAX_SYNC_TIMEOUT_S` (default 3600) in milliseconds."""
  value = os.environ.get('CNN_JAX_SYNC_TIMEOUT_S', '3600')
  try:
    seconds = float(value)
  except ValueError:
    seconds = -1.0
  if seconds <= 0:
    raise ValueError(f'CNN_JAX_SYNC_TIMEOUT_S={value!r}: give a positive number of seconds.')
  return int(seconds * 1000)


def cluster() -> dict:
  """jax.distributed.initialize's arguments from JAX_NUM_PROCESSES, JAX_PROCESS_ID and
  JAX_COORDINATOR_ADDRESS; {} (jax's own auto-detection) when JAX_NUM_PROCESSES is unset."""
  if not os.environ.get('JAX_NUM_PROCESSES'):
    return {}
  try:
    return dict(coordinator_address=os.environ.get('JAX_COORDINATOR_ADDRESS'),
                num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                process_id=int(os.environ.get('JAX_PROCESS_ID', '')))
  except ValueError:
    raise ValueError('JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers (set both, and '
                     'JAX_COORDINATOR_ADDRESS=host:port of process 0).') from None


def cpu_collectives_chosen() -> bool:
  """Whether the user chose JAX's CPU collectives (JAX_CPU_COLLECTIVES_IMPLEMENTATION)."""
  return bool(os.environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'))


def cxx() -> str | None:
  """The C++ compiler for the CPU kernels: $CXX, else g++ or c++ on the PATH."""
  return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')


def _jaxlib_version() -> tuple[int, ...]:
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(p) for p in version.split('.')[:2] if p.isdigit())


def malloc_choice() -> str:
  """`CNN_JAX_MALLOC`, checked: one of MALLOC_CHOICES ('system' under CNN_JAX_XLA_DEFAULTS=0)."""
  if not xla_defaults_on():
    return 'system'
  choice = os.environ.get('CNN_JAX_MALLOC', 'auto').strip().lower() or 'auto'
  if choice not in MALLOC_CHOICES:
    raise ValueError(f'CNN_JAX_MALLOC={choice!r} is not one of {", ".join(MALLOC_CHOICES)}; '
                     'unset it for the default (auto: mimalloc, else jemalloc, where installed, '
                     'else glibc on huge pages).')
  return choice


def find_jemalloc() -> str | None:
  """The path of libjemalloc.so.2 in the usual library folders, or None."""
  for folder in JEMALLOC_DIRS:
    path = os.path.join(folder, 'libjemalloc.so.2')
    if os.path.isfile(path):
      return path
  return None


def find_mimalloc() -> str | None:
  """The path of libmimalloc.so.3 of the installed cmeel-mimalloc wheel, or None."""
  try:
    files = importlib.metadata.distribution(MIMALLOC_DIST).files or ()
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if f.name == 'libmimalloc.so.3':
      path = str(f.locate())
      return path if os.path.isfile(path) else None
  return None


def malloc_env(choice: str, environ: dict[str, str]) -> dict[str, str] | None:
  """The variables to restart with for `choice`, or None to keep the environment as it is."""
  preload = environ.get('LD_PRELOAD', '')
  tunables = environ.get('GLIBC_TUNABLES', '')
  if choice == 'system' or any(n in preload for n in ('jemalloc', 'tcmalloc', 'mimalloc')):
    return None
  if choice == 'mimalloc' or (choice == 'auto' and find_mimalloc()):
    path = find_mimalloc()
    if not path:
      raise RuntimeError(f'CNN_JAX_MALLOC=mimalloc, but {MIMALLOC_DIST} is not installed: pip '
                         f'install {MIMALLOC_DIST} (requirements.txt) or set CNN_JAX_MALLOC=auto.')
    return {'LD_PRELOAD': ':'.join(filter(None, [path, preload])),
            **{k: environ.get(k, v) for k, v in MIMALLOC_OPTIONS.items()}}
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
  preload = [p for p in env.pop('LD_PRELOAD', '').split(':')
             if p and 'jemalloc' not in p and 'mimalloc' not in p]
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
  if 'mimalloc' in os.environ.get('LD_PRELOAD', ''):
    options = ','.join(f'{k}={v}' for k, v in os.environ.items() if k.startswith('MIMALLOC_'))
    return f"mimalloc ({options or 'its defaults'})"
  if 'glibc.malloc.hugetlb=1' in os.environ.get('GLIBC_TUNABLES', ''):
    return 'glibc, huge pages'
  return 'system'


def restart_with_fast_malloc() -> None:
  """Re-executes this program (same interpreter and arguments) on mimalloc, jemalloc or glibc's
  malloc with transparent huge pages (module docstring), unless it runs so already or is told not
  to.

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
