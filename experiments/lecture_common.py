"""The harness of the lecture-claim experiments: one runner owns their flags (--preset,
--workdir, --report_dir, --report_only, --set, --models, and a sweep's --seeds and --parallel),
the one `--set` parser (config_base.apply_overrides, one ConfigError), skipping finished runs and
resuming the others, the experiment's clock, results.json and copying into --report_dir. An
experiment is its science: its runs (a sweep: `start_sweep`; named runs: `start`, then
`Session.configs`, `Session.train`), the analysis from the runs' records, its claim checks and its
report, handed to `Session.finish` / `finish`. Also: figures, and restoring a trained model.
The reports' shared parts (header, claim checks) are report_parts.py; what the runs recorded,
read back, is run_records.py.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import shutil
import sys
import time
from typing import Callable

from absl import app, flags

from cnn_jax import cli, config_base, sweep
from cnn_jax.config_base import ConfigError
from experiments import report_parts, run_records

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
DEFAULT_SEEDS = 3


def define_flags(name: str, toy: str, *, sweep_flags: bool = True, seeds_of: str = 'setting',
                 presets: tuple[str, ...] = ('full', 'toy'), default_preset: str | None = None,
                 preset_help: str = '', models: tuple[str, ...] | None = None,
                 models_help: str = '', default_seeds: int | None = None):
  """The flags every lecture experiment shares, read back as FLAGS.preset etc.: --preset, --workdir,
  --report_dir, --report_only, --set, --models when `models` lists its default runs, and for a
  sweep --seeds (`default_seeds`, else DEFAULT_SEEDS and one for toy) and --parallel. `toy`
  describes the small preset ('toy', else the last of `presets`). Call it only when the
  experiment runs as a script, so that tests can import several experiments."""
  small = 'toy' if 'toy' in presets else presets[-1]
  flags.DEFINE_enum('preset', presets[0] if default_preset is None else default_preset,
                    list(presets), f'{preset_help + " " if preset_help else ""}{small}: {toy}')
  flags.DEFINE_string('workdir', None, f'Default: workdirs/{name}[_<preset>].')
  flags.DEFINE_string('report_dir', None, 'Also copy the report and records here.')
  flags.DEFINE_bool('report_only', False, 'Only write the report from the workdir.')
  flags.DEFINE_multi_string('set', [], 'Config override KEY=VALUE for every run, e.g. '
                            '--set=data.data_dir=/data/cifar10.')
  if models is not None:
    flags.DEFINE_list('models', list(models), models_help)
  if sweep_flags:
    flags.DEFINE_integer('seeds', default_seeds, f'Seeds per {seeds_of} (default '
                         + (f'{default_seeds}).' if default_seeds is not None else
                            f'{DEFAULT_SEEDS}; toy: 0 = one).'))
    flags.DEFINE_integer('parallel', 1, 'Members run at once (subprocesses).')


def config_file_flags(argv: list[str], config_file: str) -> list[str]:
  """`argv` with cnn_jax.main's spelling of an experiment that trains one config file read as
  the harness's: `--config=<config_file>[:PRESET]` is --preset=PRESET (full without one) and
  `--config.KEY=VALUE` is --set=KEY=VALUE, for the one --set parser. Another config file is a
  ConfigError."""
  def harness_flag(arg: str) -> str:
    if arg.startswith('--config.') and '=' in arg:
      return '--set=' + arg[len('--config.'):]
    if arg.startswith('--config='):
      path, _, preset = arg[len('--config='):].partition(':')
      if pathlib.Path(path).resolve() != (ROOT / config_file).resolve():
        raise ConfigError(f'This experiment trains {config_file} (--preset picks its preset); '
                          f'got {arg}.')
      return f'--preset={preset or "full"}'
    return arg
  return [harness_flag(arg) for arg in argv]


def config_file_parser(config_file: str) -> Callable[[list[str]], list[str]]:
  """app.run's flags_parser for an experiment that trains one config file: cli.parse_flags of
  `config_file_flags` (a ConfigError exits with its message and code 2)."""
  def parse(argv: list[str]) -> list[str]:
    try:
      return cli.parse_flags(config_file_flags(argv, config_file))
    except ConfigError as e:
      cli.exit_on_config_error(e)
  return parse


def overrides() -> tuple[str, ...]:
  """The --set overrides ('KEY=VALUE'), none where the script defines no --set."""
  return tuple(FLAGS.set) if 'set' in FLAGS else ()


def check_argv(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')


def default_workdir(name: str, preset: str, blank: str = '') -> pathlib.Path:
  """--workdir, or workdirs/<name>[_<preset>] in the repository ('' and 'full': the suffix
  `blank`, if any)."""
  tag = blank if preset in ('', 'full') else preset
  return pathlib.Path(FLAGS.workdir or ROOT / 'workdirs' / (name + (f'_{tag}' if tag else '')))


def rel(path: pathlib.Path) -> pathlib.Path:
  """`path` relative to the repository when it is inside it (for commands in reports)."""
  path = pathlib.Path(path)
  return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


@dataclasses.dataclass
class SweepRun:
  """What a sweep experiment's main starts from (see `start_sweep`)."""
  spec: sweep.Sweep
  workdir: pathlib.Path
  members: list
  summary: dict
  clock: Clock
  preset: str
  seeds: int

  @property
  def config(self):
    """The first member's config (the settings every member shares)."""
    return self.members[0].config

  def facts(self) -> dict:
    """The experiment's wall time (Clock.facts) and the machine and its load as the finished
    members recorded them ('runs_load', 'runs_host': `run_records.runs_facts`)."""
    return {**self.clock.facts(),
            **run_records.runs_facts(self.workdir / m.name for m in self.members)}


def start_sweep(argv, name: str, title: str, config_args: tuple[str, ...] = (),
                preset: str | None = None, workdir: str | None = None) -> SweepRun:
  """The opening of a sweep experiment: runs (or resumes) configs/<name>.py[:<preset>] over --seeds in
  the workdir (default: `default_workdir`), one member a directory, then aggregates. --preset,
  --seeds, --parallel, --report_only and --set (after `config_args`) are read from the flags;
  `preset` replaces --preset."""
  check_argv(argv)
  cli.setup_process()
  clock = Clock()
  preset = FLAGS.preset if preset is None else preset
  seeds = (0 if preset == 'toy' else DEFAULT_SEEDS) if FLAGS.seeds is None else FLAGS.seeds
  spec = sweep.Sweep(f'configs/{name}.py' + ('' if preset in ('', 'full') else f':{preset}'),
                     seeds=seeds, config_args=tuple(config_args) + overrides())
  workdir = pathlib.Path(workdir) if workdir else default_workdir(name, preset)
  clock.bind(workdir, FLAGS.report_only)
  members, summary = run_sweep(spec, workdir, FLAGS.parallel, FLAGS.report_only, title=title)
  return SweepRun(spec, workdir, members, summary, clock, preset, seeds)


def configured(config, overrides=()):
  """`config` with the 'KEY=VALUE' `overrides` (--set) applied by the one parser
  (config_base.apply_overrides), validated; a mistake is a ConfigError naming the nearest key."""
  config_base.validate(config_base.apply_overrides(config, overrides))
  return config


# ------------------------------------------------------------------ experiments of named runs


@dataclasses.dataclass
class Session:
  """An experiment of named runs (degradation, cifar_zoo, transfer) as its command line started
  it (see `start`). `configs` builds the runs' configs (a bad --set exits with its ConfigError
  before anything trains), `train` trains each unfinished run in <workdir>/<run>, `finish`
  writes report.md and results.json (with `facts`: the wall time and the runs' load) and copies
  to --report_dir."""
  name: str  # experiments.<name>
  workdir: pathlib.Path
  preset: str
  overrides: tuple[str, ...]  # --set
  models: list[str] | None  # --models, where the experiment has the flag
  report_only: bool
  report_dir: str | None
  clock: Clock
  runs: list[str] = dataclasses.field(default_factory=list)  # the runs `train` was given
  _facts: dict | None = dataclasses.field(default=None, repr=False)

  @property
  def module(self) -> str:
    return f'experiments.{self.name}'

  @property
  def command(self) -> str:
    """The command that trains the runs and writes the report, as typed (less --report_only)."""
    return cli.command_line(self.module).replace(' --report_only', '')

  def configs(self, build: Callable[[], object]):
    """`build()`: the runs' configs ({run name: config} in training order, or what holds them);
    a ConfigError (an unknown --set key, a bad value) exits with its message and code 2."""
    try:
      return build()
    except ConfigError as e:
      cli.exit_on_config_error(e)

  def train(self, configs: dict) -> None:
    """Trains each run of `configs` in <workdir>/<name> (the run named '.': in the workdir
    itself; one named by an absolute path: there, e.g. a run another experiment trained), one
    after another: a run with results.json is skipped, any other resumes from its checkpoint
    (cli.run_training: exit 130 when interrupted). Nothing under --report_only."""
    self.runs = list(configs)
    if self.report_only:
      return
    for name, config in configs.items():
      run_dir = self.workdir / name
      if sweep.is_done(run_dir):
        print(f'{run_dir.name}: finished, skipped ({run_dir}).', file=sys.stderr)
        continue
      print(f'{run_dir.name}: training in {run_dir} ...', file=sys.stderr, flush=True)
      cli.run_training(config, run_dir, self.module)

  def facts(self) -> dict:
    """The experiment's wall time (Clock.facts) and the machine and its load as the runs given
    to `train` recorded them ('runs_load', 'runs_host': `run_records.runs_facts`), taken once."""
    if self._facts is None:
      self._facts = {**self.clock.facts(),
                     **run_records.runs_facts(self.workdir / name for name in self.runs)}
    return self._facts

  def finish(self, text: str, record: dict, outputs, checks=None) -> pathlib.Path:
    """`finish` in the workdir, `facts` added to `record`; returns report.md's path."""
    finish(self.workdir, text, {**record, **self.facts()}, outputs, checks, self.report_dir)
    return self.workdir / 'report.md'


def start(argv, name: str, *, blank: str = '',
          check_model: Callable[[str], object] | None = None) -> Session:
  """The opening of an experiment of named runs: checks the command line (each of --models by
  `check_model`, which raises ValueError for a bad name), quiets the logs and installs the
  signal handlers, starts the clock and makes the workdir (`default_workdir`, `blank` naming the
  preset '')."""
  check_argv(argv)
  models = list(FLAGS.models) if 'models' in FLAGS else None
  for model in models or ():
    try:
      check_model(model)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
  cli.setup_process()
  workdir = default_workdir(name, FLAGS.preset, blank).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  return Session(name, workdir, FLAGS.preset, overrides(), models, FLAGS.report_only,
                 FLAGS.report_dir, Clock().bind(workdir, FLAGS.report_only))


class Clock:
  """Wall time of the whole experiment. Bound to a workdir (`bind`), an experiment that trains
  saves it there (`experiment_clock.json`) each time a report asks for it, and a `--report_only`
  regeneration reports that saved wall time, not its own seconds. The machine's load is the
  runs' own record (`run_records.runs_load`), never this process's.
  """
  FILE = run_records.CLOCK_FILE

  def __init__(self):
    self.start = time.time()
    self.workdir: pathlib.Path | None = None
    self.report_only = False

  def bind(self, workdir: pathlib.Path, report_only: bool) -> 'Clock':
    self.workdir, self.report_only = pathlib.Path(workdir), report_only
    return self

  def facts(self) -> dict:
    path = self.workdir / self.FILE if self.workdir else None
    if self.report_only and path and path.exists():  # an older file also holds the load: dropped
      return {'experiment_wall_time_s': run_records.read_json(path)['experiment_wall_time_s']}
    facts = {'experiment_wall_time_s': time.time() - self.start}
    if path and not self.report_only:
      tmp = path.with_suffix('.tmp')
      tmp.write_text(json.dumps(facts, indent=2) + '\n')
      tmp.replace(path)  # atomic
    elif self.report_only:
      facts['clock_of'] = 'the report process (the run saved no clock facts)'
    return facts


def run_sweep(spec: sweep.Sweep, workdir: pathlib.Path, parallel: int = 1,
              report_only: bool = False, title: str = '') -> tuple[list[sweep.Member], dict]:
  """Runs the pending members of `spec` in `workdir/<member>` (resuming), then aggregates. A
  ConfigError (a bad --set) exits with its message and code 2 before anything runs."""
  try:
    members = spec.members()
  except ConfigError as e:
    cli.exit_on_config_error(e)
  workdir.mkdir(parents=True, exist_ok=True)
  if not report_only:
    if parallel > 1:
      argv_for = lambda m: [sys.executable] + spec.command(workdir, f'--member={m.index}')[1:]
      status = sweep.run_parallel(members, workdir, argv_for, parallel)
    else:
      status = sweep.run_sequential(
          members, workdir, lambda m: shlex.join(spec.command(workdir, f'--member={m.index}')))
    if status == 'interrupted':
      raise SystemExit(130)
  return members, sweep.aggregate(members, workdir, title=title or f'Sweep of {spec.config_file}')


def copy_outputs(workdir: pathlib.Path, report_dir: str | None, names) -> None:
  if not report_dir:
    return
  out = pathlib.Path(report_dir)
  out.mkdir(parents=True, exist_ok=True)
  for name in names:  # a name may be a path inside the workdir: 'resnet20/results.json'
    if (workdir / name).exists():
      (out / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(workdir / name, out / name)
  print(f'copied to {out}')


def finish(workdir: pathlib.Path, text: str, record: dict, outputs, checks=None,
           report_dir: str | None = None) -> None:
  """Writes report.md and results.json (`record`, plus `report_parts.checks_record(checks)`
  when given: a Checks or a list of rows) in the workdir, says whether the claims hold, and
  copies `outputs` to `report_dir`."""
  if checks is not None:
    record = {**record, **report_parts.checks_record(checks)}
  (workdir / 'report.md').write_text(text)
  run_records.write_json(workdir / 'results.json', record)
  if checks is not None:
    facts = record.get('facts', [])
    print(f"claims hold: {record['all_checks_hold']}"
          + (f' (facts, not counted, hold: {report_parts.all_hold(facts)})' if facts else '')
          + f"; report: {workdir / 'report.md'}")
  copy_outputs(workdir, report_dir, outputs)


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig, out: pathlib.Path, dpi: int = 110, axes=(), legend_size=None):
  """Grid and legend on `axes`, then tight layout, saved to `out` and closed; returns `out`."""
  for ax in axes:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a panel with nothing labelled (yet) gets no legend
      ax.legend(fontsize=legend_size)
  fig.tight_layout()
  fig.savefig(out, dpi=dpi)
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.close(fig)
  return out


def restore_best(config, run_dir: pathlib.Path, kind: str = 'best'):
  """(model, variables, preprocess, splits) of a finished run's `kind` checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cnn_jax import (checkpointing, datasets, input_pipeline, models, optim,  # pylint: disable=g-import-not-at-top
                       parallel, train)
  splits = datasets.load(config.data)
  preprocess = input_pipeline.Preprocess.from_config(config.data, splits)
  model = models.create(config.model, num_classes=splits.num_classes,
                        dtype=jnp.dtype(config.dtype), **config.model_kwargs)
  steps_per_epoch = len(splits.train[0]) // config.batch_size
  tx = optim.create_optimizer(config, optim.create_learning_rate_fn(config, steps_per_epoch,
                                                                    steps_per_epoch))
  target = train.create_train_state(model, tx, preprocess.output_shape(splits.image_shape),
                                    jax.random.key(0), parallel.replicated(parallel.make_mesh()))
  ckpts = checkpointing.Checkpoints(run_dir)
  restored = ckpts.restore(kind, target)
  ckpts.close()
  if restored is None:
    raise FileNotFoundError(f'No {kind} checkpoint in {run_dir / "checkpoints"}.')
  state = restored[0]
  variables = {'params': state.params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return model, variables, preprocess, splits
