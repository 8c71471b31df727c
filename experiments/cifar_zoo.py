"""The classic architectures trained side by side on CIFAR-10 (claims C16-C19, issue 10 line 1).

    python -m experiments.cifar_zoo --preset=cpu --report_dir=reports/cifar_zoo   # 1.5 h on 2 cores
    python -m experiments.cifar_zoo --preset=cpu --models=alexnet,vgg11_bn       # a few of them
    python -m experiments.cifar_zoo --preset=cpu --report_only                   # report only

Trains each model of `--models` with `configs/cifar_zoo.py:<model>,<preset>` in
`<workdir>/<model>` (finished runs are skipped, interrupted ones resume from their checkpoints),
one after another, then writes report.md, accuracy_vs_params.png and results.json: parameters,
MACs per image (cnn_jax.conv_arithmetic.count_flops, inference graph), training images/s, wall
time and test accuracy, with the DenseNet-BC and VGG rows beside their papers' CIFAR-10 errors.
"""
from __future__ import annotations

import pathlib

from absl import app
import ml_collections

from cnn_jax import cli, conv_arithmetic, models, report, runtime
from cnn_jax.models import cifar_zoo as zoo_models
from configs import cifar_zoo
from experiments import lecture_common as common
from experiments import report_parts, run_records

RECORDS = ('results.json', 'config.json')

# Published CIFAR-10 test errors (%, with the standard crop + flip augmentation) and protocols.
PAPER = {
    'densenet_bc_100_12': (4.51, 'Huang et al. 2017, Table 2 (C10+; 0.8M params)',
                           '300 epochs, batch 64, SGD lr 0.1 /10 at 50% and 75%, wd 1e-4, '
                           'all 50k training images'),
    'vgg16_bn': (8.45, 'Liu & Deng 2015 (modified VGG-16 with BN and strong dropout)',
                 'long SGD training with heavy dropout on all 50k training images'),
}


def define_flags() -> None:
  """The harness's flags; defined only when run as a script, so tests can import the module."""
  common.define_flags('cifar_zoo', 'a few steps on a CIFAR subset, seconds.', sweep_flags=False,
                      presets=('', *cifar_zoo.PRESETS), default_preset='cpu',
                      preset_help='configs/cifar_zoo.py preset ("" = the 200-epoch recipe).',
                      models=tuple(cifar_zoo.MODELS),
                      models_help=f'Any of {", ".join(cifar_zoo.MODELS)}.')


def check_model(name: str) -> None:
  if name not in cifar_zoo.MODELS:
    raise ValueError(f'Unknown model {name!r}; choose from {list(cifar_zoo.MODELS)}.')


def model_config(model: str, preset: str, overrides=()):
  """configs/cifar_zoo.py:<model>,<preset> with the --set `overrides`, validated."""
  return common.configured(cifar_zoo.get_config(f'{model},{preset}' if preset else model),
                           overrides)


def macs(config) -> int:
  """MACs per 32x32x3 image of the inference graph (auxiliary heads do not run)."""
  model = models.create(config.model, num_classes=10, **config.model_kwargs)
  return conv_arithmetic.count_flops(model, (32, 32, 3)).macs


def uses_batch_norm(config) -> bool:
  """Whether the model keeps BatchNorm statistics (from its variables' shapes, nothing run)."""
  import jax  # pylint: disable=g-import-not-at-top
  model = models.create(config.model, num_classes=10, **config.model_kwargs)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3))))
  return 'batch_stats' in shapes


def rows_of(workdir: pathlib.Path, names: list[str], preset: str, overrides=()) -> list[dict]:
  rows = []
  for name in names:
    config = model_config(name, preset, overrides)
    res = run_records.read_results(workdir / name)
    rows.append({'model': name, 'registry_name': config.model, 'macs': macs(config),
                 'batch_norm': uses_batch_norm(config),
                 'num_params': res['num_params'] if res else None, 'results': res})
  return rows


def _n(results, key) -> str:
  return f'{results[key]:,}' if results else '?'


def plot(rows: list[dict], out: pathlib.Path, title: str) -> pathlib.Path | None:
  done = [r for r in rows if r['results']]
  if not done:
    return None
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for r in done:
    acc = 100 * r['results']['test_accuracy']
    ax.scatter(r['num_params'], acc, s=40)
    ax.annotate(r['model'], (r['num_params'], acc), textcoords='offset points', xytext=(4, 4),
                fontsize=8)
  ax.set_xscale('log')
  ax.set_xlabel('parameters')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def headline(rows: list[dict], config) -> str:
  """One line for the README: test accuracy per trained model, best first."""
  done = sorted((r for r in rows if r['results']), key=lambda r: -r['results']['test_accuracy'])
  if not done:
    return 'no model trained yet'
  steps = config.num_steps or config.num_epochs
  unit = 'steps' if config.num_steps else 'epochs'
  return (f'test accuracy after {steps:,} {unit} of {config.batch_size}: ' + ', '.join(
      f"{r['model']} {r['results']['test_accuracy']:.1%}" for r in done)
          + ('' if len(done) == len(rows) else f' ({len(done)} of {len(rows)} models trained)'))


def recompute(report_dir: pathlib.Path) -> report_parts.Recomputed:
  """The report in `report_dir` (reports/cifar_zoo) computed again from its per-run records:
  each model's results.json and config.json give the headline. It has no claim checks (a table)."""
  names = [r['model'] for r in run_records.read_json(report_dir / 'results.json')['rows']]
  rows = [{'model': n, 'results': run_records.read_results(report_dir / n)} for n in names]
  config = next(ml_collections.ConfigDict(run_records.read_json(report_dir / n / 'config.json'))
                for n in names if (report_dir / n / 'config.json').exists())
  return report_parts.Recomputed(report_parts.Checks(), headline(rows, config))


def batch_norm_reading(rows: list[dict]) -> str:
  """The test accuracies of the trained models with and without BatchNorm, side by side."""
  groups = {}
  for r in rows:
    if r['results']:
      groups.setdefault(r['batch_norm'], []).append(r)
  parts = []
  for has_bn, label in ((True, 'with BatchNorm'), (False, 'without')):
    group = sorted(groups.get(has_bn, []), key=lambda r: -r['results']['test_accuracy'])
    if group:
      parts.append(f'{label}: ' + ', '.join(
          f"{r['model']} {100 * r['results']['test_accuracy']:.1f}%" for r in group))
  return 'Test accuracy ' + '; '.join(parts) + '.' if parts else ''


def results_table(rows: list[dict]) -> str:
  """Per model: registry name, BatchNorm, parameters, MACs, speed, wall time, test accuracy."""
  table = []
  for r in rows:
    res = r['results']
    table.append([
        r['model'], f"`{r['registry_name']}`", 'yes' if r['batch_norm'] else 'no',
        f"{r['num_params']:,}" if r['num_params'] else '…', f"{r['macs'] / 1e6:,.1f} M",
        f"{res['train_images_per_s']:,.1f}" if res and res.get('train_images_per_s') else '…',
        f"{res['wall_time_s'] / 60:.1f} min" if res else '…',
        f"{100 * res['test_accuracy']:.2f}" if res else 'not run',
        f"{100 * (1 - res['test_accuracy']):.2f}" if res else '…'])
  return report.markdown_table(
      ['model', 'registry name', 'BatchNorm', 'params', 'MACs / image', 'train images/s',
       'wall time', 'test accuracy %', 'test error %'], table)


def paper_table(rows: list[dict]) -> str:
  """The models with a published CIFAR-10 error: ours beside the paper's, with its protocol."""
  paper_rows = []
  for r in rows:
    if r['model'] in PAPER:
      err, source, protocol = PAPER[r['model']]
      res = r['results']
      err_here = f"{100 * (1 - res['test_accuracy']):.2f}" if res else 'not run'
      paper_rows.append([r['model'], err_here, f'{err:.2f}', source, protocol])
  return report.markdown_table(
      ['model', 'test error % here', 'paper test error %', 'source', "paper's protocol"],
      paper_rows)


def _header(rows: list[dict], config, preset: str, facts: dict, command: str) -> str:
  first = next((r['results'] for r in rows if r['results']), None)
  steps = config.num_steps or config.num_epochs
  return report_parts.header(
      title='The classic architectures on CIFAR-10', claims='C16-C19', command=command,
      data=(f"{first['dataset'] if first else 'CIFAR-10'}: {_n(first, 'num_train')} training, "
            f"{_n(first, 'num_val')} validation and {_n(first, 'num_test')} test images; 4-pixel "
            'crop + flip.'),
      protocol=(f'the same for every model (configs/cifar_zoo.py preset {preset or "none"!r}): '
                f'{steps:,} {"steps" if config.num_steps else "epochs"} of batch '
                f'{config.batch_size}, SGD momentum {config.momentum}, lr {config.learning_rate} '
                f'cosine, weight decay {config.weight_decay:g} (L2); GoogLeNet auxiliary losses '
                f'weighted {config.aux_loss_weight} in training only; test accuracy of the best '
                'validation checkpoint. MACs: multiply-adds of convolutions and dense layers per '
                'image at inference (cnn_jax.conv_arithmetic.count_flops). How each ImageNet '
                'network was adapted to 32x32: cnn_jax/models/cifar_zoo.py.'),
      train_wall_s=train_wall_time(rows), facts=facts, generator='experiments/cifar_zoo.py')


def train_wall_time(rows: list[dict]) -> float:
  return sum(r['results']['wall_time_s'] for r in rows if r['results'])


def make_report(workdir: pathlib.Path, names: list[str], preset: str, facts: dict, command: str,
                overrides=()) -> tuple[str, dict]:
  """report.md's text and results.json's record from the runs' results in `workdir`; draws
  accuracy_vs_params.png there. `facts`: the experiment's clock (common.Session.facts)."""
  rows = rows_of(workdir, names, preset, overrides)
  config = model_config(names[0], preset, overrides)
  fig = plot(rows, workdir / 'accuracy_vs_params.png',
             f'CIFAR-10, one reduced protocol ({preset or "recipe"})')
  done = sum(r['results'] is not None for r in rows)
  text = _header(rows, config, preset, facts, command) + f"""
{done} of {len(rows)} models trained.

## Results

{results_table(rows)}

{batch_norm_reading(rows)}

{f'![accuracy against parameters]({fig.name})' if fig else ''}

## Beside the papers

{paper_table(rows)}

The protocols differ: the papers train to convergence on all 50,000 training images (hundreds of
epochs); this table's runs are the reduced protocol above, so their errors are far higher. The
comparison places the architectures' published best next to what this budget reaches; it does not
test the published numbers. VGG's own paper reports no CIFAR-10 result; the VGG row cites the
best-known CIFAR adaptation of VGG-16 with BatchNorm.

## Adaptations to 32x32 inputs

{zoo_models.__doc__.strip()}

{report_parts.footer()}"""
  return text, _record(rows, config, preset, command)


def _record(rows: list[dict], config, preset: str, command: str) -> dict:
  return {
      'experiment': 'cifar_zoo', 'claims': 'C16-C19', 'preset': preset, 'command': command,
      'rows': [{k: v for k, v in r.items() if k != 'results'} | (
          {k: r['results'].get(k) for k in ('test_accuracy', 'val_accuracy', 'wall_time_s',
                                            'train_images_per_s', 'steps', 'num_train')}
          if r['results'] else {}) for r in rows],
      'paper': {k: {'test_error_pct': v[0], 'source': v[1], 'protocol': v[2]}
                for k, v in PAPER.items()},
      'headline': headline(rows, config), 'train_wall_time_s': train_wall_time(rows),
  }


def main(argv):
  session = common.start(argv, 'cifar_zoo', blank='recipe', check_model=check_model)
  preset, names = session.preset, session.models
  session.train(session.configs(  # every config before any training
      lambda: {m: model_config(m, preset, session.overrides) for m in names}))
  text, record = make_report(session.workdir, names, preset, session.facts(), session.command,
                             session.overrides)
  path = session.finish(text, record, ('report.md', 'results.json', 'accuracy_vs_params.png')
                        + tuple(f'{m}/{name}' for m in names for name in RECORDS))
  print(f'report: {path}')


if __name__ == '__main__':
  runtime.start()  # first: may restart the program, then sets XLA up
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
