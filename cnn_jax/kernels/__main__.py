"""`python -m cnn_jax.kernels`: builds the CPU kernels for this machine and prints their status.

Exit code 0 when every kernel that CNN_JAX_CPU_KERNELS asks for is built, 1 otherwise (the
message says why; training still works, with XLA's ops in their place).
"""
import sys
import warnings

from cnn_jax import runtime
from cnn_jax.kernels import library


def main() -> int:
  warnings.simplefilter('ignore', RuntimeWarning)  # reported below instead
  for name in sorted(library.requested()):
    library.load(name)
  status = library.status()
  for name, state in status.items():
    print(f'{name}: {state}')
  return int(any(s.startswith('unavailable') for s in status.values()))


if __name__ == '__main__':
  runtime.configure()  # the compilation settings the programs use; no allocator restart
  sys.exit(main())
