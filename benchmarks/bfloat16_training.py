"""Does bfloat16 compute train like float32? Test error over seeds, side by side, from a finished
sweep of configs/bfloat16_training.py (ResNet-20, 2,000 steps of the cpu recipe):

    python -m cnn_jax.sweep --config=configs/bfloat16_training.py --seeds=3 \\
        --workdir=workdirs/bfloat16_training
    python -m benchmarks.bfloat16_training --workdir=workdirs/bfloat16_training \\
        [--out=benchmarks/results/bfloat16_training.md]

It matches where the difference of the mean test errors is within the seed spread: no larger
than the larger of the two sample standard deviations. Training images/s are the runs' own.
"""
from __future__ import annotations

import argparse
import csv
import json
import pathlib
import statistics


def read_members(workdir: pathlib.Path) -> dict[str, list[dict]]:
  """dtype -> the finished members' figures (members.csv of the sweep's aggregation)."""
  out: dict[str, list[dict]] = {}
  with (workdir / 'members.csv').open() as f:
    for row in csv.DictReader(f):
      path = workdir / row['name'] / 'results.json'
      if not path.exists():  # not finished
        continue
      results = json.loads(path.read_text())
      out.setdefault(row['dtype'], []).append(
          {'seed': int(row['seed']), 'test_error': 1 - float(results['test_accuracy']),
           'images_per_s': float(results['train_images_per_s'])})
  return out


def compare(members: dict[str, list[dict]]) -> dict:
  """Per dtype the mean and sample std of the test error and the median images/s; whether
  bfloat16 matches float32 within the seed spread (None until both have two seeds or more)."""
  stats = {}
  for dtype, runs in members.items():
    errors = [r['test_error'] for r in runs]
    stats[dtype] = {'n': len(runs), 'mean': statistics.mean(errors),
                    'std': statistics.stdev(errors) if len(errors) > 1 else None,
                    'images_per_s': statistics.median(r['images_per_s'] for r in runs)}
  f32, bf16 = stats.get('float32'), stats.get('bfloat16')
  matches = None
  if f32 and bf16 and f32['std'] is not None and bf16['std'] is not None:
    matches = abs(bf16['mean'] - f32['mean']) <= max(f32['std'], bf16['std'])
  return {'stats': stats, 'matches': matches}


def render(result: dict, workdir: str) -> str:
  from cnn_jax.report import markdown_table  # pylint: disable=g-import-not-at-top
  rows = [[dtype, s['n'], f"{100 * s['mean']:.2f}%",
           '-' if s['std'] is None else f"{100 * s['std']:.2f} pp", f"{s['images_per_s']:,.0f}"]
          for dtype, s in result['stats'].items()]
  verdict = {True: 'matches float32 within the seed spread',
             False: 'does NOT match float32 within the seed spread',
             None: 'not decided (each dtype needs two finished seeds or more)'}[result['matches']]
  return (f'# bfloat16 against float32 in training: ResNet-20, 2,000 steps of the cpu recipe\n\n'
          f'From the sweep in `{workdir}` (configs/bfloat16_training.py). Test error over seeds '
          '(mean, sample std), training images/s (median over the runs, each run\'s own figure; '
          'only comparable where the runs had the machine to themselves).\n\n'
          + markdown_table(['dtype', 'seeds', 'test error', 'std', 'images/s'], rows)
          + f'\n\nbfloat16 {verdict}: the difference of the means is '
          + ('-' if not {'float32', 'bfloat16'} <= set(result['stats']) else
             f"{100 * abs(result['stats']['bfloat16']['mean'] - result['stats']['float32']['mean']):.2f} pp")
          + '.\n')


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir)
  if not (workdir / 'members.csv').exists():
    parser.error(f'--workdir: {workdir} has no members.csv; run the sweep first (see --help).')
  text = render(compare(read_members(workdir)), args.workdir)
  print(text)
  if args.out:
    pathlib.Path(args.out).write_text(text)


if __name__ == '__main__':
  main()
