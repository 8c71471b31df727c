"""What several levers share: timing a jitted function, switching a module attribute between
rounds in one process, and the rows of their tables."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from benchmarks import harness, train_step


def ms_per_call(f: Callable, *args, n: int = 10, median: bool = False) -> float:
  """Milliseconds per call of `jax.jit(f)(*args)` after one untimed call: the mean over `n`
  calls in a row, or (`median`) the median of `n` calls each timed alone."""
  import jax  # pylint: disable=g-import-not-at-top  (after runtime.start())
  f = jax.jit(f)
  jax.block_until_ready(f(*args))
  if median:
    times = []
    for _ in range(n):
      start = time.perf_counter()
      jax.block_until_ready(f(*args))
      times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
  start = time.perf_counter()
  for _ in range(n):
    out = f(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / n * 1e3


def patched_rounds(obj: Any, attr: str, variants: dict[str, Any], rounds: int,
                   measure: Callable[[], Any]) -> dict[str, list]:
  """label -> `measure()` of every round with `obj.attr` set to the label's value, the labels
  taking turns in this process (harness.alternating); `obj.attr` restored after."""
  original = getattr(obj, attr)

  def one(label):
    setattr(obj, attr, variants[label])
    return measure()
  try:
    return harness.alternating(list(variants), rounds, one)
  finally:
    setattr(obj, attr, original)


def per_model(runs: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
  """{label: [{model: value} per round]} -> {model: {label: [value per round]}}."""
  models = next(iter(runs.values()))[0]
  return {model: {label: [r[model] for r in rounds] for label, rounds in runs.items()}
          for model in models}


def patched_steps(obj: Any, attr: str, variants: dict[str, Any], rounds: int,
                  models: tuple[tuple[str, int], ...], steps: int) -> dict[str, dict[str, list]]:
  """{model: {label: [images/s per round]}}: the training step of each (model, batch) of
  `models` (train_step.jax_child, in this process) with `obj.attr` set to each label's value,
  the labels taking turns (`patched_rounds`)."""
  return per_model(patched_rounds(
      obj, attr, variants, rounds,
      lambda: {model: train_step.jax_child(model, steps, batch)['images_per_s']
               for model, batch in models}))


def before_after_rows(steps: dict) -> list[list[str]]:
  """Table rows `model, old runs, new runs, speed-up` from {model: {old: [...], new: [...]}}."""
  rows = []
  for model, runs in steps.items():
    (_, old), (_, new) = runs.items()
    rows.append([model, ' / '.join(f'{v:,.1f}' for v in old),
                 ' / '.join(f'{v:,.1f}' for v in new),
                 f'{(sum(new) / len(new)) / (sum(old) / len(old)):.2f}x'])
  return rows


def variant_rows(steps: dict) -> list[list[str]]:
  """Table rows (model, variant, windows, median, paired ratio to the model's first variant)."""
  rows = []
  for model, variants in steps.items():
    first = next(iter(variants.values()))
    for label, ips in variants.items():
      rows.append([model, label, ' / '.join(f'{v:,.0f}' for v in ips),
                   f'{statistics.median(ips):,.0f}', f'{harness.paired_ratio(ips, first):.2f}x'])
  return rows
