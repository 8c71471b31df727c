"""Devices: the data-parallel mesh, shardings and multi-host start-up.

Training is data-parallel with `jit` and `NamedSharding`: parameters are replicated, every
batch is split along the mesh's 'data' axis, and XLA inserts the gradient all-reduce. Batch
statistics (BatchNorm) are computed over the global batch because the computation is written
for the global array.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def maybe_initialize_distributed(enabled: bool) -> None:
  """Multi-host: coordinator address, process count and id come from the environment (or the
  cluster auto-detection of jax.distributed, e.g. SLURM, TPU pods)."""
  if enabled and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, what: str = 'batch_size') -> None:
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(f'config.{what}={batch_size} is not divisible by the {n} devices; '
                     f'use a multiple of {n}.')


def device_summary() -> dict:
  devices = jax.devices()
  return {
      'platform': devices[0].platform,
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'local_device_count': jax.local_device_count(),
      'process_count': jax.process_count(),
  }


def is_main_process() -> bool:
  return jax.process_index() == 0


def host_scalar(x) -> float:
  return float(np.asarray(jax.device_get(x)))
