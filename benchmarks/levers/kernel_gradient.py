"""11. The convolutions' kernel gradient: oneDNN's or cnn_jax/kernels/conv_kernel_gradient.h's, in
the ResNets' training steps (processes side by side, taking turns)."""
from __future__ import annotations

from benchmarks import harness, train_step
from benchmarks.levers import common

# (label, environment) of the variants; the first is the reference.
KERNEL_GRADIENT_VARIANTS = (('oneDNN', {'CNN_JAX_CONV_KERNEL_GRADIENT': 'onednn'}),
                            ('direct AVX2 (project default)', {}))
KERNEL_GRADIENT_MODELS = ('resnet20', 'resnet56', 'plain56')


def measure(args) -> dict:
  """Per model: each variant's images/s windows, taking turns (harness.interleaved)."""
  steps = {model: harness.interleaved(
      {label: train_step.contender('jax', model, args.steps, env=env)
       for label, env in KERNEL_GRADIENT_VARIANTS}, args.rounds)[1]
           for model in KERNEL_GRADIENT_MODELS}
  return {'rounds': args.rounds, 'steps': steps}


def render(results: dict) -> str:
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  return f"""## 11. The convolutions' kernel gradient: oneDNN or direct AVX2

Training steps, images/s (batch 128), project defaults except the kernel gradient of stride-1
convolutions with 12 or more input channels and output channels in 8s: oneDNN's (its best
kernel for this CPU; `CNN_JAX_CONV_KERNEL_GRADIENT=onednn`) or cnn_jax/kernels/conv_kernel_gradient.h (for
each kernel tap, a register-blocked product of the input and output-gradient rows that the tap
pairs, no padded copies). The variants run side by side and take turns (as in section 9),
{results['rounds']} rounds; the last column is the median of the rounds' ratios to the first row:

{report.markdown_table(['model', 'kernel gradient', 'images/s, each window', 'median',
                        'vs first row'], common.variant_rows(results['steps']))}

Kept for 12 input channels or more (with 3, as in a CIFAR stem, or 8, oneDNN's was faster);
docs/cpu.md has what each machine kind measured. The kernel gradient was the largest share of a
ResNet step's op time (benchmarks.profile_step).
"""
