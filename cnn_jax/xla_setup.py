"""Process-wide XLA and JAX settings, applied once, before JAX is first imported.

`cnn_jax/__init__.py` calls `configure()`, so any `import cnn_jax...` that comes before
`import jax` gets them. Each is skipped where the user already chose (a flag of the same name in
`XLA_FLAGS`, a `JAX_*` variable set), and `CNN_JAX_XLA_DEFAULTS=0` turns all of them off.

* CPU: XLA's YNNPACK fusions for dots, elementwise ops and reductions. Measured on a training
  step of ResNet-20 (batch 128): 3.2x on an AVX2 EPYC (47 -> 151 images/s) and 1.2x on an
  AVX-512 one; adding `individual_convolution`, XNNPACK or oneDNN fusions was slower
  (benchmarks/results/levers.md). These flags only touch XLA's CPU backend: GPU and TPU
  executables are unchanged.
* Persistent compilation cache in `$CNN_JAX_CACHE_DIR/jax` (default `~/.cache/cnn_jax/jax`),
  so rerunning an experiment or the tests skips recompiling what did not change. JAX writes only
  executables that took at least `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` to compile (1 s
  by default); the project lowers that to 0.1 s, so the many sub-second compilations of small
  models and of the tests are kept too (benchmarks/results/suite_compile_cache.md). The folder
  only holds derived files: delete it at any time.
* Host memory: `restart_with_huge_pages()`, called first by the command-line entry points,
  restarts the program once with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, so glibc backs large
  allocations with transparent huge pages. XLA's CPU runtime allocates a step's buffers afresh
  at every execution (hundreds of MB for ResNet-20 at batch 128); on 4 KiB pages each step
  faulted ~59,000 of them in, ~20% of the CPU time (benchmarks/results/levers.md, section 8).
  `CNN_JAX_HUGE_PAGES=0` (or `CNN_JAX_XLA_DEFAULTS=0`) keeps the program as started.
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import sys

CPU_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',)
# The first jaxlib known to accept the flags above; older ones abort on unknown XLA flags.
MIN_JAXLIB = (0, 10)
CACHE_MIN_COMPILE_SECS = '0.1'
HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'  # glibc >= 2.35: madvise(MADV_HUGEPAGE) in malloc


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
    extra = [f for f in CPU_FLAGS if f.split('=')[0] not in flags]
    if extra:
      os.environ['XLA_FLAGS'] = ' '.join([flags] + extra).strip()
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(cache_dir() / 'jax'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', CACHE_MIN_COMPILE_SECS)


def _jaxlib_version() -> tuple[int, ...]:
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(p) for p in version.split('.')[:2] if p.isdigit())


def restart_with_huge_pages() -> None:
  """Re-executes this program (same interpreter and arguments) with glibc's malloc on
  transparent huge pages, unless that is set already, turned off, or not glibc >= 2.35 on Linux.

  glibc reads its tunables only at start-up, hence the restart; call this first thing in a
  program's entry point (nothing the program did before it is undone, and it runs again).
  """
  if (os.environ.get('CNN_JAX_HUGE_PAGES', '1') == '0'
      or os.environ.get('CNN_JAX_XLA_DEFAULTS', '1') == '0'):
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  if 'glibc.malloc.hugetlb' in tunables or not _glibc_at_least(2, 35):
    return
  argv = getattr(sys, 'orig_argv', None)
  if not argv or not sys.executable:
    return
  os.environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [tunables, HUGE_PAGES_TUNABLE]))
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
