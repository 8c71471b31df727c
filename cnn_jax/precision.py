"""The computation dtype. `config.dtype='auto'` computes in bfloat16 (parameters, optimizer state
and BatchNorm statistics stay float32) only where the hardware has bfloat16 arithmetic, detected
rather than assumed: TPUs, NVIDIA GPUs from compute capability 8.0 (Ampere), and CPUs with
AVX512_BF16 or AMX-BF16 (x86) or BF16 (Arm). Elsewhere bfloat16 is emulated and slower
(docs/cpu.md), so 'auto' stays float32.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

CPU_BF16_FLAGS = frozenset({'avx512_bf16', 'amx_bf16', 'bf16'})


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
  """The instruction-set flags of this host's CPU (Linux /proc/cpuinfo; empty elsewhere)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        if key.strip() in ('flags', 'Features'):
          return frozenset(value.split())
  except OSError:
    pass
  return frozenset()


def native_bfloat16(device: jax.Device | None = None) -> bool:
  """Whether `device` (default: the first) computes bfloat16 natively."""
  device = device or jax.devices()[0]
  if device.platform == 'tpu':
    return True
  if device.platform == 'gpu':
    capability = getattr(device, 'compute_capability', None)
    try:
      return capability is not None and float(capability) >= 8.0
    except ValueError:
      return False
  if device.platform == 'cpu':
    return bool(cpu_flags() & CPU_BF16_FLAGS)
  return False


def compute_dtype(name: str) -> jnp.dtype:
  """'auto' -> bfloat16 where native, else float32; any other name as itself."""
  if name == 'auto':
    return jnp.dtype(jnp.bfloat16 if native_bfloat16() else jnp.float32)
  return jnp.dtype(name)
