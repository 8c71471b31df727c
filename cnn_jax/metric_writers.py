"""Metrics to JSON lines (for scripts and reports) and TensorBoard (for people); process 0 only."""
from __future__ import annotations

import json
import pathlib
import time

import jax


class MetricWriter:

  def __init__(self, workdir: str | pathlib.Path):
    self._enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._tb = None
    if self._enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split, 'time': time.time(),
              **{k: float(v) for k, v in metrics.items()}}
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    for key, value in metrics.items():
      self._tb.add_scalar(f'{split}/{key}', float(value), int(step))

  def truncate_after(self, step: int) -> None:
    """On resume, drops records written after the checkpoint so the log has no duplicates."""
    if not self._enabled or not self.path.exists():
      return
    keep = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)['step'] <= step]
    self.path.write_text(''.join(line + '\n' for line in keep))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
