"""Metrics to JSON lines (for scripts and reports) and TensorBoard (for people); process 0 only."""
from __future__ import annotations

import json
import pathlib
import time

import jax
from tensorboardX import SummaryWriter

from cnn_jax.checkpointing import WorkdirError, write_text


class MetricWriter:

  def __init__(self, workdir: str | pathlib.Path):
    self._enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._tb = None
    if self._enabled:
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time(),
              **{k: float(v) for k, v in metrics.items()}}
    try:
      with self.path.open('a') as f:
        f.write(json.dumps(record) + '\n')
    except OSError as e:
      raise WorkdirError(f'Cannot write {self.path}: {e.strerror or e}. Checkpoints already '
                         'written are intact; free disk space or make the workdir writable, then '
                         'rerun the same command to resume.') from e
    for key, value in metrics.items():
      self._tb.add_scalar(f'{split}/{key}', float(value), int(step))

  def truncate_after(self, step: int) -> None:
    """On resume, drops records written after the checkpoint so the log has no duplicates (and a
    line torn by a kill in mid-write)."""
    if not self._enabled or not self.path.exists():
      return
    keep = [line for line in self.path.read_text().splitlines()
            if (record := _parse(line)) is not None and record['step'] <= step]
    write_text(self.path, ''.join(line + '\n' for line in keep))

  def close(self) -> None:
    if self._tb is not None:
      tb, self._tb = self._tb, None
      try:
        tb.close()  # flushes the event file
      except OSError as e:
        raise WorkdirError(f'Cannot write the TensorBoard events in {self.path.parent}: '
                           f'{e.strerror or e}.') from e


def _parse(line: str) -> dict | None:
  try:
    return json.loads(line)
  except ValueError:
    return None


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
