"""Claims C14, C15 over seeds: configs/lenet5_mnist.py (20 epochs, SGD 0.1, batch 64) for
`--seeds` seeds, mean ± std of the test accuracy beside the single committed run.

    python -m experiments.lenet5_mnist_seeds [--seeds=5] [--preset=quick] [--workdir=DIR]
                                             [--set=KEY=VALUE ...] [--parallel=N]
                                             [--report_dir=reports/lenet5_mnist] [--report_only]

Runs (or resumes) the sweep `python -m cnn_jax.sweep --config=configs/lenet5_mnist.py
--config.progress_bar=False --seeds=5 --workdir=workdirs/lenet5_mnist_seeds` (the workdir's
default; finished seeds are skipped), then writes seeds.md and seeds.json in the workdir.
`--report_dir` copies them there and puts the seeds section into that folder's report.md
(between `<!-- seeds:begin -->` and `<!-- seeds:end -->`), leaving the single run's numbers as
they are.
"""
from __future__ import annotations

import pathlib

from absl import app
import numpy as np

from cnn_jax import cli, report, runtime, sweep
from experiments import lecture_common as common
from experiments import run_records
from experiments import lenet5_mnist

FLAGS = common.FLAGS
NAME = 'lenet5_mnist_seeds'  # the workdir's default: workdirs/lenet5_mnist_seeds[_quick]
TARGET = 0.99  # C15: about 1% test misclassification


def define_flags() -> None:
  """The harness's flags; defined only when run as a script, so that tests can import
  several experiments."""
  common.define_flags(NAME, '2 epochs a seed (configs/lenet5_mnist.py:quick).',
                      presets=('full', 'quick'), seeds_of='preset', default_seeds=5,
                      preset_help='Preset of configs/lenet5_mnist.py.')


def section(summary: dict, spec: sweep.Sweep, workdir: pathlib.Path, single: dict | None,
            facts: dict) -> tuple[str, dict]:
  """The seeds section of the report (markdown) and seeds.json's record, from the sweep's
  `summary`; `single`: the single run's results.json, `facts`: the sweep's (SweepRun.facts)."""
  finished = [m for m in summary['members'] if m['results']]
  accs = [m['results']['test_accuracy'] for m in finished]
  rows = [[m['overrides'].get('seed'), f"{m['results']['test_accuracy']:.2%}",
           f"{m['results']['test_loss']:.4f}", m['results']['best_epoch'],
           f"{m['results']['wall_time_s']:.0f} s"] for m in finished]
  data = {'seeds_done': len(finished), 'seeds_total': summary['total'],
          'test_accuracies': accs,
          'mean': float(np.mean(accs)) if accs else None,
          'std': float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
          'min': float(np.min(accs)) if accs else None,
          'all_above_target': bool(accs) and all(a >= TARGET for a in accs),
          'command': ' '.join(spec.command(workdir)), **facts}
  stat = ('—' if not accs else f"{data['mean']:.2%}" + (f" ± {data['std']:.2%}"
                                                         if data['std'] is not None else ''))
  same = ''
  if single is not None and any(m['overrides'].get('seed') == 0 for m in finished):
    seed0 = next(m for m in finished if m['overrides'].get('seed') == 0)['results']
    same = (f"Seed 0 is the single run's configuration: {seed0['test_accuracy']:.2%} here vs "
            f"{single['test_accuracy']:.2%} in the single run "
            f"({'identical' if seed0['test_accuracy'] == single['test_accuracy'] else 'differs'}).")
  text = f"""## Over seeds

{data['seeds_done']} of {data['seeds_total']} seeds finished (seed = initialisation and data
order; the validation split is fixed). Test accuracy **{stat}** (mean ± sample std), lowest
{f"{data['min']:.2%}" if accs else '—'}; every seed >= {TARGET:.0%}: {'yes' if data['all_above_target'] else '**no**'}.
{same}

{report.markdown_table(['seed', 'test accuracy', 'test loss', 'best epoch', 'wall time'], rows)}

Sweep command: `{data['command']}` (rerun it to finish missing seeds).
{run_records.busy_note(facts['runs_load'])}
"""
  return text, data


def with_section(report_md: str, text: str) -> str:
  """A lenet5_mnist report.md with its seeds section replaced by `text` (added before its
  environment section where it has none)."""
  block = f'<!-- seeds:begin -->\n{text}<!-- seeds:end -->\n'
  if lenet5_mnist.SEEDS_BLOCK.search(report_md):
    return lenet5_mnist.SEEDS_BLOCK.sub(lambda _: block, report_md)
  return report_md.replace('## Environment', block + '\n## Environment', 1)


def main(argv):
  run = common.start_sweep(argv, 'lenet5_mnist', 'LeNet-5 on MNIST over seeds',
                           config_args=('progress_bar=False',),
                           workdir=common.default_workdir(NAME, FLAGS.preset))
  workdir = run.workdir
  report_dir = pathlib.Path(FLAGS.report_dir) if FLAGS.report_dir else None
  single_path = (report_dir or common.ROOT / 'reports' / 'lenet5_mnist') / 'results.json'
  single = run_records.read_json(single_path) if single_path.exists() else None
  if single is not None and single.get('name') != run.config.name:  # another preset's run
    single = None
  text, data = section(run.summary, run.spec, workdir, single, run.facts())
  (workdir / 'seeds.md').write_text(text)
  run_records.write_json(workdir / 'seeds.json', data)
  print(text)
  if report_dir:
    common.copy_outputs(workdir, str(report_dir), ('seeds.md', 'seeds.json'))
    path = report_dir / 'report.md'
    path.write_text(with_section(path.read_text(), text))


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
