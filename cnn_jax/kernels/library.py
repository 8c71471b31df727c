"""Builds, caches and loads the C++ kernels beside this file, and registers them with XLA.

Each kernel is one shared library compiled on first use with the machine's C++ compiler
(`$CXX`, else g++), for this CPU (`-march=native`), into `$CNN_JAX_CACHE_DIR/kernels/`, named by
a hash of everything that goes into it (sources, flags, compiler, jaxlib, CPU flags, oneDNN), so
a cache shared between different machines keeps one build per machine kind. Builds are atomic
(compiled to a temporary name, then renamed) and serialised between processes by a file lock.
`python -m cnn_jax.kernels` builds them ahead of time and prints their status.

A kernel that cannot be had (no compiler, no oneDNN, not Linux, a failed build) is reported once
as a warning that names the cause and the fix, and the layers use XLA's own ops instead.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import jax

from cnn_jax import runtime

ENV = 'CNN_JAX_CPU_KERNELS'  # read by cnn_jax.runtime: the default of config.cpu_kernels
HERE = pathlib.Path(__file__).resolve().parent
ONEDNN = ('onednn-cpu-gomp', 'onednn-devel-cpu-gomp')  # runtime library, headers
ONEDNN_PIN = '2023.2.0'


@dataclasses.dataclass(frozen=True)
class Kernel:
  sources: tuple[str, ...]
  targets: tuple[str, ...]  # FFI handler symbols, registered under the same names
  onednn: bool = False


KERNELS = {
    'conv2d': Kernel(('conv_onednn.cc',), ('CnnJaxConv2dForward', 'CnnJaxConv2dBackwardData',
                                           'CnnJaxConv2dBackwardWeights'), onednn=True),
    'batch_norm': Kernel(('batch_norm.cc',), ('CnnJaxBatchNormForward', 'CnnJaxBatchNormBackward',
                                              'CnnJaxBatchNormAddReluForward',
                                              'CnnJaxBatchNormAddReluBackward')),
}
HEADERS = ('parallel_for.h', 'conv_kernel_gradient.h', 'conv_kernel_gradient_bf16.h',
           'conv_winograd.h')


class Unavailable(RuntimeError):
  """A kernel cannot be built or loaded here; the message names the cause and the fix."""


def requested() -> frozenset[str]:
  """The kernels `CNN_JAX_CPU_KERNELS` (config.cpu_kernels' default) asks for: all by default."""
  value = runtime.cpu_kernels_default()
  if value == 'auto':
    return frozenset(KERNELS)
  return frozenset() if value == 'off' else frozenset(runtime.kernel_names(value)[0])


_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL] = {}
_failed: dict[str, str] = {}


def load(name: str) -> bool:
  """Builds (once per machine), loads and registers kernel `name`; False if it cannot be had."""
  if name in _loaded:
    return True
  with _lock:
    if name in _loaded:
      return True
    if name in _failed:
      return False
    try:
      path = build(name)
      lib = ctypes.CDLL(str(path))
      for target in KERNELS[name].targets:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)),
                                    platform='cpu')
    except (Unavailable, OSError, AttributeError) as e:
      _failed[name] = str(e)
      warnings.warn(f'cnn_jax CPU kernel {name!r} is unavailable, so its layers use XLA\'s own '
                    f"ops (slower on CPUs): {e} (set config.cpu_kernels='off' or {ENV}=0 to "
                    'silence this).', RuntimeWarning, stacklevel=3)
      return False
    _loaded[name] = lib
    return True


def status() -> dict[str, str]:
  """Per kernel: 'on', 'off (CNN_JAX_CPU_KERNELS)', 'not loaded yet' or 'unavailable: why'."""
  wanted = requested()
  out = {}
  for name in KERNELS:
    if name not in wanted:
      out[name] = f'off ({ENV})'
    elif name in _loaded:
      out[name] = 'on'
    elif name in _failed:
      out[name] = f'unavailable: {_failed[name]}'
    else:
      out[name] = 'not loaded yet'
  return out


def build(name: str) -> pathlib.Path:
  """The path of kernel `name`'s shared library for this machine, compiling it if needed."""
  kernel = KERNELS[name]
  if not sys.platform.startswith('linux'):
    raise Unavailable(f'the kernels are built on Linux only (this is {sys.platform})')
  flags = ['-O3', '-std=c++17', '-shared', '-fPIC', '-DNDEBUG', '-march=native',
           f'-I{HERE}', f'-I{jax.ffi.include_dir()}']
  libs = []
  if kernel.onednn:
    include, library = onednn_paths()
    flags.append(f'-I{include}')
    libs = [f'-L{library.parent}', f'-l:{library.name}', '-lgomp',
            f'-Wl,-rpath,{library.parent}']
  return compile_shared(name, [HERE / s for s in kernel.sources], flags, libs,
                        [HERE / h for h in HEADERS])


def compile_shared(stem: str, sources: list[pathlib.Path], flags: list[str],
                   libs: list[str] = (), headers: list[pathlib.Path] = ()) -> pathlib.Path:
  """The shared library of `sources` built with `flags` (and `libs`) for this machine, in the
  cache folder under `stem`-<hash of everything that goes into it>.so, compiled if needed
  (atomically, one process at a time); Unavailable where it cannot be built."""
  cxx = runtime.cxx()
  if not cxx or not shutil.which(cxx):
    raise Unavailable('no C++ compiler found: install g++ (Debian: apt-get install g++) or set '
                      'CXX')
  digest = hashlib.sha256()
  for part in ([p.read_bytes() for p in [*sources, *headers]] +
               [' '.join([*flags, *libs]).encode(), _compiler_version(cxx).encode(),
                importlib.metadata.version('jaxlib').encode(), _cpu_signature().encode()]):
    digest.update(part)
    digest.update(b'\0')
  folder = runtime.cache_dir() / 'kernels'
  target = folder / f'{stem}-{digest.hexdigest()[:16]}.so'
  if target.exists():
    return target
  try:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / '.lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same file
      if target.exists():
        return target
      fd, tmp = tempfile.mkstemp(prefix=f'.{stem}-', suffix='.so', dir=folder)
      os.close(fd)
      try:
        command = [cxx, *flags, *map(str, sources), '-o', tmp, *libs]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode:
          tail = '\n'.join(result.stderr.strip().splitlines()[-15:])
          raise Unavailable(f'compiling {", ".join(p.name for p in sources)} failed (exit '
                            f'{result.returncode}):\n{" ".join(command)}\n{tail}')
        os.chmod(tmp, 0o755)  # mkstemp's 0600 would hide it from other users of a shared cache
        os.replace(tmp, target)
      finally:
        if os.path.exists(tmp):
          os.unlink(tmp)
  except OSError as e:
    raise Unavailable(f'cannot write the build to {folder}: {e}') from e
  return target


def onednn_paths() -> tuple[pathlib.Path, pathlib.Path]:
  """(include folder, libdnnl.so.3) of the pip-installed oneDNN, or Unavailable with the fix."""
  fix = (f'install oneDNN: pip install {ONEDNN[0]}=={ONEDNN_PIN} {ONEDNN[1]}=={ONEDNN_PIN} '
         f'(x86-64 Linux; requirements.txt pins it)')
  found = {}
  for dist_name, wanted in ((ONEDNN[0], 'libdnnl.so.3'), (ONEDNN[1], 'dnnl.hpp')):
    try:
      dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
      raise Unavailable(f'oneDNN is not installed; {fix}') from None
    for f in dist.files or ():
      if f.name == wanted:
        found[wanted] = pathlib.Path(dist.locate_file(f)).resolve()
  if 'libdnnl.so.3' not in found or 'dnnl.hpp' not in found:
    raise Unavailable(f'the oneDNN installation lacks libdnnl.so.3 or dnnl.hpp; {fix}')
  return found['dnnl.hpp'].parent.parent.parent, found['libdnnl.so.3']


def _compiler_version(cxx: str) -> str:
  try:
    return subprocess.run([cxx, '--version'], capture_output=True, text=True,
                          timeout=60).stdout.splitlines()[0]
  except (OSError, IndexError, subprocess.SubprocessError) as e:
    raise Unavailable(f'{cxx} --version failed: {e}') from e


def _cpu_signature() -> str:
  """What -march=native depends on: the CPU model and its instruction-set flags."""
  try:
    text = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    return platform.machine()
  lines = [l for l in text.splitlines() if l.startswith(('model name', 'flags', 'Features'))]
  return platform.machine() + '\n' + '\n'.join(dict.fromkeys(lines))
