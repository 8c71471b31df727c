"""5. bfloat16 compute (float32 parameters): whether this host has native bfloat16
(cnn_jax.precision) and what `config.dtype='bfloat16'` does to the step, each dtype a lone
child."""
from __future__ import annotations

from benchmarks import harness, train_step

BF16_NATIVE = ('This host has it: the ratios above are what `auto` gives here, a gain only where '
               'the bfloat16 column is the larger.')
BF16_EMULATED = ('Without native support a difference of the size above between separate processes '
                 "is within this machine's noise rather than a speed-up to rely on.")


def measure(args) -> dict:
  from cnn_jax import precision  # pylint: disable=g-import-not-at-top  (after runtime.start())
  runs = [[model, {dtype: harness.call(train_step.lone(model, args.steps, dtype=dtype))
                   ['images_per_s'] for dtype in ('float32', 'bfloat16')}]
          for model in ('lenet5', args.model)]
  return {'native': precision.native_bfloat16(),
          'flags': ', '.join(sorted(precision.cpu_flags() & precision.CPU_BF16_FLAGS)) or 'none',
          'runs': runs}


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  native = results['native']
  rows = [[model, f"{r['float32']:,.0f}", f"{r['bfloat16']:,.0f}",
           f"{r['bfloat16'] / r['float32']:.2f}x"] for model, r in results['runs']]
  return f"""## 5. bfloat16 compute, float32 parameters: images/s

This host's bfloat16 instruction flags: {results['flags']}; `cnn_jax.precision.native_bfloat16()` =
{native}, so `config.dtype='auto'` computes in {'bfloat16' if native else 'float32'} here.

{report.markdown_table(['model', 'float32', 'bfloat16', 'bfloat16 / float32'], rows)}

Kept as `config.dtype='auto'` (opt-in; the configs' default stays float32 so that results do not
depend on the machine): bfloat16 only where `native_bfloat16()` detects hardware support. {BF16_NATIVE if native else BF16_EMULATED}
"""
