"""9. YNN fusion types with the CPU kernels on: which ops XLA hands to YNNPACK now that the
convolutions and BatchNorm run in cnn_jax's kernels, per model (processes side by side, taking
turns)."""
from __future__ import annotations

from benchmarks import harness, train_step
from benchmarks.levers import common

# (label, model, environment) of the rows: the benchmark models, and ResNet-20 without the kernels
# (what a data-parallel CPU program over several devices runs).
FUSION_STEP_MODELS = (('lenet5', 'lenet5', {}), ('resnet20', 'resnet20', {}),
                      ('resnet56', 'resnet56', {}), ('plain56', 'plain56', {}),
                      ('resnet20, CPU kernels off', 'resnet20', {'CNN_JAX_CPU_KERNELS': '0'}))
# (label, YNN fusion types) of the variants; the first is the reference.
FUSION_STEP_VARIANTS = (('dot,eltwise,reduce (default until 2026-12-06)', 'dot,eltwise,reduce'),
                        ('dot,reduce', 'dot,reduce'))


def measure(args) -> dict:
  """Per row of FUSION_STEP_MODELS: each variant's images/s windows (harness.interleaved)."""
  steps = {}
  for row, model, env in FUSION_STEP_MODELS:
    children = {label: train_step.contender(
        'jax', model, args.steps,
        env={**env, 'XLA_FLAGS': f'--xla_cpu_experimental_ynn_fusion_type={types}'})
                for label, types in FUSION_STEP_VARIANTS}
    steps[row] = harness.interleaved(children, args.rounds)[1]
  return {'rounds': args.rounds, 'steps': steps}


def render(results: dict) -> str:
  from cnn_jax import report, runtime  # pylint: disable=g-import-not-at-top
  default = runtime.CPU_FLAGS[0].split('=')[1]
  without = runtime.CPU_FLAGS_XLA_OPS[0].split('=')[1]
  return f"""## 9. YNN fusion types with the CPU kernels on

Training steps, images/s (batch 64 for LeNet-5, 128 otherwise), the CPU kernels and the project's
allocator on, `--xla_cpu_experimental_ynn_fusion_type=` each variant. The variants run side by
side, one process each, and take turns window by window (`benchmarks.harness.interleaved`),
{results['rounds']} rounds; the last column is the median of the rounds' ratios to the first row:

{report.markdown_table(['model', 'YNN fusion types', 'images/s, each window', 'median',
                        'vs first row'], common.variant_rows(results['steps']))}

Kept: `{default}` where the CPU kernels run, `{without}` where they will not
(`cnn_jax.runtime.cpu_flags`: kernels off, or several host devices). With the convolutions and
BatchNorm in cnn_jax's kernels, what is left for YNN's elementwise fusions is small elementwise
work on the model's own layouts (a bias add, a ReLU, the input's conversion and normalisation on
maps with 1 to 16 channels), which YNNPACK runs slower than XLA's own loop fusions: one LeNet-5
step spent 0.84 ms converting and normalising a 64x32x32x1 uint8 batch (XLA: ~0.05 ms).
"""
