"""Report helpers: training-curve plots, Markdown tables and the facts of the machine.

Every number in a report comes from a run's files (results.json, metrics.jsonl), never typed.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import platform
import subprocess
from typing import Iterable, Sequence

import flax
import jax
import optax

from cnn_jax import runtime
from cnn_jax.metric_writers import read_metrics


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def plot_training_curves(workdir: str | pathlib.Path, out_png: str | pathlib.Path,
                         title: str, steps_per_epoch: int) -> pathlib.Path:
  """Loss and accuracy against epochs: train (logged averages) and validation (per epoch)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (its backend is chosen before pyplot)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after the backend)

  records = read_metrics(pathlib.Path(workdir) / 'metrics.jsonl')
  series = {split: [r for r in records if r['split'] == split] for split in ('train', 'val')}
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for key, ax in zip(('loss', 'accuracy'), axes):
    for split, style in (('train', '-'), ('val', 'o-')):
      rows = series[split]
      if rows:
        ax.plot([r['step'] / steps_per_epoch for r in rows], [r[key] for r in rows], style,
                label=split, markersize=3)
    ax.set_xlabel('epoch')
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
  axes[0].set_yscale('log')
  fig.suptitle(title)
  fig.tight_layout()
  out_png = pathlib.Path(out_png)
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png


def host_cpu() -> str:
  """The host CPU's model, core count and widest x86 vector unit, e.g. 'AMD EPYC (2 cores, AVX2)'.

  The vector unit is named because XLA's CPU convolutions run about 3x faster with AVX-512 than
  with AVX2 on otherwise identical hosts: images/s are comparable only within one kind.
  """
  fields = {}  # the first processor's entries of /proc/cpuinfo
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      key, _, value = line.partition(':')
      fields.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  cpu = fields.get('model name') or platform.processor() or platform.machine()
  flags = set(fields.get('flags', '').split())
  isa = 'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else ''
  return f"{cpu} ({os.cpu_count()} cores{', ' + isa if isa else ''})"


def environment() -> dict:
  """Where and with what a run was made."""
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'host_cpu': host_cpu(),
      'devices': ', '.join(sorted({f'{d.platform}:{d.device_kind}' for d in jax.devices()})),
      'device_count': jax.device_count(),
      'python': platform.python_version(),
      'jax': jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
      'git_commit': git_commit(),
      'runtime': runtime_summary(runtime.applied()),
  }


def runtime_summary(applied: dict) -> str:
  """cnn_jax.runtime.applied() in one line."""
  if not applied.get('runtime_configured'):
    return (f"not configured by cnn_jax.runtime (XLA_FLAGS: {applied['xla_flags'] or 'none'}; "
            f"allocator: {applied['malloc']})")
  return (f"XLA_FLAGS: {applied['xla_flags'] or 'none'}; allocator: {applied['malloc']}; "
          f"CPU kernels default: {applied['cpu_kernels_default']}; threads: "
          f"{applied['cpu_threads']}")


def git_commit() -> str:
  """The checkout's short commit (with '+dirty' if tracked files changed), or 'unknown'."""
  try:
    out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).parent, timeout=5, check=False)
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, cwd=pathlib.Path(__file__).parent,
                           timeout=5, check=False).stdout.strip()
    return (out.stdout.strip() or 'unknown') + ('+dirty' if dirty else '')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


def environment_markdown(env: dict) -> str:
  return '\n'.join(f'- **{k}**: {v}' for k, v in env.items())
