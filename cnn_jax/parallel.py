"""Devices: the data-parallel mesh, shardings and multi-host start-up.

Training is data-parallel with `jit` and `NamedSharding`: parameters are replicated, every
batch is split along the mesh's 'data' axis, and XLA inserts the gradient all-reduce. Batch
statistics (BatchNorm) are computed over the global batch because the computation is written
for the global array.

Multi-process (several hosts, or several processes on one machine): `config.distributed=True`
calls `jax.distributed.initialize`. Its coordinator address, process count and id come from
`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` when set (what
`scripts/launch_local.py` sets), otherwise from jax's cluster auto-detection (SLURM, Open MPI,
Kubernetes, Cloud TPU). CPU collectives between processes use gloo.
"""
from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint  # noqa: F401  (defines orbax's flags)
from absl import flags
from jax._src import distributed
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cnn_jax import runtime
from cnn_jax.errors import ConfigError

DATA_AXIS = 'data'


def maybe_initialize_distributed(enabled: bool) -> bool:
  """Joins the other processes when `enabled`; True if this call initialised jax.distributed.

  Must run before anything else touches a JAX device in the process.
  """
  if not enabled or jax.distributed.is_initialized():
    return False
  kwargs = runtime.cluster()
  if not runtime.cpu_collectives_chosen():
    # Cross-process collectives of the CPU backend (only the CPU backend reads this setting).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  _orbax_barriers_without_collectives()
  return True


def _orbax_barriers_without_collectives() -> None:
  """Orbax's barriers on the coordination service rather than on device collectives (orbax's
  flag --experimental_orbax_use_distributed_barrier; see the comment above _client for why)."""
  name = 'experimental_orbax_use_distributed_barrier'
  if name in flags.FLAGS:
    flags.FLAGS[name].value = True
    flags.FLAGS[name].present = 1  # readable before absl parses the command line (tests)


def process_count() -> int:
  return jax.process_count()


# Agreement between processes goes through jax.distributed's coordination service (a key-value
# store and barriers on the host), not through device collectives: it never waits for the
# devices, and its timeout is ours. (Gloo, the CPU collectives, gives a new group of devices 30 s
# to meet, which a process still compiling can miss.) Timeout: runtime.sync_timeout_ms().
_rounds: dict[str, int] = {}


def _client():
  return distributed.global_state.client


def _next_key(name: str) -> str:
  """A key per call of `name`; every process calls in the same order, so keys match."""
  _rounds[name] = _rounds.get(name, 0) + 1
  return f'cnn_jax/{name}/{_rounds[name]}'


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is True on any; every process must call it at the same
  point of its program (free with one process)."""
  if jax.process_count() == 1:
    return bool(flag)
  client, me, n = _client(), jax.process_index(), jax.process_count()
  key = _next_key('any')
  client.key_value_set(f'{key}/{me}', '1' if flag else '0')
  result = any(client.blocking_key_value_get(f'{key}/{i}', runtime.sync_timeout_ms()) == '1'
               for i in range(n))
  round_ = _rounds['any']
  if round_ > 2:  # every process has read round - 2 before it wrote round - 1
    client.key_value_delete(f'cnn_jax/any/{round_ - 2}/{me}')
  return result


def all_processes(flag: bool) -> bool:
  """True on every process if `flag` is True on all of them (same calling rule as any_process)."""
  return not any_process(not flag)


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier called `name` (no device collective)."""
  if jax.process_count() > 1:
    _client().wait_at_barrier(_next_key(name), runtime.sync_timeout_ms())


class CompiledTogether:
  """A jitted function that, in a multi-process run, is compiled ahead of its first call and
  then waits for every process before running.

  Compile times differ between processes (load, a compilation-cache hit on one host only); the
  barrier keeps the first collective of the program from timing out on a process still
  compiling. With one process it is the jitted function itself.
  """

  def __init__(self, jitted, name: str):
    self._jitted, self._name, self._compiled = jitted, name, None

  def __call__(self, *args):
    if jax.process_count() == 1:
      return self._jitted(*args)
    if self._compiled is None:
      self._compiled = self._jitted.lower(*args).compile()
      barrier(f'compiled/{self._name}')
    return self._compiled(*args)


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
    lower, upper = batch_size // n * n, -(-batch_size // n) * n
    near = ' or '.join(str(b) for b in (lower, upper) if b > 0)
    raise ConfigError(f'config.{what}={batch_size} is not divisible by the {n} devices; use a '
                      f'multiple of {n}. Did you mean {near}?')


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
