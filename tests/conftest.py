"""Shared test set-up: tests run on the CPU, in float32, deterministic."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
import cnn_jax  # noqa: E402,F401  (XLA settings before any test imports jax)
