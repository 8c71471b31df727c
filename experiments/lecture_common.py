"""The harness of the lecture-claim experiments: one runner owns their flags (--preset,
--workdir, --report_dir, --report_only, --set, --models, and a sweep's --seeds and --parallel),
the one `--set` parser (config_base.apply_overrides, one ConfigError), skipping finished runs and
resuming the others, the experiment's clock, results.json and copying into --report_dir. An
experiment is its science: its runs (a sweep: `start_sweep`; named runs: `start`, then
`Session.configs`, `Session.train`), the analysis from the runs' records, its claim checks and its
report, handed to `Session.finish` / `finish`. Also: the report header and footer, check tables,
figures, recomputing a committed report, and restoring a trained model.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import pathlib
import re
import shlex
import shutil
import sys
import time
from typing import Callable

from absl import app, flags

from cnn_jax import cli, config_base, report, sweep
from cnn_jax.config_base import ConfigError

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
    members recorded them ('runs_load', 'runs_host': `runs_facts`)."""
    return {**self.clock.facts(), **runs_facts(self.workdir / m.name for m in self.members)}


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
    to `train` recorded them ('runs_load', 'runs_host': `runs_facts`), taken once."""
    if self._facts is None:
      self._facts = {**self.clock.facts(),
                     **runs_facts(self.workdir / name for name in self.runs)}
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


def read_results(run_dir: pathlib.Path) -> dict | None:
  """A finished run's results.json; None while it is not finished."""
  return json.loads((run_dir / 'results.json').read_text()) if sweep.is_done(run_dir) else None


def stat(values) -> dict:
  """{'mean', 'std'} with the sample standard deviation (nan for a single value)."""
  values = [float(v) for v in values]
  if not values:
    return {'mean': math.nan, 'std': math.nan}
  mean = sum(values) / len(values)
  std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
         if len(values) > 1 else math.nan)
  return {'mean': mean, 'std': std}


class Clock:
  """Wall time of the whole experiment. Bound to a workdir (`bind`), an experiment that trains
  saves it there (`experiment_clock.json`) each time a report asks for it, and a `--report_only`
  regeneration reports that saved wall time, not its own seconds. The machine's load is the
  runs' own record (`runs_load`), never this process's.
  """
  FILE = 'experiment_clock.json'

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
      return {'experiment_wall_time_s': read_json(path)['experiment_wall_time_s']}
    facts = {'experiment_wall_time_s': time.time() - self.start}
    if path and not self.report_only:
      tmp = path.with_suffix('.tmp')
      tmp.write_text(json.dumps(facts, indent=2) + '\n')
      tmp.replace(path)  # atomic
    elif self.report_only:
      facts['clock_of'] = 'the report process (the run saved no clock facts)'
    return facts


def run_record(run_dir: pathlib.Path) -> dict | None:
  """A finished run's results.json; None while it is unfinished. An older run, whose
  results.json has no load, has it in the clock its experiment kept beside it (Clock.FILE):
  its load_average_start and cpu_count are taken from there."""
  results = read_results(run_dir)
  clock = pathlib.Path(run_dir) / Clock.FILE
  if results is None or results.get('load_average_start') is not None or not clock.exists():
    return results
  older = read_json(clock)
  if older.get('load_average_start') is None:
    return results
  return {**results, 'load_average_start': older['load_average_start'],
          'cpu_count': older['cpu_count']}


def run_records(run_dirs) -> dict[str, dict]:
  """{directory name: `run_record`} of the finished runs in `run_dirs` (a name met twice: the
  whole path)."""
  records = {}
  for run_dir in map(pathlib.Path, run_dirs):
    record = run_record(run_dir)
    if record is not None:
      records[str(run_dir) if run_dir.name in records else run_dir.name] = record
  return records


def runs_facts(run_dirs) -> dict:
  """What the finished runs in `run_dirs` recorded of the machine they trained on:
  {'runs_load': `load_record`, 'runs_host': `host_record`} of their `run_records`."""
  records = run_records(run_dirs)
  return {'runs_load': load_record(records), 'runs_host': host_record(records)}


def runs_load(run_dirs) -> dict:
  """`load_record` of the finished runs in `run_dirs`."""
  return load_record(run_records(run_dirs))


def load_record(records: dict[str, dict] | None) -> dict:
  """What the runs' records ({run: results.json}, `run_records`; None: the runs are not known)
  say of the machine's load: cnn_jax.train writes the 1-minute load average at the start of a
  run's (last) sitting and the host's cores into its results.json. {'runs': the runs (None: not
  known), 'recorded': how many recorded the load, and where any did: 'load_average_start' and
  'cpu_count' as [lowest, highest], 'busy': the runs that started above half their cores}."""
  loads = [(name, r['load_average_start'], r['cpu_count']) for name, r in (records or {}).items()
           if r.get('load_average_start') is not None]
  runs = None if records is None else len(records)
  if not loads:
    return {'runs': runs, 'recorded': 0}
  starts, cores = [l for _, l, _ in loads], [c for _, _, c in loads]
  return {'runs': runs, 'recorded': len(loads), 'load_average_start': [min(starts), max(starts)],
          'cpu_count': [min(cores), max(cores)],
          'busy': [name for name, load, n in loads if load > 0.5 * n]}


def host_record(records: dict[str, dict] | None) -> dict:
  """What the runs' records ({run: results.json}; None: the runs are not known) say of where
  they trained: cnn_jax.train writes host_cpu, platform, device_kind and device_count.
  {'runs': the runs (None: not known), 'recorded': how many name their host CPU, 'hosts' and
  'devices': {name: runs}}."""
  hosts, devices = collections.Counter(), collections.Counter()
  for r in (records or {}).values():
    if r.get('host_cpu'):
      hosts[r['host_cpu']] += 1
    if r.get('device_kind'):
      kind = f"{r['platform']}:{r['device_kind']}" if r.get('platform') else r['device_kind']
      devices[f"{r.get('device_count', '?')} x {kind}"] += 1
  return {'runs': None if records is None else len(records), 'recorded': sum(hosts.values()),
          'hosts': dict(sorted(hosts.items())), 'devices': dict(sorted(devices.items()))}


def machine_note(host: dict, committed: bool = False) -> str:
  """The device and host CPU the runs recorded (`host_record`), e.g. '1 x cpu:cpu, host CPU AMD
  EPYC (2 cores, AVX-512)', never the report process's. `committed`: the records are those a
  report commits, so a run without one may have recorded its host where it trained."""
  if not host['recorded']:
    return 'device and host CPU ' + _unrecorded(host, committed)
  devices = _counted(host['devices'])
  return (f'{devices}, ' if devices else '') + 'host CPU ' + host_note(host, committed)


def host_note(host: dict, committed: bool = False) -> str:
  """The host CPU the runs recorded (`host_record`); where they differ, each with its runs; and
  how many did not record it (`committed`: have no committed record of it)."""
  if not host['recorded']:
    return _unrecorded(host, committed)
  text, runs, recorded = _counted(host['hosts']), host['runs'], host['recorded']
  if runs > recorded:
    text += (f' (no committed record of it for {runs - recorded} of the {runs} runs)' if committed
             else f' ({runs - recorded} of the {runs} runs did not record it)')
  return text


def _unrecorded(host: dict, committed: bool) -> str:
  if host['runs'] == 0:
    return 'not recorded (no run finished)'
  if committed:
    return "in none of the runs' committed records"
  return f"not recorded by the run{'' if host['runs'] == 1 else 's'}"


def _counted(counts: dict) -> str:
  """'A' for one name; 'A (2 runs) and B (1 run)' for several."""
  items = [name if len(counts) == 1 else f"{name} ({n} run{'s' if n > 1 else ''})"
           for name, n in counts.items()]
  return ' and '.join([', '.join(items[:-1]), items[-1]] if len(items) > 2 else items)


def busy_note(load: dict) -> str:
  """A sentence that says whether the runs trained on a busy machine, i.e. whether their wall
  times are speed figures, from their own records (`load_record`). The load at a run's start:
  by its end the 1-minute average counts the run itself."""
  runs, recorded = load['runs'], load['recorded']
  if not recorded:
    if runs == 0:
      return "No run trained, so none recorded the machine's load."
    who = 'The runs' if runs is None else 'The run' if runs == 1 else f'The {runs} runs'
    return (f"{who} did not record the machine's load (made before cnn_jax.train recorded it): "
            'whether another job ran is not known.')
  where = (f"1-minute load average {_span(load['load_average_start'], '{:.1f}')} at the start "
           f"of {'the run' if recorded == 1 else f'the {recorded} runs'}, on "
           f"{_span(load['cpu_count'], '{}')} cores"
           + (f' ({runs - recorded} of the {runs} runs did not record it)' if recorded < runs
              else ''))
  busy = load['busy']
  if not busy:
    return f'Trained on an otherwise idle machine: {where}.'
  if len(busy) == recorded:
    return f'Trained while another job ran: {where}; the wall times are not a speed figure.'
  return (f"Not idle throughout: {where}; {', '.join(busy)} started above half the cores, while "
          'another job ran or just after a run of this experiment (the 1-minute average still '
          f"counts it), so {'its wall time is' if len(busy) == 1 else 'their wall times are'} "
          'not a speed figure.')


def _span(low_high, fmt: str) -> str:
  """'0.3 to 1.2', or '0.3' when both ends print alike."""
  low, high = (fmt.format(v) for v in low_high)
  return low if low == high else f'{low} to {high}'


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


def header(*, title: str, claims: str, command: str, data: str, protocol: str,
           train_wall_s: float | None, facts: dict, generator: str) -> str:
  """The report's title and its command, data, protocol and hardware. `facts`: the experiment's
  wall time (Clock.facts) and what its runs recorded of their machine and its load ('runs_host',
  'runs_load': `runs_facts`), e.g. `Session.facts`; nothing of the report process's machine."""
  wall = (f"training wall time {train_wall_s:.0f} s summed over the runs; " if train_wall_s else '')
  if 'clock_of' in facts:
    wall += f"({facts['clock_of']}) "  # a regeneration without the run's own clock
  return f"""# {title} — {claims}

Generated by `{generator}` from the runs' `results.json` and `metrics.jsonl`.

- **Command**: `{command}`
- **Data**: {data}
- **Protocol**: {protocol}
- **Hardware**: {machine_note(facts['runs_host'])}; {wall}experiment
  wall time {facts['experiment_wall_time_s']:.0f} s. {busy_note(facts['runs_load'])}
"""


# The environment section's first line: its facts are the report process's (jax, commit, host).
ENVIRONMENT_NOTE = ('Of the process that wrote this report, not necessarily where the runs '
                    "trained (the runs' own record: **Hardware** above).")


def footer() -> str:
  """The environment section: the report process's, labelled so (ENVIRONMENT_NOTE)."""
  return (f'## Environment\n\n{ENVIRONMENT_NOTE}\n\n'
          + report.environment_markdown(report.environment()) + '\n')


def check_row(claim: str, quantity: str, lecture: str, criterion: str, measured: str,
              holds: bool) -> list[str]:
  return [claim, quantity, lecture, criterion, measured, 'yes' if holds else '**no**']


CHECK_HEADERS = ['claim', 'quantity', 'lecture', 'criterion', 'measured', 'holds']
FACTS_TITLE = 'Facts (from the config or the architecture; not counted)'


class Checks:
  """Claim checks as rows of CHECK_HEADERS; `all_hold` is their AND.

  A counted check is a function of the runs' data: other data could fail it. What follows from
  the config or the architecture (parameter counts, normalised axes, equal examples seen) and
  self-consistency checks (a recomputation agreeing with the loop) are added with `fact=True`:
  they go to `facts`, their own table, and never count in `all_hold` or the README.
  """

  def __init__(self):
    self.rows: list[list[str]] = []
    self.facts: list[list[str]] = []

  def add(self, claim: str, quantity: str, lecture: str, criterion: str, measured: str,
          holds: bool, *, fact: bool = False) -> None:
    row = check_row(claim, quantity, lecture, criterion, measured, bool(holds))
    (self.facts if fact else self.rows).append(row)

  @property
  def all_hold(self) -> bool:
    return all_hold(self.rows)

  @classmethod
  def of(cls, rows, facts=()) -> Checks:
    """Checks holding these rows (counted) and facts, e.g. a report's or a function's lists."""
    checks = cls()
    checks.rows, checks.facts = [list(r) for r in rows], [list(r) for r in facts]
    return checks


def _rows_and_facts(checks) -> tuple[list, list]:
  """A Checks' (rows, facts); a plain list of rows has no facts."""
  return (checks.rows, checks.facts) if isinstance(checks, Checks) else (list(checks), [])


def all_hold(rows) -> bool:
  return all(r[-1] == 'yes' for r in rows)


def checks_section(checks) -> str:
  """The claim checks (a Checks, or a list of rows), then its facts in their own table."""
  rows, facts = _rows_and_facts(checks)
  text = f'## Claim checks\n\n{report.markdown_table(CHECK_HEADERS, rows)}\n'
  if facts:
    text += f'\n## {FACTS_TITLE}\n\n{report.markdown_table(CHECK_HEADERS, facts)}\n'
  return text


def checks_record(checks) -> dict:
  """results.json's entries for `checks`: 'all_checks_hold' and 'checks' (the counted rows),
  and 'facts' when there are any (never counted)."""
  rows, facts = _rows_and_facts(checks)
  return {'all_checks_hold': all_hold(rows), 'checks': rows, **({'facts': facts} if facts else {})}


def write_json(path: pathlib.Path, data: dict) -> None:
  path.write_text(json.dumps(data, indent=2, default=float) + '\n')


# ---------------------------------------------------------- a committed report, computed again


@dataclasses.dataclass
class Recomputed:
  """A committed report (reports/<name>/) computed again from its files by its experiment's own
  functions (each experiment's `recompute(report_dir)`): the claim checks (counted rows and
  facts), the README headline and any other figure the README shows. `stored` lists the counted
  checks (by quantity) whose per-run records the report does not commit: their rows are the
  report's own, read from its results.json, until a rerun commits the records."""
  checks: Checks
  headline: str
  stored: tuple[str, ...] = ()
  figures: dict = dataclasses.field(default_factory=dict)


def read_json(path: pathlib.Path) -> dict:
  return json.loads(pathlib.Path(path).read_text())


def stored_rows(record: dict, quantity: str) -> list[list[str]]:
  """The counted rows of a results.json whose quantity starts with `quantity`."""
  return [row for row in record.get('checks', []) if row[1].startswith(quantity)]


def write_csv(path: pathlib.Path, columns: list[str], rows) -> None:
  """A CSV of per-run records: `columns`, then `rows` (None as an empty cell; floats exactly)."""
  with pathlib.Path(path).open('w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(['' if v is None else v for v in row] for row in rows)


def read_csv(path: pathlib.Path) -> list[dict]:
  """A CSV of per-run records (a sweep's members.csv, `write_csv`'s files), a dict a row:
  numbers as numbers, empty cells as None."""
  def value(text: str):
    if text == '':
      return None
    try:
      return int(text)
    except ValueError:
      try:
        return float(text)
      except ValueError:
        return text
  with pathlib.Path(path).open(newline='') as f:
    return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


CHECK_KEYS = ('all_checks_hold', 'checks', 'facts')
# report.md's claim-checks table and the facts table after it, as `checks_section` writes them.
CHECKS_SECTION = re.compile(r'## Claim checks[^\n]*\n\n(?:\|[^\n]*\n)+'
                            rf'(?:\n## {re.escape(FACTS_TITLE)}\n\n(?:\|[^\n]*\n)+)?')


def with_checks(record: dict, checks: Checks) -> dict:
  """`record` (a results.json) with 'all_checks_hold', 'checks' and 'facts' from `checks`, where
  its own stood; every other entry as it was, in its place."""
  keys = list(record)
  at = min([keys.index(k) for k in CHECK_KEYS if k in record], default=len(keys))
  items = [(k, v) for k, v in record.items() if k not in CHECK_KEYS]
  return dict(items[:at] + list(checks_record(checks).items()) + items[at:])


def with_checks_section(text: str, checks: Checks) -> str | None:
  """report.md `text` with its claim-checks section (and facts table) written from `checks`;
  None if it has no such section."""
  found = CHECKS_SECTION.search(text)
  if found is None:
    return None
  return text[:found.start()] + checks_section(checks) + text[found.end():]


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
  """Writes report.md and results.json (`record`, plus `checks_record(checks)` when given: a
  Checks or a list of rows) in the workdir, says whether the claims hold, and copies `outputs`
  to `report_dir`."""
  if checks is not None:
    record = {**record, **checks_record(checks)}
  (workdir / 'report.md').write_text(text)
  write_json(workdir / 'results.json', record)
  if checks is not None:
    facts = record.get('facts', [])
    print(f"claims hold: {record['all_checks_hold']}"
          + (f' (facts, not counted, hold: {all_hold(facts)})' if facts else '')
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
