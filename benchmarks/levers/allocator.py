"""12. The host allocator: the ResNets' training steps on each allocator this machine has
(processes side by side, taking turns)."""
from __future__ import annotations

from benchmarks import harness, train_step
from benchmarks.levers import common
from cnn_jax import runtime

ALLOCATOR_MODELS = ('resnet20', 'resnet56')


def variants() -> dict[str, tuple[str, dict]]:
  """label -> (runtime malloc choice, extra environment): glibc first (the reference), then
  mimalloc (the cmeel-mimalloc wheel) with and without large OS pages, jemalloc where installed."""
  out = {'glibc, huge pages': ('glibc', {}), 'glibc, no tunables': ('system', {})}
  if runtime.find_mimalloc():
    out['mimalloc, purge off'] = ('mimalloc', {})
    out['mimalloc, purge off, large OS pages'] = (
        'mimalloc', {'MIMALLOC_ALLOW_LARGE_OS_PAGES': '1'})
  if runtime.find_jemalloc():
    out['jemalloc, decay off'] = ('jemalloc', {})
  return out


def measure(args) -> dict:
  """Per model: each allocator's images/s windows, taking turns (harness.interleaved)."""
  steps = {model: harness.interleaved(
      {label: train_step.contender('jax', model, args.steps, env=env, malloc=malloc)
       for label, (malloc, env) in variants().items()}, args.rounds)[1]
           for model in ALLOCATOR_MODELS}
  return {'rounds': args.rounds, 'steps': steps}


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  return f"""## 12. The host allocator

Training steps, images/s (batch 128), project defaults except the allocator the process starts
on (`CNN_JAX_MALLOC`, cnn_jax/runtime.py): glibc's malloc with transparent huge pages, glibc
without tunables, mimalloc from the `cmeel-mimalloc` wheel with freed pages kept
(`MIMALLOC_PURGE_DELAY=-1`), with and without large OS pages, and jemalloc with page decay off
where libjemalloc.so.2 is installed. The variants run side by side and take turns,
{results['rounds']} rounds; the last column is the median of the rounds' ratios to the first row:

{report.markdown_table(['model', 'allocator', 'images/s, each window', 'median',
                        'vs first row'], common.variant_rows(results['steps']))}
"""
