"""4. The loop: the bare step dispatched one step at a time against `lax.scan` over chunks of
steps (one dispatch per chunk), in a child process with a time limit."""
from __future__ import annotations

import pathlib
import tempfile
import time

from benchmarks import harness, train_step

SCAN_TIMEOUT_S = 300  # a scanned ResNet-20 chunk took over 15 minutes for 32 steps (2026-11-23)


def _chunk_fn(step, chunk: int):
  """`chunk` steps of the jitted `step` in one lax.scan, jitted, state and totals donated."""
  import jax  # pylint: disable=g-import-not-at-top  (after runtime.start())
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def chunk_fn(state, totals, images, labels, perm, start, rng):
    def body(carry, i):
      return step(*carry, images, labels, perm, start + i, rng), None
    return jax.lax.scan(body, (state, totals), jnp.arange(chunk))[0]
  return jax.jit(chunk_fn, donate_argnums=(0, 1))


def child(model: str, steps: int, chunk: int) -> dict[str, float]:
  """In the child: images/s of `steps` steps dispatched one by one and in lax.scan chunks of
  `chunk`."""
  import jax  # pylint: disable=g-import-not-at-top
  from cnn_jax import train  # pylint: disable=g-import-not-at-top
  batch = train_step.BATCH[model]
  with tempfile.TemporaryDirectory() as workdir:
    run, state = train.setup(train_step.bench_config(model, batch), pathlib.Path(workdir))
    step = run.data.step._jitted  # pylint: disable=protected-access  (one process: the jit)
    p_chunk = _chunk_fn(step, chunk)
    totals = train.zero_totals(run.replicated)
    perm = run.data.permutation(run.data.data_rng, 0)
    data = run.data.train_arrays
    state, totals = step(state, totals, *data, perm, 0, run.step_rng)  # compile both
    state, totals = p_chunk(state, totals, *data, perm, 1, run.step_rng)
    jax.block_until_ready(totals)
    steps = steps // chunk * chunk
    out = {}
    for label in ('one dispatch per step', f'lax.scan, {chunk} steps per dispatch'):
      start = time.perf_counter()
      if label.startswith('one'):
        for i in range(steps):
          state, totals = step(state, totals, *data, perm, (i % 64), run.step_rng)
      else:
        for i in range(steps // chunk):
          state, totals = p_chunk(state, totals, *data, perm, (i * chunk) % 64, run.step_rng)
      jax.block_until_ready(totals)
      out[label] = steps * batch / (time.perf_counter() - start)
    train._close(run, quiet=True)  # pylint: disable=protected-access
  return out


def measure(args) -> dict:
  """Per model and chunk: the child's figures, None where it ran past SCAN_TIMEOUT_S."""
  return {'rows': [{'model': model, 'chunk': chunk,
                    'runs': harness.call(harness.Child.of(child, model=model, steps=8 * chunk,
                                                          chunk=chunk), timeout=SCAN_TIMEOUT_S)}
                   for model, chunk in (('lenet5', 8), (args.model, 4))]}


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  rows = []
  for r in results['rows']:
    model, chunk = r['model'], r['chunk']
    if r['runs'] is None:
      rows.append([model, '-', f'did not finish {8 * chunk} steps in {SCAN_TIMEOUT_S} s', '-'])
      continue
    (_, one), (scan_label, scan) = r['runs'].items()
    rows.append([model, f'{one:,.0f}', f'{scan:,.0f} ({scan_label})', f'{scan / one:.2f}x'])
  return f"""## 4. The loop: one dispatch per step against lax.scan over a chunk of steps, images/s

{report.markdown_table(['model', 'one dispatch per step', 'lax.scan', 'scan / per step'], rows)}

The loop already dispatches asynchronously (metrics stay on the device until a log point, no
host sync per step), so a chunked scan only pays where a step is short enough for dispatch to
show; the loop keeps one step per dispatch unless the gain above is clearly above the noise. The
loop's own images/s against the bare step is in the README's benchmark table
(benchmarks/results/cpu_2core*.json).
"""
