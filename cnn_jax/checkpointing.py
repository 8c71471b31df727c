"""Orbax checkpoints: the latest state (for resume) and the best one (for the final test).

Each is a `CheckpointManager` keeping one step. Orbax writes a step into a temporary folder
and renames it when complete, so a run killed mid-save leaves the previous checkpoint intact;
the unfinished folder is ignored and cleaned up on the next start.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, workdir: str | pathlib.Path):
    root = pathlib.Path(workdir).resolve() / 'checkpoints'
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                           cleanup_tmp_directories=True)
    self._managers = {
        kind: ocp.CheckpointManager(root / kind, options=options, item_names=('state', 'meta'))
        for kind in ('latest', 'best')
    }

  def latest_step(self, kind: str = 'latest') -> int | None:
    return self._managers[kind].latest_step()

  def save(self, kind: str, step: int, state: Any, meta: dict) -> None:
    manager = self._managers[kind]
    if manager.latest_step() == step:
      return
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, kind: str, target: Any) -> tuple[Any, dict] | None:
    """The newest `kind` checkpoint restored onto `target`'s structure and shardings, or None."""
    manager = self._managers[kind]
    step = manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise RuntimeError(
          f'Cannot restore the {kind} checkpoint at step {step} in {manager.directory}: {e}\n'
          'If the config changed (model, optimizer) since it was written, use a new --workdir; '
          'if the checkpoint is damaged, delete that step folder to resume from scratch.') from e
    return restored['state'], restored['meta']

  def wait(self) -> None:
    for manager in self._managers.values():
      manager.wait_until_finished()

  def close(self) -> None:
    for manager in self._managers.values():
      manager.close()
