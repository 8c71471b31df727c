"""1. XLA CPU options: the loop's training step (batch 128) under each XLA_FLAGS variant, each in
a fresh process (benchmarks.train_step's lone child)."""
from __future__ import annotations

from benchmarks import harness, train_step

XLA_VARIANTS = {
    'XLA defaults': {'CNN_JAX_XLA_DEFAULTS': '0'},
    'YNN dot,reduce (project default since 2026-12-06)': {},
    'YNN dot,eltwise,reduce': {
        'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce'},
    'YNN dot,eltwise,reduce,individual_convolution': {
        'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce,individual_convolution'},
    'XNN dot,eltwise,reduce,individual_convolution': {
        'XLA_FLAGS': '--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce,individual_convolution'},
    'oneDNN dot,individual_convolution': {
        'XLA_FLAGS': '--xla_cpu_experimental_onednn_fusion_type=dot,individual_convolution'},
}
# The project default plus one more option of this jaxlib's XLA CPU flags (2026-12-03 on an AVX2
# EPYC, 8 steps, with the default of then, dot,eltwise,reduce: each within 3% of it or slower;
# not kept).
_YNN = '--xla_cpu_experimental_ynn_fusion_type=dot,reduce'
XLA_VARIANTS.update({
    f'YNN + {extra[2:]}': {'XLA_FLAGS': f'{_YNN} {extra}'}
    for extra in ('--xla_cpu_experimental_onednn_fusion_type=individual_convolution',
                  '--xla_cpu_experimental_xnn_fusion_type=individual_convolution',
                  '--xla_cpu_enable_concurrency_optimized_scheduler=true',
                  '--xla_cpu_multi_thread_eigen=false',
                  '--xla_cpu_enable_fast_math=true',
                  '--xla_cpu_use_fusion_emitters=false',
                  '--xla_cpu_experimental_enable_tiling_propagation=true')})


def measure(args) -> dict:
  """Per variant the lone child's images/s and compile seconds, or its last error line."""
  runs = {}
  for label, env in XLA_VARIANTS.items():
    try:
      r = harness.call(train_step.lone(args.model, args.steps, 128, env=env))
      runs[label] = {'images_per_s': r['images_per_s'], 'compile_s': r['compile_s']}
    except harness.ChildFailed as e:
      runs[label] = {'failed': (e.tail or [''])[-1][:80]}
  return {'model': args.model, 'runs': runs}


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  runs = results['runs']
  base = next(iter(runs.values())).get('images_per_s')
  rows = [[label, 'failed', '', r['failed']] if 'failed' in r else
          [label, f"{r['images_per_s']:,.0f}", f"{r['compile_s']:.1f}",
           f"{r['images_per_s'] / base:.2f}x" if base else '']
          for label, r in runs.items()]
  return f"""## 1. XLA CPU options: {results['model']} training step (batch 128), images/s

{report.markdown_table(['XLA_FLAGS', 'images/s', 'compile s', 'vs XLA defaults'], rows)}

Kept: the project default (cnn_jax/runtime.py), set before jax is imported and overridable
(`XLA_FLAGS`, or `CNN_JAX_XLA_DEFAULTS=0` to turn it off).
"""
