"""`python -m benchmarks.levers`: the levers' command (benchmarks/levers/__init__.py)."""
from benchmarks import levers
from cnn_jax import runtime

if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  levers.main()
