"""Claims C14, C15 over seeds: configs/lenet5_mnist.py (20 epochs, SGD 0.1, batch 64) for
`--seeds` seeds, mean ± std of the test accuracy beside the single committed run.

    python -m experiments.lenet5_mnist_seeds [--seeds=5] [--workdir=workdirs/lenet5_mnist_seeds]
                                             [--report_dir=reports/lenet5_mnist] [--report_only]

Runs (or resumes) the sweep `python -m cnn_jax.sweep --config=configs/lenet5_mnist.py --seeds=5
--workdir=workdirs/lenet5_mnist_seeds --config.progress_bar=False`, then writes seeds.md and
seeds.json in the workdir. `--report_dir` copies them there and puts the seeds section into that
folder's report.md (between `<!-- seeds:begin -->` and `<!-- seeds:end -->`), leaving the single
run's numbers as they are.
"""
from __future__ import annotations

import json
import pathlib
import re

from absl import app, flags
import numpy as np

from cnn_jax import cli, report, runtime, sweep
from experiments import lecture_common as common


FLAGS = common.FLAGS


def define_flags() -> None:
  """Command-line flags; defined only when run as a script, so that tests can import
  several experiments."""
  flags.DEFINE_integer('seeds', 5, 'Seeds 0..N-1.')
  flags.DEFINE_string('workdir', 'workdirs/lenet5_mnist_seeds', 'The sweep directory.')
  flags.DEFINE_string('report_dir', None, 'A lenet5_mnist report folder to extend.')
  flags.DEFINE_integer('parallel', 1, 'Members run at once (subprocesses).')
  flags.DEFINE_bool('report_only', False, 'Only aggregate what is finished.')


TARGET = 0.99  # C15: about 1% test misclassification


def section(summary: dict, spec: sweep.Sweep, workdir: pathlib.Path, single: dict | None,
            facts: dict) -> tuple[str, dict]:
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

Sweep command: `{data['command']}` (rerun it to finish missing seeds). {common.busy_note(facts)}
"""
  return text, data


def main(argv):
  run = common.start_sweep(argv, 'lenet5_mnist', 'LeNet-5 on MNIST over seeds',
                           config_args=('progress_bar=False',), preset='',
                           workdir=FLAGS.workdir)
  workdir = run.workdir
  report_dir = pathlib.Path(FLAGS.report_dir) if FLAGS.report_dir else None
  single_path = (report_dir or common.ROOT / 'reports' / 'lenet5_mnist') / 'results.json'
  single = json.loads(single_path.read_text()) if single_path.exists() else None
  text, data = section(run.summary, run.spec, workdir, single, run.clock.facts())
  (workdir / 'seeds.md').write_text(text)
  common.write_json(workdir / 'seeds.json', data)
  print(text)
  if report_dir:
    common.copy_outputs(workdir, str(report_dir), ('seeds.md', 'seeds.json'))
    path = report_dir / 'report.md'
    md = path.read_text()
    block = f'<!-- seeds:begin -->\n{text}<!-- seeds:end -->\n'
    pattern = re.compile(r'<!-- seeds:begin -->\n.*?<!-- seeds:end -->\n', re.S)
    if pattern.search(md):
      md = pattern.sub(lambda _: block, md)
    else:  # before the environment section of the single run
      md = md.replace('## Environment', block + '\n## Environment', 1)
    path.write_text(md)


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
