"""This machine's peak FLOP/s, measured by a small FMA loop (benchmarks/fma_peak.cc), not assumed.

    python -m benchmarks.peak

Every usable core runs independent chains of vector FMAs for `seconds`; the best of `repeats`
runs is the peak: float32, and bfloat16 dot products where the CPU has avx512_bf16 (0 where it
has not). The benchmark table divides achieved GFLOP/s by it.
"""
from __future__ import annotations

import ctypes
import json
import os
import pathlib

SOURCE = pathlib.Path(__file__).resolve().parent / 'fma_peak.cc'
FLAGS = ['-O3', '-std=c++17', '-shared', '-fPIC', '-march=native', '-pthread']


def threads() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _library() -> ctypes.CDLL:
  from cnn_jax.kernels import library  # pylint: disable=g-import-not-at-top  (imports jax)
  lib = ctypes.CDLL(str(library.compile_shared('fma_peak', [SOURCE], FLAGS)))
  for name in ('CnnJaxFloat32Peak', 'CnnJaxBfloat16Peak'):
    getattr(lib, name).restype = ctypes.c_double
    getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_double]
  return lib


def measure(seconds: float = 0.5, repeats: int = 3) -> dict:
  """{'float32': FLOP/s, 'bfloat16': FLOP/s or None, 'threads': n}: the best of `repeats` runs."""
  lib, n = _library(), threads()
  f32 = max(lib.CnnJaxFloat32Peak(n, seconds) for _ in range(repeats))
  bf16 = max(lib.CnnJaxBfloat16Peak(n, seconds) for _ in range(repeats))
  return {'float32': f32, 'bfloat16': bf16 or None, 'threads': n}


if __name__ == '__main__':
  print(json.dumps(measure(), indent=2))
