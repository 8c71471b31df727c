"""What each CPU performance lever does, measured in one run on one machine.

    python -m benchmarks.levers [--model=resnet20] [--steps=8] [--out=benchmarks/results/levers.md]
    python -m benchmarks.levers --sections=6,7 --out=benchmarks/results/levers.md --append

Each lever is a module of this package, registered by its section number in SECTIONS: its
`measure(args)` runs the lever's child processes through benchmarks.harness (fresh processes,
or processes side by side taking turns) and returns the figures; its `render(results)` writes the
section of benchmarks/results/levers.md from them.

1. XLA CPU options (xla_options): the loop's ResNet-20 training step (batch 128) under each
   XLA_FLAGS variant, each in a fresh process (benchmarks.train_step's lone child).
2. Convolution kernel-gradient formulations, one layer at a time (conv_formulations; batch 128,
   3x3, the shapes of ResNet-20): XLA's own (batch-contracted convolution with transposes), nine
   dots over shifted views, and one im2col dot; each checked against XLA's value.
3. BatchNorm (batch_norm): flax.linen.BatchNorm against cnn_jax.models.layers.BatchNorm (one-pass
   statistics, fused scale and shift, hand-written backward) in the model's training step,
   alternating in one process.
4. The loop (scan): the bare step against `lax.scan` over chunks of steps (one dispatch per
   chunk).
5. bfloat16 compute, float32 parameters (bfloat16): whether this host has native bfloat16
   (cnn_jax.precision) and what `config.dtype='bfloat16'` does to the step.
6. Max pooling (max_pool): `flax.linen.max_pool` (reduce_window; XLA's select_and_scatter
   backward) against cnn_jax.kernels.pooling.max_pool (same forward, a backward of phase masks),
   per layer and in the training steps of the CIFAR zoo's pooled models, alternating in one
   process.
7. Convolutions of maps smaller than the kernel (small_maps; VGG's last stage on 32x32 inputs) or
   with a 1x1 output (LeNet-5's C5): XLA's convolution against cnn_jax.kernels.conv's im2col or
   dense product, per layer and in VGG's and LeNet-5's steps.
8. The CPU kernels (cpu_kernels; cnn_jax/kernels: oneDNN convolutions, BatchNorm+ReLU) against
   XLA's ops, per layer (ResNet-20's shapes, alternating in one process), and with glibc's huge
   pages in the training steps (fresh processes, rounds alternating), with page faults and system
   time.
9. YNN fusion types with the CPU kernels on (ynn_fusion): which ops XLA hands to YNNPACK now that
   the convolutions and BatchNorm run in cnn_jax's kernels, per model (processes side by side,
   taking turns).
10. The order of LeNet-5's activation and max pooling (act_pool_order; the same function either
   way), alternating in one process.
11. The convolutions' kernel gradient (kernel_gradient): oneDNN's or
   cnn_jax/kernels/conv_kernel_gradient.h's, in the ResNets' training steps (processes side by
   side, taking turns).
12. The host allocator (allocator): glibc, mimalloc (the cmeel-mimalloc wheel), jemalloc where
   installed, in the ResNets' training steps (processes side by side, taking turns).
The project keeps a lever only where it pays (cnn_jax/runtime.py says which are on).
"""
from __future__ import annotations

import argparse
import pathlib

from benchmarks.levers import (act_pool_order, allocator, batch_norm, bfloat16,
                               conv_formulations, cpu_kernels, kernel_gradient, max_pool, scan,
                               small_maps, xla_options, ynn_fusion)

# Section number -> its lever's module (`measure(args)`, `render(results) -> markdown`).
SECTIONS = {1: xla_options, 2: conv_formulations, 3: batch_norm, 4: scan, 5: bfloat16,
            6: max_pool, 7: small_maps, 8: cpu_kernels, 9: ynn_fusion, 10: act_pool_order,
            11: kernel_gradient, 12: allocator}
DEFAULT_SECTIONS = '1,2,3,4,5,6,7,8'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command's arguments; `args.numbers` the sections to measure, in the registry's order (a
  usage error, exit 2, for a number without a lever)."""
  parser = argparse.ArgumentParser(prog='python -m benchmarks.levers',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--out', default=None)
  parser.add_argument('--append', action='store_true',
                      help='add the measured sections to --out instead of replacing it')
  parser.add_argument('--rounds', type=int, default=3, help='rounds of sections 8 to 11')
  parser.add_argument('--sections', default=DEFAULT_SECTIONS,
                      help=f'which levers to measure, of {",".join(map(str, SECTIONS))}')
  args = parser.parse_args(argv)
  asked = [s.strip() for s in args.sections.split(',')]
  unknown = [s for s in asked if not s.isdigit() or int(s) not in SECTIONS]
  if unknown:
    parser.error(f'--sections: no lever numbered {unknown}; choose from '
                 f'{",".join(map(str, SECTIONS))}.')
  args.numbers = [n for n in SECTIONS if str(n) in asked]
  return args


def header(args: argparse.Namespace, env: dict) -> str:
  return f"""# CPU performance levers, measured

Generated by `python -m benchmarks.levers --model={args.model} --steps={args.steps}
--sections={args.sections}` on {env['host_cpu']}, jax {env['jax']}, {env['date']} (commit
{env['git_commit']}), with no other job running. Throughput varies by 5-15% between processes on
this machine, so compare rows within a section, each measured in one run.
"""


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  from cnn_jax import report  # pylint: disable=g-import-not-at-top  (after runtime.start())
  parts = [header(args, report.environment())]
  for number in args.numbers:
    lever = SECTIONS[number]
    parts.append(lever.render(lever.measure(args)))
  text = '\n'.join(parts)
  print(text)
  if args.out:
    out = pathlib.Path(args.out)
    if args.append and out.exists():
      text = out.read_text().rstrip() + '\n\n---\n\n' + text
    out.write_text(text)
