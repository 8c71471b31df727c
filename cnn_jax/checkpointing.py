"""The workdir's durable state: orbax checkpoints, their integrity, and the lock on the workdir.

Checkpoints. Two `CheckpointManager`s: 'latest' (resume; keeps the two newest steps, so a
damaged newest step falls back to the one before) and 'best' (the final test; one step). Orbax
writes a step into a temporary folder and renames it when complete, so a run killed mid-save
leaves the previous steps intact; the unfinished folder is ignored and removed on the next start.
Each step's JSON record carries a fingerprint of every array of the state (a position-weighted
sum of its bits); restoring recomputes it, so a truncated or bit-flipped file is caught instead
of silently resumed from. A damaged step is moved to `checkpoints/damaged/` and the previous one
restored; when none is left the run refuses to start over and says how to fix it.

Workdir lock. A run holds an exclusive `flock` on `<workdir>/.lock` from start to end (process 0
in a multi-process run), so a second run on the same workdir is refused; the operating system
drops the lock when the process dies, however it dies, so a killed run never leaves it stuck.

Write failures (a full disk, a read-only workdir) raise `WorkdirError` naming the file, the
cause and the last complete checkpoint, which stays intact.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import socket
import sys
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from cnn_jax import parallel

FINGERPRINT_KEY = '_fingerprint'  # in each step's JSON record; absent in older checkpoints
KEEP = {'latest': 2, 'best': 1}
LOCK_FILE = '.lock'


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not writable, full, or held by another run."""


class WorkdirLocked(WorkdirError):
  """Another run holds the workdir's lock."""


class CheckpointError(RuntimeError):
  """No checkpoint of the workdir can be restored; the message says why and how to fix it."""


# ------------------------------------------------------------------------------ integrity


def _leaf_hash(x: jax.Array) -> jax.Array:
  """A uint32 that changes whenever any single element of `x` changes.

  Each element's bits go through an invertible xorshift and are multiplied by an odd weight
  (2 * position + 1), so one changed element always changes the wrapping sum; the sum is exact
  in any order, hence the same on every device count.
  """
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  bits = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  u = jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).reshape(-1)
  u = u ^ (u >> 15)
  weights = jnp.arange(u.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(u * weights, dtype=jnp.uint32)


_fingerprint_leaves = jax.jit(lambda leaves: [_leaf_hash(x) for x in leaves])


def fingerprint(tree: Any) -> dict[str, int]:
  """{path: uint32 hash} for every array of `tree`; equal trees give equal fingerprints."""
  paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  hashes = jax.device_get(_fingerprint_leaves([leaf for _, leaf in paths_leaves]))
  return {jax.tree_util.keystr(path): int(h) for (path, _), h in zip(paths_leaves, hashes)}


def _check_fingerprint(state: Any, meta: dict) -> None:
  expected = meta.pop(FINGERPRINT_KEY, None)
  if expected is None:
    return  # written before fingerprints existed: nothing to compare with
  actual = fingerprint(state)
  bad = sorted(k for k in expected if actual.get(k) != expected[k])
  if bad or set(actual) != set(expected):
    shown = ', '.join(bad[:3]) + (f' and {len(bad) - 3} more' if len(bad) > 3 else '')
    raise CheckpointError(f'its arrays do not match the fingerprint written with them '
                          f'({shown or "different arrays"}): the files were changed or damaged')


# ------------------------------------------------------------------------------ checkpoints


class Checkpoints:
  """The 'latest' and 'best' checkpoints of a workdir; every process calls every method."""

  _instances = 0  # created in the same order on every process

  def __init__(self, workdir: str | pathlib.Path):
    self.root = pathlib.Path(workdir).resolve() / 'checkpoints'
    Checkpoints._instances += 1
    # Orbax names its multi-process barriers after the step folder ('8.orbax-checkpoint-tmp');
    # a prefix per manager keeps 'latest' and 'best' saving the same step from sharing one.
    barriers = lambda kind: ocp.options.MultiprocessingOptions(
        barrier_sync_key_prefix=f'cnn_jax_{Checkpoints._instances}_{kind}')
    try:
      self._managers = {
          kind: ocp.CheckpointManager(
              self.root / kind, item_names=('state', 'meta'),
              options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                   cleanup_tmp_directories=True,
                                                   multiprocessing_options=barriers(kind)))
          for kind, keep in KEEP.items()
      }
    except OSError as e:
      raise WorkdirError(f'Cannot create or clean the checkpoint folders in {self.root}: {e}. '
                         'Make the workdir writable (or free space), then rerun.') from e

  def latest_step(self, kind: str = 'latest') -> int | None:
    return self._managers[kind].latest_step()

  def all_steps(self, kind: str = 'latest') -> list[int]:
    return sorted(self._managers[kind].all_steps())

  def save(self, kind: str, step: int, state: Any, meta: dict) -> None:
    """Starts writing `state` and `meta` (a JSON dict) as step `step`; returns before the write
    ends (orbax writes in the background). A step that exists already is kept."""
    manager = self._managers[kind]
    if step in manager.all_steps():
      return
    meta = {**meta, FINGERPRINT_KEY: fingerprint(state)}
    try:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # pylint: disable=broad-except  (an earlier background write, too)
      raise self._write_error(kind, f'the save at step {step}', e) from e

  def restore(self, kind: str, target: Any) -> tuple[Any, dict] | None:
    """The newest intact `kind` checkpoint restored onto `target`'s structure and shardings
    (None when there is none at all).

    A step that fails to restore or to match its fingerprint is reported, moved to
    `checkpoints/damaged/`, and the step before it is tried; if every step fails this raises
    CheckpointError: the run never silently starts over.
    """
    manager = self._managers[kind]
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    failures = []
    for step in steps:
      error = None
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state, meta = restored['state'], dict(restored['meta'])
        _check_fingerprint(state, meta)
      except Exception as e:  # pylint: disable=broad-except  (any failure: try the step before)
        error = e
      if parallel.all_processes(error is None):
        if failures:
          self._set_aside(kind, failures, step)
        return state, meta
      failures.append((step, error if error is not None else 'failed on another process'))
    raise CheckpointError(self._unrestorable_message(kind, manager.directory, failures))

  def wait(self) -> None:
    """Blocks until every background write has finished; raises WorkdirError if one failed."""
    for kind, manager in self._managers.items():
      try:
        manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        raise self._write_error(kind, 'the last save', e) from e

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()

  def _write_error(self, kind: str, what: str, error: Exception) -> WorkdirError:
    manager = self._managers[kind]
    try:
      complete = sorted(manager.all_steps(read=True))
    except Exception:  # pylint: disable=broad-except
      complete = []
    last = (f'The last complete {kind} checkpoint, step {complete[-1]}, is intact'
            if complete else f'No {kind} checkpoint was complete yet')
    return WorkdirError(
        f'Cannot write the {kind} checkpoint ({what}) in {manager.directory}: '
        f'{_short(error)}. {last}. Free disk space or make the workdir writable, then rerun the '
        'same command to resume from it.')

  def _set_aside(self, kind: str, failures: list, restored_step: int) -> None:
    """Reports the damaged steps and moves them out of the manager's folder (process 0)."""
    manager = self._managers[kind]
    damaged = self.root / 'damaged'
    moved = []
    if parallel.is_main_process():
      for step, _ in failures:
        src = manager.directory / str(step)
        if src.exists():
          damaged.mkdir(parents=True, exist_ok=True)
          dst = damaged / f'{kind}_{step}_{datetime.datetime.now():%Y%m%d-%H%M%S}'
          shutil.move(str(src), str(dst))
          moved.append(str(dst))
    parallel.barrier(f'checkpoint_set_aside_{kind}')
    manager.reload()
    if parallel.is_main_process():
      for step, error in failures:
        print(f'Warning: the {kind} checkpoint at step {step} in {manager.directory} is damaged '
              f'({_short(error)}).', file=sys.stderr)
      print(f'Resuming from the {kind} checkpoint at step {restored_step} instead; the damaged '
            f'step(s) were moved to {", ".join(moved) or damaged}.', file=sys.stderr, flush=True)

  @staticmethod
  def _unrestorable_message(kind, directory, failures) -> str:
    lines = '\n'.join(f'  step {step}: {_short(error)}' for step, error in failures)
    return (f'No {kind} checkpoint in {directory} can be restored:\n{lines}\n'
            'If the config changed (model, optimizer, data shape) since they were written, rerun '
            'with the original config or use a new --workdir. If they are damaged, move '
            f'{directory} away (or delete it) to start this workdir from scratch; the run does '
            'not do that by itself.')


def _short(error, limit: int = 300) -> str:
  text = ' '.join(str(error).split())
  return text if len(text) <= limit else text[:limit] + ' ...'


# ------------------------------------------------------------------------------ workdir


class WorkdirLock:
  """An exclusive lock on a workdir for the duration of a run (use as a context manager).

  `flock` on `<workdir>/.lock`, taken by process 0 only; the file records who holds it. The
  lock belongs to the open file, so the operating system releases it when the process exits or
  is killed. Every process raises WorkdirLocked when process 0 cannot take it.
  """

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    error = None
    if parallel.is_main_process():
      error = self._acquire()
    if parallel.any_process(error is not None):
      raise error or WorkdirLocked(f'Process 0 could not lock {self.path.parent}; see its log.')
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the file releases the lock
      self._fd = None

  def _acquire(self) -> WorkdirError | None:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX)
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      return WorkdirError(f'Cannot write in the workdir {self.path.parent} ({e.strerror}: '
                          f'{self.path}). Make it writable (or free space), or use another '
                          '--workdir.')
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = _read_holder(fd)
      os.close(fd)
      return WorkdirLocked(
          f'The workdir {self.path.parent} is in use by another run ({holder}). Wait for it to '
          'finish or stop it (SIGTERM saves its state), or use another --workdir.')
    holder = {'pid': os.getpid(), 'host': socket.gethostname(),
              'started': datetime.datetime.now().isoformat(timespec='seconds'),
              'command': ' '.join(sys.argv)}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(holder) + '\n').encode(), 0)
    except OSError:
      pass  # the lock holds without the note
    self._fd = fd
    return None


def _read_holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command')}")
  except (OSError, ValueError):
    return 'holder unknown'


def write_text(path: str | pathlib.Path, text: str) -> None:
  """Writes a workdir file atomically (temporary file, then rename); WorkdirError on failure."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + '.tmp')
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  except OSError as e:
    raise WorkdirError(f'Cannot write {path}: {e.strerror or e}. Checkpoints already written are '
                       'intact; free disk space or make the workdir writable, then rerun the '
                       'same command to resume.') from e
